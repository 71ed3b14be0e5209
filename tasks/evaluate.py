"""Evaluation tasks: load a captioner, caption a split beside the baselines, score, report."""

from __future__ import annotations

from pathlib import Path

from prefect.logging import get_run_logger

from radcap.captioning import bundle as captioners
from radcap.captioning.bundle import CaptionerBundle
from radcap.captioning.data import CaptionSet, load_caption_sets
from radcap.core.catalog import DataCatalog
from radcap.core.errors import RadcapError
from radcap.core.io import read_table
from radcap.data_contracts import IMAGES, REPORTS
from radcap.evaluation.captioner import (
    Evaluation,
    GuardedSet,
    System,
    caption_with_baselines,
    guard_quality,
    guarded_set,
    log_evaluation,
    retrieval_system,
    save_evaluation,
    score_systems,
)
from radcap.imaging.features import FeatureStore
from radcap.registry.store import LoadedModel
from radcap.retrieval import retriever as retrievers
from radcap.retrieval.retriever import retrieved_captions
from radcap.tasks import registry_task, uncached


@registry_task
def load_captioner(uri: str) -> LoadedModel[CaptionerBundle]:
    loaded = captioners.load_captioner(uri)
    config = loaded.bundle.config
    get_run_logger().info("captioner %s: %s on encoder %s", loaded.uri, config.architecture, config.encoder_version)
    return loaded


@uncached
def evaluation_sets(data_dir: Path, loaded: LoadedModel[CaptionerBundle], split: str) -> tuple[CaptionSet, CaptionSet]:
    config = loaded.bundle.config
    evaluated = load_caption_sets(
        data_dir, config.encoder_version, (split,), config.max_views, grid=loaded.bundle.model.attention
    )[split]
    train = load_caption_sets(data_dir, config.encoder_version, ("train",), config.max_views)["train"]
    return evaluated, train


@uncached
def caption_systems(loaded: LoadedModel[CaptionerBundle], evaluated: CaptionSet, train: CaptionSet) -> list[System]:
    """The model's reports and the baselines' for the evaluated studies."""
    return caption_with_baselines(loaded.bundle, loaded.bundle.config.architecture, evaluated, train)


@registry_task
def retrieval_captions(uri: str, data_dir: Path, evaluated: CaptionSet, split: str) -> System:
    """The contrastive retriever's top-1 known report for each evaluated study, as one more system."""
    retriever = retrievers.load_retriever(uri)
    config = retriever.bundle.config
    own = load_caption_sets(data_dir, config.encoder_version, (split,), config.max_views)[split]
    found = dict(zip(own.report_ids, retrieved_captions(retriever.bundle, retriever.index, own)))
    missing = [r for r in evaluated.report_ids if r not in found]
    if missing:
        raise RadcapError(
            f"{uri}: {len(missing)} evaluated reports have no features for the retriever's encoder "
            f"{config.encoder_version} (run `radcap features` with it)"
        )
    return retrieval_system([found[r] for r in evaluated.report_ids])


@uncached
def check_guard(
    loaded: LoadedModel[CaptionerBundle], data_dir: Path, evaluated: CaptionSet, ood_data: list[Path]
) -> dict | None:
    """How the model's domain guard does on the evaluated (held-out, in-domain) studies and on each
    out-of-domain data directory (features for the model's encoder needed there too)."""
    guard, config = loaded.bundle.domain, loaded.bundle.config
    if guard is None:
        return None
    sets: dict[str, GuardedSet] = {}
    for folder in ood_data:
        catalog = DataCatalog(folder)
        images = read_table(catalog.images, IMAGES)
        splits = tuple(sorted(set(read_table(catalog.reports, REPORTS)["split"])))
        found = load_caption_sets(folder, config.encoder_version, splits, config.max_views, min_size=0)
        data = CaptionSet.concat(list(found.values()))
        if not len(data):
            raise RadcapError(
                f"{folder}: no studies with features for encoder {config.encoder_version} (run `radcap "
                f"features --data {folder} --encoder {config.encoder_spec or config.encoder_version}`)"
            )
        sets[folder.name] = guarded_set(data, images, FeatureStore(catalog.features), config.encoder_version)
    catalog = DataCatalog(data_dir)
    own = guarded_set(
        evaluated, read_table(catalog.images, IMAGES), FeatureStore(catalog.features), config.encoder_version
    )
    quality = guard_quality(guard, own, sets)
    get_run_logger().info("out-of-domain guard: %s", quality)
    return quality


@uncached
def score(
    evaluated: CaptionSet, systems: list[System], meteor: bool, meta: dict, guard: dict | None = None
) -> Evaluation:
    evaluation = Evaluation(evaluated, systems, score_systems(evaluated, systems, meteor), meta, guard)
    for key, summary in evaluation.summaries().items():
        get_run_logger().info("%s: %s", key, {k: round(v, 4) for k, v in summary.items() if isinstance(v, float)})
    return evaluation


@uncached
def write_report(evaluation: Evaluation, out: Path) -> dict:
    """metrics.json, report.md and captions.csv in `out`; metrics, report and plot to the active MLflow run."""
    report = save_evaluation(evaluation, out)
    log_evaluation(evaluation)
    return {**evaluation.model_summary(), "report": str(report)}
