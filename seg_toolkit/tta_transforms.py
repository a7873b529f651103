"""Test-time augmentation's geometric transforms, and the checks of TTA names and scales.

The geometric transforms are the eight elements of the dihedral group D4 (the symmetries
of a square), applied to the last two (H, W) dimensions of an ``(N, C, H, W)`` tensor:

============  ==========================  ===============  =============
name          forward                     inverse          swaps H and W
============  ==========================  ===============  =============
identity      x                           x                no
hflip         flip W                      hflip            no
vflip         flip H                      vflip            no
rot180        flip H and W                rot180           no
transpose     swap H and W (main diag.)   transpose        yes
transverse    anti-diagonal transpose     transverse       yes
rot90         rotate 90 deg (torch.rot90) rot270           yes
rot270        rotate 270 deg              rot90            yes
============  ==========================  ===============  =============

``d4`` names all eight. Every inverse is exact (pure index permutations), so the
transforms work on non-square images: the variants whose output shape is ``(W, H)`` go
through the model in their own forward passes and are mapped back before merging.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

from seg_toolkit.config import ConfigError
from seg_toolkit.errors import closest

__all__ = ["TRANSFORMS", "expand_tta", "apply_transform", "invert_transform"]

_H, _W = -2, -1


def _identity(x: Tensor) -> Tensor:
    return x


def _hflip(x: Tensor) -> Tensor:
    return x.flip(_W)


def _vflip(x: Tensor) -> Tensor:
    return x.flip(_H)


def _rot180(x: Tensor) -> Tensor:
    return x.flip(_H, _W)


def _transpose(x: Tensor) -> Tensor:
    return x.transpose(_H, _W)


def _transverse(x: Tensor) -> Tensor:
    # out[i, j] = x[H-1-j, W-1-i]: reflection about the anti-diagonal
    return x.transpose(_H, _W).flip(_H, _W)


def _rot90(x: Tensor) -> Tensor:
    return torch.rot90(x, 1, (_H, _W))


def _rot270(x: Tensor) -> Tensor:
    return torch.rot90(x, -1, (_H, _W))


@dataclass(frozen=True)
class _Transform:
    forward: Callable[[Tensor], Tensor]
    inverse: Callable[[Tensor], Tensor]
    swaps_hw: bool


#: name -> (forward, inverse, swaps H/W), in the order ``d4`` expands to.
TRANSFORMS: dict[str, _Transform] = {
    "identity": _Transform(_identity, _identity, False),
    "hflip": _Transform(_hflip, _hflip, False),
    "vflip": _Transform(_vflip, _vflip, False),
    "rot180": _Transform(_rot180, _rot180, False),
    "transpose": _Transform(_transpose, _transpose, True),
    "transverse": _Transform(_transverse, _transverse, True),
    "rot90": _Transform(_rot90, _rot270, True),
    "rot270": _Transform(_rot270, _rot90, True),
}

_ALIASES: dict[str, list[str]] = {"d4": list(TRANSFORMS)}


# ----------------------------------------------------------------------------- validation


def _unknown(kind: str, value: object, choices: Sequence[str]) -> ConfigError:
    close = closest(value, choices)
    hint = f" (did you mean {close!r}?)" if close else ""
    return ConfigError(f"unknown {kind} {value!r}{hint}; choices: {', '.join(choices)}")


def expand_tta(names: Sequence[str]) -> list[str]:
    """Validate TTA transform names and expand aliases (``d4`` -> all eight).

    Duplicates are dropped (first occurrence kept), so ``["identity", "d4"]`` gives each of
    the eight transforms once. An unknown name raises :class:`ConfigError` naming the
    choices and the closest one.
    """
    if isinstance(names, str):
        names = [names]
    choices = [*TRANSFORMS, *_ALIASES]
    out: list[str] = []
    for name in names:
        if name in _ALIASES:
            expanded = _ALIASES[name]
        elif name in TRANSFORMS:
            expanded = [name]
        else:
            raise _unknown("TTA transform", name, choices)
        out.extend(n for n in expanded if n not in out)
    if not out:
        raise ConfigError(f"TTA transforms: name at least one (choices: {', '.join(choices)})")
    return out


def _check_scales(scales: Sequence[float]) -> list[float]:
    out: list[float] = []
    for s in scales:
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not s > 0:
            raise ConfigError(f"TTA scales: expected positive numbers, got {s!r}")
        if float(s) not in out:
            out.append(float(s))
    if not out:
        raise ConfigError("TTA scales: name at least one scale, e.g. [1.0]")
    return out


def _check_choice(kind: str, value: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise _unknown(kind, value, choices)
    return value


# ----------------------------------------------------------------------------- transforms


def apply_transform(x: Tensor, name: str) -> Tensor:
    """Apply the D4 transform ``name`` to the last two dims of ``x``."""
    return TRANSFORMS[_check_choice("TTA transform", name, list(TRANSFORMS))].forward(x)


def invert_transform(y: Tensor, name: str) -> Tensor:
    """Undo the D4 transform ``name`` on the last two dims of ``y`` (exact)."""
    return TRANSFORMS[_check_choice("TTA transform", name, list(TRANSFORMS))].inverse(y)
