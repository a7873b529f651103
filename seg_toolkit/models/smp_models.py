"""segmentation_models_pytorch architectures behind the toolkit's contract.

Each smp class gets a module-level subclass (``PaddedUnet``, ``PaddedFPN``, ...) that

* pads the input to the architecture's multiple (the encoder's output stride; twice that
  for DPT, whose decoder also down-samples once more; PAN also needs >= 8 px at that
  stride) and crops the logits back, so any H, W works (smp raises on sizes it cannot divide);
* keeps a frozen encoder's BatchNorm layers in eval mode across ``model.train()``
  (:class:`~seg_toolkit.models.scratch_unet.EncoderFreezeMixin`);
* with ``model.deep_supervision`` (Unet only), returns ``(logits, [aux logits])`` in training
  (:mod:`.deep_supervision`);
* raises a readable error for a training batch of one on architectures with BatchNorm
  after global pooling (DeepLabV3/V3+ ASPP pooling, PAN's FPA, UPerNet's PSP).

The instance *is* the smp model (``model.encoder``, ``model.decoder``,
``model.segmentation_head``; state-dict keys are smp's own). Encoders: smp's names, any timm
model as ``tu-<timm name>`` (smp's ``TimmUniversalEncoder``), and ``scratch`` (the U-Net
contracting path of :mod:`.scratch_unet`, width/norm from ``model.base_width``/``model.norm``).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Iterator

import segmentation_models_pytorch as smp
import timm
import torch
from torch import nn

from seg_toolkit.config import ConfigError, ModelConfig
from seg_toolkit.errors import closest

from .deep_supervision import aux_logits
from .smp_params import (
    SMP_ARCHITECTURES,
    check_decoder_depth,
    check_params,
    params_error,
)
from .scratch_unet import SCRATCH_ENCODER, EncoderFreezeMixin, ScratchUNetEncoder, crop_padding, forward_padded, pad_to_multiple
from .weights import (
    EncoderWeightsReport,
    PretrainedDownloadError,
    is_weights_path,
    load_encoder_weights,
    remap_by_order,
    resolve_weights_path,
    read_state_dict,
)

logger = logging.getLogger(__name__)

__all__ = [
    "SMP_ARCHITECTURES",
    "PADDED_CLASSES",
    "DEFAULT_ENCODER",
    "SCRATCH_ENCODER",
    "MIN_TRAIN_BATCH",
    "default_encoder",
    "build_smp_model",
    "check_decoder_depth",
]

DEFAULT_ENCODER = "resnet34"

# DPT is ViT-only: smp's own default encoder, and dynamic image size so any H, W works
_ARCH_DEFAULT_ENCODER = {"dpt": "tu-vit_base_patch16_224.augreg_in21k"}
_ARCH_DEFAULT_PARAMS: dict[str, dict[str, Any]] = {"dpt": {"dynamic_img_size": True}}
_PAD_FACTOR = {"dpt": 2}
# PAN's feature pyramid attention max-pools the deepest map three times: it needs >= 8 px
_MIN_SIZE_FACTOR = {"pan": 8}
#: architectures whose BatchNorm after global pooling cannot train on a batch of one
MIN_TRAIN_BATCH = {"deeplabv3": 2, "deeplabv3plus": 2, "pan": 2, "upernet": 2}

# ModelConfig fields only the scratch U-Net / scratch encoder read
_SCRATCH_ONLY_FIELDS = ("depth", "base_width", "norm", "upsample", "dropout")
_SCRATCH_ENCODER_FIELDS = ("base_width", "norm")


# ----------------------------------------------------------------------------- padded subclasses


class _PaddedSmpMixin(EncoderFreezeMixin):
    """Pad to ``pad_multiple`` / crop back around smp's ``forward``; see the module docstring."""

    pad_multiple: int = 32
    min_input_size: int = 0
    min_train_batch: int = 1
    arch_name: str = ""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] < self.min_train_batch:
            raise ValueError(
                f"model.arch {self.arch_name!r} cannot train on a batch of {x.shape[0]}: it has BatchNorm "
                f"after global pooling, which needs >= {self.min_train_batch} images per batch. Use "
                "train.batch_size >= 2 and drop the last incomplete training batch."
            )
        heads = getattr(self, "aux_heads", None)  # deep supervision (models/deep_supervision.py), training only
        if heads is None or not self.training:
            return forward_padded(x, self.pad_multiple, self._same_size_forward, self.min_input_size)
        xp, pads = pad_to_multiple(x, self.pad_multiple, self.min_input_size)
        main = self._same_size_forward(xp)
        return crop_padding(main, pads), [crop_padding(a, pads) for a in aux_logits(self, main.shape[-2:])]

    def _same_size_forward(self, xp: torch.Tensor) -> torch.Tensor:
        """smp's forward on the padded input; logits of another size are refused (cropping them would misalign)."""
        out = super().forward(xp)  # type: ignore[misc]
        if out.shape[-2:] != xp.shape[-2:]:
            raise ValueError(f"model.arch {self.arch_name!r}: smp returned {tuple(out.shape[-2:])} logits for a "
                             f"{tuple(xp.shape[-2:])} input; check model.params (upsampling, encoder_depth, encoder_output_stride)")
        return out


