"""Learning curves of a run: loss and validation metric per epoch, one colour per fold.

Each chart is drawn once, as a matplotlib figure (Agg canvas, no pyplot state touched);
:func:`write_figure` renders it to PNG bytes once and those bytes are both the ``.png`` file
and the picture embedded in the HTML page, so the two can never disagree.

``write_learning_curves(run_dir)`` writes ``learning_curves.png`` and ``learning_curves.html``
(that PNG inlined plus a per-fold table, one self-contained file) into the run folder. The
trainer calls it after every fold, so it reads whatever ``metrics.csv`` files exist,
tolerates a fold with one epoch or a row being written at that moment, and replaces both
files atomically.

:func:`new_figure`, :func:`figure_png` and :func:`write_figure` are shared with
:mod:`seg_toolkit.report`.
"""

from __future__ import annotations

import io
import logging
import math
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from .files import atomic_write, read_json, write_text
from .run import Run

log = logging.getLogger(__name__)

__all__ = [
    "FOLD_COLORS",
    "read_metrics",
    "metric_label",
    "learning_curves",
    "fold_rows",
    "fold_table_html",
    "write_learning_curves",
    "new_figure",
    "figure_png",
    "write_figure",
]

#: One colour per fold (matplotlib's tab10).
FOLD_COLORS = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)


def _fold_color(fold: int) -> str:
    return FOLD_COLORS[fold % len(FOLD_COLORS)]


# ----------------------------------------------------------------------------- data


def read_metrics(run_dir: Path) -> pd.DataFrame:
    """All ``metrics.csv`` rows of a run in one frame (fold, epoch order).

    A file that cannot be parsed (e.g. being written right now) is skipped with a warning;
    rows without a numeric epoch are dropped. Returns an empty frame when there is nothing.
    """
    frames = []
    for path in Run(run_dir).metrics_csvs():
        try:
            df = pd.read_csv(path, on_bad_lines="skip")
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as e:
            log.warning("learning curves: skipping %s (%s)", path, e)
            continue
        if "epoch" not in df.columns:
            log.warning("learning curves: %s has no 'epoch' column; skipped", path)
            continue
        for col in df.columns:
            df[col] = pd.to_numeric(df[col], errors="coerce")
        # the trainer writes the fold into every row; the folder's number stands in for a row without it
        fallback = int(path.parent.name.rsplit("_", 1)[-1])
        df["fold"] = df["fold"].fillna(fallback) if "fold" in df.columns else fallback
        values = [c for c in ("train_loss", "val_loss", "val_score") if c in df.columns]
        df = df.dropna(subset=["epoch"])
        if values:  # a row being written right now has no values yet
            df = df.dropna(subset=values, how="all")
        df["fold"] = df["fold"].astype(int)
        frames.append(df)
    if not frames:
        return pd.DataFrame(columns=["fold", "epoch"])
    return pd.concat(frames, ignore_index=True).sort_values(["fold", "epoch"], kind="stable").reset_index(drop=True)


def _run_info(run: Run) -> tuple[str, Optional[float], str]:
    """The metric's name, the baseline's score and name (all-empty; multiclass: all class 0), from ``cv.json`` /
    the saved config when present."""
    metric, baseline, named = "", None, "all-empty baseline"
    try:
        cv = read_json(run.cv_json) or {}
        metric = str(cv.get("metric") or "")
        named = str(cv.get("baseline") or named)
        b = cv.get("baseline_empty")
        baseline = float(b) if b is not None and not math.isnan(float(b)) else None
    except Exception as e:  # a damaged cv.json must not stop a plot
        log.warning("learning curves: cannot read %s (%s)", run.cv_json, e)
    if not metric and run.config_yaml.is_file():
        try:
            from .evaluator import resolve_metric_name

            cfg = run.config()
            metric = resolve_metric_name(cfg.metric.name, cfg.data.task)
        except Exception as e:  # a broken config must not stop a plot
            log.warning("learning curves: cannot read the metric from %s (%s)", run.config_yaml, e)
    return metric, baseline, named


def _aux_weight(run: Run, df: pd.DataFrame) -> float:
    """The deep-supervision loss weight of the run (0 when its metrics have no ``train_aux``
    column or its config cannot be read): the plot takes that term out of the training loss,
    since validation runs the main head only."""
    if "train_aux" not in df.columns or not run.config_yaml.is_file():
        return 0.0
    try:
        return float(run.config().model.deep_supervision)
    except Exception as e:  # a broken config must not stop a plot
        log.warning("learning curves: cannot read model.deep_supervision from %s (%s)", run.config_yaml, e)
        return 0.0


