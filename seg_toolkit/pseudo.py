"""Pseudo-labelling: test images labelled by a trained run join the training set (``pseudo:``).

What TGS's winners, Severstal's and Contrails' top teams did: predict the unlabelled test
images with a trained experiment (a run or an ensemble), keep the confidently predicted ones,
and train a new experiment on train + pseudo-labelled images. Here:

* **Labels are what the teacher would submit**: its predictor (TTA, ensemble weights) and
  its tuned post-processing (``postprocess.json``), hard masks, encoded with the student's
  ``data.rle_*`` spec into ``runs/<student>/pseudo/fold_<k>.csv`` (one row per image: id,
  image path, confident fraction, one RLE per class), written once and reused on resume;
  ``fold_<k>.teacher.json`` beside it holds the SHA-256 of the teacher files they were made
  from (weights, config, post-processing, TTA, folds): labels of a teacher that was retrained or
  re-tuned since are refused, not reused as if they were its current ones.
* **Soft targets** (``pseudo.soft: true``, binary / multilabel): the student trains on the
  teacher's probabilities instead (before post-processing, uint8 in
  ``pseudo/fold_<k>/<id>.npy``; the CSV still lists the kept images and their hard masks).
  BCE, dice, Jaccard, Tversky and focal take them as they are; Lovasz cuts them at 0.5.
* **Confidence filter**: a pixel is confident when its probability is >= ``confidence`` or
  <= ``1 - confidence`` for every class (multiclass: its top class >= ``confidence``); an
  image is used when at least ``min_confident_fraction`` of its pixels are, the most
  confident first up to ``max_images``.
* **Honest CV**: pseudo images enter fold k's *training* set only, never a validation set,
  so OOF and CV are scored on labelled images alone. With ``per_fold: true`` (the default)
  fold k's labels come from the teacher's fold k model only, which never saw fold k's
  validation images (the teacher's ``folds.csv`` must put every image in the same fold,
  checked). With ``per_fold: false`` every fold gets the labels of all the teacher's folds,
  which carry fold k's validation images into its training through the teacher's other
  folds: the run says so in the log and in ``done.json`` / ``cv.json`` (``pseudo.leaky``).
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .config import Config, ConfigError
from .data import Sample
from .data.sample import pair_of
from .files import read_json, sha256_file, write_json, write_npy, write_text
from .run import Run
from .tensors import probs_to_uint8

log = logging.getLogger(__name__)

__all__ = ["fold_sets", "add_pseudo_labels", "pseudo_samples", "pseudo_labels_file", "confident_fraction", "pseudo_info",
           "teacher_run", "label_settings", "check_labels_unchanged"]


def confident_fraction(probs: np.ndarray, task: str, confidence: float) -> float:
    """The fraction of pixels whose prediction is confident (see the module docstring)."""
    if task == "multiclass":
        return float((probs.max(axis=0) >= confidence).mean())
    sure = (probs >= confidence) | (probs <= 1.0 - confidence)
    return float(sure.all(axis=0).mean())


def _label_rles(mask: np.ndarray, task: str, num_classes: int, spec) -> list[str]:
    """One RLE per channel the student's reader expects: classes 1..C-1 of a label map, else each channel."""
    if task == "multiclass":
        return [spec.encode((mask == c).astype(np.uint8)) for c in range(1, num_classes)]
    return [spec.encode(mask[c]) for c in range(mask.shape[0])]


def inherited_leaks(cfg: Config) -> list[str]:
    """The runs this one learns from whose CV is optimistic (their ``cv.json`` says ``pseudo.leaky``): the teacher
    (a student of labels that were not per fold, or an ensemble of such a member) and ``train.init_from``. A fold k
    that starts from, or is labelled by, a model that learned fold k's validation images at one remove is as
    optimistic as that model."""
    from .stages import init_run

    sources = [r for r in (teacher_run(cfg), init_run(cfg)) if r is not None]
    return [str(r.dir) for r in sources if ((read_json(r.cv_json) or {}).get("pseudo") or {}).get("leaky")]


