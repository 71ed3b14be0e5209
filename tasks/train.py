"""Decoder training tasks: examples, vocabulary, training, decoding choice, registration."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from prefect.logging import get_run_logger

from radcap.captioning.data import CaptionSet, training_sets
from radcap.captioning.training import (
    CaptionTraining,
    choose_length_penalty,
    self_critical,
    train_captioner,
    training_key,
)
from radcap.core.catalog import DataCatalog, RunFolder
from radcap.core.io import read_table, write_rejects
from radcap.core.reporting import attention_figure, curves_figure, markdown_table
from radcap.core.settings import DecoderSettings, DomainSettings, SplitRules
from radcap.core.training import EpochRecord
from radcap.data_contracts import IMAGES
from radcap.data_contracts.features import GRID_SIDE
from radcap.domain.guard import fit_guard_for, guard_summary
from radcap.imaging.decode import prepare
from radcap.imaging.features import FeatureStore
from radcap.registry import store as registry
from radcap.registry import tracking
from radcap.tasks import registry_task, uncached
from radcap.text.vocab import Vocabulary


@uncached
def training_inputs(data_dir: Path, encoder_version: str | None, cfg, rules: SplitRules) -> dict:
    """What the model is trained on: the encoder version (asked for, else the last extracted), the spec that
    reloads exactly it, the data version, where selection happens, and the training key all those and the
    settings make."""
    catalog = DataCatalog(data_dir)
    version, data_version = catalog.encoder_version(encoder_version), catalog.data_version()
    settings = {
        "model": cfg.model_dump(),
        "selection": rules.model_dump(include={"select_on", "select_fraction", "select_salt"}),
    }
    return {
        "encoder_version": version,
        "encoder_spec": FeatureStore(catalog.features).encoder_spec(version),
        "data_version": data_version,
        "select_on": rules.select_on,
        "training_key": training_key(data_version, version, settings),
    }


@registry_task
def find_trained(name: str, key: str) -> dict | None:
    """The registered version trained on the same inputs (training key), if any: the nightly run's cache.
    (Prefect's task cache cannot say this: the cache is the registry, which outlives Prefect's storage.)"""
    version = registry.newest_version_tagged(name, "training_key", key)
    if version is None:
        return None
    get_run_logger().info("inputs unchanged since %s version %s (training key %s): not retrained", name, version, key)
    return {"registered": f"models:/{name}/{version}", "reused": True, "rejected": 0, "training_key": key}


@uncached
def caption_sets(
    data_dir: Path, encoder_version: str, cfg: DecoderSettings, rules: SplitRules
) -> dict[str, CaptionSet]:
    """The fitting set and the selection set (`radcap.captioning.data.training_sets`)."""
    sets = training_sets(data_dir, encoder_version, rules, cfg.max_views, grid=cfg.architecture == "show-attend-tell")
    get_run_logger().info(
        "examples: %s; without features: %s",
        {s: len(d) for s, d in sets.items()},
        {s: len(d.rejects) for s, d in sets.items()},
    )
    return sets


@uncached
def build_vocabulary(train: CaptionSet, cfg: DecoderSettings) -> Vocabulary:
    vocab = Vocabulary.build(train.texts, cfg.min_count, cfg.max_length)
    get_run_logger().info(
        "vocabulary: %d tokens (min count %d, max length %d)", len(vocab), cfg.min_count, cfg.max_length
    )
    return vocab


@uncached
def fit_captioner(
    train: CaptionSet, val: CaptionSet, vocab: Vocabulary, cfg: DecoderSettings, inputs: dict
) -> CaptionTraining:
    extra = {k: inputs[k] for k in ("encoder_version", "encoder_spec", "data_version", "select_on")}
    log = tracking.epoch_logger(get_run_logger())
    result = train_captioner(train, val, vocab, cfg, extra, on_epoch=log)
    offset = len(result.fit.history)  # SCST epochs continue the same curves in MLflow
    result.self_critical = self_critical(
        result.bundle, train, val, cfg, on_epoch=lambda r: log(EpochRecord(offset + r.epoch, r.metrics, r.seconds))
    )
    if result.self_critical:
        sc = result.self_critical
        get_run_logger().info(
            "self-critical training %s: selection %s %.4f -> %.4f",
            "kept" if sc.kept else "not kept (cross-entropy weights stay)",
            cfg.selection_metric,
            sc.before.get(f"val_{cfg.selection_metric}", float("nan")),
            sc.fit.best.metrics.get(f"val_{cfg.selection_metric}", float("nan")),
        )
    return result


@uncached
def tune_decoding(result: CaptionTraining, val: CaptionSet, cfg: DecoderSettings) -> dict:
    """The length penalty chosen on the validation reports, saved in the bundle's config."""
    scores = choose_length_penalty(result.bundle, val, cfg)
    decoding = result.bundle.config.decoding
    if scores:
        tracking.log_dict({str(p): s for p, s in scores.items()}, "length_penalty_selection.json")
        get_run_logger().info(
            "length penalty %s chosen on val by beam-%d %s: %s",
            decoding.length_penalty,
            cfg.beam_width,
            cfg.selection_metric,
            {p: round(s, 4) for p, s in scores.items()},
        )
    tracking.log_metrics({"decoding_length_penalty": decoding.length_penalty})
    return decoding.model_dump()


