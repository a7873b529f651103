"""What a run folder holds now, read from its files: the folds trained, started or with OOF files, an
ensemble's members, the saved config, the folds of its ids, its OOF items. A mixin of
:class:`seg_toolkit.run.Run`, which spells every path these read."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from .config import Config, ConfigError, load_config
from .files import read_json

if TYPE_CHECKING:  # pragma: no cover
    from .run import Run

__all__ = ["RunState"]


class RunState:
    """The state queries of :class:`~seg_toolkit.run.Run` (its path properties: ``ensemble_json``, ``done_json``, ...)."""

    @property
    def is_ensemble(self) -> bool:
        return self.ensemble_json.is_file()

    def member_ref(self, member: "Run") -> str:
        """How ``ensemble.json`` names a member: relative to this folder, so runs/ can move as a whole."""
        return os.path.relpath(member.dir.resolve(), self.dir.resolve())

    def members(self) -> list[tuple["Run", float]]:
        """An ensemble's member runs (resolved against this folder) and weights, from ``ensemble.json``."""
        data = read_json(self.ensemble_json) or {}
        try:
            members = [(type(self)(os.path.normpath(self.dir / m["run"])), float(m["weight"])) for m in data.get("members", [])]
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ConfigError(f"{self.ensemble_json}: expected members as {{run: <folder>, weight: <number>}} "
                              f"({type(e).__name__}: {e}); make the ensemble again with `seg-toolkit ensemble`") from None
        bad = [w for _, w in members if not (math.isfinite(w) and w >= 0)]
        if bad:
            raise ConfigError(f"{self.ensemble_json}: member weights must be finite and non-negative, got {bad}")
        gone = [r for r, _ in members if not r.config_yaml.is_file()]
        if gone:
            raise FileNotFoundError(f"{self.ensemble_json}: member {gone[0].dir} (named relative to the ensemble's folder) is "
                                    "not a run folder any more; an ensemble finds its members beside it, so move the runs "
                                    "folder as a whole, or build the ensemble again from where the members are now")
        return members

    def refuse_ensemble(self, command: str) -> None:
        """``command`` works on a trained run's own folds; an ensemble's OOF files are its members' merged."""
        if self.is_ensemble:
            raise ConfigError(f"{self.dir} is an ensemble: its OOF files are its members' merged, so `{command}` does not "
                              "apply to it; run it on a member, then build the ensemble again (`seg-toolkit ensemble ... "
                              "--overwrite`)")

    def trained_folds(self) -> list[int]:
        """Folds whose training finished (``done.json`` present), in order."""
        return sorted(int(p.parent.name.split("_")[1]) for p in self.dir.glob("fold_*/done.json"))

    def started_folds(self) -> list[int]:
        """Folds whose folder holds any file (a checkpoint, metrics.csv, a set-aside attempt...) or that a process is
        training now (its ``train.lock`` held: a fold has no other file during its first epoch), in order. A lock
        file nobody holds (its process was killed) does not count."""
        from .run_lock import lock_held

        return sorted(int(p.name.split("_")[1]) for p in self.dir.glob("fold_*")
                      if self.FOLD_DIR.fullmatch(p.name) and p.is_dir()
                      and any(f.name != "train.lock" or lock_held(f) for f in p.iterdir()))

    def completed_folds(self) -> list[int]:
        """Folds that have OOF predictions: the trained folds, or for an ensemble the folds all members share."""
        if self.is_ensemble:
            return [int(k) for k in (read_json(self.ensemble_json) or {}).get("folds", [])]
        return self.trained_folds()

    def fold_summaries(self) -> list[dict[str, Any]]:
        return [read_json(self.done_json(k)) or {} for k in self.trained_folds()]

    def config(self) -> Config:
        """The resolved config saved when the run was made (its pretrained encoder file is not looked for: the
        checkpoints hold every weight)."""
        if not self.config_yaml.is_file():
            raise ConfigError(f"{self.config_yaml}: not found; is {self.dir} a run folder (runs/<experiment>/)?")
        return load_config(self.config_yaml, trained=True)

    def fold_of(self) -> dict[str, int]:
        from .data.folds import fold_of_ids

        if not self.folds_csv.is_file():
            raise ConfigError(f"{self.folds_csv}: not found; train the run first")
        return fold_of_ids(self.folds_csv)

    def oof_items(self, samples: list, oof_dir: Path | None = None) -> Iterator[tuple[Any, int, Path]]:
        """``(sample, fold, oof file)`` of every training sample in a completed fold, in sample order.

        A missing OOF file of a completed fold is an error naming it (the run is damaged).
        """
        folds = set(self.completed_folds())
        if not folds:
            raise FileNotFoundError(f"{self.dir}: no completed fold (fold_*/done.json); train first")
        fold_of = self.fold_of()
        n = 0
        for s in samples:
            k = fold_of.get(s.id)
            if k in folds:
                path = self.oof_path(s.id, oof_dir)
                if not path.is_file():
                    raise FileNotFoundError(f"{path}: OOF file of id {s.id!r} (fold {k}, completed) not found; "
                                            "remake it with `seg-toolkit oof CONFIG`")
                n += 1
                yield s, k, path
        if not n:
            raise FileNotFoundError(f"{self.dir}: the completed folds {sorted(folds)} hold no training id of {self.folds_csv}")
