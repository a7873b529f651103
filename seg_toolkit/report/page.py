"""The report page: :func:`build_report` writes ``<run>/report/`` from the run folder.

``index.html`` (self-contained), the PNGs it shows (``confusion.png``, ``learning_curves.png``,
``overlays_best.png``, ``overlays_worst.png``; each chart drawn once, the file and the
picture in the page are the same bytes) and ``report.json`` (the numbers behind the page).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..data import DataError
from ..plots import learning_curves, metric_label, write_figure
from ..files import read_json, write_json, write_text
from ..instance_metrics import INSTANCE_METRICS
from ..run import Run
from . import html as h
from .data import ReportData, compute_report_data, per_class_rows
from .figures import confusion_figure
from .overlays import legend_colors, overlays_figure, prediction_rule
from .summary import Example, baseline_words
from ..metrics import PER_IMAGE_METRICS
from ..postprocess import params_in_use
from ..track import tracker_sentence

log = logging.getLogger(__name__)

__all__ = ["build_report"]

# the files of run.report_dir (named in Run.REPORT_FILES)
INDEX, REPORT_JSON, CONFUSION_PNG, CURVES_PNG, _BEST, _WORST = Run.REPORT_FILES
OVERLAYS_PNG = {"best": _BEST, "worst": _WORST}


def _epoch(f: dict[str, Any]) -> str:  # 1-based in done.json, as in metrics.csv and the curves
    kept = f.get("averaged_epochs")
    if isinstance(kept, list) and kept:  # train.average_best: best.pt, what the OOF and predict use, is their mean
        return "mean of " + ", ".join(str(int(e)) for e in kept)
    e = f.get("best_epoch")
    return str(int(e)) if isinstance(e, int) and e >= 1 else "–"


def _val_score(f: dict[str, Any]) -> str:
    """The validation score of the fold's ``best.pt``: the average's under ``train.average_best`` (the single best
    epoch's beside it), else the best epoch's."""
    if isinstance(f.get("averaged_val_score"), (int, float)):
        return f"{h.fmt(f['averaged_val_score'])} (single best {h.fmt(f.get('single_best_val_score', f.get('best_val_score')))})"
    return h.fmt(f.get("best_val_score"))


def ensemble_sentence(ens: dict[str, Any]) -> str:
    """``ensemble of runs a, b (weights 0.6, 0.4; merged in prob space)`` from ``ensemble.json``."""
    members = ens.get("members", [])
    runs = ", ".join(str(m.get("run")) for m in members)
    weights = ", ".join(h.fmt(m.get("weight"), ".3g") for m in members)
    space = f"; merged in {ens['space']} space" if ens.get("space") else ""
    return f"ensemble of runs {runs} (weights {weights}{space})"


def _oof_made(cv: dict) -> str:
    """How the OOF files were predicted (the TTA that predict uses, unless predict.oof_tta said identity)."""
    made = cv.get("oof")
    if not isinstance(made, dict):
        return ""
    return f"; OOF predicted with TTA {' + '.join(made.get('tta') or [])} ({made.get('merge')}), scales {made.get('scales')}"


def _summary_html(d: ReportData) -> str:
    cfg = d.cfg
    label = metric_label(d.metric)
    parts = [f"<p><span class='big'>{h.esc(label)} {h.fmt(d.score)}</span> &nbsp; <span class='muted'>CV over "
             f"{d.n_images} OOF images of fold(s) {d.folds}; {h.esc(baseline_words(d.task, d.class_names)[0])} "
             f"{h.fmt(d.baseline_empty)}; "
             f"pixel accuracy {h.fmt(d.pixel_accuracy)}</span></p>"]
    if d.cv:
        parts.append(h.note(f"cv.json: {h.esc(d.cv.get('metric'))} {h.fmt(d.cv.get('score'))}, fold mean "
                            f"{h.fmt(d.cv.get('fold_mean'))} ± {h.fmt(d.cv.get('fold_std'))}" + _oof_made(d.cv)))
    search = (d.ensemble or {}).get("weights_search") or {}
    if search.get("in_sample"):  # the ensemble's CV is the best of the weightings tried on these very images
        held = search.get("cross_half_score")
        parts.append(f"<p class='warn'>In-sample: the ensemble's weights were chosen on these OOF images among "
                     f"{h.esc(search.get('searched'))} weightings, so its CV carries their luck"
                     + (f"; chosen on one half of the folds, the other half scores {h.fmt(held)}"
                        if isinstance(held, (int, float)) else "") + ".</p>")
    tuned = read_json(Run(d.run_dir).postprocess_json)
    if tuned and "after" in tuned:
        kept = (tuned.get("search") or {}).get("chosen")
        parts.append(h.note(f"after post-processing tuned on these OOF files (postprocess.json): {h.esc(label)} "
                            f"{h.fmt(tuned.get('before'))} -> {h.fmt(tuned.get('after'))}"
                            + (f" ({h.esc(kept)} search)" if kept else "") + "; "
                            f"{h.esc(str(params_in_use(tuned.get('params') or {}, d.task)))}"))
        edges = tuned.get("at_grid_edge") or {}
        if edges:  # the best may lie beyond what was searched
            said = "; ".join(f"{h.esc(k)} of {', '.join(h.esc(d.class_names[c]) for c in cs if c < len(d.class_names))}"
                             for k, cs in edges.items())
            parts.append(f"<p class='warn'>Chosen at the end of the searched grid: {said}. The best may lie beyond it: "
                         "widen postprocess.*_grid there and tune again.</p>")
        cf = tuned.get("cross_fitted")
        if isinstance(cf, dict) and isinstance(cf.get("score"), (int, float)):
            parts.append(h.note(f"cross-fitted: {h.esc(label)} {h.fmt(cf['score'])} with each image post-processed as tuning on "
                                f"the other images chose ({h.esc(str(cf.get('groups')))}"
                                + ("; the search too: " + h.esc(", ".join(map(str, cf["searches"]))) if cf.get("searches") else "")
                                + "): the tuned score without the tuning's own luck"))
        gate = next((s for s in tuned.get("steps", []) if s.get("step") == "empty_gate" and s.get("best_by_source")), None)
        if gate and len(gate["best_by_source"]) > 1:  # a model with the empty-mask classifier: the two gates compared
            best = "; ".join(f"{h.esc(src)} {', '.join(h.fmt(v) for v in vals)}" for src, vals in gate["best_by_source"].items())
            parts.append(h.note(f"empty gate on OOF, best {h.esc(label)} per source (per class): {best}"))
    tracked = tracker_sentence(d.run_dir)  # tracker.json: where the run is tracked (MLflow run id and store)
    if tracked:
        parts.append(h.note(h.esc(tracked[0]) + (f" (<a href='{h.esc(tracked[1])}'>open in a local MLflow UI</a>)" if tracked[1] else "")))
    if d.ensemble is not None:
        parts.append(h.table(["fold", f"OOF {h.esc(label)}"], [[str(f["fold"]), h.fmt(f.get("oof_score"))] for f in d.per_fold]))
    else:
        rows = [[str(f["fold"]), h.fmt(f.get("oof_score")), _val_score(f), _epoch(f),
                 h.fmt(f.get("epochs_run")) + (" (early stop)" if f.get("stopped_early") else ""),
                 h.fmt(f.get("n_train")), h.fmt(f.get("n_valid"))] for f in d.per_fold]
        # validation during training predicts without TTA; the OOF files with predict's TTA
        parts.append(h.table(["fold", f"OOF {h.esc(label)}", "best.pt val score (no TTA)", "best.pt epoch", "epochs run",
                              "train images", "valid images"], rows))
    m = cfg.model
    setup = [["task", f"{cfg.data.task}, {cfg.data.num_classes} class(es), layout {cfg.data.layout}"]]
    if d.ensemble is None:
        setup += [
            ["model", f"{m.arch}" + (f" / {m.encoder}" if m.encoder else "") + (f" ({m.encoder_weights})" if m.encoder_weights else "")],
            ["loss", ", ".join(f"{k} {v:g}" for k, v in cfg.loss.items())],
            ["training", f"{cfg.train.epochs} epoch(s)"
                         + (f" at most, time budget {cfg.train.time_budget} (the epochs that fit it: column 'epochs run')"
                            if cfg.train.time_budget is not None else "")
                         + (f", early stopping after {cfg.train.early_stopping_patience} epoch(s) without improvement"
                            if cfg.train.early_stopping_patience is not None else "")
                         + f", batch {cfg.train.batch_size}, {cfg.optim.name} lr {cfg.optim.lr:g}, "
                         f"scheduler {cfg.scheduler.name}, resize {cfg.transforms.resize or 'native'}"],
        ]
    setup += [
        ["metric", d.metric + _metric_settings(cfg, d.metric)],
        ["folds", f"{cfg.folds.n_splits}-fold {cfg.folds.method}, seed {cfg.folds.seed}"],
        ["data", str(cfg.data.root)],
    ]
    parts.append(h.table(["setting", "value"], [[k, h.esc(v)] for k, v in setup], left=2))
    return "\n".join(parts)


def _metric_settings(cfg: Any, metric: str) -> str:
    """The ``metric.*`` settings that decide the score: empty_score for a per-image metric, the threshold for sigmoid
    outputs (a multiclass argmax has none)."""
    said = [f"empty_score {cfg.metric.empty_score}"] if metric in PER_IMAGE_METRICS else []
    said += [f"threshold {cfg.metric.threshold:g}"] if cfg.data.task != "multiclass" else []
    return f" ({', '.join(said)})" if said else ""


def _class_table_html(d: ReportData) -> str:
    rows = []
    shown = legend_colors(d.cfg, d.class_names, d.class_colors)  # as drawn; grey for a class the overlays leave undrawn
    for c, r in enumerate(per_class_rows(d)):
        sw = f"<span class='swatch' style='background:rgb{tuple(int(v) for v in shown[c])}'></span>"
        row = [sw + h.esc(r["class"]), h.fmt(r["iou"]), h.fmt(r["dice"]), h.fmt(r["true_frequency"], ".3%"),
               h.fmt(r["pred_frequency"], ".3%"), f"{r['images_with_class']} / {d.n_images}",
               f"{r['images_predicted']} / {d.n_images}"]
        if d.image_level is not None:
            row += [f"{r['empty_correct']} / {r['empty_images']}", str(r["empty_false_positive"]), str(r["missed_images"])]
        rows.append(row)
    header = ["class", "IoU", "dice", "pixel freq. (truth)", "pixel freq. (pred.)", "images with class", "images predicted"]
    if d.image_level is not None:
        header += ["empty images kept empty", "false alarms (empty truth)", "missed images (empty pred.)"]
    return h.table(header, rows) + h.note(
        "IoU and dice from pixels summed over all OOF images (void excluded); frequency = class pixels / non-void "
        f"pixels. Void pixels: {d.void_pixels:,}.")


def _examples_table(d: ReportData, examples: list[Example]) -> str:
    if examples and all(ex.objects is not None for ex in examples):  # an object-matching metric: objects, not pixels
        rows = [[h.esc(ex.id), str(ex.fold), h.fmt(ex.score), *(f"{n:,}" for n in ex.objects),
                 f"{ex.objects[0] - ex.objects[2]:,}", f"{ex.objects[1] - ex.objects[2]:,}"] for ex in examples]
        return h.table(["id", "fold", "score", "truth objects", "predicted objects", "matched (IoU > 0.5)",
                        "missed", "unmatched predictions"], rows)
    rows = [[h.esc(ex.id), str(ex.fold), h.fmt(ex.score), f"{ex.true_pixels:,}", f"{ex.error_pixels:,}"] for ex in examples]
    if d.task == "multiclass":
        header = ["id", "fold", "score", f"true pixels (not {h.esc(d.class_names[0])})", "wrong pixels"]
    else:
        header = ["id", "fold", "score", "true foreground pixels", "wrong pixels (FP + FN)"]
    return h.table(header, rows)


def _ensemble_html(d: ReportData) -> str:
    assert d.ensemble is not None
    # each member's score on the ensemble's OOF images as cv.json recorded it when the ensemble was made (its members
    # in ensemble.json's order; matched by name, cv.json's path never met ensemble.json's ../<member>, and the page
    # showed the member's own cv.json, on other folds' images too), else its own cv.json, said so
    known = ((d.cv or {}).get("ensemble") or {}).get("members", [])
    rows = []
    for i, m in enumerate(d.ensemble.get("members", [])):
        # a score cv.json holds as null (NaN, standard JSON) is a score: a dash, not the member's own cv.json
        mine = known[i] if i < len(known) and isinstance(known[i], dict) else {}
        score, own = (mine["score"], False) if "score" in mine else (None, True)
        if own:
            try:
                score = (read_json(Run(d.run_dir / str(m.get("run", ""))).cv_json) or {}).get("score")
            except Exception:  # a member moved or damaged: its score is only informative
                score = None
        rows.append([h.esc(m.get("run")), h.fmt(m.get("weight"), ".3g"),
                     h.fmt(score) + (" (its own cv.json)" if own and score is not None else "")])
    sentence = ensemble_sentence(d.ensemble)
    return (f"<p>{h.esc(sentence[0].upper() + sentence[1:])}. "
            "An ensemble is not trained, so it has no learning curves; see its members' reports.</p>"
            + h.table(["member run", "weight", "member CV score on the ensemble's OOF images"], rows))


def _overlay_sections(d: ReportData, out: Path) -> list[tuple[str, str]]:
    problem = d.data_problem
    sections = []
    if problem is None:
        try:
            for kind, examples in (("best", d.best), ("worst", d.worst)):
                fig = overlays_figure(d, examples, f"{kind} {len(examples)} OOF images by {d.image_score}")
                png = write_figure(fig, out / OVERLAYS_PNG[kind])
                ranked = f"Ranked by {h.esc(d.image_score)}"
                if kind == "best" and d.task != "multiclass":
                    ranked += ("; images empty in both truth and prediction (perfect by definition, counted in the "
                               "table above) are shown last among the best")
                colours = ("Each truth and predicted object is green when matched with one of the other side at IoU > 0.5, "
                           "red when not; dark lines part touching objects; void is grey." if d.metric in INSTANCE_METRICS
                           else "Colours are the classes' (filled at 40%, outlined), void's as the legend gives it.")
                steps = ("class weights and minimum areas" if d.task == "multiclass"
                         else "threshold, minimum area and empty gate")
                shown = (f"The prediction is the OOF probabilities as the CV scores them ({prediction_rule(d.cfg)}, not post-processed): "
                         f"the submission applies postprocess.json's {steps} on top.")
                sections.append((f"{kind.capitalize()} OOF images", h.note(f"{ranked}. {h.esc(colours)} {h.esc(shown)}")
                    + h.png_tag(png, f"{kind} overlays") + _examples_table(d, examples)))
            return sections
        except (DataError, OSError) as e:  # the data changed since the summary was made
            problem = f"an image or target of the examples cannot be read ({e})"
    for name in OVERLAYS_PNG.values():  # never leave overlays of an earlier report beside this one
        (out / name).unlink(missing_ok=True)
    sentence = f"The best and worst OOF images are not shown: {problem}; everything else on this page comes from the run folder."
    log.warning("report: %s", sentence)
    listed = "".join(f"<h3>{kind}</h3>" + _examples_table(d, ex) for kind, ex in (("best", d.best), ("worst", d.worst)))
    return [("OOF images", f"<p class='warn'>{h.esc(sentence)}</p>" + listed)]


def build_report(run_dir: Path, n_examples: int = 4) -> Path:
    """Write ``run_dir/report/index.html`` (self-contained), its PNGs and ``report.json``; return the page's path.

    Works from the run folder alone: ``oof_summary.json`` holds what needs the targets
    (it is written first when absent and the training data can be read). Without the data
    the page says so and leaves out only the overlays. ``n_examples``: how many best and
    how many worst OOF images get overlays (0 = none).
    """
    d = compute_report_data(Path(run_dir), n_examples)
    run = d.run
    out = run.report_dir
    out.mkdir(parents=True, exist_ok=True)

    sections = [("CV summary", _summary_html(d)), ("Per class", _class_table_html(d))]
    png = write_figure(confusion_figure(d), out / CONFUSION_PNG)
    sections.append(("Confusion", h.png_tag(png, "confusion") + h.note(
        "Rows are the true class; each row sums to 100% of that class's non-void pixels." if d.task == "multiclass" else
        "TP / FP / FN pixels of each class's channel; the image-level columns of the table above count whole images "
        "(empty truth vs. empty prediction).")))
    if d.ensemble is not None:
        (out / CURVES_PNG).unlink(missing_ok=True)
        sections.append(("Ensemble", _ensemble_html(d)))
    else:
        png = write_figure(learning_curves(run.dir), out / CURVES_PNG)
        sections.append(("Learning curves", h.png_tag(png, "learning curves")))
    if n_examples > 0:
        sections += _overlay_sections(d, out)
    else:
        for name in OVERLAYS_PNG.values():
            (out / name).unlink(missing_ok=True)

    body = "\n".join(h.section(title, content) for title, content in sections)
    page = write_text(out / INDEX, h.page(f"Report: {run.dir.name}", body, subtitle=str(run.dir.resolve()),
                                          warnings=d.warnings))
    write_json(out / REPORT_JSON, d.to_json())
    log.info("report written to %s", page)
    return page
