"""``seg-toolkit compare``: a leaderboard of run folders, read from the folders alone (no tracker needed).

For every run: the metric, the CV score (``cv.json``), the fold scores' mean +- std and range,
the CV after tuned post-processing (``postprocess.json``; in brackets its cross-fitted score, tuned on
other images than those scored), the TTA (``tta.json``, else
``predict.tta`` of the saved config), the model, epochs run / configured, the training time
(the epochs' seconds in ``metrics.csv``), and which runs share a ``folds.csv`` (the same ids in the
same folds: a group letter A, B, ...; their OOF files line up image for image; ``ensemble`` checks the rest). Rows are sorted by CV,
best first, in the metric's direction (complete runs first, then those with some folds). Folders that are not runs are skipped; a half-finished
run shows what it has (its CV marked missing); ensemble runs are listed as such.
``--html OUT`` writes a standalone page (a Plotly bar chart with plotly.js inline, so it opens
offline) and ``--curves`` adds every run's validation score per epoch and fold to it.
"""

from __future__ import annotations

import hashlib
import html
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from .errors import SegToolkitError
from .files import nan_if_null, read_json, write_text
from .run import Run

log = logging.getLogger(__name__)

__all__ = ["CompareError", "RunRow", "find_runs", "collect", "format_table", "write_html", "HIGHER_IS_BETTER"]

#: Direction of each metric the toolkit scores (all are higher-better today; a loss-like metric would be False).
HIGHER_IS_BETTER: dict[str, bool] = {"dice": True, "iou": True, "miou": True, "global_dice": True, "tgs_map": True,
                                     "tgs_map_mlebench": True, "pixel_accuracy": True,
                                     "instance_map": True, "instance_f2": True}


class CompareError(SegToolkitError, ValueError):
    """A path given to ``compare`` is missing or holds no run folder."""


@dataclass
class RunRow:
    """One run's line of the leaderboard (None where the run folder does not say)."""

    name: str
    path: Path
    kind: str  # "trained" | "ensemble"
    metric: Optional[str] = None
    cv: Optional[float] = None
    fold_scores: list[float] = field(default_factory=list)
    folds_done: int = 0
    n_splits: Optional[int] = None
    tuned: Optional[float] = None
    tuned_cross_fitted: Optional[float] = None  # postprocess.json's cross_fitted score: tuned without the tuning's luck
    tta: str = "-"
    model: str = "-"
    epochs_run: list[int] = field(default_factory=list)
    epochs_configured: Optional[int] = None
    seconds: Optional[float] = None
    folds_key: Optional[str] = None  # hash of the (id, fold) pairs of folds.csv
    group: str = "-"
    curves: dict[int, list[tuple[int, float]]] = field(default_factory=dict)  # fold -> [(epoch, val_score)]
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what qualifies its numbers (a stale tuning, OOF made otherwise)
    left_out: list[int] = field(default_factory=list)  # folds train.min_fold_epochs left out (cv.json's time_budget)

    @property
    def scored_folds(self) -> list[float]:
        return [x for x in self.fold_scores if isinstance(x, (int, float)) and not math.isnan(x)]

    @property
    def fold_stats(self) -> Optional[tuple[float, float, float, float]]:
        s = self.scored_folds
        if not s:
            return None
        mean = sum(s) / len(s)
        return mean, math.sqrt(sum((x - mean) ** 2 for x in s) / len(s)), min(s), max(s)

    @property
    def status(self) -> str:
        if self.cv is None:
            what = f"{self.folds_done}/{self.n_splits} folds trained" if self.kind == "trained" and self.n_splits else "no cv.json"
            return f"CV missing ({what})"
        if self.n_splits and self.folds_done < self.n_splits:  # an ensemble of some folds too (its cv.json's images)
            why = f"; {self.left_out} left out by the time budget" if self.left_out else ""
            return f"partial: {self.folds_done}/{self.n_splits} folds{why}"
        return ""


