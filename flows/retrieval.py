"""`radcap train-retrieval`, `radcap search` and `radcap retrieve`: the contrastive image-report model."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
from prefect import flow
from prefect.utilities.annotations import quote

from radcap.catalog import DataCatalog
from radcap.settings import RetrievalSettings, get_settings
from tasks.retrieval import (
    evaluate_retriever,
    fit_retriever,
    image_sources,
    register_retriever,
    retrieval_sets,
    write_retrieval_report,
)
from tasks.train import encoder_spec, stored_encoder_version


@flow(name="train-retrieval")
def train_retrieval_flow(data_dir: Path, out: Path, settings: RetrievalSettings | None = None,
                         encoder_version: str | None = None, meteor: bool = True) -> dict:
    from radcap.retrieval import RetrievalIndex

    cfg = settings or get_settings().retrieval
    version = stored_encoder_version(data_dir, encoder_version)
    sets = retrieval_sets(data_dir, version, ("train", "val"))
    data_version = json.loads(DataCatalog(data_dir).ingest_summary.read_text())["data_version"]
    extra = {"encoder_version": version, "encoder_spec": encoder_spec(data_dir, version), "data_version": data_version}
    mlflow.set_experiment("radcap-retrieval")
    with mlflow.start_run(run_name="train-retrieval"):
        mlflow.log_params({**cfg.model_dump(), "data_dir": str(data_dir), **extra})
        training = fit_retriever(quote(sets["train"]), quote(sets["val"]), cfg, extra)
        index = RetrievalIndex.build(training.bundle, sets["train"], "train", image_sources(data_dir))
        scores = evaluate_retriever(quote(training.bundle), quote(index), quote(sets["train"]), quote(sets["val"]), meteor)
        meta = {"data_dir": str(data_dir), "split": "val", "index_split": "train", "best_epoch": training.best_epoch,
                "epochs_run": len(training.history), **extra}
        summary = write_retrieval_report(quote(training), quote(index), quote(scores), out, meta)
        registered = register_retriever(out, cfg, {**extra, "best_epoch": training.best_epoch,
                                                   "val_mean_recall": summary["mean_recall"]})
    return {"registered": registered, "epochs_run": len(training.history), "best_epoch": training.best_epoch,
            "train_pairs": len(sets["train"]), "val_pairs": len(sets["val"]), **summary}


@flow(name="search-images")
def search_flow(texts: list[str], model: str, top_k: int, out: Path | None = None) -> dict:
    """Report-to-image search: the known images closest to each text query."""
    from tasks.retrieval import load_retriever_task, search_texts, write_results

    results = search_texts(texts, quote(load_retriever_task(model)), top_k)
    summary = write_results(quote(results), None, out) if out else {"rows": len(results), "rejected": 0}
    return {**summary, "table": results}


@flow(name="retrieve-reports")
def retrieve_flow(input_path: Path, model: str, top_k: int, out: Path, encoder: str | None = None) -> dict:
    """Image-to-report retrieval for every study under `input_path` (same inputs as `radcap caption`)."""
    from radcap.pacs import identifiers
    from tasks.retrieval import load_retriever_task, retrieve_images, write_results

    cfg = get_settings().caption
    results, rejects = retrieve_images(input_path, quote(load_retriever_task(model)), top_k, cfg.batch_size,
                                       identifiers(cfg.identifiers, cfg.id_salt), encoder, exclude=out)
    return {**write_results(quote(results), quote(rejects), out), "table": results}
