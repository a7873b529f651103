"""The library versions a run was trained with (``done.json`` ``versions``) and a bundle was made with."""

from __future__ import annotations

import platform

__all__ = ["VERSIONED", "code_sha256", "library_versions"]

VERSIONED = ("seg_toolkit", "torch", "torchvision", "timm", "segmentation-models-pytorch", "albumentations")


def code_sha256() -> str:
    """sha256 of the imported seg_toolkit's Python files (their paths in the package and their bytes): two installs
    of one version number with other code (an editable checkout, another bundle's wheel) tell apart."""
    import hashlib
    from pathlib import Path

    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py"), key=lambda p: p.relative_to(root).as_posix()):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def library_versions() -> dict[str, str | None]:
    """Python and :data:`VERSIONED` package versions (None when not installed); torch with its build tag."""
    from importlib import metadata

    import torch

    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    out["torch"] = torch.__version__  # with the build tag (+cpu, +cu121) that the metadata lacks
    return out
