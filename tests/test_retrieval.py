"""The contrastive retriever: recall and loss on hand-made cases, then a tiny model through the real flow,
registry, index save/reload, `radcap search` and `radcap retrieve` (DICOM included)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from radcap.retrieval.retriever import recall_at_k, relevance
from tests.conftest import ingested_sample, run_cli_here


def test_recall_at_k_counts_ties_against_the_query():
    similarity = np.array([[0.9, 0.1, 0.0], [0.5, 0.4, 0.6], [0.2, 0.2, 0.2]])
    relevant = np.eye(3, dtype=bool)
    # query 0: first; query 1: third; query 2: tied with two others, counted as third
    assert recall_at_k(similarity, relevant, ks=(1, 2, 3)) == {"R@1": 1 / 3, "R@2": 1 / 3, "R@3": 1.0}


def test_identical_reports_are_all_correct_answers():
    texts = ["no acute disease.", "small left effusion.", "no acute disease."]
    assert relevance(texts, texts).tolist() == [[True, False, True], [False, True, False], [True, False, True]]


def test_info_nce_is_low_for_aligned_pairs_and_ignores_duplicate_texts():
    from radcap.models.retrieval import info_nce

    emb = np.eye(4, dtype=np.float32)
    aligned = float(info_nce(emb, emb, 20.0, np.arange(4)))
    shuffled = float(info_nce(emb, emb[[1, 0, 3, 2]], 20.0, np.arange(4)))
    assert aligned < 0.01 < shuffled
    # Texts 0 and 1 identical: image 0 matching text 1 is not punished as a wrong pair.
    near = np.array([[1, 0.9, 0, 0], [0.9, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], np.float32)
    assert float(info_nce(near, near, 20.0, np.array([0, 0, 1, 2]))) < float(info_nce(near, near, 20.0, np.arange(4)))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, prefect_api) -> Path:
    from radcap.flows.features import extract_features_flow

    data = ingested_sample(tmp_path_factory.mktemp("retrieval"), studies=60, image_size=128)
    extract_features_flow(data, "random:0", 8)
    return data


@pytest.mark.slow
def test_train_register_search_and_retrieve(data_dir: Path, tmp_path: Path, shared_data: Path):
    from radcap.core.settings import get_settings
    from radcap.flows.retrieval import train_retrieval_flow
    from radcap.retrieval.retriever import RetrievalIndex, read_retriever

    cfg = get_settings().retrieval.model_copy(
        update={
            "dim": 16,
            "embed_dim": 16,
            "text_units": 16,
            "hidden": 32,
            "epochs": 6,
            "batch_size": 8,
            "min_count": 1,
            "registered_name": "radcap-retriever-test",
        }
    )
    out = tmp_path / "run"
    summary = train_retrieval_flow(data_dir, out, cfg, meteor=False)
    assert summary["registered"].startswith("models:/radcap-retriever-test/") and summary["epochs_run"] >= 1
    report = (out / "report.md").read_text()
    assert "contrastive retriever" in report and "raw-feature neighbours" in report and "CIDEr" in report

    # The saved retriever scores on val what training reported (the kept epoch's weights were saved), and the
    # baselines are what their definitions give on the same val pairs.
    from radcap.captioning.data import load_caption_sets, training_sets
    from radcap.core.settings import SplitRules
    from radcap.retrieval.retriever import both_directions, random_baseline, raw_feature_baseline

    sets = training_sets(data_dir, "random-seed0", SplitRules(), 2)  # what it fitted on, what it selected on
    bundle, index = read_retriever(out / "retriever"), RetrievalIndex.load(out / "index.parquet")
    val = load_caption_sets(data_dir, "random-seed0", ("val",), 2)["val"]  # untouched by early stopping
    assert summary["reported_on"] == "val" and summary["reported_pairs"] == len(val)
    again = both_directions(
        bundle.image_embeddings(val.pooled, val.view_mask), bundle.text_embeddings(val.texts), val.texts
    )
    for key in ("image_to_report_R@1", "image_to_report_R@10", "report_to_image_R@5", "mean_recall"):
        assert summary[key] == pytest.approx(again[key], abs=1e-4), key
    assert summary["random_mean_recall"] == pytest.approx(random_baseline(val)["mean_recall"], abs=1e-4)
    assert summary["raw_neighbours_mean_recall"] == pytest.approx(
        raw_feature_baseline(sets["train"], val)["mean_recall"], abs=1e-4
    )
    assert summary["selection_pairs"] == len(sets["val"]) and summary["train_pairs"] == len(sets["train"])

    # The index round-trips: the same queries give the same items and scores after save and reload.
    queries = bundle.text_embeddings(["right pleural effusion.", "no acute cardiopulmonary abnormality."])
    before = index.search(queries, "image", 5)
    index.save(tmp_path / "copy.parquet")
    after = RetrievalIndex.load(tmp_path / "copy.parquet").search(queries, "image", 5)
    for a, b in zip(before, after):
        pd.testing.assert_frame_equal(a, b)
    assert set(index.table["split"]) == {"train"}  # known items: training pairs only

    done = run_cli_here(
        "search",
        "--model",
        summary["registered"],
        "--text",
        "left pleural effusion",
        "--top-k",
        "3",
        "--out",
        str(tmp_path / "search"),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    hits = pd.read_parquet(tmp_path / "search" / "results.parquet")
    assert (
        hits["rank"].tolist() == [1, 2, 3] and (hits["kind"] == "image").all() and hits["score"].is_monotonic_decreasing
    )

    from PIL import Image

    from tests.dicom_factory import FAKE_PATIENT, make_dicom

    pixels = np.asarray(Image.open(sorted((shared_data / "covid_cxr").rglob("*.png"))[0]).convert("L"))
    inbox = tmp_path / "new"
    inbox.mkdir()
    make_dicom(inbox / "IM1", pixels, study_uid="1.2.3.4", view_position="PA")
    make_dicom(inbox / "IM2", pixels[::-1], study_uid="1.2.3.4", view_position="LL")
    Image.fromarray(pixels).save(inbox / "other.png")
    (inbox / "broken.dcm").write_bytes(b"")
    done = run_cli_here(
        "--verbose",
        "retrieve",
        "--model",
        str(out),
        "--input",
        str(inbox),
        "--top-k",
        "2",
        "--out",
        str(tmp_path / "ret"),
    )
    assert done.returncode == 1, done.stderr[-3000:]  # one reject
    results = pd.read_parquet(tmp_path / "ret" / "results.parquet")
    assert len(results) == 4 and set(results["query_study_id"]) == {"1.2.3.4", results["query_study_id"].iloc[-1]}
    assert results.loc[results["query_study_id"] == "1.2.3.4", "query"].iloc[0] == "IM1;IM2"  # one study, two views
    assert results["ood_score"].notna().all() and results["in_domain"].notna().all()  # the retriever's guard
    assert pd.read_parquet(tmp_path / "ret" / "rejects.parquet")["source_path"].tolist() == ["broken.dcm"]
    blob = b"".join(p.read_bytes() for p in (tmp_path / "ret").iterdir()) + done.stdout.encode() + done.stderr.encode()
    assert not any(v.encode() in blob for v in FAKE_PATIENT.values())