def pseudo_info(cfg: Config) -> dict[str, Any] | None:
    """What ``done.json`` / ``cv.json`` record of the pseudo-labels (None when off and nothing leaky is inherited):
    ``leaky`` when the labels are not per fold or a run this one learns from is leaky (``leaky_from`` names it)."""
    p = cfg.pseudo
    inherited = inherited_leaks(cfg)
    if inherited:
        log.warning("%s learns from %s, whose CV is optimistic (pseudo.leaky in its cv.json): so is this run's (recorded "
                    "as pseudo.leaky, leaky_from)", Run.of(cfg).dir, ", ".join(inherited))
    if p.teacher is None:
        return {"teacher": None, "leaky": True, "leaky_from": inherited} if inherited else None
    return {"teacher": p.teacher, "per_fold": p.per_fold, "leaky": not p.per_fold or bool(inherited),
            "leaky_from": inherited, "confidence": p.confidence, "min_confident_fraction": p.min_confident_fraction,
            "soft": p.soft}


def teacher_run(cfg: Config) -> Run | None:
    """The run named by ``pseudo.teacher`` (None when off); refused if it is not a run folder."""
    if cfg.pseudo.teacher is None:
        return None
    run = Run(Path(cfg.pseudo.teacher).expanduser())
    if not (run.config_yaml.is_file() or run.ensemble_json.is_file()):
        raise ConfigError(f"pseudo.teacher: {run.dir} is not a run folder (no config.yaml or ensemble.json)")
    if run.dir.resolve() == Run.of(cfg).dir.resolve():
        raise ConfigError(f"pseudo.teacher: {run.dir} is this run itself")
    return run


def check_teacher(cfg: Config, folds: pd.DataFrame, folds_to_train: list[int]) -> None:
    """Before any fold trains: the teacher's labels can be made for every fold to train (:func:`_teacher_predictor`),
    so a missing teacher fold or other folds are refused now, not after the first folds have trained."""
    teacher = teacher_run(cfg)
    if teacher is not None:
        from .stages import check_same_classes

        check_same_classes(cfg, teacher)
        _teacher_predictor(cfg, teacher, folds, list(folds_to_train) if cfg.pseudo.per_fold else [])



def _teacher_predictor(cfg: Config, teacher: Run, folds: pd.DataFrame, per_fold: list[int]):
    """The teacher's predictor, refused when an ensemble teacher's member changed since it was built (predict refuses
    it too) and, for the per-fold labels of folds ``per_fold``, unless the teacher and each of its members have this
    run's folds and a trained model for each of those folds (their fold k never trained on this run's fold k images)."""
    from .device import resolve_device
    from .predictor import Predictor
    from .stages import check_same_folds

    if teacher.is_ensemble:
        from .ensemble import check_members_unchanged

        check_members_unchanged(teacher)
    if per_fold:
        check_same_folds(teacher, folds, "pseudo.teacher")
    predictor = Predictor.from_run(teacher, device=resolve_device(cfg.train.device), batch_size=cfg.predict.batch_size,
                                   num_workers=cfg.train.num_workers)
    if teacher.is_ensemble:  # a member that predicts otherwise since the ensemble was tuned on it
        from .inference import check_members_as_built

        check_members_as_built(teacher, predictor)
    if per_fold:
        for m in predictor.members:
            if m.run.dir != teacher.dir:
                check_same_folds(m.run, folds, f"pseudo.teacher member {m.run.dir}")
        missing = {str(m.run.dir): [k for k in per_fold if k not in m.folds] for m in predictor.members}
        missing = {r: ks for r, ks in missing.items() if ks}
        if missing:
            raise ConfigError("pseudo.teacher: per-fold labels need the teacher's fold k for each fold k to train; not "
                              "trained: " + "; ".join(f"fold(s) {ks} in {r}" for r, ks in missing.items()))
    return predictor


