"""Retrieval tasks: pairs from the feature store, training, evaluation against baselines, index, registry."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from prefect.logging import get_run_logger

from data_contracts import IMAGES, REPORTS
from radcap.caption_data import CaptionSet, build_caption_set
from radcap.catalog import DataCatalog
from radcap.errors import RadcapError
from radcap.features import FeatureStore
from radcap.io import read_table, write_json
from radcap.metrics import score_reports
from radcap.retrieval import (
    RetrievalIndex,
    RetrieverBundle,
    RetrieverTraining,
    both_directions,
    load_retriever,
    random_baseline,
    raw_feature_baseline,
    train_retriever,
)
from radcap.settings import RetrievalSettings
from radcap.vocab import Vocabulary
from tasks import registry_task, uncached
from tasks.train import markdown_table

MAX_VIEWS = 2


@uncached
def retrieval_sets(data_dir: Path, encoder_version: str, splits: tuple[str, ...]) -> dict[str, CaptionSet]:
    catalog = DataCatalog(data_dir)
    reports, images = read_table(catalog.reports, REPORTS), read_table(catalog.images, IMAGES)
    store = FeatureStore(catalog.features)
    sets = {s: build_caption_set(reports, images, store, encoder_version, s, MAX_VIEWS) for s in splits}
    for split, data in sets.items():
        if len(data) < 2:
            raise RadcapError(f"{data_dir}: fewer than 2 '{split}' reports have features for encoder {encoder_version}")
    return sets


@uncached
def image_sources(data_dir: Path) -> dict[str, str]:
    images = read_table(DataCatalog(data_dir).images, IMAGES)
    images = images[images["path"].notna()]
    return images.groupby("report_id")["path"].apply(lambda p: ";".join(sorted(p))).to_dict()


@uncached
def fit_retriever(train: CaptionSet, val: CaptionSet, cfg: RetrievalSettings, extra: dict) -> RetrieverTraining:
    import mlflow

    vocab = Vocabulary.build(train.texts, cfg.min_count, cfg.max_length)
    logger = get_run_logger()

    def log_epoch(e) -> None:
        mlflow.log_metrics({"train_loss": e.train_loss, "temperature_scale": e.scale,
                            **{f"val_{k.replace('@', '_at_')}": v for k, v in e.val.items()}}, step=e.epoch)
        logger.info("epoch %d: loss %.4f, val mean recall %.4f, R@1 image->report %.4f (%.1f s)", e.epoch, e.train_loss,
                    e.val["mean_recall"], e.val["image_to_report_R@1"], e.seconds)

    return train_retriever(train, val, vocab, cfg, extra, on_epoch=log_epoch)


def retrieved_captions(bundle: RetrieverBundle, index: RetrievalIndex, evaluated: CaptionSet) -> list[str]:
    """Each evaluated study's top-1 known report (the index holds training reports only)."""
    hits = index.search(bundle.image_embeddings(evaluated.pooled, evaluated.view_mask), "report", 1)
    return [h["text"].iloc[0] for h in hits]


@uncached
def evaluate_retriever(bundle: RetrieverBundle, index: RetrievalIndex, train: CaptionSet, evaluated: CaptionSet,
                       meteor: bool = True) -> dict:
    """Recall@1/5/10 both ways (gallery: the evaluated split) against random ranking and raw-feature neighbours,
    and the retrieved report scored as a caption with the generators' metrics."""
    model = both_directions(bundle.image_embeddings(evaluated.pooled, evaluated.view_mask),
                            bundle.text_embeddings(evaluated.texts), evaluated.texts)
    recall = {"contrastive retriever": model, "raw-feature neighbours": raw_feature_baseline(train, evaluated),
              "random ranking": random_baseline(evaluated)}
    references = dict(zip(evaluated.report_ids, evaluated.texts))
    hypotheses = dict(zip(evaluated.report_ids, retrieved_captions(bundle, index, evaluated)))
    as_caption = {k: v for k, v in score_reports(references, hypotheses, meteor=meteor).summary().items()
                  if k != "per_finding"}
    for name, scores in recall.items():
        get_run_logger().info("%s: %s", name, {k: round(v, 4) for k, v in scores.items()})
    return {"recall": recall, "retrieved_as_caption": as_caption, "queries": len(evaluated)}


