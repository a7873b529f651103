"""Learning curves of a run: loss and validation metric per epoch, one colour per fold.

``write_learning_curves(run_dir)`` writes ``learning_curves.html`` (interactive Plotly,
plotly.js inlined so it opens offline) and ``learning_curves.png`` (matplotlib, Agg canvas,
no pyplot state touched) into the run folder. The trainer calls it after every fold, so it
reads whatever ``fold_*/metrics.csv`` exist, tolerates a fold with one epoch or a row being
written at that moment, and replaces both files atomically.

The matplotlib helpers here (:func:`new_figure`, :func:`figure_png`) are shared with
:mod:`seg_toolkit.report`.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import re
from pathlib import Path
from typing import Any, Optional

import pandas as pd

log = logging.getLogger(__name__)

__all__ = [
    "FOLD_COLORS",
    "read_metrics",
    "metric_label",
    "learning_curves",
    "learning_curves_png",
    "write_learning_curves",
    "new_figure",
    "figure_png",
    "atomic_write",
]

#: One colour per fold (matplotlib's tab10), the same in the HTML and the PNG.
FOLD_COLORS = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)

_FOLD_DIR = re.compile(r"fold_(\d+)$")


def _fold_color(fold: int) -> str:
    return FOLD_COLORS[fold % len(FOLD_COLORS)]


# ----------------------------------------------------------------------------- data


def read_metrics(run_dir: Path) -> pd.DataFrame:
    """All ``fold_*/metrics.csv`` rows of a run in one frame (fold, epoch order).

    A file that cannot be parsed (e.g. being written right now) is skipped with a warning;
    rows without a numeric epoch are dropped. Returns an empty frame when there is nothing.
    """
    frames = []
    for d in Path(run_dir).glob("fold_*"):
        m = _FOLD_DIR.search(d.name)
        path = d / "metrics.csv"
        if not m or not path.is_file():
            continue
        try:
            df = pd.read_csv(path, on_bad_lines="skip")
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as e:
            log.warning("learning curves: skipping %s (%s)", path, e)
            continue
        if "epoch" not in df.columns:
            log.warning("learning curves: %s has no 'epoch' column; skipped", path)
            continue
        df["fold"] = int(m.group(1))
        for col in df.columns:
            if col != "fold":
                df[col] = pd.to_numeric(df[col], errors="coerce")
        values = [c for c in ("train_loss", "val_loss", "val_score") if c in df.columns]
        df = df.dropna(subset=["epoch"])
        if values:  # a row being written right now has no values yet
            df = df.dropna(subset=values, how="all")
        frames.append(df)
    if not frames:
        return pd.DataFrame(columns=["fold", "epoch"])
    return pd.concat(frames, ignore_index=True).sort_values(["fold", "epoch"], kind="stable").reset_index(drop=True)


def _run_info(run_dir: Path) -> tuple[str, Optional[float]]:
    """The metric's name and the all-empty baseline, from ``cv.json`` / ``config.yaml`` when present."""
    run_dir = Path(run_dir)
    metric, baseline = "", None
    cv_path = run_dir / "cv.json"
    if cv_path.is_file():
        try:
            cv = json.loads(cv_path.read_text())
            metric = str(cv.get("metric") or "")
            b = cv.get("baseline_empty")
            baseline = float(b) if b is not None and not math.isnan(float(b)) else None
        except (ValueError, TypeError, OSError) as e:
            log.warning("learning curves: cannot read %s (%s)", cv_path, e)
    if not metric and (run_dir / "config.yaml").is_file():
        try:
            from .config import load_config
            from .metrics import resolve_metric_name

            cfg = load_config(run_dir / "config.yaml")
            metric = resolve_metric_name(cfg.metric.name, cfg.data.task)
        except Exception as e:  # a broken config must not stop a plot
            log.warning("learning curves: cannot read the metric from %s (%s)", run_dir / "config.yaml", e)
    return metric, baseline


def metric_label(metric: str) -> str:
    """A display name for a metric id (``miou`` -> ``mean IoU``)."""
    return {"miou": "mean IoU", "dice": "dice", "iou": "IoU", "tgs_map": "TGS mAP",
            "pixel_accuracy": "pixel accuracy"}.get(metric, metric or "score")


def _series(df: pd.DataFrame, col: str) -> Optional[pd.Series]:
    if col in df.columns and df[col].notna().any():
        return df[col]
    return None


