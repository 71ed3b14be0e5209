"""`radcap train-retrieval`, `radcap search` and `radcap retrieve`: the contrastive image-report model."""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect.utilities.annotations import quote

from radcap.core.settings import RetrievalSettings, get_settings
from radcap.registry.tracking import tracked_run
from radcap.tasks.retrieval import (
    build_index,
    evaluate_retriever,
    fit_domain_guard,
    fit_retriever,
    image_sources,
    load_retriever,
    register_retriever,
    report_set,
    retrieval_sets,
    retrieve_images,
    search_texts,
    write_results,
    write_retrieval_report,
)
from radcap.tasks.train import training_inputs


@flow(name="train-retrieval")
def train_retrieval_flow(
    data_dir: Path,
    out: Path,
    settings: RetrievalSettings | None = None,
    encoder_version: str | None = None,
    meteor: bool = True,
) -> dict:
    cfg = settings or get_settings().retrieval
    rules = get_settings().split
    inputs = training_inputs(data_dir, encoder_version, cfg, rules)
    sets = retrieval_sets(data_dir, inputs["encoder_version"], cfg, rules)
    reported = report_set(data_dir, inputs["encoder_version"], cfg, rules, quote(sets["val"]))
    with tracked_run(
        get_settings().tracking.retrieval, "train-retrieval", {**cfg.model_dump(), "data_dir": str(data_dir), **inputs}
    ):
        training = fit_retriever(quote(sets["train"]), quote(sets["val"]), cfg, inputs)
        fit_domain_guard(quote(training), quote(sets), data_dir, get_settings().domain)
        index = build_index(quote(training), quote(sets["train"]), image_sources(data_dir))
        scores = evaluate_retriever(quote(training), quote(index), quote(sets["train"]), quote(reported["set"]), meteor)
        fit = training.fit
        meta = {
            "data_dir": str(data_dir),
            "split": reported["split"],
            "index_split": "train",
            "best_epoch": fit.best_epoch,
            "epochs_run": len(fit.history),
            **inputs,
        }
        summary = write_retrieval_report(quote(training), quote(index), quote(scores), out, meta)
        registered = register_retriever(
            out, cfg, {**inputs, "best_epoch": fit.best_epoch, "val_mean_recall": summary["mean_recall"]}
        )
    return {
        "registered": registered,
        "epochs_run": len(fit.history),
        "best_epoch": fit.best_epoch,
        "train_pairs": len(sets["train"]),
        "selection_pairs": len(sets["val"]),
        "reported_on": reported["split"],
        "reported_pairs": len(reported["set"]),
        **summary,
    }


@flow(name="search-images")
def search_flow(texts: list[str], model: str, top_k: int, out: Path | None = None) -> dict:
    """Report-to-image search: the known images closest to each text query."""
    results = search_texts(texts, quote(load_retriever(model)), top_k)
    summary = write_results(quote(results), None, out) if out else {"rows": len(results), "rejected": 0}
    return {**summary, "table": results}


@flow(name="retrieve-reports")
def retrieve_flow(
    input_path: Path,
    model: str,
    top_k: int,
    out: Path,
    encoder: str | None = None,
    precision: str = "fp32",
    cluster: str | None = None,
) -> dict:
    """Image-to-report retrieval for every study under `input_path` (same inputs as `radcap caption`)."""
    results, rejects = retrieve_images(
        input_path,
        quote(load_retriever(model)),
        top_k,
        get_settings().caption,
        encoder,
        exclude=out,
        precision=precision,
        cluster=cluster or get_settings().cluster,
    )
    return {**write_results(quote(results), quote(rejects), out), "table": results}