def _attention_maps(result: CaptionTraining, val: CaptionSet, data_dir: Path):
    images = read_table(DataCatalog(data_dir).images, IMAGES)
    paths = dict(zip(images["image_id"], images["path"]))
    index = np.arange(min(2, len(val)))
    squares = [
        prepare(Path(paths[val.image_ids[i][0]]), 224)
        if paths.get(val.image_ids[i][0])
        else np.zeros((224, 224), np.uint8)
        for i in index
    ]
    return attention_figure(result.bundle, val.features(index), squares, GRID_SIDE)


@uncached
def fit_domain_guard(result: CaptionTraining, sets: dict[str, CaptionSet], data_dir: Path, cfg: DomainSettings) -> dict:
    """The out-of-domain guard of the trained model, fitted and calibrated (out of fold) on its training
    split's images; saved with the bundle."""
    guard = fit_guard_for([sets["train"], sets["val"]], data_dir, cfg, result.bundle.config.encoder_version)
    result.bundle.domain = guard
    summary = guard_summary(guard)
    tracking.log_metrics({k: v for k, v in summary.items() if not isinstance(v, str)})
    get_run_logger().info("out-of-domain guard: %s", summary)
    return summary


@registry_task
def log_and_register(
    result: CaptionTraining, sets: dict[str, CaptionSet], data_dir: Path, out: Path, cfg: DecoderSettings, tags: dict
) -> dict:
    """Bundle to `out/`, curves, samples and attention maps to MLflow, and a new registered version."""
    run, bundle, fit = RunFolder(out), result.bundle, result.fit
    bundle.save(run.captioner)
    rejects = [r for s in sets.values() for r in s.rejects]
    write_rejects(rejects, run.rejects)
    metrics = ("CIDEr", "BLEU-4", "ROUGE-L")
    tracking.log_figure(
        curves_figure(
            fit,
            {"train_loss": "train", "val_loss": "val"},
            {f"val_{m}": m for m in metrics},
            "masked cross-entropy",
            f"validation (selection: {cfg.selection_metric})",
        ),
        "loss_curve.png",
    )
    sc = result.self_critical
    if sc:
        tracking.log_figure(
            curves_figure(
                sc.fit,
                {"scst_loss": "policy-gradient loss"},
                {
                    "val_CIDEr": "val CIDEr (greedy)",
                    "train_sample_reward": "sampled reward",
                    "train_baseline_reward": f"baseline reward ({cfg.scst_baseline})",
                },
                "self-critical training",
                "reward and validation",
            ),
            "scst_curve.png",
        )
    val = sets["val"]
    samples = bundle.caption(val.features(slice(0, 8)))
    tracking.log_text(
        markdown_table(
            pd.DataFrame({"report_id": val.report_ids[:8], "reference": val.texts[:8], "generated": samples})
        ),
        "samples.md",
    )
    if bundle.model.attention:
        tracking.log_figure(_attention_maps(result, val, data_dir), "attention_maps.png")
    tracking.log_dict(bundle.vocab.to_json(), "vocab.json")
    kept = sc.fit.best if sc and sc.kept else fit.best
    best = {k: v for k, v in kept.metrics.items() if k.startswith("val_")}
    version = registry.register_captioner(
        run.captioner,
        cfg.registered_name,
        {**tags, "best_epoch": fit.best_epoch, **{k: f"{v:.4f}" for k, v in best.items()}},
    )
    return {
        "registered": f"models:/{cfg.registered_name}/{version}",
        "run_id": tracking.active_run_id(),
        "architecture": cfg.architecture,
        "epochs_run": len(fit.history),
        "best_epoch": fit.best_epoch,
        **(
            {
                "scst_epochs_run": len(sc.fit.history),
                "scst_kept": sc.kept,
                "val_CIDEr_before_scst": round(sc.before.get("val_CIDEr", float("nan")), 4),
            }
            if sc
            else {}
        ),
        "vocabulary": len(bundle.vocab),
        **{k: round(v, 4) for k, v in best.items()},
        "train_examples": len(sets["train"]),
        "val_examples": len(val),
        "rejected": len(rejects),
    }