def metric_label(metric: str) -> str:
    """A display name for a metric id (``miou`` -> ``mean IoU``)."""
    return {"miou": "mean IoU", "global_dice": "global dice", "dice": "dice", "iou": "IoU", "tgs_map": "TGS mAP",
            "tgs_map_mlebench": "TGS mAP (mle-bench)",
            "pixel_accuracy": "pixel accuracy", "instance_map": "object mAP", "instance_f2": "object F2"}.get(metric, metric or "score")


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


def fold_rows(df: pd.DataFrame) -> list[dict[str, Any]]:
    """Per fold: epochs logged, the best epoch and its score, the last train / validation loss."""
    rows = []
    for fold, g in df.groupby("fold", sort=True):
        best = _best_row(g)
        last = g.iloc[-1]
        rows.append({
            "fold": int(fold), "epochs": int(g["epoch"].max()),
            "best_epoch": None if best is None else int(best["epoch"]),
            "best_val_score": None if best is None else float(best["val_score"]),
            "last_train_loss": float(last["train_loss"]) if "train_loss" in g and pd.notna(last["train_loss"]) else None,
            "last_val_loss": float(last["val_loss"]) if "val_loss" in g and pd.notna(last["val_loss"]) else None,
        })
    return rows


# ----------------------------------------------------------------------------- matplotlib


def literal(text: object) -> str:
    """``text`` as matplotlib should draw it, as written: it reads what lies between two ``$`` as a formula (an id
    such as ``cost_$5_$10`` raised a parse error, ``_$x^2$_`` was drawn as x squared), so every ``$`` is escaped.
    Every id, class name and run name drawn in a figure goes through it."""
    return str(text).replace("$", r"\$")


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


def write_figure(fig: Any, path: Path) -> bytes:
    """Render ``fig`` once, write the PNG to ``path`` atomically and return its bytes (to embed in a page)."""
    png = figure_png(fig)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(png))
    return png


#: a value farther than this many interquartile ranges beyond the quartiles is drawn at the panel's edge (^ or v)
OFF_SCALE_IQR = 20.0


def _mark_outliers(ax: Any, lines: list[tuple[Any, Any, Any]], keep: Optional[float] = None) -> None:
    """Keep one huge value (a loss of 1e30 in one epoch) from flattening every other line of the panel: the y range is
    cut to the values within :data:`OFF_SCALE_IQR` interquartile ranges of the quartiles, and each value outside it is
    marked at the edge (^ above, v below) with its number; a value that is not finite (inf, or NaN between finite
    epochs) is an x at the top edge, where matplotlib would draw nothing. ``keep``: a level that stays in the range
    (the all-empty baseline)."""
    values = np.concatenate([np.asarray(y, float) for _, y, _ in lines]) if lines else np.zeros(0)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return
    q1, q3 = np.percentile(finite, [25, 75])
    reach = OFF_SCALE_IQR * max(q3 - q1, 1e-3 * max(abs(q1), abs(q3), 1e-12))
    inside = finite[(finite >= q1 - reach) & (finite <= q3 + reach)]
    lo, hi = float(inside.min()), float(inside.max())
    if keep is not None and math.isfinite(keep):
        lo, hi = min(lo, keep), max(hi, keep)
    pad = 0.08 * (hi - lo) if hi > lo else 0.1 * max(abs(hi), 1.0)
    off = any(not (lo <= v <= hi) for v in finite) or finite.size < values.size
    if not off:
        return
    bottom, top = lo - pad, hi + pad
    ax.set_ylim(bottom, top)
    for epochs, y, color in lines:
        for e, v in zip(np.asarray(epochs), np.asarray(y, float)):
            if np.isnan(v) and not (np.isfinite(np.asarray(y, float)).any()):
                continue
            if not np.isfinite(v):
                ax.plot([e], [top], "x", color=color, ms=9, mew=2, clip_on=False)
                ax.annotate("nan" if np.isnan(v) else ("inf" if v > 0 else "-inf"), (e, top), textcoords="offset points",
                            xytext=(0, -12), ha="center", fontsize=7, color=color)
            elif v > hi or v < lo:
                edge = top if v > hi else bottom
                ax.plot([e], [edge], "^" if v > hi else "v", color=color, ms=8, clip_on=False)
                ax.annotate(f"{v:.3g}", (e, edge), textcoords="offset points", xytext=(0, -12 if v > hi else 6),
                            ha="center", fontsize=7, color=color)


