"""One registry of architectures (name -> builder), encoder names, and the training helpers.

``build_model(cfg, num_classes, in_channels)`` returns a module mapping (N, in_channels, H, W)
of any H, W to logits (N, num_classes, H, W). Every model has ``model.encoder``, and
``model.build_spec`` (see :func:`build_model`) to rebuild the same architecture.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import functools
import logging
import os
from typing import Any, Callable, Sequence

import segmentation_models_pytorch as smp
import timm
from torch import nn

from seg_toolkit.config import ConfigError, ModelConfig, check_deep_supervision_arch

from .deep_supervision import add_deep_supervision
from .presence import add_presence_head
from .precision import keep_depthwise_fp32
from .scratch_unet import ScratchUNet, check_scratch_keys
from .smp_models import SCRATCH_ENCODER, SMP_ARCHITECTURES, build_smp_model, default_encoder
from .weights import load_encoder_weights, resolve_weights_path

logger = logging.getLogger(__name__)

__all__ = [
    "ARCHITECTURES",
    "build_model",
    "list_architectures",
    "list_encoders",
    "param_groups",
    "set_encoder_frozen",
]

Builder = Callable[[ModelConfig, int, int], nn.Module]


# ----------------------------------------------------------------------------- builders


def check_model_keys(cfg: ModelConfig) -> None:
    """What building ``cfg`` would refuse that needs no data, weights file or model: the encoder name, the
    architecture's params, the weight-set name; checked when the config loads (see ``config_checks._check_model``)."""
    if cfg.arch == "scratch_unet":
        check_scratch_keys(cfg)
        return
    from .smp_models import check_smp_keys

    check_smp_keys(cfg.arch, cfg, _resolve_encoder(cfg.arch, cfg.encoder))


def _build_scratch_unet(cfg: ModelConfig, num_classes: int, in_channels: int) -> nn.Module:
    """The from-scratch U-Net; options from ``model.depth/base_width/norm/upsample/dropout``."""
    check_scratch_keys(cfg)
    if cfg.depth < 1:
        raise ConfigError(f"model.depth: expected >= 1, got {cfg.depth}")
    if cfg.base_width < 1:
        raise ConfigError(f"model.base_width: expected >= 1, got {cfg.base_width}")
    if not 0.0 <= cfg.dropout < 1.0:
        raise ConfigError(f"model.dropout: expected 0 <= dropout < 1, got {cfg.dropout}")
    model = ScratchUNet(
        in_channels=in_channels,
        num_classes=num_classes,
        depth=cfg.depth,
        base_width=cfg.base_width,
        norm=cfg.norm,
        upsample=cfg.upsample,
        dropout=cfg.dropout,
        deep_supervision=cfg.deep_supervision > 0,
    )
    model.encoder_weights_report = None
    weights = cfg.encoder_weights
    if weights is not None:
        model.encoder_weights_report = load_encoder_weights(model.encoder, resolve_weights_path(weights))
    return model


def _smp_builder(arch: str) -> Builder:
    def build(cfg: ModelConfig, num_classes: int, in_channels: int) -> nn.Module:
        encoder = _resolve_encoder(arch, cfg.encoder)
        return build_smp_model(arch, cfg, num_classes, in_channels, encoder)

    build.__name__ = f"build_{arch}"
    build.__doc__ = f"smp.{SMP_ARCHITECTURES[arch].__name__}; kwargs from model.params."
    return build


#: name -> builder(cfg, num_classes, in_channels). smp architectures present in the installed smp.
ARCHITECTURES: dict[str, Builder] = {
    "scratch_unet": _build_scratch_unet,
    **{arch: _smp_builder(arch) for arch in SMP_ARCHITECTURES},
}


# ----------------------------------------------------------------------------- names


