"""Evaluation of a captioner on a split: its reports and the baselines' for the same studies, scored with
the one scoring function (`radcap.metrics.scores.score_reports`), and the report people read.

Systems, each identified by a key (what metrics are logged under) and a label (what tables show):
the model; the most frequent training caption; a random training caption; the report of the nearest training
image by pooled cosine; and, when a retriever is given, the contrastive retriever's top-1 training report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from radcap.captioning.data import CaptionSet, mean_view
from radcap.core.catalog import RunFolder
from radcap.core.io import atomic_path, write_json
from radcap.core.reporting import markdown_table, metrics_figure, write_text
from radcap.domain.guard import set_layers, set_statistics, study_scores, study_signal_scores
from radcap.imaging.statistics import STATISTICS
from radcap.metrics.scores import CAPTION_METRICS, ReportScores, paired_bootstrap, score_reports
from radcap.registry import tracking

TABLE_COLUMNS = [*CAPTION_METRICS, "clinical_micro_f1", "clinical_macro_f1", "repetition_rate", "stutter_rate"]
HEADLINE_METRICS = ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "clinical_micro_f1")
BOOTSTRAP_SAMPLES = 1000


@dataclass
class System:
    key: str  # model, most_frequent, random, nearest, retrieval
    label: str
    captions: list[str]


def caption_with_baselines(
    bundle, architecture: str, evaluated: CaptionSet, train: CaptionSet, seed: int = 0
) -> list[System]:
    """The model's reports (decoded as tuned) and three baselines', all for the same studies."""
    most_frequent = pd.Series(train.texts).value_counts().index[0]
    rng = np.random.default_rng(seed)
    similarity = mean_view(evaluated.pooled, evaluated.view_mask) @ mean_view(train.pooled, train.view_mask).T
    return [
        System("model", f"model ({architecture})", bundle.report(evaluated.features(slice(None)))),
        System("most_frequent", "baseline: most frequent train caption", [most_frequent] * len(evaluated)),
        System(
            "random",
            "baseline: random train caption",
            [train.texts[i] for i in rng.integers(0, len(train), len(evaluated))],
        ),
        System(
            "nearest",
            "baseline: nearest train image (pooled cosine)",
            [train.texts[i] for i in similarity.argmax(axis=1)],
        ),
    ]


def retrieval_system(captions: list[str]) -> System:
    return System("retrieval", "retrieval: contrastive top-1 report", captions)


def score_systems(evaluated: CaptionSet, systems: list[System], meteor: bool = True) -> dict[str, ReportScores]:
    references = dict(zip(evaluated.report_ids, evaluated.texts))
    return {
        s.key: score_reports(references, dict(zip(evaluated.report_ids, s.captions)), meteor=meteor) for s in systems
    }


@dataclass
class Evaluation:
    evaluated: CaptionSet
    systems: list[System]
    scores: dict[str, ReportScores]
    meta: dict = field(default_factory=dict)  # model, data_dir, split, architecture, encoder_version
    guard: dict | None = None  # guard_quality(), when the model has a domain guard

    def summaries(self) -> dict[str, dict]:
        return {s.key: self.scores[s.key].summary() for s in self.systems}

    def table(self) -> pd.DataFrame:
        summaries = self.summaries()
        return pd.DataFrame(
            [{"system": s.label, **{c: summaries[s.key][c] for c in TABLE_COLUMNS}} for s in self.systems]
        )

    @cached_property
    def against_best_baseline(self) -> list[dict]:
        """Per headline metric: the model against the baseline that scores best on it, with the paired
        bootstrap interval of the difference (`radcap.metrics.scores.paired_bootstrap`, as the promotion gate uses)."""
        if "model" not in self.scores:
            return []
        model, labels, rows = self.scores["model"], {s.key: s.label for s in self.systems}, []
        for metric in HEADLINE_METRICS:
            values = {
                k: v for k, scores in self.scores.items() if k != "model" and (v := scores.metric(metric)) is not None
            }
            if not values or model.metric(metric) is None:
                continue
            best = max(values, key=lambda k: values[k])
            gain = paired_bootstrap(model, self.scores[best], metric, BOOTSTRAP_SAMPLES)
            rows.append(
                {
                    "metric": metric,
                    "model": model.metric(metric),
                    "best_baseline": labels[best],
                    "baseline": values[best],
                    "ratio": model.value(metric) / values[best] if values[best] else None,
                    "difference": gain["delta"],
                    "low": gain["low"],
                    "high": gain["high"],
                    "p_not_better": gain["p_not_better"],
                }
            )
        return rows

    def findings(self) -> pd.DataFrame:
        summaries = self.summaries()
        first = summaries[self.systems[0].key]["per_finding"]
        columns = {"support": {o: v["support"] for o, v in first.items()}}
        columns.update(
            {s.label: {o: v["f1"] for o, v in summaries[s.key]["per_finding"].items()} for s in self.systems}
        )
        return pd.DataFrame(columns).reset_index(names="finding")

    def selection_note(self) -> str:
        where, split = self.meta.get("select_on"), self.meta["split"]
        promotion = " Promotion (`radcap promote`, the nightly gate) decides on `val`, never on `test`: " + (
            "this split decided which model is champion." if split == "val" else "no decision read this split."
        )
        if where == "carve":
            return (
                f"Selection (early stopping, length penalty, guard threshold) happened on a carve of the train split: "
                f"split `{split}` was never read in training." + promotion
            )
        if where == "val" and split == "val":
            return (
                "**Warning: this model was selected on the val split it is scored on here; these numbers "
                "overstate what unseen reports get.**" + promotion
            )
        return f"Selection happened on: {where or 'not recorded (a model saved before radcap 0.2)'}." + promotion

    def comparison_markdown(self) -> str:
        if not self.against_best_baseline:
            return ""
        table = pd.DataFrame(
            [
                {
                    "metric": r["metric"],
                    "model": r["model"],
                    "best baseline": r["best_baseline"],
                    "baseline": r["baseline"],
                    "ratio": r["ratio"],
                    "difference": r["difference"],
                    "95% interval": f"{r['low']:+.4f} .. {r['high']:+.4f}",
                    "resamples not better": r["p_not_better"],
                }
                for r in self.against_best_baseline
            ]
        )
        return (
            f"## Against the best baseline (paired bootstrap, {BOOTSTRAP_SAMPLES:,} resamples of these reports)\n\n"
            f"For each metric the baseline that scores best on it; a difference whose interval excludes 0 is "
            f"larger than what resampling these reports moves.\n\n{markdown_table(table)}\n"
        )

    def markdown(self) -> str:
        return (
            f"# radcap evaluation\n\n{self.meta['model']} on `{self.meta['data_dir']}` split `{self.meta['split']}` "
            f"({len(self.evaluated)} reports). {self.selection_note()}\n\nTokenization and metric definitions: "
            "`radcap.metrics.scores`; repetition_rate: share of reports repeating a 3-gram; "
            "stutter_rate: share immediately repeating a phrase of 1-3 tokens.\n\n"
            f"## Caption and clinical metrics\n\n{markdown_table(self.table())}\n{self.comparison_markdown()}"
            f"## Clinical F1 per finding (rule-based labeler, uncertain counted positive)\n\n"
            f"{markdown_table(self.findings(), 3)}" + (f"\n{guard_markdown(self.guard)}" if self.guard else "")
        )

    def model_summary(self) -> dict:
        scores = self.summaries()["model"]
        summary = {
            "reports": len(self.evaluated),
            **{k: round(v, 4) for k, v in scores.items() if isinstance(v, float)},
        }
        for row in self.against_best_baseline:
            if row["metric"] == "CIDEr":
                summary.update(
                    {
                        "CIDEr_best_baseline": round(row["baseline"], 4),
                        "CIDEr_gain_low": round(row["low"], 4),
                        "CIDEr_gain_high": round(row["high"], 4),
                    }
                )
        if self.guard:
            summary["ood_flagged_held_out"] = round(self.guard["held_out"]["flagged_by_score"], 4)
            summary.update(
                {
                    f"ood_caught_{name}": round(q["flagged_by_score"], 4)
                    for name, q in self.guard["out_of_domain"].items()
                }
            )
        return summary


def save_evaluation(evaluation: Evaluation, out: Path) -> Path:
    """metrics.json, report.md and captions.csv in `out` (each written atomically); returns report.md."""
    folder = RunFolder(out)
    summaries = evaluation.summaries()
    write_json(
        {
            **evaluation.meta,
            "reports": len(evaluation.evaluated),
            "domain_guard": evaluation.guard,
            "systems": {s.label: summaries[s.key] for s in evaluation.systems},
            "against_best_baseline": evaluation.against_best_baseline,
        },
        folder.metrics,
    )
    write_text(evaluation.markdown(), folder.report)
    captions = pd.DataFrame(
        {
            "report_id": evaluation.evaluated.report_ids,
            "reference": evaluation.evaluated.texts,
            **{s.label: s.captions for s in evaluation.systems},
        }
    )
    with atomic_path(folder.captions_csv) as tmp:
        captions.to_csv(tmp, index=False)
    return folder.report


def log_evaluation(evaluation: Evaluation) -> None:
    """Each system's metrics under its key, the report and a bar chart, to the active MLflow run."""
    for system in evaluation.systems:
        tracking.log_metrics(evaluation.summaries()[system.key], prefix=f"{system.key}_")
    tracking.log_text(evaluation.markdown(), "report.md")
    tracking.log_figure(
        metrics_figure(evaluation.table(), TABLE_COLUMNS, f"{evaluation.meta['split']} split: model vs baselines"),
        "metrics.png",
    )


