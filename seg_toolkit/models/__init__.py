"""Segmentation models: the scratch U-Net and every smp decoder on smp/timm encoders.

>>> from seg_toolkit.models import build_model, list_architectures, list_encoders
>>> from seg_toolkit.config import ModelConfig
>>> model = build_model(ModelConfig(arch="unet", encoder="tu-resnet18"), num_classes=1)

See :mod:`.registry` for the contract every built model follows.
"""

from .registry import (
    ARCHITECTURES,
    build_model,
    list_architectures,
    list_encoders,
    param_groups,
    set_encoder_frozen,
)
from .scratch_unet import ScratchUNet, ScratchUNetEncoder
from .weights import EncoderWeightsReport, PretrainedDownloadError, load_encoder_weights

__all__ = [
    "ARCHITECTURES",
    "build_model",
    "list_architectures",
    "list_encoders",
    "param_groups",
    "set_encoder_frozen",
    "ScratchUNet",
    "ScratchUNetEncoder",
    "EncoderWeightsReport",
    "PretrainedDownloadError",
    "load_encoder_weights",
]
