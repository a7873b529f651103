"""What ``seg-toolkit bundle`` changes in the runs it copies, and the integrity check of a bundle before it predicts.

A bundled run must predict offline on a machine that has neither the pretrained weights file nor the
trackers of the training machine: :func:`offline_config` is the config (``config.yaml`` and the one inside
each ``best.pt``) with ``model.encoder_weights: null`` (the checkpoint holds every weight), the weights
mapping back at its default, and ``track.backend: none``. What the bundle holds is recorded file by file
(:func:`file_manifest`, ``bundle.json`` ``files``) and checked before each prediction (:func:`verify_bundle`):
a swapped weights file or a deleted ``postprocess.json`` must refuse, not submit something else. An ensemble is
checked against its members when bundled (:func:`check_ensemble`: a stale one is refused there, not on the
target) and its member fingerprints are remade of the bundled files (:func:`refingerprint`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from .config import ModelConfig
from .ensemble import check_members_unchanged, member_fingerprint
from .errors import SegToolkitError
from .files import read_json, sha256_file, write_json
from .run import Run

__all__ = ["BundleError", "BundleIntegrityError", "check_ensemble", "file_manifest", "offline_config", "refingerprint",
           "verify_bundle"]

MANIFEST_DIRS = ("runs",)  # what predict reads; wheels/ is installed before predict.py runs and not read by it


class BundleError(SegToolkitError, RuntimeError):
    """A bundle cannot be made as asked (missing folds, a dependency that cannot be gathered, ...)."""


class BundleIntegrityError(BundleError):
    """A bundle's files are not the ones it was made with (changed, missing or added)."""


def _default(cls: type, name: str) -> Any:
    return next(f.default for f in dataclasses.fields(cls) if f.name == name)


def offline_config(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` (a config as a dict) as a bundle predicts with it: no pretrained weights named (no download, no
    local file: ``encoder_weights_map`` back at its default, which needs none) and no experiment tracker (nor its
    store's address, which may hold a password)."""
    data = dict(data)
    data["model"] = {**(data.get("model") or {}), "encoder_weights": None,
                     "encoder_weights_map": _default(ModelConfig, "encoder_weights_map")}
    data["track"] = {**(data.get("track") or {}), "backend": "none", "uri": None}  # a store's address (and password) stays home
    return data


def file_manifest(bundle: Path) -> dict[str, str]:
    """``{path relative to the bundle: sha256}`` of every file predict may read: everything under ``runs/`` but
    hidden files (a ``.DS_Store`` a file browser leaves is no run file)."""
    files = sorted(p for d in MANIFEST_DIRS for p in (bundle / d).rglob("*")
                   if p.is_file() and not any(part.startswith(".") for part in p.relative_to(bundle).parts))
    return {p.relative_to(bundle).as_posix(): sha256_file(p) for p in files}


def verify_bundle(bundle: Path, info: dict[str, Any]) -> None:
    """Refuse a bundle whose files differ from ``bundle.json`` ``files``: one changed, missing or added (a
    ``tta.json`` or ``postprocess.json`` dropped in changes the submission as much as a swapped ``best.pt``)."""
    recorded = info.get("files")
    if not isinstance(recorded, dict) or not recorded:
        raise BundleIntegrityError(f"{bundle}/bundle.json records no sha256 of the bundled files (made by an older "
                                   "seg_toolkit, or edited): its runs cannot be checked; make the bundle again")
    problems = []
    for rel, want in recorded.items():
        path = bundle / rel
        if not path.is_file():
            problems.append(f"{rel} is missing (expected sha256 {want})")
        elif (got := sha256_file(path)) != want:
            problems.append(f"{rel} changed (expected sha256 {want}, found {got})")
    problems += [f"{rel} was added (not in the bundle as made; sha256 {sha})"
                 for rel, sha in file_manifest(bundle).items() if rel not in recorded]
    if problems:
        raise BundleIntegrityError(f"{bundle}: {len(problems)} file(s) differ from bundle.json: {'; '.join(problems[:8])}"
                                   f"{'; ...' if len(problems) > 8 else ''}. The submission would not be the one the bundle "
                                   "was made to reproduce: restore the files (upload the bundle again) or make it again")


def check_ensemble(ens: Run, folds: dict[str, list[int]]) -> None:
    """A stale ensemble (a member retrained since it was built) is refused here, not on the target; each member
    must be bundled with every fold the ensemble predicts with."""
    check_members_unchanged(ens)
    used = {int(k) for k in (read_json(ens.ensemble_json) or {}).get("folds", [])}
    for m, _ in ens.members():
        lacking = sorted(used - set(folds[m.dir.resolve().name]))
        if lacking:
            raise BundleError(f"{ens.dir}: member {m.dir} would be bundled without fold(s) {lacking}, which the ensemble "
                              "predicts with; finish them, or bundle the runs without the ensemble")


def refingerprint(ens: Run, info: dict[str, Any]) -> None:
    """The bundled ensemble.json's member fingerprints, of the bundled members' files (their best.pt is rewritten
    weights only, so the source's sha256 no longer matches), checked as predict checks them."""
    data = read_json(ens.ensemble_json) or {}
    folds = [int(k) for k in data.get("folds", [])]
    for entry, (member, _) in zip(data.get("members", []), ens.members()):
        if isinstance(entry, dict) and entry.get("fingerprint"):
            entry["fingerprint"] = member_fingerprint(member, folds)
    write_json(ens.ensemble_json, data)
    info["members"] = data.get("members", [])
    check_members_unchanged(ens)