def _make_padded(cls: type[nn.Module]) -> type[nn.Module]:
    name = f"Padded{cls.__name__}"
    doc = f"smp.{cls.__name__} that pads any input size to its multiple and crops the logits back."
    new = type(name, (_PaddedSmpMixin, cls), {"__module__": __name__, "__qualname__": name, "__doc__": doc})
    globals()[name] = new  # importable by name, so the class pickles
    return new


PADDED_CLASSES: dict[str, type[nn.Module]] = {arch: _make_padded(cls) for arch, cls in SMP_ARCHITECTURES.items()}


# ----------------------------------------------------------------------------- helpers


def default_encoder(arch: str) -> str:
    """Encoder used when ``model.encoder`` is null."""
    return _ARCH_DEFAULT_ENCODER.get(arch, DEFAULT_ENCODER)


@contextlib.contextmanager
def _scratch_encoder_registered(in_channels: int, cfg: ModelConfig) -> Iterator[None]:
    """Register ``scratch`` in smp's encoder table for one build (smp's mechanism for
    custom encoders), with this config's width and norm; the table is restored after."""
    table = smp.encoders.encoders
    previous = table.get(SCRATCH_ENCODER)
    table[SCRATCH_ENCODER] = {
        "encoder": ScratchUNetEncoder,
        "pretrained_settings": {},
        "params": {"in_channels": in_channels, "base_width": cfg.base_width, "norm": cfg.norm},
    }
    try:
        yield
    finally:
        if previous is None:
            table.pop(SCRATCH_ENCODER, None)
        else:
            table[SCRATCH_ENCODER] = previous


def _instantiate(
    arch: str, cfg: ModelConfig, encoder: str, weights: Any, in_channels: int, num_classes: int, params: dict[str, Any]
) -> nn.Module:
    cls = PADDED_CLASSES[arch]
    ctx = _scratch_encoder_registered(in_channels, cfg) if encoder == SCRATCH_ENCODER else contextlib.nullcontext()
    with ctx:
        return cls(
            encoder_name=encoder, encoder_weights=weights, in_channels=in_channels, classes=num_classes, **params
        )


