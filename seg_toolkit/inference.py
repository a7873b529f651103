"""Test predictions through the one :class:`~seg_toolkit.predictor.Predictor`, and the run checks every use of it makes.

``run_predictor`` gives a run's predictor (trained or ensemble) after checking that the run is whole and that the
config predicts as it trained; ``predict_test`` writes the submission with it: the predictor reads every member's
preprocessing and TTA from its own run folder, and the post-processing comes from the run's ``postprocess.json``
(tuned on OOF probabilities made by the same predictor). Held-out evaluation (:mod:`seg_toolkit.evaluate`) uses the
same predictor and decides each image's mask as ``predict`` does. Memory stays
bounded whatever the number of images: one batch of images and probabilities is alive at a
time, and each image's rows (and, with ``predict.write_masks``, its mask PNG) are written as
soon as it is decided, in the sample submission's order (a sample that interleaves images' rows, class-major,
makes the rows ahead of their turn wait in a spool file beside the submission:
:class:`~seg_toolkit.submission.SubmissionWriter`).

Mask files (``predict.write_masks``), in the run's ``test_masks/``:

* ``png``: what a scorer working on mask files expects. Multiclass: one single-channel 8-bit
  label map ``<id>.png`` of class ids ``0..C-1``; binary: ``<id>.png`` with 0 (background) and
  255 (foreground); multilabel: one 0/255 PNG per class, ``<id>_<class>.png`` with the class
  numbered as in the submission (channel ``k`` is class ``k + 1``), so a row id
  ``<id>_<class>`` names its file.
* ``color``: ``<id>.png`` in RGB, each class in its colour (``data.classes_csv`` or the
  palette; :func:`~seg_toolkit.data.class_colors`), background black (an implied multiclass
  background class as well); where multilabel classes overlap the highest class shows.
"""

from __future__ import annotations

import io
import logging
import re
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from .config import Config, ConfigError
from .data import Sample, class_colors, class_names, load_test_samples
from .data.bands import band_image_files, bands_of, image_id_of
from .data.nested import nested_images
from .device import resolve_device
from .files import atomic_write, read_json, write_npy
from .postprocess import apply_postprocess, load_params, present_classes, present_drift
from .oof import check_oof_complete
from .predictor import Predictor
from .run_settings import check_same_training
from .run import Run, RunExistsError
from .run_guard import check_not_input, check_not_run_file, is_partial_write
from .submission import (SubmissionWriter, class_of_text, mask_rows, repeated_ids, row_fields, submission_columns,
                         submission_header, submission_path)
from .submission_check import check_sample_rows, sample_class_pairs
from .tensors import probs_to_uint8

log = logging.getLogger(__name__)

__all__ = ["run_predictor", "check_out", "predict_test", "mask_pngs"]


def _one(cfg: Config | list[Config] | tuple[Config, ...]) -> Config:
    if isinstance(cfg, (list, tuple)):
        if len(cfg) != 1:
            raise ConfigError("predict or evaluate one run at a time; combine runs with `seg-toolkit ensemble`, "
                              "which makes an ensemble run")
        cfg = cfg[0]
    return cfg


def run_predictor(cfg: Config) -> tuple[Run, Predictor]:
    """The run of ``cfg`` and its predictor; a ``--set`` that changes how the run predicts is refused."""
    run = Run.of(cfg)
    if not run.config_yaml.is_file():
        raise FileNotFoundError(f"{run.dir}: no run folder (config.yaml); train the experiment first")
    check_same_training(cfg, run)
    if run.is_ensemble:
        from .ensemble import check_members_unchanged

        check_members_unchanged(run)
    if run.is_ensemble:
        check_oof_complete(run)  # an ensemble whose build stopped before its OOF files and cv.json were written
    for r in [m for m, _ in run.members()] if run.is_ensemble else [run]:
        check_oof_complete(r)  # post-processing tuned on OOF files an interrupted rewrite left mixed
        _check_scored_folds(r)
    device = resolve_device(cfg.train.device)
    predictor = Predictor.from_run(run, cfg=None if run.is_ensemble else cfg, device=device,
                                   batch_size=cfg.predict.batch_size, num_workers=cfg.train.num_workers,
                                   backend=cfg.predict.backend)
    _warn_if_oof_differs(run, predictor)
    return run, predictor


