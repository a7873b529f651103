"""Depthwise convolutions train in fp32 under CPU bf16 autocast: the one precision exception.

oneDNN's bf16 depthwise-convolution *backward* on this class of CPU (AVX512-BF16) is 2-25x
slower than its fp32 one in channels-last, measured per layer of efficientnet_lite0 at TGS
sizes (e.g. 672 channels, 8x8 -> 4x4, 5x5 stride 2: 303 ms bf16 vs 12 ms fp32 for a batch of
32), so a bf16 training step of a depthwise encoder spent most of its time there and was barely
faster than fp32. Running those layers in fp32 (input cast up, autocast off for that one
convolution, output fp32 for the BatchNorm that follows) while everything else stays bf16 makes
the step of smp Unet / efficientnet_lite0 about 1.5x faster than all-bf16 (``bench/bench_amp.py``).
The forward alone is the other way round (bf16 depthwise is faster), so the exception holds only
while autograd records (``torch.is_grad_enabled()``): inference and validation, which run under
``no_grad``/``inference_mode``, stay all-bf16, so OOF, evaluate and predict share one arithmetic.

:func:`keep_depthwise_fp32` gives every depthwise ``nn.Conv2d`` (``groups == in_channels > 1``)
a subclass whose forward does that; parameters, buffers and state-dict keys are unchanged, and
outside CPU autocast (fp32, CUDA autocast, ONNX export) the forward is the original one.
:func:`~seg_toolkit.models.build_model` applies it to every model.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["keep_depthwise_fp32", "follow_autocast", "is_depthwise", "Fp32UnderCpuAutocast"]

_SUBCLASSES: dict[type, type] = {}


def is_depthwise(module: nn.Module) -> bool:
    """A 2-D convolution with one group per input channel (``groups == in_channels > 1``)."""
    return isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels


def _cpu_autocast_on() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled()


class Fp32UnderCpuAutocast:
    """Mixin for a convolution class: under CPU autocast with autograd on, run in fp32, autocast off."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and torch.is_grad_enabled() and _cpu_autocast_on():
            with torch.autocast("cpu", enabled=False):
                return super().forward(x.float())  # type: ignore[misc]
        return super().forward(x)  # type: ignore[misc]


def _fp32_subclass(cls: type) -> type:
    """``cls`` with :class:`Fp32UnderCpuAutocast` in front, one per class, importable by name."""
    if cls not in _SUBCLASSES:
        name, i = f"Fp32{cls.__name__}", 1
        while name in globals():  # another module's class of the same name
            name, i = f"Fp32{cls.__name__}_{i}", i + 1
        new = type(name, (Fp32UnderCpuAutocast, cls), {"__module__": __name__, "__qualname__": name})
        globals()[name] = new  # picklable by name, as torch.save(model) and deepcopy expect
        _SUBCLASSES[cls] = new
    return _SUBCLASSES[cls]


def keep_depthwise_fp32(model: nn.Module) -> int:
    """Make every depthwise convolution of ``model`` train in fp32 under CPU autocast (in place).

    Works for ``nn.Conv2d`` and its subclasses (timm's ``Conv2dSame`` keeps its own padding).
    Returns how many layers it changed (0 for a model without depthwise convolutions; calling it
    twice changes nothing the second time).
    """
    n = 0
    for module in model.modules():
        if is_depthwise(module) and not isinstance(module, Fp32UnderCpuAutocast):
            module.__class__ = _fp32_subclass(type(module))
            n += 1
    return n


def follow_autocast(model: nn.Module) -> int:
    """Undo :func:`keep_depthwise_fp32` (in place): each changed layer gets its own class back and follows autocast
    like every other layer. For the benchmarks that measure what the exception is worth; returns how many layers it
    changed back."""
    n = 0
    for module in model.modules():
        if isinstance(module, Fp32UnderCpuAutocast):
            module.__class__ = type(module).__mro__[2]  # Fp32<Conv> -> (Fp32UnderCpuAutocast, <Conv>): back to <Conv>
            n += 1
    return n
