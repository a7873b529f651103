"""Scoring a submission CSV against an answer file of the same format (the demo's hidden answers, a public
solution such as DSB 2018's, a held-out split): :func:`score_submission`, as the competition's grader reads rows.

Both files are decoded with the submission's RLE spec and scored with the config's metric over the test
images (their sizes from the image files, or data.score_size). Under a pixel metric an image's instance rows are merged into one
mask; under an object-matching metric (``instance_map``, ``instance_f2``) each row is one object, as the
graders read them, and rows that overlap are refused.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd

from .config import Config
from .instance_metrics import match_hits, scores_from_hits, stack_objects
from .rle import RLESpec
from .submission import (SubmissionError, class_column_names, class_of_text, class_text_problem, submission_classes,
                         submission_columns, submission_spec)

__all__ = ["score_submission"]


def score_submission(csv_path: str | Path, solution_path: str | Path, cfg: Config) -> float:
    """Score a submission against a solution CSV of the same format with the config's metric (module doc).
    A row that cannot be read is a :class:`SubmissionError` naming its file, line and id."""
    import torch

    from .data import load_test_samples
    from .data.scored import sample_score_hw
    from .data.colors import class_ids_by_name
    from .data.id_formats import class_of_match, parse_submission_id
    from .evaluator import Evaluator

    s, d = cfg.submission, cfg.data
    spec = submission_spec(cfg)
    by_name = class_ids_by_name(cfg)
    names = class_column_names(cfg)  # a class column's values: names or numbers
    # the grader's solution may hold the other form: numbers beside names, or names beside numbers
    other = None if names is not None else {n.strip(): k for n, k in by_name.items()}
    split = parse_submission_id(s.id_format, by_name) if s.per_class else None
    default_cls = submission_classes(cfg)[0]
    allowed = set(submission_classes(cfg))

    id_col, rle_col = submission_columns(cfg)

    def read(path: str | Path, solution: bool = False) -> dict[str, dict[int, list[tuple[str, str]]]]:
        """image id -> class -> [(RLE, where: the file, line and id)]; a row that cannot be read names its line. The
        ``solution``'s class column may hold numbers or names whichever the submission writes (the grader's file)."""
        df = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
        for col in (id_col, rle_col, *([s.class_column] if s.class_column else [])):
            if col not in df.columns:
                raise SubmissionError(f"{path}: no column {col!r}; it has {list(df.columns)}")
        out: dict[str, dict[int, list[tuple[str, str]]]] = {}
        row_cls = df[s.class_column] if s.class_column else [str(default_cls)] * len(df)
        for k, (row_id, rle, cls) in enumerate(zip(df[id_col], df[rle_col], row_cls)):
            where = f"{path} line {k + 2} (id {row_id!r})"
            image_id = row_id
            if split is not None:
                m = split.fullmatch(row_id)
                if m is None:
                    raise SubmissionError(f"{where}: the id does not read as submission.id_format {s.id_format!r}")
                image_id, cls = m.group("id"), str(class_of_match(m, by_name))
            c = class_of_text(cls, None if split is not None else names)
            if c is None and solution and split is None:
                c = class_of_text(cls, other)
            if c is None:
                raise SubmissionError(f"{where}: {s.class_column}: {class_text_problem(cls, names)}")
            out.setdefault(image_id, {}).setdefault(c, []).append((rle, where))
        return out

    def decode(rows: list[tuple[str, str]], hw: tuple[int, int]) -> np.ndarray:
        mask = np.zeros(hw, np.uint8)
        for rle, where in rows:
            mask |= spec.decode(rle, hw, where)
        return mask

    truth_rows, pred_rows = read(solution_path, solution=True), read(csv_path)
    # the grader scores the rows the files have: with submission.classes a subset and no metric.classes of its own,
    # the classes never submitted are no (empty, empty) pairs scoring 1 (as evaluate's config warning says)
    metric = cfg.metric if cfg.metric.classes or not s.classes else dataclasses.replace(cfg.metric, classes=sorted(allowed))
    evaluator = Evaluator(metric, d.task, d.num_classes)
    object_scores: list[float] = []  # an object-matching metric: each row is an object, as the competition reads it
    samples = load_test_samples(cfg)
    beyond = sorted(set(truth_rows) - {x.id for x in samples})
    if beyond:  # scored over the test images alone, a perfect 11 of DSB's 65 solution images read 1.0, where a grader says 0.17
        raise SubmissionError(
            f"{solution_path}: {len(beyond)} of its {len(truth_rows)} images are not test images of this config "
            f"(e.g. {beyond[:3]}), and a grader scores every image of its solution; give a solution of the "
            f"{len(samples)} test images only, or point data.test_images at all of its images")
    for sample in samples:
        hw = sample_score_hw(sample, cfg)  # as submitted
        # with a class column an image's empty classes may have no row (as in Severstal's train.csv)
        if not s.class_column and sample.id not in truth_rows:
            raise SubmissionError(f"{solution_path}: no row for test image {sample.id!r} ({sample.image})")
        rows = truth_rows.get(sample.id, {})
        truth = {c: decode(r, hw) for c, r in rows.items()}
        guess = {c: decode(r, hw) for c, r in pred_rows.get(sample.id, {}).items()}
        for name, found in ((solution_path, truth), (csv_path, guess)):
            unknown = sorted(set(found) - allowed)
            if unknown:
                raise SubmissionError(f"{name}: id {sample.id!r} has rows of class(es) {unknown}, not ones this "
                                      f"competition submits ({sorted(allowed)})")
        # every class either file has a row for: a class the solution leaves out (no row: empty, as with a class
        # column) still counts the submission's pixels there as false positives
        if evaluator.instance:
            t_obj, g_obj = (_row_objects(spec, rows.get(default_cls, []), hw)
                            for rows in (truth_rows.get(sample.id, {}), pred_rows.get(sample.id, {})))
            hits, n_truth, n_pred = match_hits(t_obj, g_obj)
            object_scores.append(float(scores_from_hits(hits, n_pred, n_truth, evaluator.metric)))
        elif d.task == "multiclass":
            t = np.zeros(hw, np.int64)
            g = np.zeros(hw, np.int64)
            for masks, out in ((truth, t), (guess, g)):
                for c in sorted(masks):
                    out[masks[c] > 0] = c
            evaluator.update_masks(torch.from_numpy(g)[None], torch.from_numpy(t)[None])
        else:
            tt = np.zeros((d.num_classes, *hw), np.uint8)
            gg = np.zeros((d.num_classes, *hw), np.uint8)
            for masks, out in ((truth, tt), (guess, gg)):
                for c, m in masks.items():
                    out[c - 1] = m
            evaluator.update_masks(torch.from_numpy(gg)[None], torch.from_numpy(tt).float()[None])
    return float(np.mean(object_scores)) if evaluator.instance else float(evaluator.compute()["score"])


def _row_objects(spec: RLESpec, rows: list[tuple[str, str]], hw: tuple[int, int]) -> np.ndarray:
    """The objects of one image's instance rows ``(RLE, where)`` as a label map (overlapping rows refused)."""
    try:
        return stack_objects(((spec.decode(rle, hw, where), where) for rle, where in rows), hw)
    except ValueError as e:
        raise SubmissionError(str(e)) from None
