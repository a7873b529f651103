"""Ensembles are experiments: a run folder whose OOF is the weighted merge of its members' OOF.

``build_ensemble([cfg_a, cfg_b], name="ens")`` (``seg-toolkit ensemble A.yaml B.yaml --name ens``):

1. checks the members: trained runs reading the same images and targets with the same classes
   (every data key but each member's own preprocessing), the same ``folds.csv`` (id -> fold;
   otherwise an OOF image of one member was trained on by another), OOF files made as each member
   predicts, and the folds they all finished; ``ensemble.json`` keeps each member's fingerprint
   (the SHA-256 of folds.csv and of each fold's best.pt), and predicting with the ensemble after a
   member was retrained is refused;
2. chooses the weights on OOF (unless given): every point of a grid on the simplex (step
   0.1 for up to 3 members, 0.25 for 4-5, equal weights beyond), scored with the configured
   metric at ``metric.threshold``, as cv.json scores. **Guard against fitting the weights to
   noise**: the folds are split in two halves; weights chosen on one half are scored on the
   other, and the same for equal weights. The searched weights are kept only when their
   cross-half score beats that of equal weights (ties keep equal weights); both numbers are in ``ensemble.json``
   and ``cv.json``;
3. writes the merged OOF (probability or logit space: ``predict.ensemble_space``), cv.json with
   every member's score on the same images beside the ensemble's, and tunes post-processing
   on the ensemble's OOF (``postprocess.json``).

``seg-toolkit predict`` then predicts the test set with the ensemble run: each member with
its own preprocessing and TTA, merged with the same weights in the same space.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import shutil
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .config import Config, ConfigError, anchored, save_config
from .config_checks import check_run_name
from .data import Sample, load_train_samples
from .data.scored import scored_target
from .data.dataset import target_to_tensor
from .data.data_errors import DataError
from .evaluator import Evaluator, truth_objects
from .oof import ENSEMBLE_MARK, check_oof_complete, end_oof_rewrite, is_ensemble_mark, mark_oof_rewrite
from .predictor import Member
from .run_settings import check_same_training, diff_of_keys
from .models.presence import has_presence
from .files import read_json, read_oof, sha256_file, write_json, write_npy
from .run import Run
from .run_lock import run_lock
from .tensors import add_weighted, from_merge_space, probs_to_uint8, to_merge_space, uint8_to_probs

log = logging.getLogger(__name__)

__all__ = ["build_ensemble", "merge_probs", "weight_grid", "check_members_unchanged", "member_fingerprint", "DEFAULT_MEMORY_BUDGET"]

DEFAULT_MEMORY_BUDGET = 1 << 30  # member OOF arrays + targets kept in memory below this many bytes


def merge_probs(probs: Sequence[np.ndarray], weights: Sequence[float], space: str, task: str) -> np.ndarray:
    """Weighted merge of probability arrays ``(C, H, W)`` in ``prob`` or ``logit`` space (the predictor's rule: the
    members of weight 0 take no part, and one member left is its own probabilities, not their round trip through
    the logit space's clamp, which moved a weight-[1, 0] ensemble's OOF values a 1/255 step off what predict submits)."""
    active = [(w, p) for w, p in zip(weights, probs) if w > 0]
    if len(active) == 1:
        return np.asarray(active[0][1], np.float32)
    acc = None
    for w, p in active:
        acc = add_weighted(acc, w, to_merge_space(torch.from_numpy(np.asarray(p, np.float32)), space, task))
    return from_merge_space(acc, space, task).numpy()


def weight_grid(n: int) -> list[tuple[float, ...]]:
    """Points of the simplex searched for ``n`` members (equal weights first)."""
    equal = tuple([1.0 / n] * n)
    if n == 1:
        return [equal]
    steps = 10 if n <= 3 else 4 if n <= 5 else 0
    out = [equal]
    if steps:
        for combo in itertools.product(range(steps + 1), repeat=n - 1):
            if sum(combo) <= steps:
                w = tuple(c / steps for c in combo) + ((steps - sum(combo)) / steps,)
                if w not in out:
                    out.append(w)
    return out


#: data keys that are a member's own preprocessing (the predictor reads each image once per member setting), or whose
#: effect is the folds (compared as folds.csv): every other data key decides which images and targets there are and
#: what each output channel means, so the members must agree on it
MEMBER_OWN_DATA = ("data.in_channels", "data.image_range", "data.bands.files", "data.bands.frame", "data.bands.ash",
                   "data.max_image_pixels", "data.limit", "data.group_column", "data.group_pattern")


def _check_same_data(runs: list[Run], saved: list[Config]) -> None:
    """Members read the same images and targets with the same classes in the same order: a member trained on another
    data.root (images stored preprocessed, say) would be predicted on the lead's images, and a member whose
    class_names are in another order would be merged channel by channel with the wrong class."""
    import dataclasses

    def rooted(c: Config) -> Config:  # one root spelled two ways (relative, absolute) is the same root
        return dataclasses.replace(c, data=dataclasses.replace(c.data, root=os.path.normpath(os.path.abspath(c.data.root))))

    lead = rooted(saved[0])
    for run, cfg in zip(runs[1:], saved[1:]):
        diff = [line for line in diff_of_keys(lead, rooted(cfg), ("data.",)) if line.split(": ", 1)[0] not in MEMBER_OWN_DATA]
        if diff:
            raise ConfigError(f"ensemble members disagree on {diff[0].split(': ', 1)[0]}: {runs[0].dir.name} -> {run.dir.name}: "
                              f"{'; '.join(diff[:4])}. Members must read the same images and targets with the same classes "
                              "(their own in_channels, image_range, transforms, models and TTA may differ)")


def _check_member_oof(run: Run) -> None:
    """A member's OOF files must be made as the member now predicts: the ensemble tunes on those files and
    predicts with the member's settings (a run trained with ``predict.oof_tta: identity``, or an OOF made
    before ``tune --tta``)."""
    from .inference import _differs

    made = (read_json(run.cv_json) or {}).get("oof")
    now = Member.load(run).made()
    if isinstance(made, list) or (isinstance(made, dict) and _differs(made, now)):
        raise ConfigError(f"ensemble member {run.dir}: its OOF files were made with {made}, but it predicts with {now}; "
                          f"remake them first (`seg-toolkit oof {run.dir}`), so that what the ensemble tunes on is what it submits")


def member_fingerprint(run: Run, folds: list[int]) -> dict[str, Any]:
    """What identifies a member's trained models: the SHA-256 of its folds.csv and of each fold's best.pt."""
    return {"folds_csv": sha256_file(run.folds_csv), "best_pt": {str(k): sha256_file(run.best_pt(k)) for k in folds}}


def check_members_unchanged(ens: Run) -> None:
    """Refuse to predict with an ensemble whose member was retrained (or re-folded) after the ensemble was built: its
    weights and post-processing were chosen on the old member's OOF files. Ensembles built before fingerprints were
    kept pass unchecked."""
    data = read_json(ens.ensemble_json) or {}
    recorded, folds = data.get("members", []), [int(k) for k in data.get("folds", [])]
    for (run, _), entry in zip(ens.members(), recorded):
        was = entry.get("fingerprint") if isinstance(entry, dict) else None
        if not was:
            continue
        missing = [k for k in folds if not run.best_pt(k).is_file()]
        if missing:
            raise FileNotFoundError(f"ensemble {ens.dir}: member {run.dir} has no fold_{missing[0]}/best.pt, which the "
                                    "ensemble was built with; restore it, or build the ensemble again")
        now = member_fingerprint(run, folds)
        changed = (["folds.csv"] if now["folds_csv"] != was.get("folds_csv") else []) + [
            f"fold_{k}/best.pt" for k in folds if now["best_pt"].get(str(k)) != (was.get("best_pt") or {}).get(str(k))]
        if changed:
            raise ConfigError(f"ensemble {ens.dir}: member {run.dir} changed since the ensemble was built ({', '.join(changed)} "
                              "differ); its weights and post-processing were chosen on the old member's OOF files: build the "
                              "ensemble again (`seg-toolkit ensemble ... --overwrite`)")


def _check_members(cfgs: list[Config]) -> tuple[list[Run], list[int], dict[str, int]]:
    runs = [Run.of(c) for c in cfgs]
    if len({r.dir.resolve() for r in runs}) != len(runs):
        raise ConfigError("ensemble: the same experiment is named twice")
    for cfg, run in zip(cfgs, runs):
        if not run.config_yaml.is_file():
            raise FileNotFoundError(f"{run.dir}: no run folder; train {cfg.experiment} first")
        if run.is_ensemble:
            raise ConfigError(f"{run.dir} is an ensemble; name its member runs instead")
        check_same_training(cfg, run)
        check_oof_complete(run)
    saved = [r.config() for r in runs]
    _check_same_data(runs, saved)
    for run in runs:
        _check_member_oof(run)
    fold_maps = [r.fold_of() for r in runs]
    for r, m in zip(runs[1:], fold_maps[1:]):
        if m != fold_maps[0]:
            diff = sorted(i for i in set(m) | set(fold_maps[0]) if m.get(i) != fold_maps[0].get(i))
            raise ConfigError(
                f"ensemble members must share folds.csv: {r.folds_csv} differs from {runs[0].folds_csv} for "
                f"{len(diff)} ids (e.g. {diff[:3]}); an OOF image of one member would be a training image of another. "
                "Train the members with the same data, folds.method, folds.n_splits and folds.seed")
    done = [set(r.trained_folds()) for r in runs]
    common = sorted(set.intersection(*done))
    if not common:
        raise FileNotFoundError(f"ensemble: no fold is finished in every member ({', '.join(f'{r.dir.name}: {sorted(d)}' for r, d in zip(runs, done))})")
    if any(d != set(common) for d in done):
        log.warning("ensemble: using folds %s, the ones every member finished", common)
    return runs, common, fold_maps[0]


class _OOF:
    """Members' OOF probabilities and the targets, image by image: kept in memory as read (the uint8 files and the
    target arrays, made float per pass) while they fit ``budget`` bytes, else read again on each pass."""

    def __init__(self, cfg: Config, runs: list[Run], folds: list[int], fold_of: dict[str, int], budget: int) -> None:
        self.cfg, self.runs, self.budget = cfg, runs, budget
        self.items = [(s, fold_of[s.id]) for s in load_train_samples(cfg) if fold_of.get(s.id) in folds]
        if not self.items:
            raise FileNotFoundError(f"ensemble: the folds {folds} hold no training image")
        for r in runs:
            for s, _ in self.items:
                if not r.oof_path(s.id).is_file():
                    raise FileNotFoundError(f"{r.oof_path(s.id)}: OOF file missing; remake with `seg-toolkit oof` for {r.dir}")
        self._cache: list | None = None

    def release(self) -> None:
        """Drop what is kept: cv and tune, which come next, keep their own."""
        self._cache = None

    def _read(self, s: Sample) -> tuple[list[np.ndarray], np.ndarray]:
        stored = [read_oof(r.oof_path(s.id)) for r in self.runs]
        for r, q in zip(self.runs[1:], stored[1:]):
            if q.shape != stored[0].shape:  # an image replaced between two members' trainings, or a damaged file
                raise DataError(f"{r.oof_path(s.id)}: OOF probabilities of shape {q.shape} (classes, height, width); "
                                f"{self.runs[0].oof_path(s.id)} has {stored[0].shape}: the members predicted image "
                                f"{s.id!r} at other sizes; remake their OOF files on the same images "
                                "(`seg-toolkit oof CONFIG`)")
        return stored, scored_target(s, self.cfg, stored[0].shape[-2:])

    def __iter__(self):
        task = self.cfg.data.task
        if self._cache is not None:
            for s, k, stored, target in self._cache:
                yield s, k, [uint8_to_probs(q) for q in stored], target_to_tensor(target, task)[None]
            return
        cache, held = [], 0
        for s, k in self.items:
            stored, target = self._read(s)
            if cache is not None:
                held += sum(q.nbytes for q in stored) + target.nbytes
                if held <= self.budget:
                    cache.append((s, k, stored, target))
                else:  # over the budget: read again on the next pass
                    cache = None
            yield s, k, [uint8_to_probs(q) for q in stored], target_to_tensor(target, task)[None]
        self._cache = cache

def _score_weights(oof: _OOF, grid: list[tuple[float, ...]], space: str, halves: list[set[int]]) -> list[dict[str, Any]]:
    """Score of each weight vector on all OOF images and on each half of the folds."""
    cfg = oof.cfg
    task = cfg.data.task
    evals = [Evaluator.of(cfg) for _ in grid]  # each image scored once, with its fold: the halves are groups of folds
    for s, k, probs, target in tqdm(oof, total=len(oof.items), desc=f"ensemble: {len(grid)} weightings", leave=False, disable=None):
        objects = truth_objects(evals[0], s, cfg, target.shape[-2:])
        for w, ev in zip(grid, evals):
            ev.update(torch.from_numpy(merge_probs(probs, w, space, task))[None], target, objects, group=k)
    return [{"weights": list(w), "score": float(ev.compute()["score"]),
             "half_scores": [float(ev.compute(groups=[k for k in half if k in ev.groups()])["score"]) for half in halves]}
            for w, ev in zip(grid, evals)]


def _best(rows: list[dict[str, Any]], key) -> dict[str, Any]:
    """Highest score; ties (and NaN) go to the earlier row (equal weights come first)."""
    best = rows[0]
    for r in rows[1:]:
        if not math.isnan(key(r)) and (math.isnan(key(best)) or key(r) > key(best) + 1e-12):
            best = r
    return best


def _choose_weights(rows: list[dict[str, Any]], folds: list[int], halves: list[set[int]]) -> dict[str, Any]:
    equal = rows[0]
    chosen = _best(rows, lambda r: r["score"])
    report: dict[str, Any] = {"searched": len(rows), "best_in_sample": chosen, "equal_weights": equal}
    if len(halves) == 2:
        cross, cross_equal = [], []
        for h in (0, 1):
            pick = _best(rows, lambda r, h=h: r["half_scores"][h])
            cross.append({"chosen_on_folds": sorted(halves[h]), "weights": pick["weights"],
                          "score_on_other_half": pick["half_scores"][1 - h]})
            cross_equal.append(equal["half_scores"][1 - h])
        searched = float(np.mean([x["score_on_other_half"] for x in cross]))
        equal_score = float(np.mean(cross_equal))
        keep = not math.isnan(searched) and searched > equal_score
        report.update(cross_half=cross, cross_half_score=searched, cross_half_equal_score=equal_score,
                      decision=("searched weights: they beat equal weights on the held-out half" if keep else
                                "equal weights: the searched weights did not beat them on the held-out half"))
        if not keep:
            chosen = equal
    else:
        report["decision"] = "best in-sample weights (one fold only: no cross-half check possible)"
    report["chosen"] = chosen
    # the OOF score (cv.json's, and what tune cross-fits) of weights chosen on these same images, among `searched`:
    # the weights' own luck is in it; the held-out halves' score (cross_half_score) is not
    report["in_sample"] = chosen is not equal
    return report


def build_ensemble(cfgs: list[Config], name: str | None = None, weights: Sequence[float] | None = None,
                   space: str | None = None, overwrite: bool = False,
                   memory_budget: int = DEFAULT_MEMORY_BUDGET) -> dict[str, Any]:
    """Make the ensemble run ``runs/<name>/`` of trained runs (see the module doc); returns its cv.json.

    The members' locks are held throughout (:mod:`seg_toolkit.run_lock`, taken in path order): their OOF files,
    cv.json and postprocess.json are read while no ``tune --tta``, ``oof`` or fold job rewrites them."""
    with ExitStack() as hold:
        for run in sorted({Run.of(c) for c in cfgs}, key=lambda r: str(r.dir.resolve())):
            hold.enter_context(run_lock(run, "seg-toolkit ensemble: reading its OOF files"))
        return _build_ensemble(cfgs, name, weights, space, overwrite, memory_budget)


def _build_ensemble(cfgs: list[Config], name: str | None, weights: Sequence[float] | None, space: str | None,
                    overwrite: bool, memory_budget: int) -> dict[str, Any]:
    if len(cfgs) < 2:
        raise ConfigError("ensemble: name at least two trained experiments")
    lead = cfgs[0]
    space = space or lead.predict.ensemble_space
    if space not in ("prob", "logit"):
        raise ConfigError(f"--space: {space!r} is not one of 'prob', 'logit'")
    if weights is not None:
        if len(weights) != len(cfgs):
            raise ConfigError(f"--weights: {len(weights)} weights for {len(cfgs)} experiments")
        if not all(math.isfinite(w) and w >= 0 for w in weights) or sum(weights) <= 0:
            raise ConfigError(f"--weights: expected finite non-negative weights with a positive sum, got {list(weights)}")
    runs, folds, fold_of = _check_members(cfgs)
    name = name or "ens_" + "_".join(c.experiment for c in cfgs)
    check_run_name(name, "--name")
    out = Run(Path(lead.runs_dir) / name)
    if out.dir.exists() and any(out.dir.iterdir()):
        if not (out.is_ensemble or _stopped_ensemble(out)):
            raise FileExistsError(f"{out.dir} exists and is not an ensemble run; choose another --name")
        if not overwrite:
            raise FileExistsError(f"{out.dir} exists; pass --overwrite to make the ensemble again, or another --name")
    ens_cfg = _ensemble_config(lead, name, space)

    oof = _OOF(ens_cfg, runs, folds, fold_of, memory_budget)
    halves = [set(folds[0::2]), set(folds[1::2])] if len(folds) >= 2 else []
    grid = weight_grid(len(runs)) if weights is None else [tuple(w / sum(weights) for w in weights)]
    one_hot = [tuple(float(i == j) for j in range(len(runs))) for i in range(len(runs))]
    rows = _score_weights(oof, grid + [w for w in one_hot if w not in grid], space, halves)
    member_rows = [next(r for r in rows if tuple(r["weights"]) == w) for w in one_hot]
    rows = [r for r in rows if tuple(r["weights"]) in grid]
    search = _choose_weights(rows, folds, halves) if weights is None else {"given": list(grid[0]), "chosen": rows[0]}
    chosen = [float(w) for w in search["chosen"]["weights"]]
    log.info("ensemble %s: weights %s (%s), OOF %s %.5f", name, chosen, search.get("decision", "given"),
             ens_cfg.metric.name, search["chosen"]["score"])

    if out.dir.exists() and any(out.dir.iterdir()):  # --overwrite: the old ensemble goes once the new one is chosen
        out.remove(lead)
    out.dir.mkdir(parents=True, exist_ok=True)
    # the ensemble's own lock while it is made: a predict meanwhile is told it is being made, not that it stopped
    with run_lock(out, f"seg-toolkit ensemble --name {name}: making it"):
        # until its OOF files and cv.json are written the run is marked: a stopped build is refused by predict, tune and
        # bundle, which say to run the ensemble again (it had predicted with 20 of 64 OOF files, untuned, exit 0)
        mark_oof_rewrite(out, ENSEMBLE_MARK + name)
        # how each member's OOF files were made: predict warns when a member predicts otherwise later (tune --tta,
        # oof --set)
        members = [{"run": out.member_ref(r), "weight": w, "oof": (read_json(r.cv_json) or {}).get("oof"),
                    "fingerprint": member_fingerprint(r, folds)} for r, w in zip(runs, chosen)]
        write_json(out.ensemble_json, {"members": members, "space": space, "folds": folds, "weights_search": search})
        save_config(anchored(ens_cfg), out.config_yaml)
        shutil.copyfile(runs[0].folds_csv, out.folds_csv)
        if runs[0].fold_balance_csv.is_file():
            shutil.copyfile(runs[0].fold_balance_csv, out.fold_balance_csv)
        # the classifier's presence, as the predictor merges it: probability space, over the members that have one
        with_presence = [(r, w) for r, w in zip(runs, chosen) if has_presence(r.config()) and w > 0]
        presence_total = sum(w for _, w in with_presence)
        for s, _, probs, _ in tqdm(oof, total=len(oof.items), desc="ensemble OOF", leave=False, disable=None):
            write_npy(out.oof_path(s.id), probs_to_uint8(merge_probs(probs, chosen, space, ens_cfg.data.task)))
            if with_presence:
                merged = None  # as the predictor merges it (add_weighted, the members' order)
                for r, w in with_presence:
                    merged = add_weighted(merged, w / presence_total,
                                          torch.from_numpy(uint8_to_probs(read_oof(r.oof_presence_path(s.id), ndim=1))))
                write_npy(out.oof_presence_path(s.id), probs_to_uint8(merged))

        oof.release()
        from .cv import compute_cv

        member_info = []
        for r, row in zip(runs, member_rows):
            pp = read_json(r.postprocess_json) or {}
            # score: on the ensemble's OOF images; own_tuned_*: the member's own tuning, on its own folds' images
            member_info.append({"run": str(r.dir), "weight": chosen[runs.index(r)], "score": row["score"],
                                "own_tuned_score": pp.get("after"), "own_tuned_folds": pp.get("folds")})
        cv = compute_cv(ens_cfg, out, extra={"ensemble": {"members": member_info, "space": space, "weights": chosen,
                                                          "weights_search": search}, "pseudo": _members_pseudo(runs)})
        end_oof_rewrite(out)  # stopped while tuning: predict refuses a cv.json without the tuning it asks for
        if ens_cfg.postprocess.tune:
            from .tune import tune_postprocess

            cv["postprocess"] = tune_postprocess(ens_cfg, out.dir)
        return cv


def _stopped_ensemble(run: Run) -> bool:
    """``run`` is an ensemble whose build stopped before ``ensemble.json`` was written (only its mark is there)."""
    return is_ensemble_mark((read_json(run.oof_incomplete_json) or {}).get("command"))


def _members_pseudo(runs: list[Run]) -> dict[str, Any] | None:
    """The members' pseudo-labels as the ensemble's cv.json records them (None when no member used any): a member whose
    labels could carry a fold's validation images into its training (``leaky``) makes the ensemble's CV optimistic too."""
    info = {r.dir.name: (read_json(r.cv_json) or {}).get("pseudo") for r in runs}
    info = {name: p for name, p in info.items() if p}
    if not info:
        return None
    leaky = sorted(name for name, p in info.items() if isinstance(p, dict) and p.get("leaky"))
    if leaky:
        log.warning("ensemble: member(s) %s trained on pseudo-labels that are not per fold (pseudo.leaky): the ensemble's "
                    "OOF score, weights and tuning inherit their optimism", leaky)
    return {"members": info, "leaky": bool(leaky)}


def _ensemble_config(lead: Config, name: str, space: str) -> Config:
    """The ensemble run's config: the lead member's (data, metric, post-processing grids, submission)."""
    import dataclasses

    return dataclasses.replace(lead, experiment=name, predict=dataclasses.replace(lead.predict, ensemble_space=space),
                               submission=dataclasses.replace(lead.submission, path=None))  # submissions/<name>.csv
