"""How ids hold the class (``data.id_format`` / ``submission.id_format``: ``{id}_{cls}``, ``{id}_{name}``) and whether
they hold the image's extension: the splitting and formatting every reader and writer of such ids shares."""

from __future__ import annotations

import re
import string
from typing import Iterable

import pandas as pd

from ..config import Config
from .sample import carries_ext

__all__ = ["format_fields", "parse_submission_id", "class_of_match", "training_ids_carry_ext"]


def format_fields(fmt: str) -> list[str]:
    """The field names of an id format, in order (``{{`` / ``}}`` are literal braces, not fields)."""
    return [name for _, name, _, _ in string.Formatter().parse(fmt) if name is not None]


def parse_submission_id(fmt: str, names: Iterable[str] = ()) -> re.Pattern:
    """A regex that splits an id made with ``fmt`` (``submission.id_format``, ``data.id_format``) back into id and class:
    group ``cls`` (a number) or ``name`` (one of ``names``); :func:`class_of_match` reads it. With ``{cls}`` the id is
    as long as it can be (``{id}{cls}`` splits ``img12`` as img1, 2); with ``{name}`` the name is: the id as short as
    the rest allows and the longest name tried first ('Fish_Sugar' before 'Sugar' and 'Fish')."""
    named = "name" in format_fields(fmt)
    alternatives = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True)) or "(?!)"
    fields = {"id": "(?P<id>.+?)" if named else "(?P<id>.+)", "cls": r"(?P<cls>\d+)", "name": f"(?P<name>{alternatives})"}
    pattern = ""
    for literal, name, _, _ in string.Formatter().parse(fmt):
        pattern += re.escape(literal) + (fields[name] if name is not None else "")
    return re.compile(pattern)


def class_of_match(m: re.Match, by_name: dict[str, int]) -> int:
    """The class number of an id :func:`parse_submission_id` split: its ``cls``, or its ``name``'s number."""
    groups = m.groupdict()
    return int(groups["cls"]) if groups.get("cls") is not None else by_name[groups["name"]]


def training_ids_carry_ext(cfg: Config) -> tuple[bool, str]:
    """``(whether the training images' ids end with an image extension, where that was read)``: Severstal's
    ``0002cc93b.jpg``. From the run's ``folds.csv`` (the ids it trained on; a bundle carries it), else the training
    CSV's first rows (through ``data.id_format``); ``(False, "no training ids")`` without either. A sample of its header
    only says nothing of the ids' form: the test ids are then written as training's were."""
    from ..run import Run  # lazy: the data layer imports nothing of the run's at load

    d = cfg.data
    folds = Run.of(cfg).folds_csv
    try:
        if folds.is_file():
            ids = pd.read_csv(folds, dtype=str, keep_default_na=False, nrows=5, usecols=["id"])["id"].tolist()
            return any(map(carries_ext, ids)), str(folds)
        path = cfg.data_path(d.train_csv)
        if d.layout != "csv" or not path.is_file():
            return False, "no training ids"
        ids = pd.read_csv(path, dtype=str, keep_default_na=False, nrows=5, usecols=[d.id_column])[d.id_column].tolist()
    except (ValueError, OSError, pd.errors.ParserError):
        return False, "no readable training ids"
    if d.id_format:
        from .colors import class_ids_by_name  # lazy: colors reads mask files

        split = parse_submission_id(d.id_format, class_ids_by_name(cfg))
        ids = [m.group("id") for m in map(split.fullmatch, ids) if m]
    return any(map(carries_ext, ids)), str(path)
