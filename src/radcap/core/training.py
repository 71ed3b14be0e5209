"""The one training skeleton: epochs, early stopping on a monitored value, the best weights kept.

The encoder, the captioner and the retriever each keep their own train step on one screen (in
`radcap.models`) and their own epoch (batches, then validation); this loop is what they share (as in
nanoGPT: a plain loop, no framework). Each epoch's metrics go to `on_epoch` (MLflow and the log, in the
tasks that train), so every trainer logs the same way.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal


@dataclass
class EpochRecord:
    epoch: int
    metrics: dict[str, float]  # train_loss, val_..., whatever the epoch measured
    seconds: float

    def __getitem__(self, key: str) -> float:
        return self.metrics[key]


@dataclass
class FitResult:
    history: list[EpochRecord] = field(default_factory=list)
    best_epoch: int = 0
    stopped_early: bool = False

    @property
    def best(self) -> EpochRecord:
        return next(e for e in self.history if e.epoch == self.best_epoch)

    def series(self, key: str) -> list[float | None]:
        return [e.metrics.get(key) for e in self.history]


@dataclass(frozen=True)
class EarlyStopping:
    monitor: str  # a key of the epoch's metrics
    mode: Literal["min", "max"] = "min"
    patience: int = 5  # epochs without improvement before stopping
    min_epochs: int = 1  # never stop before this
    min_delta: float = 0.0  # an improvement must be larger than this

    def improved(self, value: float, best: float | None) -> bool:
        if best is None:
            return True
        return value < best - self.min_delta if self.mode == "min" else value > best + self.min_delta


def fit(
    model,
    epochs: int,
    run_epoch: Callable[[int], dict[str, float]],
    stopping: EarlyStopping,
    on_epoch: Callable[[EpochRecord], None] = lambda record: None,
) -> FitResult:
    """Run `run_epoch(epoch)` (its batches and validation, returning metrics) for up to `epochs` epochs; keep
    the weights of the best `stopping.monitor`, stop after `patience` epochs without improvement (not before
    `min_epochs`). On return `model` holds the best weights."""
    result, best, best_weights, since_best = FitResult(), None, None, 0
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        metrics = run_epoch(epoch)
        record = EpochRecord(epoch, metrics, time.perf_counter() - start)
        result.history.append(record)
        on_epoch(record)
        value = metrics[stopping.monitor]
        if stopping.improved(value, best):
            best, best_weights, since_best, result.best_epoch = value, model.get_weights(), 0, epoch
        else:
            since_best += 1
            if since_best >= stopping.patience and epoch >= stopping.min_epochs:
                result.stopped_early = True
                break
    if best_weights is not None:
        model.set_weights(best_weights)
    return result
