"""The ``transforms`` section's checks at load time: resize and normalisation shapes, each augmentation
built as training will build it, a crop that ``transforms.resize`` would stretch, a quarter turn it would
distort, and the normalisation a
named pretrained encoder was trained with. Warnings are said once per process (a config loads more than once)."""

from __future__ import annotations

import copy
import logging
import math
import warnings
from typing import Any

from .config import Config, ConfigError
from .config_consistency import warn_once

log = logging.getLogger(__name__)


def finite_number(v: float) -> bool:
    """An int or float that is neither NaN nor infinite (what every numeric config check starts from)."""
    return isinstance(v, (int, float)) and math.isfinite(v)


def _normalize_length_ok(n: int, in_channels: int) -> bool:
    """The lengths ``data.dataset._normalize`` accepts: one value per channel, or 3 (RGB
    statistics, averaged for grayscale, extended with 0.5 for the alpha channel of RGBA)."""
    return n == in_channels or (n == 3 and in_channels in (1, 4))


def check_transforms(cfg: Config) -> None:
    t, c = cfg.transforms, cfg.data.in_channels
    if t.resize is not None and (len(t.resize) != 2 or min(t.resize) < 1):
        raise ConfigError(f"transforms.resize: expected [height, width] of positive ints, got {t.resize}")
    if not _normalize_length_ok(len(t.mean), c):
        ok = f"{c} or 3" if c in (1, 4) else f"{c}"
        raise ConfigError(f"transforms.mean: {len(t.mean)} values for data.in_channels={c} (give {ok})")
    if len(t.std) != len(t.mean):
        raise ConfigError(f"transforms.std: {len(t.std)} values, transforms.mean has {len(t.mean)} (give one std per mean)")
    for i, v in enumerate(t.mean):
        if not finite_number(v):
            raise ConfigError(f"transforms.mean[{i}]: expected a finite number, got {v}")
    for i, v in enumerate(t.std):
        if not (finite_number(v) and v > 0):
            raise ConfigError(f"transforms.std[{i}]: expected a number > 0, got {v}")
    # images reach Normalize on the 0..255 scale and are divided by 255 first (data/dataset.py): statistics of 0..255
    # pixels ([123.7, 116.3, 103.5]) turned every image into a near constant of about -2
    scale = [(f"transforms.mean[{i}]", v) for i, v in enumerate(t.mean) if not 0 <= v <= 1]
    scale += [(f"transforms.std[{i}]", v) for i, v in enumerate(t.std) if v > 1]
    if scale:
        raise ConfigError(f"{scale[0][0]}: {scale[0][1]} is not on the 0..1 scale of the statistics (pixels are divided "
                          "by 255 before mean and std apply: ImageNet's are mean [0.485, 0.456, 0.406], std [0.229, "
                          "0.224, 0.225]); mean within [0, 1], std at most 1")
    built = [_check_augmentation(spec, f"transforms.train[{i}]") for i, spec in enumerate(t.train)]
    for i, aug in enumerate(built):
        _check_probabilities(aug, f"transforms.train[{i}]")
    _warn_crop_before_resize(cfg, built)
    _refuse_axis_swaps(cfg, built)


def _crop_output(t: Any) -> tuple[int, int] | None:
    """The (height, width) a crop transform outputs, or None when it is not a crop; (0, 0) when it varies."""
    import albumentations as A  # lazy: slow to import

    crops = tuple(getattr(A, n) for n in ("RandomCrop", "CenterCrop", "Crop", "CropNonEmptyMaskIfExists", "RandomSizedCrop",
                                          "RandomResizedCrop", "RandomSizedBBoxSafeCrop", "BBoxSafeRandomCrop",
                                          "AtLeastOneBBoxRandomCrop", "RandomCropFromBorders", "RandomCropNearBBox")
                  if hasattr(A, n))
    if not isinstance(t, crops):
        return None
    size = getattr(t, "size", None)
    if size is not None:
        return int(size[0]), int(size[1])
    if isinstance(getattr(t, "height", None), int) and isinstance(getattr(t, "width", None), int):
        return t.height, t.width
    if isinstance(t, A.Crop):
        return t.y_max - t.y_min, t.x_max - t.x_min
    return 0, 0


def _warn_crop_before_resize(cfg: Config, built: list[Any]) -> None:
    """A crop in ``transforms.train`` runs before ``transforms.resize`` (:func:`build_transforms`), which
    stretches each crop to the resize size: training sees objects larger (and at another aspect ratio)
    than validation and prediction, which resize the whole image. Legal (a zoom augmentation), rarely meant:
    said when the config loads, once, with the crop and the two sizes. ``built``: each ``transforms.train``
    entry as :func:`_check_augmentation` built it."""
    t = cfg.transforms
    if t.resize is None:
        return

    for i, aug in enumerate(built):
        for tr, where in _walk(aug, f"transforms.train[{i}]"):
            out = _crop_output(tr)
            if out is None or list(out) == list(t.resize):
                continue
            size = f"{out[0]}x{out[1]} crops" if out != (0, 0) else "crops of varying size"
            msg = (f"{where}: {type(tr).__name__} makes {size}, which transforms.resize {list(t.resize)} then stretches "
                   f"to {t.resize[0]}x{t.resize[1]}: training sees objects at another scale than validation and prediction, "
                   "which resize the whole image; crop to the resize size, or leave transforms.resize out and crop only, "
                   "unless the zoom is meant")
            warn_once(log, msg)


