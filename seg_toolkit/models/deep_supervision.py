"""Deep supervision for smp's Unet (``model.deep_supervision: <loss weight>`` with ``arch: unet``).

As for the scratch U-Net: a 1x1 head on each decoder stage but the last (the coarser ones),
used in training only; each head's logits are upsampled bilinearly to the padded input size
and cropped back like the main logits, and the loss adds ``w x mean(loss(aux))``
(:func:`seg_toolkit.losses.model_loss`). In eval mode the model is the plain Unet, so the
predictor, TTA, OOF and ONNX export never see the heads; their weights live in the
checkpoint under ``aux_heads.*``.

The stage outputs are caught with forward hooks on ``model.decoder.blocks`` that take the
block as an argument (no closures): ``copy.deepcopy`` (EMA, the amp measurement) and pickling
see a self-contained module. A hook keeps its block's output only in training, and the
padded forward (:class:`seg_toolkit.models.smp_models._PaddedSmpMixin`) takes it back at
once, so no activation outlives the step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seg_toolkit.config import ConfigError

__all__ = ["add_deep_supervision", "aux_logits"]


def _keep_stage(block: nn.Module, inputs: object, output: torch.Tensor) -> None:
    if block.training:
        block.__dict__["_ds_stage"] = output


def _stage_blocks(model: nn.Module) -> list[nn.Module]:
    return list(model.decoder.blocks)[:-1]


def add_deep_supervision(model: nn.Module, num_classes: int) -> nn.Module:
    """Give an smp Unet a 1x1 head (``num_classes`` logits) on each decoder stage but the last."""
    blocks = _stage_blocks(model)
    if not blocks:
        raise ConfigError("model.deep_supervision: this Unet's decoder has a single stage; there is no coarser stage to supervise")
    channels = []
    for i, block in enumerate(blocks):
        conv = getattr(block, "conv2", None)
        if not isinstance(conv, nn.Sequential) or not isinstance(conv[0], nn.Conv2d):
            raise ConfigError(f"model.deep_supervision: decoder block {i} of this smp version has no conv2 "
                              f"(found {type(block).__name__}); deep supervision is built for smp's UnetDecoderBlock")
        channels.append(conv[0].out_channels)
        block.register_forward_hook(_keep_stage)
    model.aux_heads = nn.ModuleList(nn.Conv2d(c, num_classes, kernel_size=1) for c in channels)
    return model


def aux_logits(model: nn.Module, size: torch.Size | tuple[int, int]) -> list[torch.Tensor]:
    """The auxiliary logits of the forward that just ran, upsampled to ``size`` (the padded input's)."""
    stages = [block.__dict__.pop("_ds_stage") for block in _stage_blocks(model)]
    return [F.interpolate(head(s), size=size, mode="bilinear", align_corners=False) for head, s in zip(model.aux_heads, stages)]
