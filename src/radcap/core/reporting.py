"""What people read: Markdown tables, loss curves, attention maps, metric bar charts (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from radcap.core.io import atomic_path
from radcap.core.training import FitResult


def markdown_table(frame: pd.DataFrame, digits: int = 4) -> str:
    def cell(value) -> str:
        if value is None or (isinstance(value, float) and np.isnan(value)):
            return "n/a"
        text = f"{value:.{digits}f}" if isinstance(value, float) else str(value)
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def curves_figure(fit: FitResult, losses: dict[str, str], scores: dict[str, str], title: str, score_title: str):
    """Loss curves (left) and validation scores (right) per epoch, the kept epoch marked."""
    plt = _pyplot()
    epochs = [e.epoch for e in fit.history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in losses.items():
        values = fit.series(key)
        if any(v is not None for v in values):
            left.plot(epochs, values, marker="o", label=label)
    left.set(xlabel="epoch", ylabel="loss", title=title)
    left.legend()
    for key, label in scores.items():
        values = fit.series(key)
        if any(v is not None for v in values):
            right.plot(epochs, values, marker="o", label=label)
    for axis in (left, right):
        axis.axvline(fit.best_epoch, color="grey", linestyle=":", label=f"kept (epoch {fit.best_epoch})")
    right.set(xlabel="epoch", title=score_title)
    right.legend(fontsize=7)
    fig.tight_layout()
    return fig


def attention_figure(bundle, features: dict, images: list[np.ndarray], grid_side: int, words: int = 6):
    """The first words of greedy captions with their attention drawn over each study's first image."""
    plt = _pyplot()
    ids, attention = bundle.decoder.greedy(bundle.model_inputs(features, slice(None)))
    rows = len(images)
    fig, axes = plt.subplots(rows, words, figsize=(2.2 * words, 2.4 * rows), squeeze=False)
    cells = grid_side * grid_side
    for r, image in enumerate(images):
        tokens = [bundle.vocab.tokens[t] for t in ids[r]]
        side = image.shape[0]
        for c in range(words):
            ax = axes[r, c]
            ax.axis("off")
            if c >= len(tokens):
                continue
            ax.imshow(image, cmap="gray")
            heat = attention[r, c, :cells].reshape(grid_side, grid_side)  # the first view's cells
            ax.imshow(
                np.kron(heat, np.ones((side // grid_side, side // grid_side))),
                cmap="jet",
                alpha=0.4,
                extent=(0, side, side, 0),
            )
            ax.set_title(tokens[c], fontsize=9)
    fig.tight_layout()
    return fig


def metrics_figure(table: pd.DataFrame, columns: list[str], title: str):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 4))
    table.set_index("system")[columns].T.plot.bar(ax=ax)
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def write_text(text: str, path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