def teacher_files(teacher: Run, fold: int | None) -> dict[str, str]:
    """SHA-256 of what the labels of fold ``fold`` (None: of all folds) are made from, by path in the teacher's folder:
    its config or ensemble.json, postprocess.json, tta.json, folds.csv and the best.pt of the folds that predict; for
    an ensemble the same of each member (its config.yaml and tta.json decide how it predicts: `tune --tta` or `oof
    --set` on a member changes the labels), keyed ``member <name>/<file>``."""
    names = [teacher.ensemble_json if teacher.is_ensemble else teacher.config_yaml, teacher.postprocess_json,
             teacher.tta_json, teacher.folds_csv]
    if not teacher.is_ensemble:
        names += [teacher.best_pt(k) for k in ([fold] if fold is not None else teacher.trained_folds())]
    out = {str(p.relative_to(teacher.dir)): sha256_file(p) for p in names if p.is_file()}
    if teacher.is_ensemble:
        built = [int(k) for k in (read_json(teacher.ensemble_json) or {}).get("folds", [])]
        for member, _ in teacher.members():
            files = [member.config_yaml, member.tta_json] + [member.best_pt(k) for k in ([fold] if fold is not None else built)]
            out.update({f"member {member.dir.name}/{p.relative_to(member.dir)}": sha256_file(p) for p in files if p.is_file()})
    return out


def label_settings(cfg: Config) -> dict[str, Any]:
    """What the labels depend on besides the teacher's files: the confidence filter, the targets' kind, the spec their
    RLE strings are written in, the classes, and the test images labelled (a SHA-256 of their ids and paths). Kept in
    ``fold_<k>.teacher.json`` (``made_with``): labels made by ``lr-find``, which saves no config, or by a run of
    other settings, are refused rather than read as this config's (another ``data.rle_order`` read them scrambled)."""
    import dataclasses
    import hashlib

    from .data.masks import train_rle_spec
    from .data.sources import load_test_samples

    p, d = cfg.pseudo, cfg.data
    listed = "\n".join(f"{x.id}\t{Path(x.image).resolve()}" for x in load_test_samples(cfg))
    return {"confidence": p.confidence, "min_confident_fraction": p.min_confident_fraction, "max_images": p.max_images,
            "soft": p.soft, "task": d.task, "num_classes": d.num_classes, "rle": dataclasses.asdict(train_rle_spec(cfg)),
            "test_images_sha256": hashlib.sha256(listed.encode()).hexdigest()}


def _check_labels_current(cfg: Config, run: Run, key: int | None, path: Path) -> None:
    """Refuse labels whose teacher changed since they were written, or that other settings made (a label file made
    before fingerprints, or before ``made_with`` was kept, passes that check)."""
    made = read_json(run.pseudo_teacher_json(key))
    if not made:
        return
    was_set = made.get("made_with")
    if was_set is not None:
        now_set = label_settings(cfg)
        differ = sorted(k for k in set(now_set) | set(was_set) if now_set.get(k) != was_set.get(k))
        if differ:
            said = "; ".join(f"{k}: {was_set.get(k)!r} there, {now_set.get(k)!r} here" for k in differ)
            raise ConfigError(f"{path}: these pseudo-labels were made with other settings than this config's ({said}); "
                              f"they are not what it would make. Move {path} (and {run.pseudo_teacher_json(key).name}) "
                              "away to label the test images again with these settings, or restore the settings")
    teacher = teacher_run(cfg)
    now, was = teacher_files(teacher, key), made.get("files") or {}
    changed = sorted(k for k in set(now) | set(was) if now.get(k) != was.get(k))
    if changed:
        raise ConfigError(f"{path}: these pseudo-labels were made by {made.get('teacher')}, whose {', '.join(changed)} "
                          f"changed since (retrained, re-tuned or re-folded); they are not what it predicts now. Restore "
                          f"the teacher, or move {path} (and {run.pseudo_teacher_json(key).name}) away to label the test "
                          "images again with it as it is (folds already trained on the old labels keep them: retrain "
                          "those with --fold K --overwrite for one teacher throughout)")


