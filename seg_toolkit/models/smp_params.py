"""Which smp architectures exist and which ``model.params`` each accepts, checked without building a model.

The config checks call :func:`check_decoder_depth` when a config loads (per-stage decoder widths against
``encoder_depth``; the final ``upsampling`` against the depth, so the logits come back at the input's size);
:mod:`.smp_models` calls :func:`check_params` before building and :func:`params_error` to name a key smp or
timm refused.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

import segmentation_models_pytorch as smp
from torch import nn

from seg_toolkit.config import ConfigError
from seg_toolkit.errors import closest

__all__ = ["SMP_ARCHITECTURES", "RESERVED", "FORBIDDEN", "signature", "accepted_params", "check_decoder_depth",
           "check_params", "params_error", "pretrained_normalisation"]

# toolkit name -> smp class name; only those the installed smp has are registered
_SMP_CLASS_NAMES = {
    "unet": "Unet",
    "unetplusplus": "UnetPlusPlus",
    "fpn": "FPN",
    "deeplabv3": "DeepLabV3",
    "deeplabv3plus": "DeepLabV3Plus",
    "linknet": "Linknet",
    "manet": "MAnet",
    "pan": "PAN",
    "pspnet": "PSPNet",
    "upernet": "UPerNet",
    "segformer": "Segformer",
    "dpt": "DPT",
}
SMP_ARCHITECTURES: dict[str, type[nn.Module]] = {
    name: getattr(smp, cls_name) for name, cls_name in _SMP_CLASS_NAMES.items() if hasattr(smp, cls_name)
}

RESERVED = {
    "encoder_name": "model.encoder",
    "encoder_weights": "model.encoder_weights",
    "in_channels": "data.in_channels",
    "classes": "data.num_classes",
}
FORBIDDEN = {
    "activation": "models return raw logits (the losses and metrics apply sigmoid/softmax)",
    "aux_params": "a classification head makes forward return a tuple, which the toolkit does not use",
}

def signature(arch: str) -> inspect.Signature:
    return inspect.signature(SMP_ARCHITECTURES[arch].__init__)


def accepted_params(arch: str) -> list[str]:
    kinds = (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
    return [n for n, p in signature(arch).parameters.items() if n != "self" and p.kind not in kinds]


def check_decoder_depth(arch: str, params: dict[str, Any]) -> None:
    """An smp decoder with one width per stage (Unet, Unet++, MAnet) needs as many widths as encoder
    stages: ``params.encoder_depth`` and ``params.decoder_channels`` are checked against each other
    (either may be smp's default). The config checks call it when the config loads; a model built
    without them still gets smp's own error, wrapped by :func:`build_smp_model`. The final upsampling
    is checked too (:func:`_check_upsampling`)."""
    if arch in SMP_ARCHITECTURES:
        _check_upsampling(arch, params)
    if ("encoder_depth" not in params and "decoder_channels" not in params) or arch not in SMP_ARCHITECTURES:
        return
    sig = signature(arch).parameters
    if "encoder_depth" not in sig or not isinstance(getattr(sig.get("decoder_channels"), "default", None), (list, tuple)):
        return  # no per-stage widths (DeepLabV3's decoder_channels is one int; FPN has none)
    depth = params.get("encoder_depth", sig["encoder_depth"].default)
    widths = params.get("decoder_channels", sig["decoder_channels"].default)
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 1:
        raise ConfigError(f"model.params.encoder_depth: expected a number of encoder stages (smp: 3 to 5; 5 = stride 32), got {depth!r}")
    if not isinstance(widths, (list, tuple)) or len(widths) != depth:
        given = "given" if "decoder_channels" in params else f"smp's default for {arch}"
        raise ConfigError(f"model.params.decoder_channels: {arch} with encoder_depth {depth} needs {depth} decoder widths, "
                          f"one per stage; got {list(widths) if isinstance(widths, (list, tuple)) else widths!r} ({given})")


def _needed_upsampling(arch: str, params: dict[str, Any]) -> Any:
    """The final upsampling that brings smp's ``arch`` back to the input's size, for these params (None: any)."""
    sig = signature(arch).parameters
    if "upsampling" not in sig:
        return None
    depth = params.get("encoder_depth", getattr(sig.get("encoder_depth"), "default", None))
    if not isinstance(depth, int) or isinstance(depth, bool):
        return None  # refused by check_decoder_depth
    if arch == "fpn":  # the decoder's output is at stride 2^(depth - 3)
        return 2 ** (depth - 3)
    if arch == "pspnet":  # the pyramid pools the deepest features, at stride 2^depth
        return 2 ** depth
    if arch == "deeplabv3":  # the dilated encoder's output stride (None: smp uses it)
        return params.get("encoder_output_stride", sig["encoder_output_stride"].default)
    return sig["upsampling"].default  # the others decode to a fixed stride (4), whatever the depth


def _check_upsampling(arch: str, params: dict[str, Any]) -> None:
    """smp's ``upsampling`` default suits the default ``encoder_depth`` only: FPN with depth 4 returned 256x256
    logits for a 128x128 image, PSPNet with depth 5 32x32; refused here, naming the value to set."""
    need = _needed_upsampling(arch, params)
    if need is None:
        return
    sig = signature(arch).parameters
    given = params.get("upsampling", sig["upsampling"].default)
    if given is None and arch == "deeplabv3":
        return  # smp upsamples by the output stride
    if given != need:
        depth = params.get("encoder_depth", sig["encoder_depth"].default) if "encoder_depth" in sig else None
        which = "given" if "upsampling" in params else f"smp's default for {arch}"
        raise ConfigError(
            f"model.params.upsampling: {arch} with encoder_depth {depth} needs upsampling {need} to return logits of "
            f"the input's size; got {given!r} ({which}): set model.params.upsampling: {need}")


def check_params(arch: str, params: dict[str, Any], encoder: str) -> None:
    """Reject keys the toolkit sets itself, keys that break the logits contract, and unknown
    keys (with a non-timm encoder: smp would silently drop them)."""
    accepted = [n for n in accepted_params(arch) if n not in RESERVED and n not in FORBIDDEN]
    for key in params:
        if key in RESERVED:
            raise ConfigError(
                f"model.params.{key}: set by the toolkit from {RESERVED[key]}; remove it from model.params"
            )
        if key in FORBIDDEN:
            raise ConfigError(f"model.params.{key}: not allowed, {FORBIDDEN[key]}")
        if key in accepted or encoder.startswith("tu-"):
            continue  # with a tu- encoder, extra keys go on to timm.create_model
        close = closest(key, accepted, cutoff=0.5)
        hint = f"; did you mean 'model.params.{close}'?" if close else ""
        raise ConfigError(
            f"model.params.{key}: not a parameter of {arch} (smp.{SMP_ARCHITECTURES[arch].__name__}){hint} "
            f"(valid: {', '.join(accepted)}; timm keyword arguments are accepted with a tu- encoder only)"
        )


def params_error(arch: str, params: dict[str, Any], err: Exception) -> ConfigError | None:
    m = re.search(r"unexpected keyword argument '(\w+)'", str(err))
    if not m or m.group(1) not in params:
        return None
    key = m.group(1)
    accepted = [n for n in accepted_params(arch) if n not in RESERVED and n not in FORBIDDEN]
    close = closest(key, accepted, cutoff=0.5)
    hint = f"; did you mean 'model.params.{close}'?" if close else ""
    return ConfigError(
        f"model.params.{key}: neither a parameter of {arch} nor accepted by the timm encoder ({err}){hint} "
        f"(valid for {arch}: {', '.join(accepted)})"
    )


def pretrained_normalisation(encoder: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The ``(mean, std)`` a ``tu-`` encoder's timm pretrained weights were trained with (timm's pretrained config,
    read offline, the tag in the name respected); None for other encoders (smp keeps its own on the hub) or unknown."""
    if not encoder.startswith("tu-") or encoder[3:].startswith(("hf-hub:", "hf_hub:")):
        return None
    import timm

    try:
        cfg = timm.models.get_pretrained_cfg(encoder[3:])
    except Exception:  # an unknown name or tag is refused elsewhere, with its own message
        return None
    mean, std = getattr(cfg, "mean", None), getattr(cfg, "std", None)
    if not mean or not std or len(mean) != len(std):
        return None
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)
