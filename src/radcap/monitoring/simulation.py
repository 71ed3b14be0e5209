"""Synthetic production streams, to measure the drift alarm where no hospital's history is at hand
(benchmarks/drift_alarm.py; tests).

A stream is `days` of drafting, `per_day` studies a day. Each study's signed report is a real report text drawn
from `pool`; its draft is that report (a model that got the study right, with each word dropped with probability
`edit`) with probability `right`, else another report of the pool (a model that got it wrong). A study is flagged
out of domain with probability `ood`. From `shift_day` on, `right` and `ood` take their shifted values: a model
that degraded, or a stream of studies unlike its training images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Regime:
    right: float = 0.5
    ood: float = 0.05
    edit: float = 0.1


def stream(
    pool: list[str],
    days: int,
    per_day: int,
    seed: int,
    before: Regime = Regime(),
    after: Regime | None = None,
    shift_day: int | None = None,
    start: str = "2026-01-05",
) -> pd.DataFrame:
    """study_id, draft, final, model, model_version, captioned_at, in_domain: one row per drafted study."""
    rng = np.random.default_rng(seed)
    rows = []
    origin = pd.Timestamp(start, tz="UTC")
    for day in range(days):
        regime = after if after is not None and shift_day is not None and day >= shift_day else before
        for k in range(per_day):
            final = pool[rng.integers(len(pool))]
            if rng.random() < regime.right:
                words = final.split()
                kept = [w for w in words if rng.random() >= regime.edit] or words[:1]
                draft = " ".join(kept)
            else:
                draft = pool[rng.integers(len(pool))]
            rows.append(
                {
                    "study_id": f"{seed}.{day}.{k}",
                    "draft": draft,
                    "final": final,
                    "model": "simulated",
                    "model_version": "1",
                    "captioned_at": origin + pd.Timedelta(days=day, seconds=int(rng.integers(0, 86_000))),
                    "in_domain": bool(rng.random() >= regime.ood),
                }
            )
    return pd.DataFrame(rows)
