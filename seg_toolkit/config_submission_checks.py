"""The ``submission`` section's checks when a config loads (and ``data.rle_empty_token``'s): the columns, the id
format, the classes that get rows, the class column, and an empty token that could be read as a mask.

Called by :func:`seg_toolkit.config_checks.check_config`; :func:`submitted_classes` is also what the writer uses
(:func:`seg_toolkit.submission.submission_classes`).
"""

from __future__ import annotations

import string

from .config import Config, ConfigError
from .rle import RLESpec, empty_token_reads_as

__all__ = ["submitted_classes", "check_submission_config", "check_data_empty_token"]


def submitted_classes(cfg: Config) -> list[int]:
    """The classes a submission has rows for, in row order: ``submission.classes``, else all
    (multiclass: 1..C-1; class 0 is background and gets rows only when listed)."""
    d, s = cfg.data, cfg.submission
    if s.classes:
        return list(s.classes)
    return list(range(1, d.num_classes)) if d.task == "multiclass" else list(range(1, d.num_classes + 1))


def check_class_list(cfg: Config, classes: list, key: str) -> None:
    """A list of class numbers (``submission.classes``, ``metric.classes``): each a class of the task (multiclass
    ids 0..C-1, binary / multilabel 1..C), none twice."""
    d = cfg.data
    if d.task == "multiclass":
        valid, span = range(d.num_classes), f"0..{d.num_classes - 1} (0 = background, in a row only if listed)"
    else:
        valid, span = range(1, d.num_classes + 1), f"1..{d.num_classes} (class 0 is background, which only a multiclass label map has)"
    for i, c in enumerate(classes):
        if isinstance(c, bool) or not isinstance(c, int) or c not in valid:
            raise ConfigError(f"{key}[{i}]: class {c!r} is outside {span} for data.task={d.task}, data.num_classes={d.num_classes}")
        if c in classes[:i]:
            raise ConfigError(f"{key}[{i}]: class {c} is listed twice")


def submission_style(cfg: Config) -> tuple[str, int, str, str]:
    """``(order, index_base, starts, empty token)`` the submission writes: each ``submission.*`` key, or when it is
    unset the training CSV's ``data.rle_*`` (the competition's answers are written as its train.csv; a SIIM config
    that set the data keys only had written 1-based absolute runs with '' for empty)."""
    s, d = cfg.submission, cfg.data
    pick = lambda mine, data: data if mine is None else mine  # noqa: E731
    return (pick(s.rle_order, d.rle_order), pick(s.rle_index_base, d.rle_index_base), pick(s.rle_starts, d.rle_starts),
            pick(s.empty_token, d.rle_empty_token))


def check_submission_config(cfg: Config) -> None:
    s, d = cfg.submission, cfg.data
    check_class_list(cfg, s.classes, "submission.classes")
    _, index_base, starts, empty = submission_style(cfg)
    if index_base not in (0, 1):
        raise ConfigError(f"submission.rle_index_base: expected 0 or 1 (the number of the first pixel), got {index_base}")
    if s.min_instance_area < 0:
        raise ConfigError(f"submission.min_instance_area: expected >= 0, got {s.min_instance_area}")
    if s.min_instance_area > 1 and not s.instances:
        raise ConfigError("submission.min_instance_area: only applies to instance rows; set submission.instances: true "
                          "(small regions of a per-image mask are removed by postprocess.min_area)")
    _check_empty_token("submission.empty_token", RLESpec(index_base=index_base, starts=starts, empty=empty),
                       "a submission could not say which of the two was meant (the competition's scorer reads the "
                       "token as that mask)")
    if s.class_column is not None:
        _check_class_column(s)
    if s.class_format != "{cls}":
        if s.class_column is None:
            raise ConfigError(f"submission.class_format: {s.class_format!r} is how submission.class_column writes each "
                              "row's class, and there is none; a class in the id is submission.id_format's {name}")
        if not _names_given(cfg):
            raise ConfigError("submission.class_format: '{name}' writes class names: set data.class_names (or "
                              "data.classes_csv)")
    classes = submitted_classes(cfg)
    k = len(classes)
    if k > 1 and not s.per_class and not s.class_column:
        if s.classes:
            why = f"{k} classes {classes} (submission.classes)"
        else:
            why = f"{k} classes (1..{k}; class 0 is background)" if d.task == "multiclass" else f"{k} classes"
        raise ConfigError(
            f"submission.per_class: data.task={d.task} with data.num_classes={d.num_classes} submits {why}, "
            f"so it needs submission.per_class: true (one row per image and class, ids from submission.id_format), "
            "or submission.class_column (the class in a column of its own, e.g. Severstal's ClassId)"
        )
    check_id_format(s.id_format, "submission.id_format", s.per_class, _names_given(cfg))


