"""Segmentation models: the scratch U-Net and every smp decoder on smp/timm encoders.

>>> from seg_toolkit.models import build_model, list_architectures, list_encoders
>>> from seg_toolkit.config import ModelConfig
>>> model = build_model(ModelConfig(arch="unet", encoder="tu-resnet18"), num_classes=1)

See :mod:`.registry` for the contract every built model follows.
"""

import importlib
from typing import Any

#: where each name lives, imported on first use: a config's checks need only .weights and .scratch_unet, and
#: importing .registry imports smp, timm and torchvision (about 2 s per command)
_WHERE = {
    "ARCHITECTURES": "registry", "build_model": "registry", "list_architectures": "registry", "list_encoders": "registry",
    "param_groups": "registry", "set_encoder_frozen": "registry",
    "ScratchUNet": "scratch_unet", "ScratchUNetEncoder": "scratch_unet",
    "EncoderWeightsReport": "weights", "PretrainedDownloadError": "weights", "load_encoder_weights": "weights",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    try:  # a submodule (models.registry, models.weights), as the eager imports had made them attributes
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as e:
        if e.name != f"{__name__}.{name}":  # the submodule exists and lacks one of its own imports: say that
            raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})


__all__ = list(_WHERE)
