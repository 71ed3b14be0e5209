"""Retrieval tasks: pairs from the feature store, training, evaluation against baselines, index, registry,
and the two searches (text -> images, images -> reports)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from prefect.logging import get_run_logger

from radcap.captioning.bulk import reject_row
from radcap.captioning.data import CaptionSet, load_caption_sets, training_sets
from radcap.core.catalog import DataCatalog, RunFolder
from radcap.core.io import atomic_path, new_run_id, read_table, write_json, write_table
from radcap.core.reporting import curves_figure, write_text
from radcap.core.settings import BulkCaptioningSettings, DomainSettings, RetrievalSettings, SplitRules, get_settings
from radcap.data_contracts import CAPTION_REJECTS, IMAGES, SEARCH_RESULTS
from radcap.domain.guard import fit_guard_for, guard_summary
from radcap.imaging.encoders import at_precision, encoder_for
from radcap.imaging.precision import require_precision
from radcap.operations.cluster import dask_client
from radcap.pacs.exports import identifiers, scan
from radcap.registry import store as registry
from radcap.registry import tracking
from radcap.retrieval import retriever as retrievers
from radcap.retrieval.retriever import (
    LoadedRetriever,
    RetrievalIndex,
    RetrieverTraining,
    result_rows,
    retrieval_report,
    retrieve_studies,
    train_retriever,
)
from radcap.retrieval.retriever import (
    evaluate_retriever as evaluate,
)
from radcap.tasks import registry_task, uncached
from radcap.text.vocab import Vocabulary


@uncached
def retrieval_sets(
    data_dir: Path, encoder_version: str, cfg: RetrievalSettings, rules: SplitRules
) -> dict[str, CaptionSet]:
    """The fitting set and the selection set (`radcap.captioning.data.training_sets`); recall is reported there."""
    return training_sets(data_dir, encoder_version, rules, cfg.max_views, min_size=2)


@uncached
def report_set(
    data_dir: Path, encoder_version: str, cfg: RetrievalSettings, rules: SplitRules, selection: CaptionSet
) -> dict:
    """Where recall is reported: the val split, untouched by early stopping when selection was carved from
    train; else (no val reports, or selection on val) the selection set, and the report says so."""
    if rules.select_on == "carve":
        val = load_caption_sets(data_dir, encoder_version, ("val",), cfg.max_views, min_size=0)["val"]
        if len(val) >= 2:
            return {"split": "val", "set": val}
    return {"split": "selection set (also used for early stopping)", "set": selection}


@uncached
def image_sources(data_dir: Path) -> dict[str, str]:
    images = read_table(DataCatalog(data_dir).images, IMAGES)
    images = images[images["path"].notna()]
    return images.groupby("report_id")["path"].apply(lambda p: ";".join(sorted(p))).to_dict()


@uncached
def fit_retriever(train: CaptionSet, val: CaptionSet, cfg: RetrievalSettings, inputs: dict) -> RetrieverTraining:
    vocab = Vocabulary.build(train.texts, cfg.min_count, cfg.max_length)
    extra = {k: inputs[k] for k in ("encoder_version", "encoder_spec", "data_version")}
    return train_retriever(train, val, vocab, cfg, extra, on_epoch=tracking.epoch_logger(get_run_logger()))


@uncached
def fit_domain_guard(
    training: RetrieverTraining, sets: dict[str, CaptionSet], data_dir: Path, cfg: DomainSettings
) -> dict:
    """The retriever's out-of-domain guard, fitted and calibrated (out of fold) on its training split's images."""
    guard = fit_guard_for([sets["train"], sets["val"]], data_dir, cfg, training.bundle.config.encoder_version)
    training.bundle.domain = guard
    summary = guard_summary(guard)
    tracking.log_metrics({k: v for k, v in summary.items() if not isinstance(v, str)})
    return summary


@uncached
def build_index(training: RetrieverTraining, train: CaptionSet, sources: dict[str, str]) -> RetrievalIndex:
    return RetrievalIndex.build(training.bundle, train, "train", sources)


@uncached
def evaluate_retriever(
    training: RetrieverTraining, index: RetrievalIndex, train: CaptionSet, evaluated: CaptionSet, meteor: bool = True
) -> dict:
    scores = evaluate(training.bundle, index, train, evaluated, meteor)
    for name, values in scores["recall"].items():
        get_run_logger().info("%s: %s", name, {k: round(v, 4) for k, v in values.items()})
    return scores


@uncached
def write_retrieval_report(
    training: RetrieverTraining, index: RetrievalIndex, scores: dict, out: Path, meta: dict
) -> dict:
    run = RunFolder(out)
    training.bundle.save(run.retriever)
    index.save(run.index)
    report = retrieval_report(scores, meta)
    write_text(report, run.report)
    write_json({**meta, **scores}, run.metrics)
    tracking.log_text(report, "report.md")
    tracking.log_figure(
        curves_figure(
            training.fit,
            {"train_loss": "train InfoNCE"},
            {"val_mean_recall": "val mean recall"},
            "contrastive loss",
            "validation recall",
        ),
        "loss_curve.png",
    )
    model = scores["recall"]["contrastive retriever"]
    return {
        **{k: round(v, 4) for k, v in model.items()},
        "raw_neighbours_mean_recall": round(scores["recall"]["raw-feature neighbours"]["mean_recall"], 4),
        "random_mean_recall": round(scores["recall"]["random ranking"]["mean_recall"], 4),
        "retrieved_CIDEr": round(scores["retrieved_as_caption"]["CIDEr"], 4),
        "report": str(run.report),
    }


@registry_task
def register_retriever(out: Path, cfg: RetrievalSettings, tags: dict) -> str:
    run = RunFolder(out)
    version = registry.register_retriever(run.retriever, run.index, cfg.registered_name, tags)
    return f"models:/{cfg.registered_name}/{version}"


@registry_task
def load_retriever(uri: str) -> LoadedRetriever:
    loaded = retrievers.load_retriever(uri)
    table = loaded.index.table
    get_run_logger().info(
        "retriever %s: %d known images, %d known reports",
        loaded.uri,
        int((table["kind"] == "image").sum()),
        int((table["kind"] == "report").sum()),
    )
    return loaded


@uncached
def search_texts(texts: list[str], loaded: LoadedRetriever, top_k: int) -> pd.DataFrame:
    hits = loaded.index.search(loaded.bundle.text_embeddings(texts), "image", top_k)
    return result_rows(texts, hits, loaded.uri, [None] * len(texts))


@uncached
def retrieve_images(
    root: Path,
    loaded: LoadedRetriever,
    top_k: int,
    cfg: BulkCaptioningSettings,
    encoder: str | None = None,
    exclude: Path | None = None,
    precision: str = "fp32",
    cluster: str | None = None,
) -> tuple[pd.DataFrame, list[dict]]:
    """Each study under `root` (grouped as `radcap caption` does) -> its top-k known reports; bad files -> rejects.
    Below fp32 only when the retriever passed the precision check at `precision`. In this process, or across
    the Dask cluster `cluster`."""
    require_precision(loaded, precision)
    model = at_precision(encoder_for(loaded.bundle.config, encoder), precision)
    get_run_logger().info("retriever %s on encoder %s", loaded.uri, model.store_version)
    found = scan(root, identifiers(cfg.identifiers, cfg.id_salt), exclude=exclude)
    with dask_client(cluster if found.images else None) as client:
        if client is None:
            results, rejects = retrieve_studies(
                found.images,
                loaded.bundle,
                loaded.index,
                model.forward_fn(),
                cfg.batch_size,
                model.input_size,
                top_k,
                loaded.uri,
                model.store_version,
            )
        else:
            from radcap.operations.scaleout import retrieve_on_cluster

            uri = str(Path(loaded.name).resolve()) if loaded.version == "local" else loaded.uri
            frames, rejects = retrieve_on_cluster(
                client,
                found.images,
                uri,
                encoder,
                precision,
                cfg.batch_size,
                top_k,
                loaded.uri,
                new_run_id(),
                get_settings().cluster_task_images,
            )
            frames = [f for f in frames if len(f)]
            results = pd.concat(frames, ignore_index=True) if frames else SEARCH_RESULTS.empty()
    return results, [reject_row(r.source_path, r.sha256, r.reason) for r in found.rejects] + rejects


@uncached
def write_results(results: pd.DataFrame, rejects: list[dict] | None, out: Path) -> dict:
    run = RunFolder(out)
    write_table(results, run.results, SEARCH_RESULTS)
    with atomic_path(run.results_csv) as tmp:
        results.to_csv(tmp, index=False)
    if rejects is not None:
        frame = pd.DataFrame(rejects, columns=CAPTION_REJECTS.column_names) if rejects else CAPTION_REJECTS.empty()
        write_table(frame, run.rejects, CAPTION_REJECTS)
    return {
        "results": str(run.results),
        "rows": len(results),
        "rejected": len(rejects or []),
        "rejects": str(run.rejects),
    }