def study_modalities(data: CaptionSet, images: pd.DataFrame) -> list[str | None]:
    """Each study's modality from the images table (the first image's that is known)."""
    modality = dict(zip(images["image_id"], images["modality"]))
    return [next((modality.get(i) for i in ids if isinstance(modality.get(i), str)), None) for ids in data.image_ids]


@dataclass
class GuardedSet:
    """Studies the guard is measured on: their features, pixel statistics (S,V,K), early-layer statistics
    (S,V,E), modalities and colour."""

    data: CaptionSet
    statistics: np.ndarray
    modalities: list[str | None]
    chroma: list[float]
    layers: np.ndarray | None = None


def guarded_set(data: CaptionSet, images, store=None, encoder_version: str | None = None) -> GuardedSet:
    """A caption set with what the guard reads beyond its features: pixel statistics (from the image files),
    early-layer statistics (from the feature store `store`, rows of `encoder_version`), modalities and each
    study's most colourful image."""
    statistics = set_statistics(data.image_ids, data.view_mask, images)
    colour = np.nan_to_num(statistics[..., STATISTICS.index("chroma")], nan=0.0).max(axis=1)
    layers = (
        None
        if store is None or encoder_version is None
        else set_layers(data.image_ids, data.view_mask, images, store, encoder_version)
    )
    return GuardedSet(data, statistics, study_modalities(data, images), colour.tolist(), layers)