def _named_weights_arg(encoder: str, weights: str) -> Any:
    """Translate ``model.encoder_weights`` (a weight-set name) into smp's argument."""
    if encoder == SCRATCH_ENCODER:
        raise ConfigError(
            f"model.encoder_weights: {weights!r}: the scratch encoder has no pretrained weights; "
            "use null or a path/to/file.pth|.safetensors"
        )
    if encoder.startswith("tu-"):
        if weights.lower() in ("imagenet", "true", "timm", "pretrained"):
            timm_name = encoder[3:]
            if not timm_name.startswith(("hf-hub:", "hf_hub:")) and not timm.models.is_model_pretrained(timm_name):
                raise ConfigError(
                    f"model.encoder_weights: {weights!r}: timm has no pretrained weights for {timm_name!r}; "
                    "use null or a path/to/file.pth|.safetensors"
                )
            return True  # smp/timm: the weight variant is the tag in the name, tu-<name>.<tag>
        raise ConfigError(
            f"model.encoder_weights: {weights!r}: for a tu- (timm) encoder use 'imagenet' (timm's default "
            f"pretrained tag, or choose one in the name: tu-<model>.<tag>) or a path/to/file.pth|.safetensors"
        )
    available = list(smp.encoders.encoders[encoder]["pretrained_settings"])
    if weights not in available:
        close = closest(weights, available)
        hint = f"; did you mean {close!r}?" if close else ""
        raise ConfigError(
            f"model.encoder_weights: {weights!r} is not a weight set of encoder {encoder!r}{hint} "
            f"(available: {', '.join(available) or 'none'}; or give a path/to/file.pth|.safetensors)"
        )
    return weights


def _refuse_ignored_fields(arch: str, cfg: ModelConfig, encoder: str) -> None:
    """The scratch U-Net's own keys set on an smp architecture, which would ignore them (``dropout: 0.3`` trained
    without dropout): refused when the config loads (it was a warning when the model was built)."""
    defaults = ModelConfig()
    used = _SCRATCH_ENCODER_FIELDS if encoder == SCRATCH_ENCODER else ()
    ignored = [f for f in _SCRATCH_ONLY_FIELDS if f not in used and getattr(cfg, f) != getattr(defaults, f)]
    if ignored:
        raise ConfigError(f"model.{ignored[0]}: {getattr(cfg, ignored[0])!r} applies to the scratch U-Net only; arch "
                          f"{arch!r} would ignore model.{'/'.join(ignored)} (its options go in model.params); remove them")


# ----------------------------------------------------------------------------- build


