"""The library versions a run was trained with (``done.json`` ``versions``) and a bundle was made with."""

from __future__ import annotations

import platform

__all__ = ["VERSIONED", "library_versions"]

VERSIONED = ("seg_toolkit", "torch", "torchvision", "timm", "segmentation-models-pytorch", "albumentations")


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