def _other_score_column(df: pd.DataFrame) -> Optional[str]:
    """``ema_val_score`` / ``raw_val_score`` when the trainer logged the second model."""
    for col in ("ema_val_score", "raw_val_score"):
        if _series(df, col) is not None:
            return col
    return None


def _best_row(g: pd.DataFrame) -> Optional[pd.Series]:
    """The fold's best epoch: the last row the trainer marked ``best`` (it applies min_delta), else the max score."""
    if "best" in g.columns and (g["best"] == 1).any() and g["val_score"].notna().any():
        return g[g["best"] == 1].iloc[-1]
    if "val_score" in g.columns and g["val_score"].notna().any():
        return g.loc[g["val_score"].idxmax()]
    return None


# ----------------------------------------------------------------------------- plotly


def learning_curves(run_dir: Path) -> Any:
    """A Plotly figure of the run's learning curves, two panels side by side.

    Left: train loss (dashed) and validation loss (solid); right: the validation metric
    (solid; the EMA or raw model's score dotted when logged), a star on each fold's best
    epoch and the all-empty baseline as a grey line. One colour per fold.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    run_dir = Path(run_dir)
    df = read_metrics(run_dir)
    metric, baseline = _run_info(run_dir)
    label = metric_label(metric)
    fig = make_subplots(rows=1, cols=2, subplot_titles=("loss", f"validation {label}"), horizontal_spacing=0.08)
    other = _other_score_column(df)
    for fold, g in df.groupby("fold", sort=True):
        color = _fold_color(int(fold))
        name = f"fold {int(fold)}"
        first = True
        for col, dash, symbol, what in (("train_loss", "dash", "circle-open", "train"), ("val_loss", "solid", "circle", "val")):
            y = _series(g, col)
            if y is None:
                continue
            fig.add_trace(go.Scatter(
                x=g["epoch"], y=y, mode="lines+markers", line=dict(color=color, dash=dash),
                marker=dict(size=7, symbol=symbol),
                name=name, legendgroup=name, showlegend=first,
                hovertemplate=f"{name} {what} loss<br>epoch %{{x}}: %{{y:.4f}}<extra></extra>",
            ), row=1, col=1)
            first = False
        y = _series(g, "val_score")
        if y is not None:
            fig.add_trace(go.Scatter(
                x=g["epoch"], y=y, mode="lines+markers", line=dict(color=color), marker=dict(size=5),
                name=name, legendgroup=name, showlegend=first,
                hovertemplate=f"{name} val {label}<br>epoch %{{x}}: %{{y:.4f}}<extra></extra>",
            ), row=1, col=2)
            best = _best_row(g)
            if best is not None:
                fig.add_trace(go.Scatter(
                    x=[best["epoch"]], y=[best["val_score"]], mode="markers",
                    marker=dict(color=color, size=13, symbol="star", line=dict(color="black", width=1)),
                    name=f"{name} best", legendgroup=name, showlegend=False,
                    hovertemplate=f"{name} best<br>epoch %{{x}}: %{{y:.4f}}<extra></extra>",
                ), row=1, col=2)
        if other is not None and _series(g, other) is not None:
            kind = other.split("_")[0]
            fig.add_trace(go.Scatter(
                x=g["epoch"], y=g[other], mode="lines", line=dict(color=color, dash="dot"),
                name=f"{name} {kind}", legendgroup=name, showlegend=False,
                hovertemplate=f"{name} {kind} model {label}<br>epoch %{{x}}: %{{y:.4f}}<extra></extra>",
            ), row=1, col=2)
    if baseline is not None and len(df):
        fig.add_hline(y=baseline, line=dict(color="grey", dash="dash", width=1), row=1, col=2,
                      annotation_text=f"all-empty baseline {baseline:.4f}", annotation_position="bottom right",
                      annotation_font=dict(color="grey", size=11))
    if not len(df):
        fig.add_annotation(text="no epochs logged yet (fold_*/metrics.csv)", showarrow=False,
                           xref="paper", yref="paper", x=0.5, y=0.5, font=dict(size=16, color="grey"))
    style = "train dashed / hollow, validation solid" + (f"; {other.split('_')[0]} model dotted" if other else "")
    n_epochs = int(df["epoch"].max()) if len(df) else 0
    if 0 < n_epochs <= 12:
        fig.update_xaxes(range=[0.5, n_epochs + 0.5], dtick=1)
    fig.update_xaxes(title_text="epoch")
    fig.update_yaxes(title_text="loss", row=1, col=1)
    fig.update_yaxes(title_text=label, row=1, col=2)
    fig.update_layout(
        title=dict(text=f"Learning curves: {run_dir.name} <span style='font-size:12px;color:grey'>({style}; ★ best epoch)</span>"),
        template="plotly_white", height=430, margin=dict(l=60, r=20, t=80, b=50), hovermode="closest",
        legend=dict(title="fold"),
    )
    return fig


# ----------------------------------------------------------------------------- matplotlib


def new_figure(width_in: float, height_in: float, dpi: int = 100) -> Any:
    """A matplotlib Figure on an Agg canvas, without pyplot (no global backend or state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def figure_png(fig: Any, dpi: Optional[int] = None) -> bytes:
    """The figure rendered as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi or fig.dpi, facecolor="white")
    return buf.getvalue()


def learning_curves_png(run_dir: Path) -> bytes:
    """The learning curves as a PNG (matplotlib): the same two panels as :func:`learning_curves`."""
    from matplotlib.lines import Line2D

    run_dir = Path(run_dir)
    df = read_metrics(run_dir)
    metric, baseline = _run_info(run_dir)
    label = metric_label(metric)
    other = _other_score_column(df)
    fig = new_figure(12, 4.8)
    ax_loss, ax_score = fig.subplots(1, 2)
    handles = []
    for fold, g in df.groupby("fold", sort=True):
        color = _fold_color(int(fold))
        if _series(g, "train_loss") is not None:  # hollow markers: visible even with one epoch
            ax_loss.plot(g["epoch"], g["train_loss"], "--o", color=color, ms=5, mfc="white", lw=1.3)
        if _series(g, "val_loss") is not None:
            ax_loss.plot(g["epoch"], g["val_loss"], "-o", color=color, ms=5, lw=1.6)
        y = _series(g, "val_score")
        if y is not None:
            ax_score.plot(g["epoch"], y, "-o", color=color, ms=5, lw=1.6)
            best = _best_row(g)
            if best is not None:
                ax_score.plot([best["epoch"]], [best["val_score"]], "*", color=color, ms=15, mec="black", mew=0.6)
        if other is not None and _series(g, other) is not None:
            ax_score.plot(g["epoch"], g[other], ":", color=color, lw=1.3)
        handles.append(Line2D([], [], color=color, marker="o", lw=1.6, label=f"fold {int(fold)}"))
    if baseline is not None and len(df):
        ax_score.axhline(baseline, color="grey", ls="--", lw=1)
        ax_score.annotate(f"all-empty baseline {baseline:.4f}", (0.01, baseline), xycoords=("axes fraction", "data"),
                          ha="left", va="bottom", fontsize=8, color="grey")
    if not len(df):
        for ax in (ax_loss, ax_score):
            ax.text(0.5, 0.5, "no epochs logged yet", ha="center", va="center", color="grey", transform=ax.transAxes)
    ax_loss.set_title("loss: train dashed / hollow, validation solid", fontsize=10)
    ax_score.set_title(f"validation {label}" + (f" ({other.split('_')[0]} model dotted)" if other else "")
                       + "; \u2605 best epoch", fontsize=10)
    n_epochs = int(df["epoch"].max()) if len(df) else 0
    for ax, ylab in ((ax_loss, "loss"), (ax_score, label)):
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylab)
        ax.grid(alpha=0.3)
        if 0 < n_epochs <= 12:
            ax.set_xticks(range(1, n_epochs + 1))
            ax.set_xlim(0.5, n_epochs + 0.5)
        elif n_epochs:
            ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(f"Learning curves: {run_dir.name}", fontsize=12)
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 10), fontsize=9, frameon=False)
        fig.tight_layout(rect=(0, 0.07, 1, 1))
    else:
        fig.tight_layout()
    return figure_png(fig)


# ----------------------------------------------------------------------------- files


def atomic_write(path: Path, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` through a temporary file and ``os.replace`` (readers never see half a file)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_learning_curves(run_dir: Path) -> list[Path]:
    """Write ``learning_curves.html`` (interactive, self-contained) and ``learning_curves.png`` into ``run_dir``.

    Returns the two paths. Safe to call while other folds are still training.
    """
    run_dir = Path(run_dir)
    fig = learning_curves(run_dir)
    html = fig.to_html(include_plotlyjs=True, full_html=True, config={"displaylogo": False})
    out = [atomic_write(run_dir / "learning_curves.html", html),
           atomic_write(run_dir / "learning_curves.png", learning_curves_png(run_dir))]
    log.info("learning curves written to %s", out[0])
    return out