@uncached
def write_retrieval_report(training: RetrieverTraining, index: RetrievalIndex, scores: dict, out: Path, meta: dict) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow

    training.bundle.save(out / "retriever")
    index.save(out / "index.parquet")
    table = pd.DataFrame([{"system": name, **values} for name, values in scores["recall"].items()])
    caption = pd.DataFrame([{"system": "retrieved report (top-1)", **scores["retrieved_as_caption"]}])
    report = (f"# radcap retrieval\n\n`{meta['data_dir']}` split `{meta['split']}` ({scores['queries']} image-report "
              f"pairs; gallery = that split; identical reports count as correct).\n\n## Recall\n\n{markdown_table(table)}\n"
              f"## Retrieved report as a caption (index: {meta['index_split']} reports)\n\n{markdown_table(caption)}")
    (out / "report.md").write_text(report, encoding="utf-8")
    write_json({**meta, **scores}, out / "metrics.json")
    mlflow.log_text(report, "report.md")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    epochs = [e.epoch for e in training.history]
    ax.plot(epochs, [e.train_loss for e in training.history], label="train InfoNCE")
    ax2 = ax.twinx()
    ax2.plot(epochs, [e.val["mean_recall"] for e in training.history], color="tab:orange", label="val mean recall")
    ax.set_xlabel("epoch")
    ax.legend(loc="upper left", fontsize=7)
    ax2.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    mlflow.log_figure(fig, "loss_curve.png")
    plt.close(fig)
    return {f"{k}": round(v, 4) for k, v in scores["recall"]["contrastive retriever"].items()} | {
        "raw_neighbours_mean_recall": round(scores["recall"]["raw-feature neighbours"]["mean_recall"], 4),
        "random_mean_recall": round(scores["recall"]["random ranking"]["mean_recall"], 4),
        "retrieved_CIDEr": round(scores["retrieved_as_caption"]["CIDEr"], 4), "report": str(out / "report.md")}


@registry_task
def register_retriever(out: Path, cfg: RetrievalSettings, tags: dict) -> str:
    import mlflow

    info = mlflow.pyfunc.log_model(
        name="retriever",
        python_model=str(Path(__file__).resolve().parents[1] / "models" / "pyfunc_retriever.py"),
        artifacts={"retriever": str(out / "retriever"), "index": str(out / "index.parquet")},
        registered_model_name=cfg.registered_name,
    )
    version = str(info.registered_model_version)
    for key, value in tags.items():
        mlflow.MlflowClient().set_model_version_tag(cfg.registered_name, version, key, str(value))
    return f"models:/{cfg.registered_name}/{version}"


def resolve_retriever(uri: str) -> tuple[RetrieverBundle, RetrievalIndex, str]:
    """A retriever folder (retriever/ + index.parquet) or a registry URI -> bundle, index, name."""
    local = Path(uri)
    if not local.is_dir():
        if not uri.startswith("models:/"):
            raise RadcapError(f"{uri}: neither a retriever folder nor a models:/ URI")
        import mlflow
        from mlflow.exceptions import MlflowException

        from radcap.registry import parse_model_uri

        name, version = parse_model_uri(uri)
        try:
            local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{version}"))
        except MlflowException as exc:
            raise RadcapError(f"{uri}: {exc.message}") from exc
        uri = f"models:/{name}/{version}"
    configs = [c for c in sorted(local.rglob("config.json")) if '"radcap-retriever/' in c.read_text()]
    indexes = sorted(local.rglob("index.parquet"))
    if not configs or not indexes:
        raise RadcapError(f"{uri}: holds no radcap retriever (config.json + index.parquet)")
    return load_retriever(configs[0].parent), RetrievalIndex.load(indexes[0]), uri