def _make(cfg: Config, run: Run, fold: int | None, folds: pd.DataFrame, path: Path) -> None:
    from .data.masks import train_rle_spec
    from .data.sources import load_test_samples
    from .postprocess import apply_postprocess, load_params
    from .stages import check_same_classes

    teacher = teacher_run(cfg)
    predictor = _teacher_predictor(cfg, teacher, folds, [fold] if fold is not None else [])
    check_same_classes(cfg, teacher)
    tcfg = teacher.config()
    params, spec, p = load_params(tcfg, teacher), train_rle_spec(cfg), cfg.pseudo
    samples = load_test_samples(cfg)
    _refuse_training_images(cfg, samples)
    by_id = {s.id: s for s in samples}
    rows = []
    log.info("pseudo-labelling %d test images with %s (%s)", len(samples), teacher.dir,
             f"fold {fold} only" if fold is not None else "all folds")
    for image_id, probs, presence, _ in predictor.iter_predictions(samples, fold=fold):
        prob = probs.numpy()
        frac = confident_fraction(prob, cfg.data.task, p.confidence)
        if frac < p.min_confident_fraction:
            continue
        mask = apply_postprocess(prob, cfg.data.task, params, presence)
        if p.soft:  # the probabilities are the targets; the RLE beside them says what the teacher would submit
            write_npy(run.pseudo_soft_path(fold, image_id), probs_to_uint8(prob))
        rows.append((image_id, str(by_id[image_id].image), round(frac, 6), *_label_rles(mask, cfg.data.task, cfg.data.num_classes, spec)))
    rows.sort(key=lambda r: -r[2])
    if p.max_images is not None:
        rows, cut = rows[: p.max_images], rows[p.max_images :]
        for r in cut if p.soft else []:  # written above, before the ranking; a cut image's file would never be read
            run.pseudo_soft_path(fold, r[0]).unlink(missing_ok=True)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    n_rle = cfg.data.num_classes - 1 if cfg.data.task == "multiclass" else cfg.data.num_classes
    w.writerow(["id", "image", "confident_fraction", *[f"rle_{c}" for c in range(n_rle)]])
    w.writerows(rows)
    write_text(path, buf.getvalue())
    # label_size: a teacher with data.score_size labels at that size (the student resizes each label to its image's)
    write_json(run.pseudo_teacher_json(fold), {"teacher": str(teacher.dir), "files": teacher_files(teacher, fold),
                                               "made_with": label_settings(cfg),
                                               "label_size": predictor.members[0].cfg.data.score_size})
    log.info("pseudo-labels: %d of %d test images confident enough (>= %.2f of pixels at %.2f) -> %s",
             len(rows), len(samples), p.min_confident_fraction, p.confidence, path)


def _refuse_training_images(cfg: Config, samples: list[Sample]) -> None:
    """Test images that are training images (the same file, or a file of a training image's id with the same bytes)
    would join, labelled, the training set of the fold that validates on them: refused, naming them."""
    from .data import load_train_samples

    train = load_train_samples(cfg)
    paths = {Path(x.image).resolve() for x in train}
    by_id = {x.id: x for x in train}
    same = [x for x in samples if Path(x.image).resolve() in paths
            or (x.id in by_id and sha256_file(Path(x.image)) == sha256_file(Path(by_id[x.id].image)))]
    if same:
        raise ConfigError(f"pseudo.teacher: {len(same)} test image(s) are training images too (e.g. {same[0].image}, "
                          f"id {same[0].id!r}): pseudo-labelled, each would train the fold that validates on it. Take "
                          "them out of data.test_images (or point it at the test folder)")


def _labels_key(cfg: Config, fold: int) -> int | None:
    """Whose labels fold ``fold`` trains on: its own (``pseudo.per_fold``), or the shared ones (None)."""
    return fold if cfg.pseudo.per_fold else None


def pseudo_labels_file(cfg: Config, run: Run, fold: int) -> Path | None:
    """The labels file fold ``fold`` trains on (None without ``pseudo.teacher``)."""
    if cfg.pseudo.teacher is None:
        return None
    return run.pseudo_csv(_labels_key(cfg, fold))