def find_runs(paths: Sequence[str | Path]) -> list[Run]:
    """Run folders named directly, or found one level below a folder (``runs/``); others are skipped."""
    found: list[Run] = []
    for p in map(Path, paths):
        if not p.exists():
            raise CompareError(f"{p}: not found; give a runs folder (runs/) or run folders (runs/<experiment>)")
        if not p.is_dir():
            raise CompareError(f"{p}: is a file; give a runs folder (runs/) or run folders (runs/<experiment>)")
        if Run(p).looks_like_run():
            found.append(Run(p))
            continue
        # hidden folders are not runs: a deletion or a bundle build a kill cut short (.<name>.<pid>-<host>.deleting)
        for child in sorted(q for q in p.iterdir() if q.is_dir() and not q.name.startswith(".")):
            r = Run(child)
            # a folder only lr-find wrote (folds.csv, lr_find.json) has no config.yaml and nothing to compare
            if r.looks_like_run() and any(f.is_file() for f in (r.config_yaml, r.ensemble_json, r.cv_json)):
                found.append(r)
            else:
                log.debug("compare: %s is not a run folder; skipped", child)
    unique = list(dict.fromkeys(found))
    if not unique:
        raise CompareError(f"no run folder in {', '.join(map(str, paths))} (a run folder holds config.yaml, folds.csv, "
                           "ensemble.json or fold_<k>/ of seg_toolkit)")
    return unique


def _folds_key(run: Run) -> Optional[str]:
    if not run.folds_csv.is_file():
        return None
    try:
        pairs = sorted(run.fold_of().items())
    except Exception as e:  # noqa: BLE001 - a damaged folds.csv only loses the grouping
        log.warning("compare: %s not readable (%s)", run.folds_csv, e)
        return None
    return hashlib.sha256(repr(pairs).encode()).hexdigest()


def _duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def summarize(run: Run) -> RunRow:
    """The leaderboard line of one run folder; what cannot be read is left empty and named in ``problems``."""
    from .plots import read_metrics

    row = RunRow(name=run.dir.name, path=run.dir, kind="ensemble" if run.is_ensemble else "trained")
    cfg = None
    try:
        cfg = run.config()
    except Exception as e:  # noqa: BLE001 - a run without a readable config still shows its numbers
        row.problems.append(f"config.yaml: {e}")
    try:
        cv = read_json(run.cv_json)
        pp = read_json(run.postprocess_json)
        tta = read_json(run.tta_json)
        ens = read_json(run.ensemble_json) if row.kind == "ensemble" else None
    except SegToolkitError as e:
        row.problems.append(str(e))
        cv = pp = tta = ens = None
    if cv:
        row.metric, row.cv = cv.get("metric"), cv.get("score")
        row.fold_scores = [nan_if_null(s) for s in cv.get("fold_scores") or [] if s is None or isinstance(s, (int, float))]
        row.left_out = [int(k) for k in (cv.get("time_budget") or {}).get("left_out") or []]
    if isinstance(row.cv, float) and math.isnan(row.cv):
        row.cv = None
    try:
        row.folds_done = len(run.completed_folds())
    except (SegToolkitError, OSError, ValueError) as e:  # a damaged ensemble.json / done.json: this row only
        row.problems.append(str(e))
    if pp and isinstance(pp.get("after"), (int, float)):
        row.tuned = float(pp["after"])
        cf = pp.get("cross_fitted")
        if isinstance(cf, dict) and isinstance(cf.get("score"), (int, float)):
            row.tuned_cross_fitted = float(cf["score"])
    if cfg is not None:
        row.n_splits = cfg.folds.n_splits
        if row.metric is None:
            from .evaluator import resolve_metric_name

            row.metric = resolve_metric_name(cfg.metric.name, cfg.data.task)
        m = cfg.model
        row.model = m.arch + (f"/{m.encoder}" if m.encoder else f" (depth {m.depth}, width {m.base_width})"
                              if m.arch == "scratch_unet" else "")
        row.epochs_configured = cfg.train.epochs
        row.tta = " ".join(cfg.predict.tta) + (f" ({cfg.predict.merge})" if len(cfg.predict.tta) > 1 else "")
    if tta and tta.get("tta"):
        row.tta = " ".join(tta["tta"]) + f" ({tta.get('merge')}, tune --tta)"
    row.notes += _qualifiers(cv, pp, cfg, tta)
    if ens is not None:
        row.model = "ensemble of " + ", ".join(Path(str(m.get("run"))).name for m in ens.get("members", []))
        search = ens.get("weights_search") or {}
        if search.get("in_sample"):  # its CV is the best of the weightings tried on these images
            held = search.get("cross_half_score")
            row.notes.append(f"weights chosen on these OOF images among {search.get('searched')}" +
                             (f" (held-out halves {held:.4f})" if isinstance(held, (int, float)) else ""))
        row.tta, row.epochs_configured = "members'", None
    else:
        df = read_metrics(run.dir)
        if len(df):
            for k, g in df.groupby("fold"):
                row.epochs_run.append(int(g["epoch"].max()))
                if "val_score" in g.columns:
                    row.curves[int(k)] = [(int(e), float(s)) for e, s in zip(g["epoch"], g["val_score"]) if not math.isnan(s)]
            if "seconds" in df.columns:
                row.seconds = float(df["seconds"].sum())
        if not row.epochs_run:
            try:
                row.epochs_run = [int(f["epochs_run"]) for f in run.fold_summaries() if isinstance(f.get("epochs_run"), int)]
            except (SegToolkitError, OSError, ValueError) as e:
                row.problems.append(str(e))
    row.folds_key = _folds_key(run)
    return row