def _names_given(cfg: Config) -> bool:
    return bool(cfg.data.class_names or cfg.data.classes_csv)


def check_id_format(fmt: str, key: str, with_class: bool, names_given: bool) -> None:
    """An id that holds the image id and (``with_class``) the class, as ``submission.id_format`` writes and
    ``data.id_format`` reads it: ``{id}`` once, and one of ``{cls}`` (the class number) or ``{name}`` (the class name,
    from data.class_names or data.classes_csv: Understanding Clouds' ``0011165.jpg_Fish``)."""
    where = f"{key}: {fmt!r}"
    try:
        fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(fmt) if name is not None]
    except ValueError as e:
        raise ConfigError(f"{where} is not a valid format string ({e}); use {{id}} and {{cls}}, e.g. '{{id}}_{{cls}}'") from None
    names = [name for name, _, _ in fields]
    for name, spec, conv in fields:
        if name not in ("id", "cls", "name"):
            raise ConfigError(f"{where}: unknown field {{{name}}}; only {{id}}, {{cls}} and {{name}} are filled in")
        if spec or conv:
            # ids are split back into id and class with the plain fields
            raise ConfigError(f"{where}: write the field as {{{name}}}, without a format spec or conversion")
    if names.count("id") != 1:
        raise ConfigError(f"{where} must contain {{id}} exactly once, e.g. '{{id}}_{{cls}}'")
    if with_class and names.count("cls") + names.count("name") != 1:
        also = " (submission.per_class is true)" if key == "submission.id_format" else ""
        raise ConfigError(f"{where} must contain {{cls}} (the class number) or {{name}} (its name) exactly once{also}, "
                          "e.g. '{id}_{cls}'")
    if "name" in names and not names_given:
        raise ConfigError(f"{where}: {{name}} is a class name: set data.class_names (or data.classes_csv)")


def _check_empty_token(key: str, spec: RLESpec, why: str) -> None:
    """An empty token that reads as a run-length string under its spec (``'1 1'`` with 1-based starts: the first
    pixel) would make an empty mask and a real one indistinguishable: refused, naming the pixels (:func:`empty_token_reads_as`)."""
    reads = empty_token_reads_as(spec)
    if reads is not None:
        raise ConfigError(
            f"{key}: {spec.empty!r} reads as a run-length string (starts counted from {spec.index_base}, {spec.starts}): "
            f"{reads}; a mask of exactly those pixels is written the same, so {why}. Write an empty mask as the "
            "competition does: '' (most), '-1' (SIIM), '-' (contrails); a sample submission's '1 1' is a placeholder "
            "mask of one pixel, not an empty token")


def check_data_empty_token(cfg: Config) -> None:
    d = cfg.data
    _check_empty_token("data.rle_empty_token", RLESpec(index_base=d.rle_index_base, starts=d.rle_starts, empty=d.rle_empty_token),
                       "a row of data.train_csv with that mask would be read as empty, its pixels lost")


def _check_class_column(s) -> None:
    """``submission.class_column``: a column name of its own, with one row per image and class (not instance rows),
    and the class in that column rather than also in the id."""
    where = f"submission.class_column: {s.class_column!r}"
    if not str(s.class_column).strip():
        raise ConfigError(f"{where}: expected a column name (e.g. ClassId), or null for no class column")
    taken = {k: v for k, v in (("submission.id_column", s.id_column), ("submission.rle_column", s.rle_column)) if v}
    for key, name in taken.items():
        if name == s.class_column:
            raise ConfigError(f"{where} is also {key}; each column holds one thing")
    if s.per_class:
        raise ConfigError(f"{where} writes each row's class in its own column, so ids are image ids; submission.per_class "
                          "(the class written into the id with submission.id_format) must be false with it")
    if s.instances:
        raise ConfigError(f"{where}: one row per image and class; instance rows (submission.instances: one row per object) "
                          "with a class column are not supported")