def _check_scored_folds(run: Run) -> None:
    """The folds ``cv.json`` scored (and the post-processing was tuned on) must all still be there: a fold folder
    deleted or its best.pt moved left predict submitting with the others (exit 0) while the CV described more."""
    cv = read_json(run.cv_json)
    scored = cv.get("folds") if isinstance(cv, dict) else None
    if not isinstance(scored, list):
        return
    trained = set(run.trained_folds())
    missing = [k for k in scored if k not in trained]
    if missing:
        raise FileNotFoundError(f"{run.dir}: fold(s) {missing} are scored in {run.cv_json.name} but have no finished model "
                                f"(fold_<k>/best.pt and done.json); restore them, or train them again "
                                f"(`seg-toolkit train CONFIG --resume`), so that the submission is what CV scored")


def check_members_as_built(run: Run, predictor: Predictor) -> None:
    """An ensemble's weights and post-processing were chosen on its members' OOF files as they were made then; a
    member that predicts otherwise since (``tune --tta`` or ``oof --set`` on it) is refused: the submission would
    merge other probabilities than those tuned on (predict, evaluate and pseudo-labels alike)."""
    recorded = [m.get("oof") for m in (read_json(run.ensemble_json) or {}).get("members", [])]
    for m, made in zip(predictor.members, recorded):
        if made is not None and _differs(made, m.made()):  # None: an ensemble built before members' settings were kept
            raise ConfigError(f"ensemble {run.dir}: member {m.run.dir}'s OOF files were merged and tuned on as made with "
                              f"{made}, but it now predicts with {m.made()} (tune --tta or oof since); build the ensemble "
                              "again (seg-toolkit ensemble ... --overwrite) so that what is tuned is what is submitted")


def _warn_if_oof_differs(run: Run, predictor: Predictor) -> None:
    """Post-processing was tuned on OOF files made with some TTA; say so when prediction uses another (a hand-edited
    tta.json, a run trained with ``predict.oof_tta: identity``, folds whose OOF files were made with different
    settings). An ensemble member whose TTA changed after the ensemble was built is refused
    (:func:`check_members_as_built`)."""
    if run.is_ensemble:
        check_members_as_built(run, predictor)
        return
    made = (read_json(run.cv_json) or {}).get("oof")
    now = predictor.members[0].made()
    if isinstance(made, list):  # cv.json keeps one entry when every fold's OOF was made alike
        log.warning("the OOF files of %s were made with different settings per fold (%s), and the post-processing was "
                    "tuned on them; prediction uses %s: remake them with `seg-toolkit oof CONFIG`", run.dir, made, now)
    elif isinstance(made, dict) and _differs(made, now):
        log.warning("the OOF files of %s (and the post-processing tuned on them) were made with %s, but prediction uses %s; "
                    "remake them with `seg-toolkit oof CONFIG` so that what is tuned is what is submitted", run.dir, made, now)


#: what a member's OOF record holds since a later day: a record without it was made before it was kept (unknown, not
#: a difference); tile_overlap is kept for tiled members only (it changes nothing without tiles)
_LATER_KEYS = ("tile_overlap",)


def _differs(made: dict, now: dict) -> bool:
    """Whether OOF files made as ``made`` (``cv.json`` / ``ensemble.json``) differ from a member predicting as ``now``."""
    return any((k in made or k not in _LATER_KEYS) and made.get(k) != v for k, v in now.items())


def check_out(cfg: Config, out: Path, overwrite: bool, runs: list[Path] | None = None) -> None:
    """Where a submission may go, checked before anything is predicted: not a file or folder the config reads, not a
    folder, not a file of the run (or its members: ``runs``, default the config's run and an ensemble's members) other
    than an earlier submission, and not an existing file without ``overwrite``."""
    what = "--out" if out != submission_path(cfg) else "submission.path"
    check_not_input(cfg, out, what)
    if runs is None:
        run = Run.of(cfg)
        runs = [run.dir] + ([m.dir for m, _ in run.members()] if run.is_ensemble else [])
    check_not_run_file(out, runs, ",".join(submission_header(cfg)), what, Path(cfg.data.root))
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it, or --out for another file")