def closest_names(name: str, choices: Sequence[str], n: int = 5, cutoff: float = 0.6) -> list[str]:
    """difflib's close matches, ties broken by the longer common prefix (resnet35 -> resnet34)."""
    candidates = difflib.get_close_matches(name, choices, n=max(n, 25), cutoff=cutoff)

    def key(c: str) -> tuple[float, int, int]:
        prefix = len(os.path.commonprefix([name, c]))
        return (round(difflib.SequenceMatcher(None, name, c).ratio(), 6), prefix, -abs(len(c) - len(name)))

    return sorted(candidates, key=key, reverse=True)[:n]


def list_architectures() -> list[str]:
    """Registered architecture names (``model.arch``)."""
    return list(ARCHITECTURES)


@functools.lru_cache(maxsize=1)
def _all_encoders() -> tuple[str, ...]:
    names = [SCRATCH_ENCODER, *smp.encoders.get_encoder_names()]
    names += [f"tu-{n}" for n in timm.list_models()]
    return tuple(names)


def list_encoders(filter: str = "") -> list[str]:
    """Encoder names: ``scratch``, smp's own, and ``tu-<timm model>`` for every timm model.

    ``filter`` is a case-insensitive substring, or a glob when it has ``*?[`` (``tu-*convnext*``).
    A timm pretrained tag can be appended to a ``tu-`` name (``tu-convnext_tiny.fb_in22k``).
    """
    names = _all_encoders()
    if not filter:
        return list(names)
    pat = filter.lower()
    if any(c in pat for c in "*?["):
        return [n for n in names if fnmatch.fnmatchcase(n.lower(), pat)]
    return [n for n in names if pat in n.lower()]


def _is_known_encoder(name: str) -> bool:
    if name == SCRATCH_ENCODER or name in smp.encoders.encoders:
        return True
    if name.startswith("tu-"):
        timm_name = name[3:]
        if timm_name.startswith(("hf-hub:", "hf_hub:", "local-dir:")):
            return True
        if "." in timm_name:  # a pretrained tag: tu-<model>.<tag>
            return timm.models.is_model_pretrained(timm_name)
        return timm.is_model(timm_name)
    return False


def _resolve_encoder(arch: str, name: str | None) -> str:
    """The encoder name to build, or a ConfigError naming model.encoder with close names."""
    if name is None:
        return default_encoder(arch)
    if _is_known_encoder(name):
        return name
    names = _all_encoders()
    if name.startswith("tu-") and "." in name and timm.is_model(name[3:]):
        arch_name = name[3:].split(".", 1)[0]
        tags = [f"tu-{t}" for t in timm.list_pretrained(f"{arch_name}.*")]
        close = closest_names(name, tags, cutoff=0.0)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"model.encoder: {name!r}: timm has no pretrained tag {name.split('.', 1)[1]!r} for {arch_name!r}{hint} "
            f"(tags: {', '.join(t.split('.', 1)[1] for t in tags) or 'none'})"
        )
    # match "resnet50" against "tu-resnet50" too, and a tagged name by its architecture part
    base = name.split(".", 1)[0]
    close = closest_names(base, names)
    if not close and not base.startswith("tu-"):
        close = closest_names(f"tu-{base}", names)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    others = f" Close names: {', '.join(close)}." if close else ""
    raise ConfigError(
        f"model.encoder: unknown encoder {name!r}{hint}{others} Encoders are smp names (e.g. resnet34, "
        f"efficientnet-b0), 'scratch', or tu-<timm model>; run `seg-toolkit models --encoders FILTER` "
        f"to list them."
    )


# ----------------------------------------------------------------------------- build


