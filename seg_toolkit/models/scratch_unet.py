"""The from-scratch U-Net (Ronneberger, Fischer and Brox, 2015) and the pieces every model shares.

Layout of the network, ``depth`` = number of 2x2 max-pool down-sampling steps::

    stage 0   DoubleConv(in, w)                  stride 1      \
    stage 1   MaxPool 2x2, DoubleConv(w, 2w)     stride 2       |  ScratchUNetEncoder
    ...                                                         |
    stage d   MaxPool 2x2, DoubleConv(.., w*2^d) stride 2^d    /   (the bottleneck, + dropout)
    up d..1   up-sample (ConvTranspose 2x2 s2 | bilinear + 1x1 conv) to the skip's width,
              concat skip, DoubleConv(2*skip, skip)               ScratchUNetDecoder
    head      Conv 1x1 (w -> classes)

``DoubleConv`` is (3x3 conv, padding 1 -> norm -> ReLU) twice, so spatial size is kept; the
input is padded to a multiple of ``2**depth`` and the logits cropped back, so any H, W works.

The encoder follows the segmentation_models_pytorch encoder contract (``out_channels``,
``output_stride``, ``set_in_channels``, ``make_dilated``, forward -> list of ``depth + 1``
feature maps at strides 1, 2, ..., 2**depth), like smp's VGG-style encoders whose first map
is a real feature map at input resolution, so the smp decoders accept it (``encoder: scratch``).
"""

from __future__ import annotations

import logging
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import nn

from seg_toolkit.config import ConfigError, ModelConfig

from .weights import is_weights_path

logger = logging.getLogger(__name__)

__all__ = [
    "SCRATCH_ENCODER",
    "check_scratch_keys",
    "DoubleConv",
    "ScratchUNetEncoder",
    "ScratchUNetDecoder",
    "ScratchUNet",
    "EncoderFreezeMixin",
    "pad_to_multiple",
    "forward_padded",
]

Norm = Literal["batch", "group", "none"]
Upsample = Literal["transpose", "bilinear"]

#: the scratch U-Net's encoder under an smp decoder (``model.encoder: scratch``)
SCRATCH_ENCODER = "scratch"


def check_scratch_keys(cfg: ModelConfig) -> None:
    """``model.arch: scratch_unet``'s keys, when the config loads (this module imports torch only, not smp or timm)."""
    if cfg.encoder not in (None, SCRATCH_ENCODER):
        raise ConfigError(
            f"model.encoder: {cfg.encoder!r}: scratch_unet has its own encoder; leave model.encoder null, "
            f"or use an smp arch (e.g. model.arch: unet) with model.encoder: {cfg.encoder}"
        )
    if cfg.params:
        key = next(iter(cfg.params))
        raise ConfigError(
            f"model.params.{key}: scratch_unet takes no params; its options are model.depth, "
            "model.base_width, model.norm, model.upsample and model.dropout"
        )
    if cfg.encoder_weights is not None and not is_weights_path(cfg.encoder_weights):
        raise ConfigError(
            f"model.encoder_weights: {cfg.encoder_weights!r}: scratch_unet has no pretrained weights; "
            "use null or a path/to/file.pth|.safetensors"
        )
    if cfg.deep_supervision and cfg.depth < 2:  # its heads sit on the decoder stages below full resolution: none at depth 1
        raise ConfigError(f"model.deep_supervision: scratch_unet of model.depth {cfg.depth} has no coarser decoder stage "
                          "to supervise; use model.depth >= 2, or model.deep_supervision: 0")


# ----------------------------------------------------------------------------- shared helpers


