"""Choose the TTA transforms and merge mode by out-of-fold score: ``run_dir/tta.json``.

``choose_tta(cfg)`` predicts each completed fold's validation images (from ``folds.csv``)
with that fold's ``best.pt`` under every candidate TTA set and merge mode, through the
run's :class:`~seg_toolkit.predictor.Predictor` (its preprocessing, scales and tiles). Each
candidate's OOF probabilities are written to a scratch folder, and post-processing is tuned
on THEM (:func:`seg_toolkit.tune.tune_postprocess`): a candidate is scored by what it would
submit, not by thresholds tuned for other probabilities. The winner's files become the
run's ``oof/``, its tuning ``postprocess.json``, and the pair ``tta.json``, which
:func:`seg_toolkit.run_settings.tta_settings` reads, so ``predict``, ``ensemble`` and
``evaluate`` follow it; cv.json is rescored. Test images are never read.

Three scores are reported for every candidate: ``untuned`` (the config's post-processing),
``score`` (tuned on its own OOF, which decides) and ``cross_fitted`` (each group of OOF images
post-processed with what was tuned on the others, :mod:`seg_toolkit.tune_crossfit`; None with
``postprocess.cross_fit: false`` or too few images). The cross-fitted score does not decide: it
scores parameters tuned on a fraction of the images, noisier than the ones submitted, and on the
demo (64 OOF images) it chose identity (0.881 cross-fitted, 0.891 tuned) over d4 (0.872, 0.898),
which scored 0.864 against d4's 0.888 on the hidden test. Read it beside ``score`` for how much of
a candidate's tuned gain is luck. The winner's ``postprocess.json`` is its full tuning report,
cross-fitted score included, as ``tune`` writes it.

Work is shared: for each batch, every distinct (transform, scale) variant over all
candidates is run through the model once (batched like :func:`~seg_toolkit.tta.tta_predict`,
at most ``predict.max_tta_batch`` images per forward pass) and its de-augmented logits
are merged for each (candidate, merge) with :func:`~seg_toolkit.tta.merge_logits`. So
``identity`` runs once, not once per candidate and merge mode. Memory holds one batch's
logits per distinct variant.

Ties (equal tuned score) go to the candidate with fewer transforms, then to the earlier one
(candidates in the order given, merge modes in the order given).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Sequence

from tqdm.auto import tqdm

from .config import Config, ConfigError
from .errors import closest
from .data import load_train_samples
from .data.folds import read_folds, split_fold
from .evaluator import resolve_metric_name
from .files import read_json, write_json
from .run import Run
from .run_lock import run_lock
from .tta import MERGE_MODES, expand_tta
from .tune_crossfit import REST, nested_choice
from .tune_tables import EPS

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_CANDIDATES", "DEFAULT_MERGES", "choose_tta", "TTA_FILE"]

DEFAULT_CANDIDATES: list[list[str]] = [["identity"], ["identity", "hflip"], ["identity", "hflip", "vflip"], ["d4"]]
DEFAULT_MERGES: list[str] = ["mean_prob", "mean_logit"]
TTA_FILE = "tta.json"


def _check_candidates(candidates: Sequence[Sequence[str]], merges: Sequence[str]) -> tuple[list[list[str]], list[str]]:
    if isinstance(merges, str):
        merges = [merges]
    cands = [[candidate] if isinstance(candidate, str) else list(candidate) for candidate in candidates]
    if not cands or not merges:
        raise ConfigError("choose_tta: give at least one TTA candidate and one merge mode")
    for c in cands:
        expand_tta(c)  # names checked, with the closest valid one in the error
    for m in merges:
        if m not in MERGE_MODES:
            close = closest(m, MERGE_MODES)
            raise ConfigError(f"unknown merge mode {m!r}{f' (did you mean {close!r}?)' if close else ''}; "
                              f"choices: {', '.join(MERGE_MODES)}")
    return cands, list(dict.fromkeys(merges))


def _better(score: float, n_transforms: int, best: tuple[float, int] | None) -> bool:
    """Strictly higher score, or the same score with fewer transforms (NaN never wins)."""
    if math.isnan(score):
        return False
    if best is None or math.isnan(best[0]):
        return True
    # within EPS as every search compares (tune_tables.better): a bigger set whose only gain is summation noise loses
    tie = abs(score - best[0]) <= EPS
    return (not tie and score > best[0]) or (tie and n_transforms < best[1])


def _nested_cross_fitted(inner: list[dict], scores: list[dict]) -> dict | None:
    """The cross-fitted score of tune --tta's choice itself: each group of OOF images scored through the TTA set
    (and its post-processing) that the other groups chose, each set's parameters tuned without the group and scored
    on the others as the choice is made on all of them (a tie to fewer transforms). None without cross-fitting."""
    if not inner or any("crossed" not in c for c in inner):
        return None
    rest = [c["crossed"][REST] for c in inner]

    def better(g: int, i: int, j: int) -> bool:
        return _better(rest[i][g], scores[i]["n_transforms"], (rest[j][g], scores[j]["n_transforms"]))

    score, picks = nested_choice(inner[0]["groups"], [c["crossed"] for c in inner], better)
    return {"score": score, "picks": [[scores[i]["tta"], scores[i]["merge"]] for i in picks]}


def choose_tta(
    cfg: Config,
    run_dir: str | Path | None = None,
    candidates: Sequence[Sequence[str]] | None = None,
    merges: Sequence[str] | None = None,
) -> dict:
    """Score every (TTA set, merge mode) by its tuned OOF score; make the winner the run's OOF. With the default
    candidates, the run's own setting (its ``tta.json``, else ``predict.tta`` / ``predict.merge``) is one of them.

    Returns what ``tta.json`` holds: ``tta`` and ``merge`` (the choice), ``score`` (its OOF
    score after post-processing tuned on its own probabilities), ``cross_fitted`` (that score
    cross-fitted, or None), ``metric``, ``scores`` (one entry per pair: ``tta``, ``merge``,
    ``n_transforms``, ``score`` (tuned), ``untuned`` (with the config's post-processing),
    ``cross_fitted``, ``fold_scores``), ``folds``, ``n_images``, ``scales``, ``forward_passes``.
    ``predict.scales`` combine with every candidate, as in prediction.
    """
    from .cv import compute_cv
    from .oof import end_oof_rewrite, mark_oof_rewrite, save_oof
    from .predictor import Member, Predictor
    from .run_settings import check_same_training
    from .tune import tune_postprocess

    t0 = time.perf_counter()
    run = Run(run_dir) if run_dir is not None else Run.of(cfg)
    run.refuse_ensemble("seg-toolkit tune --tta")
    # the OOF files become the run's, and predict reads the run's config: scales or tiles other than the run's
    # (`tune --tta --set predict.scales=...`) would tune post-processing on probabilities predict never makes
    check_same_training(cfg, run, skip=("predict.tta", "predict.merge", "predict.oof_tta"))
    cands, merge_list = _check_candidates(candidates if candidates is not None else DEFAULT_CANDIDATES,
                                          merges if merges is not None else DEFAULT_MERGES)
    # one writer at a time: a --fold job finishing meanwhile waits, then makes its OOF files with the choice
    with run_lock(run, f"seg-toolkit tune {run.dir} --tta"):
        folds = run.trained_folds()
        if not folds:
            raise FileNotFoundError(f"{run.dir}: no completed fold (fold_*/done.json); train first")
        folds_df = read_folds(run.folds_csv)
        samples = load_train_samples(cfg)
        known = {s.id for s in samples}
        unknown = [i for i in folds_df["id"] if i not in known]
        if unknown:
            raise FileNotFoundError(f"{run.folds_csv} names {len(unknown)} ids that are not training samples (e.g. {unknown[0]!r}); "
                                    "it was made for other data")
        pairs = [(list(c), m) for c in cands for m in merge_list]
        if candidates is None:  # the run's own setting is always tried: a choice never replaces it unscored
            from .run_settings import tta_settings

            own_tta, own_merge = tta_settings(cfg, run)
            if not any(sorted(expand_tta(c)) == sorted(expand_tta(own_tta)) and m == own_merge for c, m in pairs):
                pairs.append((list(own_tta), own_merge))
        predictor = Predictor([Member.load(run, cfg=cfg)])
        scales = list(dict.fromkeys(float(s) for s in cfg.predict.scales))
        distinct = len({t for c, _ in pairs for t in expand_tta(c)}) * len(scales)
        log.info("choose_tta: %d (TTA set, merge mode) pairs on the OOF images of folds %s (%d distinct variants per image)",
                 len(pairs), folds, distinct)
        scratch = [run.tta_search_dir(i) for i in range(len(pairs))]
        n_images = 0
        try:
            for k in folds:
                _, valid = split_fold(samples, folds_df, k)
                for image_id, probs, presence, _ in tqdm(predictor.iter_candidate_probs(valid, k, pairs), total=len(valid),
                                                         desc=f"choose_tta fold {k}", leave=False, disable=None):
                    for d, p, pr in zip(scratch, probs, presence):
                        save_oof(run, image_id, p, d, presence=pr)
                    n_images += 1
            if not n_images:
                raise FileNotFoundError(f"{run.dir}: the completed folds have no validation images in {run.folds_csv}")
            scores, tuned, best, chosen_i, inner = [], [], None, None, []
            for i, (tta, merge) in enumerate(pairs):
                inner.append({})
                report = tune_postprocess(cfg, run.dir, oof_dir=scratch[i], write=False, crossfit_out=inner[-1])
                tuned.append(report)
                n_t = len(expand_tta(tta)) * len(scales)
                crossed = report["cross_fitted"]
                scores.append({"tta": tta, "merge": merge, "n_transforms": n_t, "score": report["after"],
                               "untuned": report["before"], "cross_fitted": crossed["score"] if crossed else None,
                               "fold_scores": report["fold_scores"]["after"]})
                if _better(report["after"], n_t, best):
                    best, chosen_i = (report["after"], n_t), i
            if chosen_i is None:
                raise RuntimeError("choose_tta: every candidate scored NaN (nothing could be scored)")
            chosen = scores[chosen_i]
            nested = _nested_cross_fitted(inner, scores)
            # the winner's probabilities become the run's OOF, and its tuning the run's post-processing; stopped
            # before all of it is written, the run keeps oof_incomplete.json and is refused until this runs again
            mark_oof_rewrite(run, f"seg-toolkit tune {run.dir} --tta")
            run.oof_dir.mkdir(exist_ok=True)
            for f in scratch[chosen_i].iterdir():
                if f.is_dir():  # presence/: the classifier's probabilities
                    (run.oof_dir / f.name).mkdir(exist_ok=True)
                    for g in f.iterdir():
                        g.replace(run.oof_dir / f.name / g.name)
                else:
                    f.replace(run.oof_dir / f.name)
        finally:
            run.remove(cfg, run.tta_search_root, scratch=True)
        result = {
            "tta": chosen["tta"], "merge": chosen["merge"], "score": chosen["score"], "untuned": chosen["untuned"],
            # the choice of TTA set nested too (each group's set chosen without it); the winner's own beside it
            "cross_fitted": nested["score"] if nested else chosen["cross_fitted"],
            "cross_fitted_within_choice": chosen["cross_fitted"], **({"cross_fitted_picks": nested["picks"]} if nested else {}),
            "metric": resolve_metric_name(cfg.metric.name, cfg.data.task), "scores": scores, "folds": folds,
            "n_images": n_images, "scales": scales, "forward_passes": distinct * n_images,
            "postprocess": "tuned on each candidate's own OOF probabilities",
            "seconds": round(time.perf_counter() - t0, 3),
        }
        write_json(run.tta_json, result)
        # as Member.made() records it (tile_overlap with tiles), with the chosen TTA
        made = {**predictor.members[0].made(), "tta": chosen["tta"], "merge": chosen["merge"]}
        for k in folds:
            write_json(run.done_json(k), {**(read_json(run.done_json(k)) or {}), "oof": made,
                                          "oof_amp": predictor.members[0].amp(k, predictor.device).mode})
        cv = compute_cv(cfg, run, samples)
        for k, score in zip(cv.get("folds", []), cv.get("fold_scores", [])):  # each fold's OOF score, of the new files
            if int(k) in folds:  # (the report's per-fold table read the old TTA's beside cv.json's new one)
                write_json(run.done_json(int(k)), {**(read_json(run.done_json(int(k))) or {}), "oof_score": score})
        # the tuning's record of the cv.json it was tuned beside: the one just scored on these files (the candidate's
        # tuning read the old cv.json, and report then called the fresh post-processing stale)
        post = {**tuned[chosen_i], "cv_json_score": cv["score"]}
        if nested and post.get("cross_fitted"):  # what `tune`, the report and compare read as the run's honest score
            post["cross_fitted"] = {**post["cross_fitted"], "score": nested["score"], "within_tta_choice": chosen["cross_fitted"],
                                    "tta_choice": "nested: each group's TTA set chosen by the tuned score of the others"}
        write_json(run.postprocess_json, post)
        from .tune import say_grid_edges

        say_grid_edges(cfg, post)
        end_oof_rewrite(run)  # files, tta.json, postprocess.json, done.json and cv.json agree
        cf = f", {result['cross_fitted']:.5f} cross-fitted" if result["cross_fitted"] is not None else ""
        log.info("choose_tta: %s merge=%s (%s %.5f tuned%s, %.5f untuned, on %d OOF images); wrote %s",
                 chosen["tta"], chosen["merge"], result["metric"], chosen["score"], cf, chosen["untuned"], n_images, run.tta_json)
    return result
