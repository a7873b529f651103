"""The report's confusion chart, drawn once as a matplotlib figure (its PNG is the file and the picture in the page)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..plots import literal, new_figure
from .data import ReportData

__all__ = ["confusion_figure", "row_normalised"]

#: TP / FP / FN bar colours.
BAR_COLORS = (("TP", "#2ca02c"), ("FP", "#ff7f0e"), ("FN", "#d62728"))


def row_normalised(cm: np.ndarray) -> np.ndarray:
    """Each row divided by its sum (NaN for a row without pixels)."""
    rows = cm.sum(1, keepdims=True).astype(np.float64)
    return np.divide(cm, rows, out=np.full(cm.shape, np.nan), where=rows > 0)


def _short(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.1f}{unit}"
    return str(int(n))


def confusion_figure(d: ReportData) -> Any:
    """Multiclass: the row-normalised C x C heatmap (rows = truth); binary / multilabel: TP / FP / FN pixels per class."""
    names = d.class_names
    n = len(names)
    if d.task == "multiclass":
        norm = row_normalised(d.confusion)
        side = max(5.0, 0.55 * n + 2.5)
        fig = new_figure(side + 1.2, side)
        ax = fig.add_subplot(1, 1, 1)
        im = ax.imshow(np.ma.masked_invalid(norm), cmap="Blues", vmin=0, vmax=1)
        ax.set_facecolor("#eeeeee")  # rows without true pixels
        if n <= 20:
            for i in range(n):
                for j in range(n):
                    if not np.isnan(norm[i, j]):
                        ax.text(j, i, f"{norm[i, j]:.0%}", ha="center", va="center", fontsize=8,
                                color="white" if norm[i, j] > 0.6 else "black")
        ax.set_xticks(range(n), [literal(s) for s in names], rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(n), [literal(s) for s in names], fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("truth")
        ax.set_title("Confusion (pixels, row-normalised, void excluded)", fontsize=10)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04).set_label("share of true pixels")
        fig.tight_layout()
        return fig
    counts = {"TP": d.confusion[:, 1, 1], "FP": d.confusion[:, 0, 1], "FN": d.confusion[:, 1, 0]}
    fig = new_figure(max(5.0, 1.3 * n + 2.5), 4.2)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(n)
    for k, (name, color) in enumerate(BAR_COLORS):
        bars = ax.bar(x + (k - 1) * 0.27, counts[name], 0.27, label=name, color=color)
        ax.bar_label(bars, [_short(v) for v in counts[name]], fontsize=7, padding=2)
    ax.set_xticks(x, [literal(s) for s in names], rotation=20 if n > 4 else 0, ha="right" if n > 4 else "center")
    ax.set_ylabel("pixels")
    ax.set_title(f"Pixels per class at threshold {d.cfg.metric.threshold:g} (void excluded)", fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)  # beside the bars, never over them
    ax.margins(y=0.12)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig
