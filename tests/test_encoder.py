"""The CheXNet encoder: the published `.h5` layout, encoder resolution, and the pretraining loss."""

from __future__ import annotations

import itertools

import h5py
import numpy as np
import pytest

from radcap.core.errors import RadcapError


@pytest.fixture(scope="module")
def chexnet_pair():
    from radcap.models.encoder import build_chexnet

    return build_chexnet(seed=1), build_chexnet(seed=2)


def test_h5_in_published_layout_round_trips(tmp_path, chexnet_pair):
    from radcap.models.encoder import load_chexnet_h5
    from tests.keras2_h5 import save_chexnet_h5_keras2_layout

    source, target = chexnet_pair
    path = tmp_path / "brucechou1983_CheXNet_Keras_0.3.0_weights.h5"
    save_chexnet_h5_keras2_layout(source, path)
    with h5py.File(path) as f:  # the structure of the published file (Keras 2 save_weights)
        names = [n.decode() for n in f.attrs["layer_names"]]
        assert "conv1/conv" in names and "predictions" in names and "conv5_block16_2_conv" in names
        assert f["predictions"].attrs["weight_names"][0].decode() == "predictions/kernel:0"
    x = np.random.default_rng(0).normal(size=(2, 224, 224, 3)).astype(np.float32)
    assert not np.allclose(source(x, training=False), target(x, training=False))
    loaded = load_chexnet_h5(target, path)
    assert loaded == sum(1 for layer in source.layers if layer.weights)
    np.testing.assert_allclose(source(x, training=False), target(x, training=False), atol=1e-5)


def test_h5_with_another_head_names_the_layer(tmp_path, chexnet_pair):
    from radcap.models.encoder import build_chexnet, load_chexnet_h5
    from tests.keras2_h5 import save_chexnet_h5_keras2_layout

    path = tmp_path / "other.h5"
    save_chexnet_h5_keras2_layout(build_chexnet(n_outputs=3), path)
    with pytest.raises(ValueError, match="layer 'predictions' shapes"):
        load_chexnet_h5(chexnet_pair[1], path)


def test_resolve_encoder_errors_are_user_errors(tmp_path):
    from radcap.imaging.encoders import resolve_encoder

    (tmp_path / "notes.h5").write_text("not hdf5")
    (tmp_path / "model.onnx").write_bytes(b"x")
    (tmp_path / "model.keras").write_text("not a zip")
    with pytest.raises(RadcapError, match="not a Keras HDF5 weights file"):
        resolve_encoder(str(tmp_path / "notes.h5"))
    with pytest.raises(RadcapError, match=r"not a Keras \.keras archive"):
        resolve_encoder(str(tmp_path / "model.keras"))
    with pytest.raises(RadcapError, match="unsupported encoder file"):
        resolve_encoder(str(tmp_path / "model.onnx"))
    with pytest.raises(RadcapError, match="not found"):
        resolve_encoder(str(tmp_path / "missing.h5"))


@pytest.mark.slow
def test_resolve_encoder_from_h5_gives_a_content_version(tmp_path, chexnet_pair):
    from radcap.imaging.encoders import resolve_encoder
    from tests.keras2_h5 import save_chexnet_h5_keras2_layout

    path = tmp_path / "w.h5"
    save_chexnet_h5_keras2_layout(chexnet_pair[0], path)
    encoder = resolve_encoder(str(path))
    assert encoder.version.startswith("h5-") and encoder.version == resolve_encoder(str(path)).version
    pooled, grid, early = encoder.forward_fn()(np.zeros((2, 224, 224), np.uint8))
    assert pooled.shape == (2, 1024) and grid.shape == (2, 7, 7, 1024) and early.shape == (2, 1536)
    np.testing.assert_allclose(pooled, grid.mean(axis=(1, 2)), rtol=1e-4, atol=1e-5)
    assert np.all(early[:, 256:512] >= 0) and np.all(early[:, 1024:] >= 0)  # the spreads of pool2 and pool3


def test_masked_weighted_bce_ignores_unannotated_units():
    import tensorflow as tf

    from radcap.models.pretrain import masked_weighted_bce

    targets = tf.constant([[1.0, 0.0], [0.0, 1.0]])
    probs = tf.constant([[0.9, 0.2], [0.3, 0.6]])
    ones = tf.ones(2)
    mask = tf.constant([[1.0, 0.0], [1.0, 1.0]])
    loss = float(masked_weighted_bce(targets, mask, probs, ones, ones))
    expected = -(np.log(0.9) + np.log(0.7) + np.log(0.6)) / 3
    assert loss == pytest.approx(expected, rel=1e-5)
    wrong_where_masked = tf.constant([[0.9, 0.99], [0.3, 0.6]])  # unit 2 of image 1 is masked
    assert float(masked_weighted_bce(targets, mask, wrong_where_masked, ones, ones)) == pytest.approx(loss)
    heavier_positives = float(masked_weighted_bce(targets, mask, probs, tf.constant([2.0, 2.0]), ones))
    assert heavier_positives > loss


def test_learning_rate_warms_up_then_decays_to_the_floor():
    from radcap.imaging.pretraining import learning_rate_at

    rates = [
        learning_rate_at(step, total_steps=100, warmup_steps=10, peak=1e-3, floor_ratio=0.01) for step in range(100)
    ]
    assert rates[0] == pytest.approx(1e-4) and rates[9] == pytest.approx(1e-3)
    assert all(a < b for a, b in itertools.pairwise(rates[:10]))  # warm-up rises
    assert all(a >= b for a, b in itertools.pairwise(rates[9:]))  # then never rises again
    assert rates[55] == pytest.approx(1e-3 * (0.01 + 0.99 * 0.5), rel=1e-6)  # half way: half the span
    assert learning_rate_at(100, 100, 10, 1e-3, 0.01) == pytest.approx(1e-5)  # the floor, not zero
    assert learning_rate_at(500, 100, 10, 1e-3, 0.01) == pytest.approx(1e-5)