def check_model_builds(cfg: ModelConfig, num_classes: int, in_channels: int = 3, batch: int = 2,
                       size: tuple[int, int] | None = None) -> None:
    """Build the model once on PyTorch's meta device (no memory, no weights read) and run one training forward pass
    there (shapes only, a fraction of a second): a value of ``model.params`` that smp or timm refuses
    (``decoder_attention_type: bogus``), a width that leaves a layer empty, or one that only the forward pass reads
    (``decoder_interpolation: bogus``) is refused before a run folder is written, not when fold 0 trains. timm's
    dropout rates, which the meta device does not check, are checked here. ``batch`` and ``size``: the training batch
    and input size when the config fixes them (``transforms.resize``): BatchNorm then refuses a batch of one image at
    a 1x1 bottleneck now (else a batch of 2 at 128x128)."""
    import torch

    for key in ("drop_rate", "drop_path_rate"):
        v = cfg.params.get(key)
        if v is not None and not (isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1):
            raise ConfigError(f"model.params.{key}: expected a rate in [0, 1), got {v!r}")
    with torch.device("meta"):
        model = build_model(dataclasses.replace(cfg, encoder_weights=None), num_classes, in_channels, announce=False)
        h, w = size or (128, 128)
        try:
            model.train()(torch.empty(batch if size else 2, in_channels, h, w))
        except (ValueError, TypeError, RuntimeError, NotImplementedError, KeyError, AttributeError) as e:
            shape = f"a training batch of {batch} at {h}x{w} (train.batch_size, transforms.resize)" if size else "a batch"
            raise ConfigError(f"model: {cfg.arch} with model.params {cfg.params} fails its first forward pass on {shape} "
                              f"({type(e).__name__}: {' '.join(str(e).split())[:300]})") from None


def build_model(cfg: ModelConfig, num_classes: int, in_channels: int = 3, announce: bool = True) -> nn.Module:
    """Build ``cfg.arch`` with ``num_classes`` output channels for ``in_channels`` images.

    The model maps (N, in_channels, H, W) of any H, W to logits (N, num_classes, H, W)
    (inputs are padded to the architecture's multiple and the logits cropped back; with
    ``model.classifier`` > 0, num_classes more channels hold each class's presence logit,
    see :mod:`seg_toolkit.models.presence`), exposes
    ``model.encoder``, and carries ``model.build_spec``::

        {"model": dataclasses.asdict(cfg) with the default encoder filled in,
         "num_classes": ..., "in_channels": ...}

    ``build_model(ModelConfig(**spec["model"]), spec["num_classes"], spec["in_channels"])``
    rebuilds it. To rebuild for loading a checkpoint, set ``encoder_weights`` to None: the
    checkpoint holds every weight, and re-reading the pretrained source may need network
    or a file no longer there. ``model.encoder_weights_report`` says what a weights file
    load matched (None otherwise). ``channels_last`` is not applied here (the trainer does).
    ``announce``: log what was built.
    """
    if num_classes < 1:
        raise ConfigError(f"data.num_classes: expected >= 1, got {num_classes}")
    if in_channels < 1:
        raise ConfigError(f"data.in_channels: expected >= 1, got {in_channels}")
    builder = ARCHITECTURES.get(cfg.arch)
    if builder is None:
        names = list_architectures()
        close = closest_names(cfg.arch.lower(), names, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"model.arch: unknown architecture {cfg.arch!r}{hint} (valid: {', '.join(names)})")
    if cfg.deep_supervision > 0:
        check_deep_supervision_arch(cfg.arch)
    model = builder(cfg, num_classes, in_channels)
    if cfg.deep_supervision > 0 and cfg.arch != "scratch_unet":
        add_deep_supervision(model, num_classes)  # before the presence head: its hook appends to the main logits
    _check_no_empty_layer(model, cfg)
    if cfg.classifier > 0:  # the auxiliary empty-mask classifier: output (N, 2C, H, W), see models/presence.py
        add_presence_head(model, num_classes)
    keep_depthwise_fp32(model)  # oneDNN's bf16 depthwise backward is slow on CPUs: see models/precision.py
    resolved = cfg.encoder
    if cfg.arch != "scratch_unet" and resolved is None:
        resolved = default_encoder(cfg.arch)
    spec_cfg = dataclasses.replace(cfg, encoder=resolved, params=dict(cfg.params))
    model.build_spec = {"model": dataclasses.asdict(spec_cfg), "num_classes": num_classes, "in_channels": in_channels}
    if announce:  # not for check_model_builds' trial build
        n_params = sum(p.numel() for p in model.parameters())
        logger.info("built %s (encoder %s): %s parameters", cfg.arch, resolved or "scratch", f"{n_params:,}")
    return model