def predict_test(cfg: Config, out: str | Path | None = None, overwrite: bool = False) -> Path:
    """Predict the test images with the run's predictor and write the submission.

    Rows follow ``sample_submission.csv``; the file is written only if its ids match the
    sample exactly. With ``predict.save_probs`` the merged probabilities (before
    post-processing) go to the run's ``test_probs/``.
    """
    cfg = _one(cfg)
    out = Path(out) if out else submission_path(cfg)
    check_out(cfg, out, overwrite)
    run, predictor = run_predictor(cfg)
    samples = load_test_samples(cfg)
    params = load_params(cfg, run)
    header = submission_header(cfg)
    expected = _expected_ids(cfg, samples)
    shipped = cfg.data_path(cfg.data.sample_submission).is_file() and not cfg.data.test_lists
    if not shipped and not (cfg.submission.id_column and cfg.submission.rle_column):
        log.warning("no sample submission (%s): the columns %s are data.id_column / data.rle_column's, not the "
                    "competition's; set submission.id_column and submission.rle_column to its header (DSB 2018: "
                    "ImageId, EncodedPixels)", cfg.data_path(cfg.data.sample_submission), ",".join(header))
    save, masks = cfg.predict.save_probs, cfg.predict.write_masks
    # files of an earlier predict (other test ids, another dtype or mask mode) would mix in: removed when predict wrote them
    if save != "none":
        _clear_predict_folder(cfg, run, run.test_probs_dir, _PROB_FILE)
    if masks != "none":
        _clear_predict_folder(cfg, run, run.test_masks_dir, _MASK_FILE)
    colors = _mask_colors(cfg) if masks == "color" else None
    passes = predictor.passes_per_image()
    present, n_images = np.zeros(cfg.data.num_classes, np.int64), 0
    log.info("predicting %d test images: %d forward passes each (%s)", len(samples), passes, predictor.describe())
    with SubmissionWriter(out, header, expected, repeated_ids(cfg), row_fields(cfg)) as writer:
        bar = tqdm(predictor.iter_predictions(samples), total=len(samples), desc=f"predict ({passes} passes/image)", disable=None)
        for image_id, probs, presence, _ in bar:
            p = probs.numpy()
            if save != "none":
                write_npy(run.test_prob_path(image_id), p.astype(np.float16) if save == "float16" else probs_to_uint8(p))
                if presence is not None:
                    write_npy(run.test_presence_path(image_id), presence.numpy().astype(np.float16) if save == "float16"
                              else probs_to_uint8(presence.numpy()))
            mask = apply_postprocess(p, cfg.data.task, params, presence)
            writer.write(mask_rows(image_id, mask, cfg))
            present += present_classes(mask, cfg.data.task, cfg.data.num_classes)
            n_images += 1
            if masks != "none":
                for cls, png in mask_pngs(mask, cfg.data.task, masks, colors):
                    atomic_write(run.test_mask_path(image_id, cls), lambda tmp, b=png: Path(tmp).write_bytes(b))
    log.info("wrote %s", out)
    _say_drift(cfg, run, params, present, n_images)
    if masks != "none":
        log.info("wrote the decided masks (%s) to %s", masks, run.test_masks_dir)
    return out


def _say_drift(cfg: Config, run: Run, params, present: np.ndarray, n: int) -> None:
    """Warn of classes whose test masks are non-empty far more or less often than the OOF masks were under the same
    tuned parameters (:func:`~seg_toolkit.postprocess.present_drift`): tuned on one fold model's probabilities, applied
    to the folds' mean."""
    tuned = read_json(run.postprocess_json) or {}
    if tuned.get("params") != asdict(params):  # the config's own parameters: nothing was tuned on the OOF
        return
    oof, names = tuned.get("decided_present"), class_names(cfg)
    if isinstance(oof, dict) and n and len(oof.get("share", [])) == len(present):  # always said; warned when far apart
        log.info("masks decided non-empty, test vs OOF: %s", ", ".join(
            f"{name} {k / n:.0%} vs {p:.0%}" for name, k, p in zip(names, present, oof["share"])))
    lines = present_drift(oof, present, n, names)
    if lines:
        log.warning("the submission's masks are not like the OOF masks the post-processing was tuned on: %s. The test "
                    "probabilities are the folds' mean, whose maxima sit lower than one fold model's OOF: a gate or "
                    "threshold tuned near the top of the OOF's range may shut (or open) on the test set. Score a held-out "
                    "split (`seg-toolkit evaluate --split test`, `--on DIR`) before trusting the tuned CV, or tune with "
                    "narrower grids", "; ".join(lines))


