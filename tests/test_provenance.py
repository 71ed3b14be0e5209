"""Provenance that cannot lie, decoding as tuned, truthful exit codes, hashed identifiers with a real salt."""

from __future__ import annotations

import itertools
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from tests.conftest import make_tiny_captioner, run_cli_here


@pytest.mark.slow
def test_a_model_is_never_fed_another_encoders_features(tmp_path):
    from types import SimpleNamespace as Config

    from radcap.core.errors import RadcapError
    from radcap.imaging.encoders import encoder_for

    with pytest.raises(RadcapError, match="does not record"):
        encoder_for(Config(encoder_version="h5-0123456789ab", encoder_spec=None))
    with pytest.raises(RadcapError, match="never another one"):  # a random encoder of another seed
        encoder_for(Config(encoder_version="random-seed0", encoder_spec="random:0"), override="random:1")
    with pytest.raises(RadcapError, match="cannot load the model's encoder"):
        encoder_for(Config(encoder_version="keras-0123456789ab", encoder_spec=str(tmp_path / "gone.keras")))
    with pytest.raises(RadcapError, match="no encoder version"):
        encoder_for(Config())
    assert encoder_for(Config(encoder_version="random-seed0")).version == "random-seed0"  # reloadable from the version


@pytest.mark.slow
def test_a_moved_encoder_file_is_found_with_encoder_and_checked(tmp_path):
    from types import SimpleNamespace as Config

    import keras

    from radcap.core.errors import RadcapError
    from radcap.imaging.encoders import encoder_for, resolve_encoder
    from radcap.models.encoder import build_chexnet

    keras.utils.set_random_seed(0)
    build_chexnet(n_outputs=2, input_size=None).save(tmp_path / "enc.keras")
    recorded = resolve_encoder(str(tmp_path / "enc.keras"))
    config = Config(encoder_version=recorded.version, encoder_spec=recorded.spec)
    shutil.move(tmp_path / "enc.keras", tmp_path / "moved.keras")
    with pytest.raises(RadcapError, match="not found"):
        encoder_for(config)
    assert encoder_for(config, override=str(tmp_path / "moved.keras")).version == recorded.version
    keras.utils.set_random_seed(1)
    build_chexnet(n_outputs=2, input_size=None).save(tmp_path / "other.keras")
    with pytest.raises(RadcapError, match="never another one"):
        encoder_for(config, override=str(tmp_path / "other.keras"))


@pytest.mark.slow
def test_caption_stops_with_one_line_instead_of_falling_back_to_another_encoder(tmp_path, prefect_api):
    bundle = make_tiny_captioner(tmp_path / "bundle")
    config = json.loads((bundle / "config.json").read_text())
    config.update(
        encoder_version="h5-0123456789ab", encoder_spec=None
    )  # a file encoder, path not recorded  # a file encoder, path not recorded
    (bundle / "config.json").write_text(json.dumps(config))
    images = tmp_path / "in"
    images.mkdir()
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(images / "a.png")
    done = run_cli_here("caption", "--input", str(images), "--out", str(tmp_path / "out"), "--model", str(bundle))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "pass that file with --encoder" in done.stderr.strip().splitlines()[-1]


def test_greedy_decoding_honours_no_repeat_ngram():
    import tensorflow as tf

    from radcap.models.captioner import ShowAndTell
    from radcap.models.decoding import Decoder

    tf.keras.utils.set_random_seed(0)
    model = ShowAndTell(6, max_views=1, feature_dim=1024, embed_dim=4, units=8, dropout=0.0)
    features = {"pooled": np.zeros((3, 1, 1024), np.float32), "view_mask": np.ones((3, 1), np.float32)}
    model.teacher_forced(features, np.ones((3, 2), np.int32))  # builds the layers
    # A model that always prefers token 4, then 5: without blocking, greedy writes "4 4 4 ..." forever.
    model.logits.set_weights([np.zeros_like(model.logits.get_weights()[0]), np.array([0, 0, 0, 0, 5.0, 4.0])])
    decoder = Decoder(model, start_id=1, end_id=2, max_length=12)
    plain, _ = decoder.greedy(features)
    assert (plain[0] == 4).all()
    blocked, _ = decoder.greedy(features, no_repeat_ngram=2)
    tokens = blocked[0].tolist()
    tokens = tokens[: tokens.index(2)] if 2 in tokens else tokens
    pairs = list(itertools.pairwise(tokens))
    assert len(pairs) == len(set(pairs)) and tokens[:3] == [4, 5, 4]  # no bigram twice, no word twice in a row
    assert all(a != b for a, b in pairs)
    beam = decoder.beam(features, width=1, no_repeat_ngram=2)
    np.testing.assert_array_equal(beam[0][: blocked.shape[1]], blocked[0][: beam.shape[1]])


def test_pyfunc_without_params_decodes_as_tuned_on_validation(tmp_path):
    """MLflow fills in the signature's defaults when a request has no params: they must be the bundle's."""
    import mlflow

    from radcap.core.model_config import DecodingConfig
    from radcap.registry.store import captioner_signature, register_captioner

    tuned = {"beam_width": 3, "length_penalty": 2.5, "no_repeat_ngram": 2, "consensus_samples": 4}
    params = {p.name: p.default for p in captioner_signature(DecodingConfig(**tuned)).params.params}
    assert params == tuned
    bundle = make_tiny_captioner(tmp_path / "bundle", decoding=tuned)
    mlflow.set_experiment("radcap-tests")
    with mlflow.start_run():
        version = register_captioner(bundle, "radcap-pyfunc-test", {})
    info = mlflow.models.get_model_info(f"models:/radcap-pyfunc-test/{version}")
    assert {p.name: p.default for p in info.signature.params.params} == tuned
    model = mlflow.pyfunc.load_model(f"models:/radcap-pyfunc-test/{version}")
    rng = np.random.default_rng(0)
    frame = __import__("pandas").DataFrame({"study_id": ["s1", "s2"], "pooled": list(rng.normal(size=(2, 1024)))})
    from radcap.captioning.bundle import load_bundle

    loaded = load_bundle(bundle)
    features = {
        "pooled": np.stack(frame["pooled"]).astype(np.float32)[:, None, :].repeat(2, 1)
        * np.array([1, 0])[None, :, None],
        "view_mask": np.array([[1, 0], [1, 0]], np.float32),
    }
    expected = loaded.caption(features, beam_width=3, length_penalty=2.5, no_repeat_ngram=2, consensus_samples=4)
    assert model.predict(frame)["caption"].tolist() == expected


def test_hashed_identifiers_never_use_an_empty_salt(tmp_path, monkeypatch):
    from radcap.pacs.exports import identifiers

    monkeypatch.setenv("RADCAP_WORKSPACE", str(tmp_path / "ws"))
    first = identifiers("hash")
    assert first.salt and len(first.salt) == 32 and (tmp_path / "ws" / "id_salt").stat().st_mode & 0o777 == 0o600
    assert identifiers("hash").salt == first.salt  # kept: ids stay stable across runs
    assert first("1.2.3") != identifiers("hash", "site-secret")("1.2.3") != "1.2.3"
    assert identifiers("uid")("1.2.3") == "1.2.3"


def test_a_fault_exits_2_with_one_line_after_the_traceback(monkeypatch, capsys):
    import radcap.cli as cli

    def explode(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(cli, "app", explode)
    with pytest.raises(SystemExit) as info:
        cli.main(["contracts"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "Traceback" in err
    assert (
        err.strip()
        .splitlines()[-1]
        .startswith("error: the run stopped on an unexpected fault (RuntimeError: disk on fire)")
    )