def _check_no_empty_layer(model: nn.Module, cfg: ModelConfig) -> None:
    """Refuse a model with a zero-sized weight: some width in ``model.params`` (or the scratch
    U-Net's widths) left a layer no channels, and its first forward would fail deep in torch."""
    for name, p in model.named_parameters():
        if p.numel() == 0:
            hint = ""
            if cfg.params.get("decoder_attention_type") == "scse":
                hint = ("; scse attention squeezes each decoder width by 16 (smp's reduction), so every "
                        "model.params.decoder_channels value must be >= 16")
            raise ConfigError(
                f"model: {cfg.arch} with model.params {dict(cfg.params)} built a layer with no channels "
                f"({name}, shape {list(p.shape)}){hint}"
            )


# ----------------------------------------------------------------------------- training helpers


def _encoder_of(model: nn.Module) -> nn.Module:
    encoder = getattr(model, "encoder", None)
    if not isinstance(encoder, nn.Module):
        raise TypeError(f"{type(model).__name__} has no .encoder module (build it with build_model)")
    return encoder


def param_groups(model: nn.Module, lr: float, weight_decay: float, encoder_lr_mult: float) -> list[dict[str, Any]]:
    """Optimizer parameter groups: encoder at ``lr * encoder_lr_mult``, the rest at ``lr``;
    tensors with ndim <= 1 (biases, norm scales/shifts, layer-scale gammas) get no weight decay.

    All parameters are included, also those with ``requires_grad=False``, so an encoder
    frozen for the first epochs trains once unfrozen (optimizers skip params without grads).
    Each group has ``name``, ``lr``, ``weight_decay`` and ``lr_mult``; empty groups are left
    out. A scheduler that sets one absolute lr for all groups (e.g. OneCycleLR's ``max_lr``)
    must be given one value per group (``[g["lr"] for g in groups]``) to keep the multiplier.
    """
    encoder_ids = {id(p) for p in _encoder_of(model).parameters()}
    buckets: dict[tuple[bool, bool], list[nn.Parameter]] = {(e, d): [] for e in (True, False) for d in (True, False)}
    seen: set[int] = set()
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        buckets[(id(p) in encoder_ids, p.ndim > 1)].append(p)
    groups = []
    for (is_enc, decay), params in buckets.items():
        if not params:
            continue
        mult = encoder_lr_mult if is_enc else 1.0
        groups.append(
            {
                "params": params,
                "lr": lr * mult,
                "weight_decay": weight_decay if decay else 0.0,
                "lr_mult": mult,
                "name": ("encoder" if is_enc else "decoder") + ("" if decay else "_no_decay"),
            }
        )
    return groups


def set_encoder_frozen(model: nn.Module, frozen: bool) -> None:
    """Freeze (or unfreeze) ``model.encoder``.

    Frozen: ``requires_grad=False`` on every encoder parameter and the encoder's
    BatchNorm/InstanceNorm layers in eval mode, so their running statistics stay those the
    (pretrained) weights were fitted with; decoder BN keeps learning. Built models keep
    this across ``model.train()`` (``EncoderFreezeMixin``). Unfrozen: gradients back on,
    norm layers follow the model's current mode again.
    """
    encoder = _encoder_of(model)
    for p in encoder.parameters():
        p.requires_grad_(not frozen)
    for m in encoder.modules():
        if isinstance(m, nn.modules.batchnorm._NormBase):
            m.train(model.training and not frozen)
    model._is_encoder_frozen = frozen