#: what predict writes in test_probs/ (``<id>.npy``, ``presence/<id>.npy``) and test_masks/ (``<id>[_<cls>].png``)
_PROB_FILE = re.compile(Run.RUN_DIR_FILES["test_probs"])
_MASK_FILE = re.compile(Run.RUN_DIR_FILES["test_masks"])


def _clear_predict_folder(cfg: Config, run: Run, folder: Path, written: re.Pattern) -> None:
    """Remove ``folder`` (``test_probs/``, ``test_masks/``) before predict writes it again, when it holds only what
    predict writes there (``written``: paths inside it) and interrupted writes; any other file (the user's) is named
    and nothing is deleted (:meth:`~seg_toolkit.run.Run.remove` deletes only a run's own entries)."""
    if not folder.exists() and not folder.is_symlink():
        return
    foreign: list[str] = []
    todo = [folder] if folder.is_dir() and not folder.is_symlink() else []
    if not todo:
        foreign.append("")  # a file or a link where the folder goes
    while todo:
        for p in sorted(todo.pop().iterdir()):
            rel = p.relative_to(folder).as_posix()
            if p.is_dir() and not p.is_symlink() and rel == "presence" and written is _PROB_FILE:
                todo.append(p)
            elif not (p.is_file() and not p.is_symlink() and (written.fullmatch(rel) or is_partial_write(p.name))):
                foreign.append(rel + ("/" if p.is_dir() else ""))
    if foreign:
        what = f"holds {', '.join(foreign[:3])}{' and more' if len(foreign) > 3 else ''}, which predict did not write" \
            if foreign[0] else "is not a folder predict wrote"
        raise RunExistsError(f"{folder} {what}; predict replaces that folder (files of an earlier predict would mix "
                             "in): move them out, or set predict.save_probs / write_masks: none to leave it")
    run.remove(cfg, folder)


def _mask_colors(cfg: Config) -> np.ndarray:
    """``uint8 (C, 3)`` colours of ``color`` mask files: the class colours, an implied multiclass background black."""
    from .report.overlays import legend_colors  # lazy: the report package imports matplotlib helpers

    return legend_colors(cfg, class_names(cfg), class_colors(cfg), undrawn=(0, 0, 0))


def _png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def mask_pngs(mask: np.ndarray, task: str, mode: str, colors: np.ndarray | None = None) -> list[tuple[int | None, bytes]]:
    """``(class or None, PNG bytes)`` of one decided mask (as :func:`~seg_toolkit.postprocess.apply_postprocess`
    returns it) in the format of ``predict.write_masks`` (see the module doc). ``class`` is set for the
    per-class files of a multilabel ``png`` only; ``colors``: ``uint8 (C, 3)``, for ``color``."""
    if mode == "png":
        if task == "multiclass":
            return [(None, _png_bytes(mask.astype(np.uint8)))]
        planes = [(mask[c] > 0).astype(np.uint8) * 255 for c in range(mask.shape[0])]
        if task == "binary":
            return [(None, _png_bytes(planes[0]))]
        return [(c + 1, _png_bytes(m)) for c, m in enumerate(planes)]
    if mode == "color":
        if colors is None:
            raise ValueError("color mask files need the class colours")
        colors = np.asarray(colors, np.uint8)
        if task == "multiclass":
            return [(None, _png_bytes(colors[mask]))]
        rgb = np.zeros((*mask.shape[1:], 3), np.uint8)
        for c in range(mask.shape[0]):  # the highest class is painted last
            rgb[mask[c] > 0] = colors[c]
        return [(None, _png_bytes(rgb))]
    raise ConfigError(f"predict.write_masks: {mode!r} is not one of 'none', 'png', 'color'")


def check_sample_submission(cfg: Config) -> None:
    """Before training: the competition's sample submission (when it ships one) against the config's ``submission.*``
    keys as ``predict`` checks it before predicting (its columns, ids of ``submission.id_format``, a row per image and
    class written), so a key that does not fit fails before the folds train rather than after; the test images need
    not be there (a code competition's are hidden)."""
    path = cfg.data_path(cfg.data.sample_submission)
    if cfg.data.test_lists or not path.is_file():
        return
    submission_header(cfg)
    ids, class_values = _sample_table(cfg, path)
    _say_class_form(cfg, path, ids, class_values)
    if ids:  # a sample of its header only lists no row to check (predict writes the test images' rows)
        check_sample_rows(cfg, path, ids, load_test_samples(cfg, images=False), class_values)