def learning_curves(run_dir: Path, df: Optional[pd.DataFrame] = None) -> Any:
    """The run's learning curves as one matplotlib figure, two panels side by side.

    Left: train loss (dashed, hollow markers; without the deep-supervision heads' term, which
    validation does not have, so the two compare) and validation loss (solid); right: the
    validation metric (solid; the EMA or raw model's score dotted when logged), a star on
    each fold's best epoch and the all-empty baseline as a grey line. One colour per fold.
    """
    from matplotlib.lines import Line2D

    run = Run(run_dir)
    df = read_metrics(run.dir) if df is None else df
    metric, baseline, named = _run_info(run)
    label = metric_label(metric)
    other = _other_score_column(df)
    aux_w = _aux_weight(run, df)
    fig = new_figure(12, 4.8)
    ax_loss, ax_score = fig.subplots(1, 2)
    handles = []
    drawn: dict[Any, list] = {ax_loss: [], ax_score: []}  # (epochs, values, colour) of each line, for _mark_outliers
    for fold, g in df.groupby("fold", sort=True):
        color = _fold_color(int(fold))
        if _series(g, "train_loss") is not None:  # hollow markers: visible even with one epoch
            train = g["train_loss"] - aux_w * g["train_aux"].fillna(0.0) if aux_w else g["train_loss"]
            ax_loss.plot(g["epoch"], train, "--o", color=color, ms=5, mfc="white", lw=1.3)
            drawn[ax_loss].append((g["epoch"], train, color))
        if _series(g, "val_loss") is not None:
            ax_loss.plot(g["epoch"], g["val_loss"], "-o", color=color, ms=5, lw=1.6)
            drawn[ax_loss].append((g["epoch"], g["val_loss"], color))
        y = _series(g, "val_score")
        if y is not None:
            ax_score.plot(g["epoch"], y, "-o", color=color, ms=5, lw=1.6)
            drawn[ax_score].append((g["epoch"], y, color))
            best = _best_row(g)
            if best is not None:
                ax_score.plot([best["epoch"]], [best["val_score"]], "*", color=color, ms=15, mec="black", mew=0.6)
        if other is not None and _series(g, other) is not None:
            ax_score.plot(g["epoch"], g[other], ":", color=color, lw=1.3)
        handles.append(Line2D([], [], color=color, marker="o", lw=1.6, label=f"fold {int(fold)}"))
    if baseline is not None and len(df):
        ax_score.axhline(baseline, color="grey", ls="--", lw=1)
        ax_score.annotate(f"{literal(named)} {baseline:.4f}", (0.01, baseline), xycoords=("axes fraction", "data"),
                          ha="left", va="bottom", fontsize=8, color="grey")
    for ax, lines in drawn.items():
        _mark_outliers(ax, lines, baseline if ax is ax_score else None)
    if not len(df):
        for ax in (ax_loss, ax_score):
            ax.text(0.5, 0.5, "no epochs logged yet", ha="center", va="center", color="grey", transform=ax.transAxes)
    ax_loss.set_title("loss: train dashed / hollow" + (f" (less {aux_w:g} x aux, as validation)" if aux_w else "")
                      + ", validation solid", fontsize=10)
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
    fig.suptitle(f"Learning curves: {literal(run.dir.name)}", fontsize=12)
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 10), fontsize=9, frameon=False)
        fig.tight_layout(rect=(0, 0.07, 1, 1))
    else:
        fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- files


def fold_table_html(rows: list[dict[str, Any]]) -> str:
    """The :func:`fold_rows` as an HTML table (the numbers behind the curves)."""
    from .report.html import fmt, table

    return table(["fold", "epochs", "best epoch", "best val score", "last train loss", "last val loss"],
                 [[f"fold {r['fold']}", str(r["epochs"]), fmt(r["best_epoch"]), fmt(r["best_val_score"]),
                   fmt(r["last_train_loss"]), fmt(r["last_val_loss"])] for r in rows])


def write_learning_curves(run_dir: Path) -> list[Path]:
    """Write ``learning_curves.html`` (self-contained) and ``learning_curves.png`` into ``run_dir``.

    Returns the two paths (HTML first). Safe to call while other folds are still training.
    """
    from .report.html import esc, note, page, png_tag

    run = Run(run_dir)
    df = read_metrics(run.dir)
    png = write_figure(learning_curves(run.dir, df), run.learning_curves_png)
    rows = fold_rows(df)
    _, baseline, named = _run_info(run)
    body = (png_tag(png, "learning curves") + (fold_table_html(rows) if rows else note("No epochs logged yet."))
            + (note(f"{esc(named)} {baseline:.4f} (cv.json's baseline_empty: the score of that prediction)")
               if baseline is not None else ""))
    out = [write_text(run.learning_curves_html, page(f"Learning curves: {run.dir.name}", body)), run.learning_curves_png]
    log.info("learning curves written to %s", out[0])
    return out
