"""Evaluation tasks: load a registered captioner, caption a split, score it beside three baselines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from prefect.logging import get_run_logger

from data_contracts import IMAGES, REPORTS
from radcap.caption_data import CaptionSet, build_caption_set, mean_view
from radcap.captioner_bundle import CaptionerBundle, load_bundle
from radcap.catalog import DataCatalog
from radcap.errors import RadcapError
from radcap.features import FeatureStore
from radcap.io import read_table, write_json
from radcap.metrics import CAPTION_METRICS, score_reports
from tasks import uncached
from tasks.train import markdown_table


def resolve_captioner(uri: str) -> tuple[CaptionerBundle, str]:
    """A bundle from a local folder or a registry URI (models:/radcap-captioner/N, @alias); and its name."""
    local = Path(uri)
    if local.is_dir():
        return load_bundle(local), str(local)
    if not uri.startswith("models:/"):
        raise RadcapError(f"{uri}: neither a captioner folder nor a models:/ URI")
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        path = Path(mlflow.artifacts.download_artifacts(uri))
    except MlflowException as exc:
        raise RadcapError(f"{uri}: {exc.message}") from exc
    configs = sorted(path.rglob("config.json"))
    if not configs:
        raise RadcapError(f"{uri}: the model holds no radcap captioner bundle")
    return load_bundle(configs[0].parent), uri


@uncached
def load_captioner(uri: str) -> tuple[CaptionerBundle, str]:
    bundle, name = resolve_captioner(uri)
    get_run_logger().info("captioner %s: %s on encoder %s", name, bundle.config["architecture"], bundle.config["encoder_version"])
    return bundle, name


@uncached
def evaluation_sets(data_dir: Path, bundle: CaptionerBundle, split: str) -> tuple[CaptionSet, CaptionSet]:
    catalog = DataCatalog(data_dir)
    reports, images = read_table(catalog.reports, REPORTS), read_table(catalog.images, IMAGES)
    store, version, views = FeatureStore(catalog.features), bundle.config["encoder_version"], bundle.config["max_views"]
    evaluated = build_caption_set(reports, images, store, version, split, views, grid=bundle.model.attention)
    train = build_caption_set(reports, images, store, version, "train", views, grid=False)
    if not len(evaluated):
        raise RadcapError(f"{data_dir}: no '{split}' reports with features for encoder {version}")
    return evaluated, train


@uncached
def generate(bundle: CaptionerBundle, evaluated: CaptionSet, train: CaptionSet, seed: int = 0) -> dict[str, list[str]]:
    """The model's captions and the baselines', all for the same reports."""
    model = bundle.report(evaluated.features(slice(None)))
    most_frequent = pd.Series(train.texts).value_counts().index[0]
    rng = np.random.default_rng(seed)
    random_pick = [train.texts[i] for i in rng.integers(0, len(train), len(evaluated))]
    similarity = mean_view(evaluated.pooled, evaluated.view_mask) @ mean_view(train.pooled, train.view_mask).T
    nearest = [train.texts[i] for i in similarity.argmax(axis=1)]
    return {
        f"model ({bundle.config['architecture']})": model,
        "baseline: most frequent train caption": [most_frequent] * len(evaluated),
        "baseline: random train caption": random_pick,
        "baseline: nearest train image (pooled cosine)": nearest,
    }


@uncached
def retrieval_system(uri: str, data_dir: Path, evaluated: CaptionSet, split: str) -> dict[str, list[str]]:
    """The contrastive retriever's top-1 known report for each evaluated study, as one more system."""
    from tasks.retrieval import resolve_retriever, retrieved_captions

    bundle, index, name = resolve_retriever(uri)
    catalog = DataCatalog(data_dir)
    reports, images = read_table(catalog.reports, REPORTS), read_table(catalog.images, IMAGES)
    own = build_caption_set(reports[reports["report_id"].isin(evaluated.report_ids)], images,
                            FeatureStore(catalog.features), bundle.config["encoder_version"], split, 2)
    found = dict(zip(own.report_ids, retrieved_captions(bundle, index, own)))
    missing = [r for r in evaluated.report_ids if r not in found]
    if missing:
        raise RadcapError(f"{uri}: {len(missing)} evaluated reports have no features for the retriever's encoder "
                          f"{bundle.config['encoder_version']} (run `radcap features` with it)")
    return {"retrieval: contrastive top-1 report": [found[r] for r in evaluated.report_ids]}


@uncached
def score(evaluated: CaptionSet, systems: dict[str, list[str]], meteor: bool = True) -> dict:
    references = dict(zip(evaluated.report_ids, evaluated.texts))
    out = {}
    for name, captions in systems.items():
        out[name] = score_reports(references, dict(zip(evaluated.report_ids, captions)), meteor=meteor).summary()
        get_run_logger().info("%s: %s", name, {k: round(v, 4) for k, v in out[name].items() if isinstance(v, float)})
    return out


@uncached
def write_report(scores: dict, evaluated: CaptionSet, systems: dict[str, list[str]], out: Path, meta: dict) -> dict:
    """metrics.json, report.md and captions.csv in `out`; metrics, table and plot to the active MLflow run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow

    columns = [*CAPTION_METRICS, "clinical_micro_f1", "clinical_macro_f1"]
    table = pd.DataFrame([{"system": name, **{c: s.get(c) if s.get(c) is not None else float("nan") for c in columns}}
                          for name, s in scores.items()])
    findings = pd.DataFrame({name: {o: v["f1"] for o, v in s["per_finding"].items()} for name, s in scores.items()})
    support = pd.Series({o: v["support"] for o, v in next(iter(scores.values()))["per_finding"].items()}, name="support")
    findings = pd.concat([support, findings], axis=1).reset_index(names="finding")
    report = (
        f"# radcap evaluation\n\n{meta['model']} on `{meta['data_dir']}` split `{meta['split']}` "
        f"({len(evaluated)} reports).\n\nTokenization and metric definitions: `radcap/metrics.py`.\n\n"
        f"## Caption and clinical metrics\n\n{markdown_table(table)}\n"
        f"## Clinical F1 per finding (rule-based labeler, uncertain counted positive)\n\n{markdown_table(findings, 3)}"
    )
    out.mkdir(parents=True, exist_ok=True)
    write_json({**meta, "reports": len(evaluated), "systems": scores}, out / "metrics.json")
    (out / "report.md").write_text(report, encoding="utf-8")
    captions = pd.DataFrame({"report_id": evaluated.report_ids, "reference": evaluated.texts,
                             **{name: caps for name, caps in systems.items()}})
    captions.to_csv(out / "captions.csv", index=False)
    for name, values in scores.items():
        prefix = "model" if name.startswith("model") else (
            "retrieval" if name.startswith("retrieval") else name.split(": ", 1)[1].split(" ")[0].replace("-", "_"))
        mlflow.log_metrics({f"{prefix}_{k.replace('-', '_')}": v for k, v in values.items() if isinstance(v, float)})
    mlflow.log_text(report, "report.md")
    fig, ax = plt.subplots(figsize=(10, 4))
    table.set_index("system")[columns].T.plot.bar(ax=ax)
    ax.set_title(f"{meta['split']} split: model vs baselines")
    ax.legend(fontsize=7)
    fig.tight_layout()
    mlflow.log_figure(fig, "metrics.png")
    plt.close(fig)
    model_scores = next(v for k, v in scores.items() if k.startswith("model"))
    return {"reports": len(evaluated), **{k: round(v, 4) for k, v in model_scores.items() if isinstance(v, float)},
            "report": str(out / "report.md")}
