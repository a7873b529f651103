"""The library versions a run was trained with (``done.json`` ``versions``) and a bundle was made with."""

from __future__ import annotations

import platform

__all__ = ["VERSIONED", "code_sha256", "library_versions"]

VERSIONED = ("seg_toolkit", "torch", "torchvision", "timm", "segmentation-models-pytorch", "albumentations")


def code_sha256(root=None) -> str:
    """sha256 of the imported seg_toolkit's Python modules (their paths in the package and their bytes): two installs
    of one version number with other code (an editable checkout, another bundle's wheel) tell apart. Only what a
    wheel ships counts: the ``.py`` files of folders that are packages (``__init__.py`` from the top down), not a
    stray script in a plain folder of a checkout."""
    import hashlib
    from pathlib import Path

    root = Path(root) if root is not None else Path(__file__).resolve().parent  # the package (a test's tree)

    def shipped(path: Path) -> bool:
        folder = path.parent
        while folder != root:
            if not (folder / "__init__.py").is_file():
                return False
            folder = folder.parent
        return True

    h = hashlib.sha256()
    for path in sorted((p for p in root.rglob("*.py") if shipped(p)), key=lambda p: p.relative_to(root).as_posix()):
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
