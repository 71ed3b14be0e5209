"""The promotion gate's decision: does a candidate captioner replace the champion?

Both are scored on the same held-out reports (`radcap.metrics.scores.ReportScores`). The candidate is promoted
only when
1. its primary-metric gain over the champion is positive with the configured confidence: in a paired
   bootstrap over the reports, the share of resamples in which it is not better is at most
   `1 - confidence` (one-sided; 1,000 resamples by default), and
2. its clinical F1 (invented findings count as false positives, see `radcap.metrics.scores`) is at most
   `clinical_tolerance` below the champion's.
The first model of a name becomes champion; a version never challenges itself. The decision carries the
gain, its 95% interval and both metric sets, so the registry tags say why.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from radcap.core.settings import PromotionSettings
from radcap.metrics.scores import ReportScores, paired_bootstrap


@dataclass
class Decision:
    promote: bool
    reason: str
    gain: dict = field(default_factory=dict)  # delta, low, high, p_not_better of the primary metric


def decide(candidate: str, champion: str | None, scores: dict[str, ReportScores], cfg: PromotionSettings) -> Decision:
    primary, clinical = cfg.primary_metric, cfg.clinical_metric
    if champion is None:
        return Decision(True, "no champion yet: the first model becomes champion")
    if champion == candidate:
        return Decision(False, f"version {candidate} is already the champion")
    new, old = scores[candidate], scores[champion]
    if new.metric(primary) is None or old.metric(primary) is None:
        return Decision(False, f"{primary} could not be computed (is Java available for METEOR?)")
    gain = paired_bootstrap(new, old, primary, cfg.bootstrap_samples, 0.95)
    described = (
        f"{primary} {new.metric(primary):.4f} vs {old.metric(primary):.4f} "
        f"(gain {gain['delta']:+.4f}, 95% interval {gain['low']:+.4f}..{gain['high']:+.4f}, "
        f"not better in {gain['p_not_better']:.1%} of {cfg.bootstrap_samples} resamples of {len(new)} reports)"
    )
    if gain["p_not_better"] > 1.0 - cfg.confidence:
        return Decision(False, f"{described}: not better with {cfg.confidence:.0%} confidence", gain)
    new_clinical, old_clinical = new.value(clinical), old.value(clinical)
    if new_clinical < old_clinical - cfg.clinical_tolerance:
        return Decision(
            False,
            f"{described}, but {clinical} {new_clinical:.4f} loses more than "
            f"{cfg.clinical_tolerance} against the champion's {old_clinical:.4f}",
            gain,
        )
    return Decision(
        True, f"{described}; {clinical} {new_clinical:.4f} within {cfg.clinical_tolerance} of {old_clinical:.4f}", gain
    )