def _sample_table(cfg: Config, path: Path) -> tuple[list[str], list[str] | None]:
    """``(ids, class values)``: the sample submission's id column and ``submission.class_column`` (None without it)."""
    import pandas as pd

    id_col, cls_col = submission_columns(cfg)[0], cfg.submission.class_column
    if cls_col not in pd.read_csv(path, dtype=str, nrows=0).columns:
        cls_col = None  # a sample without it is refused when the header is written
    table = pd.read_csv(path, dtype=str, keep_default_na=False, usecols=[id_col] + ([cls_col] if cls_col else []))
    return table[id_col].tolist(), table[cls_col].tolist() if cls_col else None


def _say_class_form(cfg: Config, path: Path, ids: list[str], class_values: list[str] | None) -> None:
    """A sample that lists no class (its header only, or Severstal's placeholder 0) says nothing of how
    ``submission.class_column`` writes one; the training CSV's class column does: a warning when it holds names
    (UW-Madison's ``large_bowel``) and the submission writes numbers (``submission.class_format``), or the other way."""
    s, d = cfg.submission, cfg.data
    if not s.class_column or (class_values is not None and sample_class_pairs(ids, class_values) is not None):
        return
    train = cfg.data_path(d.train_csv)
    if d.layout != "csv" or not d.class_column or not train.is_file():
        return
    import pandas as pd

    try:
        values = pd.read_csv(train, dtype=str, keep_default_na=False, nrows=50, usecols=[d.class_column])[d.class_column]
    except (ValueError, OSError, pd.errors.ParserError):
        return  # the training CSV's own checks name it
    named = [v for v in values if v.strip() and class_of_text(v, None) is None]
    numbered = [v for v in values if class_of_text(v, None) is not None]
    if named and s.class_format == "{cls}":
        log.warning("%s lists no class; %s's class column holds class names (%r) and submission.class_column writes "
                    "class numbers: set submission.class_format: '{name}' if the competition's answers name them",
                    path, train, named[0])
    elif numbered and not named and s.class_format == "{name}":
        log.warning("%s lists no class; %s's class column holds class numbers (%r) and submission.class_column writes "
                    "class names (submission.class_format: '{name}'): set it to '{cls}' if the competition's answers "
                    "number them", path, train, numbered[0])


def _expected_ids(cfg: Config, samples: list[Sample]) -> list[str] | None:
    """The sample submission's id column, in order (None when the competition ships no sample, or one of its header
    only: then the rows are the test images', in their order)."""
    path = cfg.data_path(cfg.data.sample_submission)
    if not path.is_file() or cfg.data.test_lists:
        return None
    ids, class_values = _sample_table(cfg, path)
    _say_class_form(cfg, path, ids, class_values)
    if not ids:
        return None
    _check_sample_rows(cfg, path, ids, samples, class_values)
    return ids


def _check_sample_rows(cfg: Config, path: Path, ids: list[str], samples: list[Sample],
                       class_values: list[str] | None = None) -> None:
    """Before any image is predicted: the sample's rows are ones this submission makes, each of them, in an order it
    can write (:func:`~seg_toolkit.submission_check.check_sample_rows`, with the sample's class column when the class
    has one); test images the sample has no row for are named (they are not submitted)."""
    made = check_sample_rows(cfg, path, ids, samples, class_values)
    folder, d = cfg.data_path(cfg.data.test_images), cfg.data
    bands = bands_of(cfg)
    listed = set(made.values())  # ids, with the extension where the sample's carry it (Severstal)
    if d.image_id_pattern and folder.is_dir():  # nested folders: each file's id read off its path
        unlisted = sorted(i for i in nested_images(folder, cfg) if i not in listed)
    else:
        on_disk = [] if d.instance_folders or not folder.is_dir() else band_image_files(folder, bands)[0] if bands else [
            p for p in folder.iterdir() if p.suffix.lower() == d.image_ext.lower() and p.is_file()]
        unlisted = sorted(image_id_of(p, bands) for p in on_disk if image_id_of(p, bands) not in listed and p.name not in listed)
    if unlisted:
        log.warning("%d test image(s) in %s have no row in %s (e.g. %r): they are not submitted", len(unlisted), folder,
                    path, unlisted[0])