def _check_probabilities(built: Any, where: str) -> None:
    """``p`` of every transform of a built entry in [0, 1], OneOf / SomeOf / Sequential included: albumentations checks
    the leaves' only, and a OneOf of p 2 was always applied."""
    for tr, at in _walk(built, where, containers=True):
        p = getattr(tr, "p", None)
        if isinstance(p, (int, float)) and not 0 <= p <= 1:
            raise ConfigError(f"{at}: {type(tr).__name__}: p {p} is not a probability (expected 0 <= p <= 1)")


def _walk(tr: Any, where: str, containers: bool = False):
    """Each transform of a built ``transforms.train`` entry with where it is, inside OneOf / SomeOf / Sequential too
    (with ``containers``, those themselves as well, before their transforms)."""
    from .data.dataset import inner_where  # lazy, as above (the entry is built: albumentations is imported)

    inner = getattr(tr, "transforms", None)
    if inner is not None and not hasattr(tr, "height"):
        if containers:
            yield tr, where
        for j, sub in enumerate(inner):
            yield from _walk(sub, inner_where(where, type(tr).__name__, j), containers)
    else:
        yield tr, where


_AXIS_SWAPS = ("RandomRotate90", "Transpose", "D4", "SquareSymmetry")


def _refuse_axis_swaps(cfg: Config, built: list[Any]) -> None:
    """A transform that swaps height and width (a quarter turn, a transpose) before a non-square
    ``transforms.resize``: the turned image is stretched back to the resize's shape, so every object is
    distorted by the aspect ratio squared (a 20x20 square trained as 15x27). Refused when the config loads."""
    t = cfg.transforms
    if t.resize is None or t.resize[0] == t.resize[1]:
        return
    for i, aug in enumerate(built):
        for tr, where in _walk(aug, f"transforms.train[{i}]"):
            if type(tr).__name__ in _AXIS_SWAPS:
                raise ConfigError(f"{where}: {type(tr).__name__} swaps height and width, and transforms.resize "
                                  f"{list(t.resize)} then stretches the turned image back to {t.resize[0]}x{t.resize[1]}: "
                                  "objects are trained distorted; use a square resize, or flips (HorizontalFlip, "
                                  "VerticalFlip) that keep the shape")


def _check_augmentation(spec: Any, where: str, emit: bool = True) -> Any:
    """Build one ``transforms.train`` entry as training will and return it, so that an unknown transform or
    argument fails now; albumentations only warns about unknown arguments and about values it changes (a kernel
    size raised to the next odd one), so those warnings fail too, naming the transform: the inner transforms of a
    OneOf / SomeOf / Sequential are checked each on its own first (``emit``: its other warnings are said once, by
    the outer check)."""
    from .data.dataset import _aug_from_spec, inner_where  # lazy: albumentations is slow to import

    if isinstance(spec, dict) and len(spec) == 1:
        name, params = next(iter(spec.items()))
        if isinstance(params, dict) and isinstance(params.get("transforms"), list):
            for i, inner in enumerate(params["transforms"]):
                _check_augmentation(inner, inner_where(where, name, i), emit=False)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            # a copy: _aug_from_spec pops the inner transforms of OneOf/SomeOf/Sequential
            aug = _aug_from_spec(copy.deepcopy(spec), where)
        except ConfigError as e:  # pydantic's messages span lines; the CLI prints one
            raise ConfigError(" ".join(line.strip() for line in str(e).splitlines() if line.strip())) from None
    name = next(iter(spec)) if isinstance(spec, dict) and spec else spec
    for w in caught:
        if "not valid for transform" in str(w.message):
            raise ConfigError(f"{where}: {name}: {w.message}")
        if "automatically adjusted" in str(w.message):  # Blur's blur_limit [2, 2] trained with 3x3 kernels
            raise ConfigError(f"{where}: {name}: {w.message} Write the value it would use, or another valid one")
    for w in caught if emit else ():
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return aug


def _as_fed(values: list[float] | tuple[float, ...], in_channels: int) -> list[float]:
    """Per-channel statistics as the dataset applies them (3 RGB values averaged for a grey image; RGBA's fourth
    channel is not the encoder's concern: the first three are compared)."""
    if in_channels == 1 and len(values) == 3:
        return [sum(values) / 3]
    return list(values[:3])


def warn_normalisation(cfg: Config) -> None:
    """``transforms.mean/std`` against the statistics a named pretrained encoder (``model.encoder_weights:
    imagenet`` on a ``tu-`` encoder) was trained with: another normalisation is legal, but its first
    filters then see other inputs than they learnt from (timm's ``tf_`` ports and ViTs want 0.5 / 0.5,
    most others ImageNet's), silently; said when the config loads, once, with the values to set."""
    m = cfg.model
    if m.arch == "scratch_unet" or m.encoder_weights is None or not m.encoder:
        return
    from .models.weights import is_weights_path  # lazy: imports torch

    if is_weights_path(m.encoder_weights):
        return  # a file's own normalisation is not known here
    from .models.smp_params import pretrained_normalisation

    want = pretrained_normalisation(m.encoder)
    if want is None:
        return
    c, t = cfg.data.in_channels, cfg.transforms
    pairs = list(zip(_as_fed(t.mean, c) + _as_fed(t.std, c), _as_fed(want[0], c) + _as_fed(want[1], c)))
    if all(abs(a - b) <= 0.01 for a, b in pairs):
        return
    msg = (f"transforms.mean {list(t.mean)} / std {list(t.std)}: encoder {m.encoder}'s pretrained weights "
           f"({m.encoder_weights}) were trained with mean {list(want[0])} / std {list(want[1])} (timm's pretrained "
           "config): its first filters will see inputs of other statistics than they learnt from; set "
           f"transforms.mean: {list(want[0])} and transforms.std: {list(want[1])} unless this is on purpose")
    warn_once(log, msg)  # once per process: a config loads more than once