def check_labels_unchanged(cfg: Config, run: Run, fold: int, state, fresh: bool) -> None:
    """A fresh fold keeps the SHA-256 of the pseudo-labels it trains on in ``state`` (its
    :class:`~seg_toolkit.fold_state.TrainState`, so ``done.json`` names them); a resume on other labels (made again
    after the teacher changed) is refused: the fold would have trained on two label sets, and nothing would say so."""
    labels = pseudo_labels_file(cfg, run, fold)
    if labels is None:
        return
    now = sha256_file(labels)
    if fresh:
        state.pseudo_sha256 = now
    elif state.pseudo_sha256 and now != state.pseudo_sha256:
        raise ConfigError(f"fold {fold} started on other pseudo-labels than {labels} holds now (made again since?); "
                          f"resumed, it would train on two label sets. Train the fold again on these: --fold {fold} "
                          "--overwrite (or restore the labels it started on)")


def pseudo_samples(cfg: Config, run: Run, fold: int, folds: pd.DataFrame, make: bool = True) -> list[Sample]:
    """Fold ``fold``'s pseudo-labelled training samples (``[]`` without ``pseudo.teacher``).

    ``make``: write the labels file if it is missing (rank 0); other ranks only read it.
    """
    if cfg.pseudo.teacher is None:
        return []
    key = _labels_key(cfg, fold)
    path = run.pseudo_csv(key)
    if not path.is_file():
        if not make:
            raise FileNotFoundError(f"{path}: pseudo-labels not written")
        if key is None:
            log.warning("pseudo.per_fold is false: every fold trains on labels from all the teacher's folds, which saw "
                        "its validation images; its CV is optimistic (recorded as pseudo.leaky in done.json and cv.json)")
        _make(cfg, run, key, folds, path)
    else:
        _check_labels_current(cfg, run, key, path)
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    rle_cols = [c for c in df.columns if c.startswith("rle_")]
    soft = (lambda image_id: run.pseudo_soft_path(key, image_id)) if cfg.pseudo.soft else (lambda image_id: None)
    if cfg.pseudo.soft and len(df) and not soft(df["id"].iloc[0]).is_file():
        raise ConfigError(f"pseudo.soft: {soft(df['id'].iloc[0])} not found: {path} was written without soft labels; "
                          f"delete {path.parent} to label the test images again")
    pair = pair_of(cfg)  # a photo | label file's image part, as the test samples it was labelled from read it
    size = (read_json(run.pseudo_teacher_json(key)) or {}).get("label_size")
    label_hw = (int(size[0]), int(size[1])) if size else None
    return [Sample(f"pseudo_{r['id']}", Path(r["image"]), rles=tuple(r[c] for c in rle_cols), where=f"{path} line {i + 2}",
                   soft=soft(r["id"]), pair=pair, label_hw=label_hw) for i, r in df.iterrows()]


def add_pseudo_labels(cfg: Config, run: Run, fold: int, folds: pd.DataFrame, d) -> list[Sample]:
    """``pseudo.teacher``: fold ``fold``'s pseudo-labelled samples (rank 0 writes them, the others read)."""
    if cfg.pseudo.teacher is None:
        return []
    pseudo = pseudo_samples(cfg, run, fold, folds) if d.is_main else []
    d.barrier()
    if not d.is_main:
        pseudo = pseudo_samples(cfg, run, fold, folds, make=False)
    log.info("fold %d: %d pseudo-labelled images join its training set", fold, len(pseudo))
    return pseudo


def fold_sets(cfg: Config, run: Run, fold: int, samples: list[Sample], folds: pd.DataFrame, d,
              ) -> tuple[list[Sample], list[Sample], list[Sample]]:
    """Fold ``fold``'s ``(training set, validation set, pseudo-labelled samples)``: the training set holds the
    pseudo-labelled ones (never a validation image). What training and lr-find both train on."""
    from .data.folds import split_fold

    train_set, valid_set = split_fold(samples, folds, fold)
    pseudo = add_pseudo_labels(cfg, run, fold, folds, d)
    return train_set + pseudo, valid_set, pseudo