def _sort_key(row: RunRow) -> tuple:
    """Complete runs by CV, then partial runs (a CV over some folds is not comparable) by CV, then runs without CV."""
    sign = -1.0 if HIGHER_IS_BETTER.get(row.metric or "", True) else 1.0
    partial = bool(row.status)
    return (row.cv is None, partial, row.metric or "", sign * row.cv if row.cv is not None else 0.0, row.name)


def collect(paths: Sequence[str | Path]) -> list[RunRow]:
    """Every run under ``paths``, summarized, best CV first; share groups A, B, ... in that order."""
    rows = sorted((summarize(r) for r in find_runs(paths)), key=_sort_key)
    letters: dict[str, str] = {}
    for row in rows:
        if row.folds_key is not None:
            if row.folds_key not in letters:
                n = len(letters)
                letters[row.folds_key] = chr(ord("A") + n % 26) + (str(n // 26) if n >= 26 else "")
            row.group = letters[row.folds_key]
    return rows


def _epochs(row: RunRow) -> str:
    if row.kind == "ensemble":
        return "-"
    done = f"{min(row.epochs_run)}" if row.epochs_run and min(row.epochs_run) == max(row.epochs_run) else (
        f"{min(row.epochs_run)}-{max(row.epochs_run)}" if row.epochs_run else "0")
    return f"{done}/{row.epochs_configured if row.epochs_configured is not None else '?'}"


def _qualifiers(cv: dict | None, pp: dict | None, cfg, tta: dict | None) -> list[str]:
    """What the row's numbers are not, said beside them as report and predict say it: a tuned score from other OOF
    files than the CV's (fewer folds, or files remade since), and a CV from OOF made with another TTA than the
    submission's (``predict.oof_tta``)."""
    from .postprocess import tuned_elsewhere

    notes = []
    if cv and pp and isinstance(pp.get("after"), (int, float)) and isinstance(cv.get("folds"), list):
        elsewhere = tuned_elsewhere(pp, cv["folds"], cv.get("score"))
        if elsewhere == "folds":
            notes.append(f"tuned on folds {pp['folds']}, CV on {cv['folds']}: tune again")
        elif elsewhere == "score":
            notes.append("tuned on other OOF files than the CV's: tune again")
    made = (cv or {}).get("oof") or {}
    submitted = (tta or {}).get("tta") or (list(cfg.predict.tta) if cfg is not None else None)
    if isinstance(made.get("tta"), list) and submitted and list(made["tta"]) != list(submitted):
        notes.append(f"CV on OOF made with {' '.join(made['tta'])}")
    return notes


def _tuned(row: RunRow) -> str:
    if row.tuned is None:
        return "-"
    return f"{row.tuned:.4f}" + (f" ({row.tuned_cross_fitted:.4f})" if row.tuned_cross_fitted is not None else "")


def _cells(rank: int, row: RunRow) -> list[str]:
    st = row.fold_stats
    folds = "-" if not st else f"{st[0]:.4f} (one fold)" if len(row.scored_folds) == 1 else (
        f"{st[0]:.4f} +- {st[1]:.4f} [{st[2]:.4f}, {st[3]:.4f}]")
    cv = f"{row.cv:.4f}" if row.cv is not None else "missing"
    unreadable = [" ".join(p.split())[:80] for p in row.problems[:1]]  # what could not be read, shown, not only kept
    note = "; ".join(x for x in [row.status, *(["ensemble"] if row.kind == "ensemble" else []), *row.notes,
                                 *(f"unreadable: {u}" for u in unreadable)] if x)
    return [str(rank), row.name, row.metric or "-", cv, folds, _tuned(row),
            row.tta, row.model, _epochs(row), _duration(row.seconds), row.group, note]


HEADER = ["#", "run", "metric", "CV", "folds mean +- std [min, max]", "tuned (cross-fitted)", "TTA", "model", "epochs", "train time",
          "folds", "note"]


def format_table(rows: list[RunRow]) -> str:
    """The leaderboard as fixed-width text, with a line saying what the folds letters mean."""
    body = [_cells(i + 1, r) for i, r in enumerate(rows)]
    widths = [max(len(x) for x in col) for col in zip(HEADER, *body)]
    right = {0, 3, 4, 5, 8, 9}
    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    out = [line(HEADER), "  ".join("-" * w for w in widths)] + [line(c) for c in body]
    out.append("folds: runs with the same letter have the same folds.csv (same ids in the same folds): "
               "their OOF files line up image for image (seg-toolkit ensemble RUN RUN ... checks the rest: task, classes, data)")
    metrics = {r.metric for r in rows if r.metric}
    if len(metrics) > 1:
        out.append(f"note: the runs score different metrics ({', '.join(sorted(metrics))}); each metric is ranked on its own")
    return "\n".join(out)


def labels(rows: list[RunRow]) -> list[str]:
    """Each run's name, with its parent folder where two runs share a name (runs/a and runs2/a): on a category axis
    two bars of one name fell on one place, one run's bar inside the other's."""
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.name] = counts.get(r.name, 0) + 1
    out = [r.name if counts[r.name] == 1 else f"{r.path.parent.name}/{r.name}" for r in rows]
    return [x if out.count(x) == 1 else str(r.path) for x, r in zip(out, rows)]


def _figures(rows: list[RunRow], curves: bool) -> list[Any]:
    import plotly.graph_objects as go

    scored = [r for r in rows if r.cv is not None]
    named = dict(zip(map(id, scored), labels(scored)))
    figs = []
    for metric in dict.fromkeys(r.metric for r in scored):  # one chart per metric: a dice beside an mIoU compares nothing
        mine = [r for r in scored if r.metric == metric]
        # a partial run (some folds) is named so and faded: its CV covers other images than a complete run's
        names = [html.escape(named[id(r)] + (f" ({r.folds_done}/{r.n_splits} folds)" if r.status else "")) for r in mine]
        opacity = [0.45 if r.status else 1.0 for r in mine]
        bars = go.Figure()
        # the fold scores' std where there are 2 or more: one fold's "± 0" read as certainty
        spread = [r.fold_stats[1] if len(r.scored_folds) > 1 else float("nan") for r in mine]
        bars.add_bar(name="CV", x=names, y=[r.cv for r in mine], marker_opacity=opacity,
                     error_y=dict(type="data", array=spread, visible=True),
                     hovertext=[f"{r.metric}; folds {', '.join(f'{s:.4f}' for s in r.fold_scores)}; folds group {r.group}"
                                + (f"; {r.status}" if r.status else "") for r in mine])
        if any(r.tuned is not None for r in mine):
            bars.add_bar(name="tuned post-processing (in-sample)", x=names, y=[r.tuned for r in mine],
                         marker_opacity=opacity)
        if any(r.tuned_cross_fitted is not None for r in mine):  # the tuned score without the tuning's luck
            bars.add_bar(name="tuned, cross-fitted", x=names, y=[r.tuned_cross_fitted for r in mine], marker_opacity=opacity)
        # bars from 0: an axis from the lowest value - 0.1 drew 0.43 as a fifth of 0.79; the whiskers' tops on the chart
        top = max([v for r in mine for v in (r.cv, r.tuned, r.tuned_cross_fitted) if v is not None] +
                  [r.cv + d for r, d in zip(mine, spread) if not math.isnan(d)] + [0.0])
        bars.update_layout(title=f"CV {metric} by run (error bar: std of the fold scores; faded: partial runs)",
                           barmode="group", yaxis_title=f"CV {metric}", yaxis_range=[0.0, min(1.0, top) + 0.05], height=420)
        figs.append(bars)
    if curves:
        from .plots import FOLD_COLORS

        with_curves = [x for x in rows if x.curves]
        named_curves = dict(zip(map(id, with_curves), labels(with_curves)))
        # one chart per metric, as the bars: a dice curve beside an mIoU one on one axis compares nothing
        for metric in dict.fromkeys(r.metric for r in with_curves):
            fig = go.Figure()
            for i, r in enumerate(x for x in with_curves if x.metric == metric):
                name, color = named_curves[id(r)], FOLD_COLORS[i % len(FOLD_COLORS)]
                for j, (fold, points) in enumerate(sorted(r.curves.items())):
                    fig.add_scatter(x=[e for e, _ in points], y=[s for _, s in points], mode="lines+markers",
                                    name=html.escape(name), legendgroup=name, showlegend=j == 0, line=dict(color=color),
                                    hovertemplate=f"{html.escape(name)} fold {fold}<br>epoch %{{x}}: %{{y:.4f}}<extra></extra>")
            fig.update_layout(title=f"Validation {metric} per epoch (one colour per run, one line per fold)",
                              xaxis_title="epoch", yaxis_title=f"validation {metric}", height=480)
            figs.append(fig)
    return figs


def write_html(rows: list[RunRow], out: str | Path, curves: bool = False, title: str = "Experiments side by side") -> Path:
    """A standalone page: the leaderboard table, the CV bar chart and (``curves``) the learning curves; plotly.js inline."""
    from .report import html as h

    text = ["", "l", "l", "", "", "", "l", "l", "", "", "", "l"]  # columns of words align left, numbers right
    table = h.table(HEADER, [[h.esc(c) for c in _cells(i + 1, r)] for i, r in enumerate(rows)], cls=text)
    divs = [f.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, f in enumerate(_figures(rows, curves))]
    legend = h.note("folds: runs with the same letter have the same folds.csv (same ids in the same folds), so their "
                    "OOF files line up image for image (`ensemble` checks the rest: task, classes, data). Train time: the epochs' seconds in metrics.csv, summed over folds.")
    paths = ", ".join(str(r.path) for r in rows)
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>{GENERATOR}<title>{h.esc(title)}</title>"
            f"<style>{h.CSS}</style></head><body><h1>{h.esc(title)}</h1>{h.note(h.esc(paths))}\n"
            f"{table}{legend}\n" + "\n".join(divs) + "\n</body></html>")
    out = Path(out)
    if out.exists() and not _made_by_compare(out):
        raise CompareError(f"--html {out}: the file exists and is not a page `compare` wrote; choose another name "
                           "(a page compare wrote is refreshed in place)")
    out.parent.mkdir(parents=True, exist_ok=True)
    return write_text(out, page)


GENERATOR = "<meta name='generator' content='seg_toolkit compare'>"


def _made_by_compare(path: Path) -> bool:
    try:
        with path.open(encoding="utf-8", errors="replace") as fh:
            head = fh.read(4096)
    except OSError:
        return False
    return GENERATOR in head or "<h1>Experiments side by side</h1>" in head  # the marker, or a page from before it