def guard_quality(guard, evaluated: GuardedSet, out_of_domain: dict[str, GuardedSet]) -> dict:
    """The share of held-out in-domain studies the guard flags (about 100 - percentile %; two-view studies
    apart), and of each out-of-domain set's studies it catches: by the combined score, by each signal alone (at
    its own out-of-fold threshold), and with the modality and colour rules, as `radcap caption` judges."""

    def shares(guarded: GuardedSet) -> dict:
        data = guarded.data
        scores = study_scores(guard, data.pooled, data.view_mask, guarded.statistics, guarded.layers)
        alone = study_signal_scores(guard, data.pooled, data.view_mask, guarded.statistics, guarded.layers)
        judged = [not guard.judge(float(s), m, c)[0] for s, m, c in zip(scores, guarded.modalities, guarded.chroma)]
        two_views = data.view_mask.sum(axis=1) > 1
        return {
            "studies": len(data),
            "flagged_by_score": float(np.mean(scores > guard.threshold)),
            **{f"flagged_by_{name}_alone": float(np.mean(s > 1.0)) for name, s in alone.items()},
            "flagged_with_modality_rule": float(np.mean(judged)),
            "multi_view_studies": int(two_views.sum()),
            "multi_view_flagged_by_score": float(np.mean(scores[two_views] > guard.threshold))
            if two_views.any()
            else None,
            "median_score": float(np.median(scores)),
        }

    return {
        "threshold": guard.threshold,
        "percentile": guard.percentile,
        "calibrated_per": guard.calibration.get("per", "image"),
        "signals": list(guard.densities),
        "modalities": guard.modalities,
        "calibration": guard.calibration,
        "held_out": shares(evaluated),
        "out_of_domain": {name: shares(guarded) for name, guarded in out_of_domain.items()},
    }


def guard_markdown(quality: dict) -> str:
    rows = [{"images": f"held-out in-domain ({quality['held_out']['studies']} studies)", **quality["held_out"]}]
    rows += [{"images": f"{name} ({q['studies']} studies)", **q} for name, q in quality["out_of_domain"].items()]
    signals = [f"flagged_by_{name}_alone" for name in quality.get("signals", [])]
    columns = ["images", "flagged_by_score", *signals, "flagged_with_modality_rule", "median_score"]
    table = pd.DataFrame(rows).reindex(columns=columns)
    unit = "studies" if quality.get("calibrated_per") == "study" else "images"
    held = quality["held_out"]
    multi = (
        f" Held-out studies with more than one view: {held['multi_view_studies']}, "
        f"{held['multi_view_flagged_by_score']:.1%} flagged by score."
        if held.get("multi_view_flagged_by_score") is not None
        else ""
    )
    return (
        f"## Out-of-domain guard\n\nThreshold {quality['threshold']:.3f} on the combined score of "
        f"{', '.join(quality.get('signals', ['features']))} (the {quality['percentile']:g}th percentile of the "
        f"training {unit}' scores, out of fold); training modalities "
        f"{', '.join(quality['modalities']) or 'unknown'}.{multi} Share of studies flagged (a signal alone: at "
        f"its own out-of-fold threshold; with rules: modality and colour too, as `radcap caption` judges):"
        f"\n\n{markdown_table(table, 3)}"
    )
