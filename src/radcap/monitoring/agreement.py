"""How much of each draft survived into the report the radiologist signed, per study and per (model version, week).

Per study (a draft in the captions table and a final report of the same study):
- CIDEr-D of the draft against the final report, with document frequencies from all final reports scored in the
  same run (so the weeks and versions of one run are on one scale);
- clinical agreement: the 14 CheXpert observations of both texts (radcap.text.labeler), as true-positive,
  false-positive and false-negative counts; a group's clinical F1 is the micro F1 of its summed counts (undefined,
  NaN, when neither text of any study names a finding);
- words kept: the share of the draft's words that the final report kept, in order (the longest matching blocks
  of difflib over the tokens): 1.0 when the radiologist signed the draft as it was, 0.0 when nothing of it is left.

Intervals: studies are resampled with replacement (draft and final together, and the same resample for every
metric), `samples` times; the interval is the percentile interval of the resampled statistic.
"""

from __future__ import annotations

from difflib import SequenceMatcher

import numpy as np
import pandas as pd

from radcap.metrics.scores import CiderD, clinical_counts
from radcap.text.vocab import tokenize

METRICS = ("CIDEr", "clinical_F1", "words_kept")


def words_kept(draft: str | list[str], final: str | list[str]) -> float:
    """Share of the draft's tokens found, in order, in the final report (1.0: signed as drafted); texts or their
    tokens."""
    draft_tokens = tokenize(draft) if isinstance(draft, str) else draft
    final_tokens = tokenize(final) if isinstance(final, str) else final
    if not draft_tokens:
        return 0.0
    matcher = SequenceMatcher(None, draft_tokens, final_tokens, autojunk=False)
    return sum(block.size for block in matcher.get_matching_blocks()) / len(draft_tokens)


def score_studies(pairs: pd.DataFrame) -> pd.DataFrame:
    """`pairs` (study_id, draft, final, ...) with per-study columns cider, tp, fp, fn, words_kept added."""
    out = pairs.copy()
    if out.empty:
        for column in ("cider", "words_kept"):
            out[column] = pd.Series(dtype="float64")
        for column in ("tp", "fp", "fn"):
            out[column] = pd.Series(dtype="int64")
        return out
    # each distinct text tokenized once: drafts of one model and short normal reports repeat a lot
    tokens = {text: tokenize(text) for text in {*out["draft"], *out["final"]}}
    finals = [tokens[t] for t in out["final"]]
    cider = CiderD(finals)
    out["cider"] = [cider.score(tokens[d], f) for d, f in zip(out["draft"], finals)]
    counts = clinical_counts(list(out["final"]), list(out["draft"])).sum(axis=2)  # (N, 3): tp, fp, fn
    out["tp"], out["fp"], out["fn"] = counts[:, 0], counts[:, 1], counts[:, 2]
    out["words_kept"] = [words_kept(tokens[d], f) for d, f in zip(out["draft"], finals)]
    return out


def _f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    denominator = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), np.nan)


def statistics(scored: pd.DataFrame, index: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Each metric over the studies at `index` ((B, n) resamples, or all studies when None)."""
    if index is None:
        index = np.arange(len(scored))[None, :]
    cider, kept = scored["cider"].to_numpy(float), scored["words_kept"].to_numpy(float)
    tp, fp, fn = (scored[c].to_numpy(float) for c in ("tp", "fp", "fn"))
    return {
        "CIDEr": cider[index].mean(axis=1),
        "clinical_F1": _f1(tp[index].sum(axis=1), fp[index].sum(axis=1), fn[index].sum(axis=1)),
        "words_kept": kept[index].mean(axis=1),
    }


def with_intervals(scored: pd.DataFrame, samples: int, confidence: float, seed: int = 0) -> dict[str, float]:
    """Each metric and its bootstrap interval: {'CIDEr': .., 'CIDEr_low': .., 'CIDEr_high': .., ...}."""
    if scored.empty:
        return {f"{m}{s}": float("nan") for m in METRICS for s in ("", "_low", "_high")}
    rng = np.random.default_rng(seed)
    point = statistics(scored)
    resampled = statistics(scored, rng.integers(0, len(scored), (samples, len(scored))))
    alpha = (1 - confidence) / 2
    out: dict[str, float] = {}
    for metric in METRICS:
        values = resampled[metric][~np.isnan(resampled[metric])]
        out[metric] = float(point[metric][0])
        out[f"{metric}_low"] = float(np.quantile(values, alpha)) if len(values) else float("nan")
        out[f"{metric}_high"] = float(np.quantile(values, 1 - alpha)) if len(values) else float("nan")
    return out


def week_of(times: pd.Series) -> pd.Series:
    """The Monday (UTC) of each time's ISO week, as a date string."""
    stamps = pd.to_datetime(times, utc=True)
    return (stamps - pd.to_timedelta(stamps.dt.weekday, unit="D")).dt.strftime("%Y-%m-%d")


def weekly_table(drafts: pd.DataFrame, scored: pd.DataFrame, samples: int, confidence: float) -> pd.DataFrame:
    """One row per (model version, week of the draft): studies drafted, studies with a signed report, the
    out-of-domain rate of the drafted studies, and each agreement metric with its interval."""
    drafts = drafts.assign(week=week_of(drafts["captioned_at"]))
    scored = scored.assign(week=week_of(scored["captioned_at"])) if not scored.empty else scored.assign(week=[])
    rows = []
    for (version, week), group in drafts.groupby(["model_version", "week"], sort=True):
        signed = scored[(scored["model_version"] == version) & (scored["week"] == week)]
        flagged = group["in_domain"].eq(False)
        rows.append(
            {
                "model_version": str(version),
                "week": str(week),
                "drafted": len(group),
                "signed": len(signed),
                "ood_rate": float(flagged.mean()),
                **with_intervals(signed, samples, confidence),
            }
        )
    return pd.DataFrame(rows)