def result_rows(queries: list[str], hits: list[pd.DataFrame], model: str, study_ids: list[str | None]) -> pd.DataFrame:
    frames = [h.assign(query=q, query_study_id=s, model=model) for q, s, h in zip(queries, study_ids, hits)]
    from data_contracts import SEARCH_RESULTS

    if not frames:
        return SEARCH_RESULTS.empty()
    return pd.concat(frames, ignore_index=True)[SEARCH_RESULTS.column_names]


@registry_task
def load_retriever_task(uri: str) -> tuple[RetrieverBundle, RetrievalIndex, str]:
    bundle, index, name = resolve_retriever(uri)
    get_run_logger().info("retriever %s: %d known images, %d known reports", name,
                          int((index.table["kind"] == "image").sum()), int((index.table["kind"] == "report").sum()))
    return bundle, index, name


@uncached
def search_texts(texts: list[str], model: tuple, top_k: int) -> pd.DataFrame:
    bundle, index, name = model
    hits = index.search(bundle.text_embeddings(texts), "image", top_k)
    return result_rows(texts, hits, name, [None] * len(texts))


@uncached
def retrieve_images(root: Path, model: tuple, top_k: int, batch_size: int, ids, encoder: str | None = None,
                    exclude: Path | None = None) -> tuple[pd.DataFrame, list[dict]]:
    """Each study under `root` (grouped as `radcap caption` does) -> its top-k known reports; bad files -> rejects."""
    from data_contracts import SEARCH_RESULTS
    from radcap.caption_data import pack_views
    from radcap.captioning import reject_row, study_batches
    from radcap.encoders import encoder_for
    from radcap.features import stream_features
    from radcap.pacs import scan

    bundle, index, name = model
    loaded = encoder_for(bundle.config, encoder)
    found = scan(root, ids, exclude=exclude)
    rejects = [reject_row(r.source_path, r.sha256, r.reason) for r in found.rejects]
    batches = [[image for study in batch for image in study] for batch in study_batches(found.images, batch_size)]
    frames = []
    for batch in stream_features(found.images, lambda image: image.path, loaded.forward_fn(), batch_size,
                                 loaded.input_size, grid=False, batches=batches):
        rejects += [reject_row(batch.items[k].source_path, batch.shas[k], reason) for k, reason in sorted(batch.reasons.items())]
        studies: dict[str, list[int]] = {}
        for k in sorted(batch.rows):
            studies.setdefault(batch.items[k].study_id, []).append(k)
        if not studies:
            continue
        packed = pack_views([[batch.rows[k] for k in keys] for keys in studies.values()], batch.encoded.pooled, None, MAX_VIEWS)
        hits = index.search(bundle.image_embeddings(packed["pooled"], packed["view_mask"]), "report", top_k)
        queries = [";".join(batch.items[k].source_path for k in keys) for keys in studies.values()]
        frames.append(result_rows(queries, hits, name, list(studies)))
    results = pd.concat(frames, ignore_index=True) if frames else SEARCH_RESULTS.empty()
    return results, rejects


@uncached
def write_results(results: pd.DataFrame, rejects: list[dict] | None, out: Path) -> dict:
    from data_contracts import CAPTION_REJECTS, SEARCH_RESULTS
    from radcap.io import atomic_path, write_table

    write_table(results, out / "results.parquet", SEARCH_RESULTS)
    with atomic_path(out / "results.csv") as tmp:
        results.to_csv(tmp, index=False)
    if rejects is not None:
        frame = pd.DataFrame(rejects, columns=CAPTION_REJECTS.column_names) if rejects else CAPTION_REJECTS.empty()
        write_table(frame, out / "rejects.parquet", CAPTION_REJECTS)
    return {"results": str(out / "results.parquet"), "rows": len(results), "rejected": len(rejects or [])}