def pad_to_multiple(
    x: torch.Tensor, multiple: int, min_size: int = 0
) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """Pad ``x`` (N, C, H, W) so H and W are multiples of ``multiple`` (and >= ``min_size``).

    The padding is split between the two sides (the extra pixel goes bottom/right) so the
    image stays centred. Reflect padding is used when the image is large enough for it,
    zero padding otherwise (reflect needs pad < size). Returns the padded tensor and the
    ``(top, bottom, left, right)`` amounts for :func:`crop_padding`.
    """
    h, w = x.shape[-2:]
    target_h = max(-(-h // multiple), -(-min_size // multiple)) * multiple
    target_w = max(-(-w // multiple), -(-min_size // multiple)) * multiple
    ph, pw = target_h - h, target_w - w
    if ph == 0 and pw == 0:
        return x, (0, 0, 0, 0)
    top, left = ph // 2, pw // 2
    bottom, right = ph - top, pw - left
    mode = "reflect" if max(top, bottom) < h and max(left, right) < w else "constant"
    return F.pad(x, (left, right, top, bottom), mode=mode), (top, bottom, left, right)


def crop_padding(y: torch.Tensor, pads: tuple[int, int, int, int]) -> torch.Tensor:
    """Undo :func:`pad_to_multiple` on an output with the padded input's spatial size."""
    top, bottom, left, right = pads
    if not any(pads):
        return y
    h, w = y.shape[-2:]
    return y[..., top : h - bottom, left : w - right]


def forward_padded(
    x: torch.Tensor, multiple: int, fn: Callable[[torch.Tensor], torch.Tensor], min_size: int = 0
) -> torch.Tensor:
    """Pad ``x`` to ``multiple`` (and ``min_size``), apply ``fn`` (same-resolution output), crop back."""
    xp, pads = pad_to_multiple(x, multiple, min_size)
    return crop_padding(fn(xp), pads)


class EncoderFreezeMixin:
    """Keeps a frozen encoder's normalisation layers in eval mode across ``model.train()``.

    :func:`seg_toolkit.models.set_encoder_frozen` sets ``_is_encoder_frozen``. A frozen
    encoder's BatchNorm/InstanceNorm layers must not update their running statistics
    (they would drift away from the weights they were trained with while the weights
    cannot follow), so ``train(True)`` puts every other module in training mode but those
    layers in eval mode. Unlike smp's own ``SegmentationModel.train`` (which skips the
    whole encoder when frozen), encoder dropout / drop-path still follows ``mode``, so
    ``model.eval()`` gives deterministic outputs even while the encoder is frozen.
    """

    _is_encoder_frozen: bool = False

    def train(self, mode: bool = True):  # type: ignore[override]
        if not isinstance(mode, bool):
            raise ValueError("training mode is expected to be boolean")
        nn.Module.train(self, mode)  # type: ignore[arg-type]
        if mode and self._is_encoder_frozen:
            for module in self.encoder.modules():  # type: ignore[attr-defined]
                if isinstance(module, nn.modules.batchnorm._NormBase):
                    module.eval()
        return self


# ----------------------------------------------------------------------------- building blocks


def _num_groups(channels: int, max_groups: int = 32) -> int:
    """Largest group count <= ``max_groups`` that divides ``channels``."""
    g = min(max_groups, channels)
    while channels % g:
        g -= 1
    return g


def norm_layer(norm: Norm, channels: int) -> nn.Module:
    """BatchNorm, GroupNorm (up to 32 groups) or identity."""
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "group":
        return nn.GroupNorm(_num_groups(channels), channels)
    if norm == "none":
        return nn.Identity()
    raise ValueError(f"norm must be 'batch', 'group' or 'none', got {norm!r}")


class DoubleConv(nn.Sequential):
    """(3x3 conv, padding 1 -> norm -> ReLU) x 2. Convs carry a bias only without a norm."""

    def __init__(self, in_channels: int, out_channels: int, norm: Norm = "batch") -> None:
        bias = norm == "none"
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=bias),
            norm_layer(norm, out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=bias),
            norm_layer(norm, out_channels),
            nn.ReLU(inplace=True),
        )


class _DownStage(nn.Module):
    """2x2 max-pool then :class:`DoubleConv` (the pool becomes identity when dilated)."""

    def __init__(self, in_channels: int, out_channels: int, norm: Norm) -> None:
        super().__init__()
        self.pool: nn.Module = nn.MaxPool2d(2)
        self.block = DoubleConv(in_channels, out_channels, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.pool(x))


# ----------------------------------------------------------------------------- encoder


class ScratchUNetEncoder(nn.Module):
    """Contracting path of the U-Net, shaped like an smp encoder.

    Args:
        depth: number of down-sampling steps; forward returns ``depth + 1`` maps.
        output_stride: smp passes it; dilation is applied by :meth:`make_dilated` only.
        in_channels: image channels.
        base_width: channels of stage 0; stage ``i`` has ``base_width * 2**i``.
        norm: ``batch`` | ``group`` | ``none``.
    """

    def __init__(
        self,
        depth: int = 5,
        output_stride: int = 32,
        in_channels: int = 3,
        base_width: int = 64,
        norm: Norm = "batch",
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"scratch encoder depth must be >= 1, got {depth}")
        if base_width < 1:
            raise ValueError(f"scratch encoder base_width must be >= 1, got {base_width}")
        self._depth = depth
        self._in_channels = in_channels
        self._output_stride = 2**depth
        self._norm: Norm = norm
        widths = [base_width * 2**i for i in range(depth + 1)]
        self._out_channels = tuple(widths)
        stages: list[nn.Module] = [DoubleConv(in_channels, widths[0], norm)]
        for i in range(1, depth + 1):
            stages.append(_DownStage(widths[i - 1], widths[i], norm))
        self.stages = nn.ModuleList(stages)

    @property
    def out_channels(self) -> tuple[int, ...]:
        """Channels of each returned feature map, input resolution first."""
        return self._out_channels

    @property
    def output_stride(self) -> int:
        """Stride of the deepest feature map (less than ``2**depth`` once dilated)."""
        return min(self._output_stride, 2**self._depth)

    @property
    def depth(self) -> int:
        return self._depth

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features

    def set_in_channels(self, in_channels: int, pretrained: bool = False) -> None:
        """Replace the first convolution for ``in_channels`` inputs (smp encoder contract)."""
        if in_channels == self._in_channels:
            return
        first = self.stages[0][0]
        new = nn.Conv2d(in_channels, first.out_channels, 3, padding=1, bias=first.bias is not None)
        self.stages[0][0] = new
        self._in_channels = in_channels

    def make_dilated(self, output_stride: int) -> None:
        """Stop down-sampling at ``output_stride`` (8 or 16): later pools become identity and
        the convolutions of those stages dilate by ``stage stride / output_stride``."""
        if output_stride not in (8, 16):
            raise ValueError(f"Output stride should be 16 or 8, got {output_stride}.")
        for i in range(1, self._depth + 1):
            stride = 2**i
            if stride <= output_stride:
                continue
            rate = stride // output_stride
            stage = self.stages[i]
            stage.pool = nn.Identity()
            for m in stage.block.modules():
                if isinstance(m, nn.Conv2d):
                    m.dilation = (rate, rate)
                    m.padding = (rate, rate)
        self._output_stride = output_stride


# ----------------------------------------------------------------------------- decoder and model


class _UpBlock(nn.Module):
    """Up-sample x2 to the skip's width, concatenate the skip, DoubleConv."""

    def __init__(self, in_channels: int, skip_channels: int, norm: Norm, upsample: Upsample) -> None:
        super().__init__()
        if upsample == "transpose":
            self.up: nn.Module = nn.ConvTranspose2d(in_channels, skip_channels, kernel_size=2, stride=2)
        elif upsample == "bilinear":
            self.up = nn.Sequential(
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                nn.Conv2d(in_channels, skip_channels, kernel_size=1),
            )
        else:
            raise ValueError(f"upsample must be 'transpose' or 'bilinear', got {upsample!r}")
        self.block = DoubleConv(2 * skip_channels, skip_channels, norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        if x.shape[-2:] != skip.shape[-2:]:  # only reachable without the padding wrapper
            x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
        return self.block(torch.cat([skip, x], dim=1))


class ScratchUNetDecoder(nn.Module):
    """Expanding path: one :class:`_UpBlock` per encoder down-sampling step."""

    def __init__(
        self, encoder_channels: tuple[int, ...], norm: Norm = "batch", upsample: Upsample = "transpose"
    ) -> None:
        super().__init__()
        chans = list(encoder_channels)
        self.blocks = nn.ModuleList(
            _UpBlock(chans[i], chans[i - 1], norm, upsample) for i in range(len(chans) - 1, 0, -1)
        )
        self.out_channels = chans[0]

    def forward(self, features: list[torch.Tensor], stages: list | None = None) -> torch.Tensor:
        """The full-resolution decoder output; with ``stages`` (a list) also every coarser block's output."""
        x = features[-1]
        skips = features[-2::-1]
        for i, (block, skip) in enumerate(zip(self.blocks, skips)):
            x = block(x, skip)
            if stages is not None and i < len(self.blocks) - 1:
                stages.append(x)
        return x


class ScratchUNet(EncoderFreezeMixin, nn.Module):
    """The U-Net of Ronneberger et al. (2015) with same-size (padding 1) convolutions.

    Input of any H, W: padded to a multiple of ``2**depth`` (reflect, or zeros when the
    image is too small to reflect), cropped back after the 1x1 head. Returns logits
    (N, num_classes, H, W). ``dropout`` > 0 adds dropout on the bottleneck features
    (the paper's "drop-out layers at the end of the contracting path").
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 1,
        depth: int = 4,
        base_width: int = 64,
        norm: Norm = "batch",
        upsample: Upsample = "transpose",
        dropout: float = 0.0,
        deep_supervision: bool = False,
    ) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.encoder = ScratchUNetEncoder(depth=depth, in_channels=in_channels, base_width=base_width, norm=norm)
        self.bottleneck_dropout: nn.Module = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.decoder = ScratchUNetDecoder(self.encoder.out_channels, norm=norm, upsample=upsample)
        self.segmentation_head = nn.Conv2d(self.decoder.out_channels, num_classes, kernel_size=1)
        self.pad_multiple = 2**depth
        # deep supervision: a 1x1 head on each coarser decoder stage, used in training only
        stage_channels = [blk.block[-3].out_channels for blk in self.decoder.blocks][:-1]
        self.aux_heads = nn.ModuleList(nn.Conv2d(c, num_classes, kernel_size=1) for c in stage_channels) if deep_supervision else None

    def _forward(self, x: torch.Tensor):
        features = self.encoder(x)
        features[-1] = self.bottleneck_dropout(features[-1])
        if self.aux_heads is None or not self.training:
            return self.segmentation_head(self.decoder(features))
        stages: list[torch.Tensor] = []
        main = self.segmentation_head(self.decoder(features, stages))
        aux = [F.interpolate(head(s), size=main.shape[-2:], mode="bilinear", align_corners=False)
               for head, s in zip(self.aux_heads, stages)]
        return main, aux

    def forward(self, x: torch.Tensor):
        """Logits (N, C, H, W); in training with deep supervision ``(logits, [aux logits at H, W])``."""
        if self.aux_heads is None or not self.training:
            return forward_padded(x, self.pad_multiple, self._forward)
        xp, pads = pad_to_multiple(x, self.pad_multiple)
        main, aux = self._forward(xp)
        return crop_padding(main, pads), [crop_padding(a, pads) for a in aux]
