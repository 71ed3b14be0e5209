"""The agreement trend: what the Models page shows and each night's MLflow run keeps."""

from __future__ import annotations

import pandas as pd


def trend_figure(weekly: pd.DataFrame):
    """One panel per metric: each model version's weekly value and interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = ["CIDEr", "clinical_F1", "words_kept", "ood_rate"]
    figure, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3), squeeze=False)
    for axis, metric in zip(axes[0], metrics):
        for version, rows in weekly.groupby("model_version"):
            x = pd.to_datetime(rows["week"])
            axis.plot(x, rows[metric], marker="o", label=f"v{version}")
            if f"{metric}_low" in rows:
                axis.fill_between(x, rows[f"{metric}_low"], rows[f"{metric}_high"], alpha=0.2)
        axis.set_title(metric)
        axis.tick_params(axis="x", labelrotation=45)
    axes[0][0].legend()
    figure.tight_layout()
    return figure