def _from_file(encoder_sd: dict[str, torch.Tensor], file_sd: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    """Which of the encoder's weight tensors (2-D and up: default-initialised 1-D ones prove nothing)
    hold values found in the file, whatever their names or shapes there."""
    def print_of(t: torch.Tensor) -> tuple:
        t = t.detach().float()
        return t.numel(), round(float(t.sum()), 3), round(float(t.abs().sum()), 3)

    prints = {print_of(v) for v in file_sd.values() if v.is_floating_point()}
    weights = [k for k, v in encoder_sd.items() if v.ndim >= 2]
    loaded = [k for k in weights if print_of(encoder_sd[k]) in prints]
    return loaded, [k for k in weights if k not in loaded]


def check_smp_keys(arch: str, cfg: ModelConfig, encoder: str) -> None:
    """The checks of :func:`build_smp_model` that need no model: dpt's encoder, the params, the weight-set name."""
    if arch == "dpt" and not encoder.startswith("tu-"):
        raise ConfigError(
            f"model.encoder: {encoder!r}: dpt needs a timm ViT encoder, e.g. tu-vit_base_patch16_224.augreg_in21k"
        )
    check_params(arch, dict(cfg.params), encoder)
    _refuse_ignored_fields(arch, cfg, encoder)
    weights = cfg.encoder_weights
    if weights is not None and not is_weights_path(weights):
        _named_weights_arg(encoder, weights)


def build_smp_model(arch: str, cfg: ModelConfig, num_classes: int, in_channels: int, encoder: str) -> nn.Module:
    """Build smp architecture ``arch`` on an already validated ``encoder`` name.

    ``model.encoder_weights``: null -> random init; a weight-set name (``imagenet``) -> smp's
    download (a failure raises :class:`PretrainedDownloadError`); a path -> loaded with
    :func:`~seg_toolkit.models.weights.load_encoder_weights`, falling back to timm's own file
    loader for ``tu-`` encoders whose keys need timm's remapping (e.g. ConvNeXt stages).
    The report of a file load is kept on ``model.encoder_weights_report``.
    """
    if arch == "dpt" and not encoder.startswith("tu-"):
        raise ConfigError(
            f"model.encoder: {encoder!r}: dpt needs a timm ViT encoder, e.g. tu-vit_base_patch16_224.augreg_in21k"
        )
    params = {**_ARCH_DEFAULT_PARAMS.get(arch, {}), **cfg.params}
    check_params(arch, dict(cfg.params), encoder)
    _refuse_ignored_fields(arch, cfg, encoder)

    weights = cfg.encoder_weights
    path = weights if weights is not None and is_weights_path(weights) else None
    named = _named_weights_arg(encoder, weights) if weights is not None and path is None else None
    if path is not None:
        path = resolve_weights_path(path)
    state_dict = read_state_dict(path) if path is not None else None  # fail on a bad path before building
    if state_dict is not None and cfg.encoder_weights_map == "order":
        if not encoder.startswith("tu-"):
            raise ConfigError(f"model.encoder_weights_map: order maps onto a timm model; encoder {encoder!r} is not a tu- encoder")
        state_dict, _ = remap_by_order(state_dict, encoder[3:], path)

    # phase 1: random init; any failure here is a config problem, not the network
    try:
        model = _instantiate(arch, cfg, encoder, None, in_channels, num_classes, params)
    except ConfigError:
        raise
    except Exception as e:
        raise params_error(arch, dict(cfg.params), e) or ConfigError(
            f"model: cannot build arch {arch!r} with encoder {encoder!r} "
            f"(params {params or '{}'}): {type(e).__name__}: {e}"
        ) from e

    report: EncoderWeightsReport | None = None
    if named is not None:
        # phase 2: the same build with pretrained weights; what fails now is the download
        try:
            model = _instantiate(arch, cfg, encoder, named, in_channels, num_classes, params)
        except Exception as e:
            raise PretrainedDownloadError(
                f"model.encoder_weights: downloading {weights!r} weights for encoder {encoder!r} failed "
                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). Without network access, "
                "download the weights elsewhere and set model.encoder_weights: path/to/file.pth|.safetensors"
            ) from e
    elif path is not None:
        assert state_dict is not None
        first_error: ConfigError | None = None
        try:
            report = load_encoder_weights(model.encoder, path, state_dict)
        except ConfigError as e:
            first_error = e
        timm_file_loader = encoder.startswith("tu-") and not encoder[3:].startswith(("hf-hub:", "hf_hub:"))
        if timm_file_loader and (report is None or report.coverage < 0.5):
            overlay = {**params, "pretrained_cfg_overlay": {"file": path}}
            try:
                timm_model = _instantiate(arch, cfg, encoder, True, in_channels, num_classes, overlay)
            except Exception as e:  # timm could not map it either; keep the direct result
                logger.debug("timm file loader failed for %s: %s", path, e)
            else:
                loaded, missing = _from_file(timm_model.encoder.state_dict(), state_dict)
                # timm's loader is lenient: count what really came from the file; every weight tensor must have, but
                # the first convolution when it was adapted to other input channels (its values changed)
                if len(missing) <= (0 if in_channels == 3 else 1):
                    model = timm_model
                    report = EncoderWeightsReport(path=str(path), source="timm", loaded=loaded, missing=missing,
                                                  weights_total=len(loaded) + len(missing), weights_loaded=len(loaded))
                    logger.info("encoder weights: %s loaded by timm's pretrained-file loader (%d of %d weight tensors)",
                                path, len(loaded), len(loaded) + len(missing))
        if report is None:
            assert first_error is not None
            raise first_error

    model.arch_name = arch
    stride = int(model.encoder.output_stride)
    model.pad_multiple = stride * _PAD_FACTOR.get(arch, 1)
    model.min_input_size = stride * _MIN_SIZE_FACTOR.get(arch, 0)
    model.min_train_batch = MIN_TRAIN_BATCH.get(arch, 1)
    model.encoder_weights_report = report
    return model
