"""Depthwise convolutions train in fp32 under CPU bf16 autocast; everything else follows autocast."""

from __future__ import annotations

import copy
import pickle

import torch
from timm.layers import Conv2dSame

from seg_toolkit.config import ModelConfig
from seg_toolkit.models import build_model
from seg_toolkit.models.precision import Fp32UnderCpuAutocast, follow_autocast, keep_depthwise_fp32

from .test_amp import _Depthwise


def test_only_depthwise_layers_change_and_state_dict_is_kept():
    net = _Depthwise()
    keys = {k: v.clone() for k, v in net.state_dict().items()}
    assert keep_depthwise_fp32(net) == 1
    assert keep_depthwise_fp32(net) == 0  # idempotent
    assert isinstance(net.dw, Fp32UnderCpuAutocast) and isinstance(net.dw, torch.nn.Conv2d)
    assert not isinstance(net.grouped, Fp32UnderCpuAutocast) and type(net.pw) is torch.nn.Conv2d
    assert list(net.state_dict()) == list(keys) and all(torch.equal(net.state_dict()[k], v) for k, v in keys.items())
    clone = pickle.loads(pickle.dumps(copy.deepcopy(net)))  # the generated class pickles by name
    assert type(clone.dw) is type(net.dw)



def test_follow_autocast_gives_each_layer_its_own_class_back():
    same = Conv2dSame(8, 8, 3, groups=8)
    net = torch.nn.Sequential(_Depthwise(), same)
    assert keep_depthwise_fp32(net) == 2
    x = torch.randn(1, 8, 9, 9)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert same(x).dtype == torch.float32  # the exception
    assert follow_autocast(net) == 2 and follow_autocast(net) == 0
    assert type(net[0].dw) is torch.nn.Conv2d and type(same) is Conv2dSame
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert same(x).dtype == torch.bfloat16  # follows autocast again

def test_depthwise_is_fp32_and_exact_under_cpu_autocast_other_layers_bf16():
    torch.manual_seed(0)
    net = _Depthwise()
    keep_depthwise_fp32(net)
    x = torch.randn(2, 8, 9, 9)
    with torch.no_grad():
        plain = torch.nn.functional.conv2d(x, net.dw.weight, net.dw.bias, padding=1, groups=8)  # fp32 reference
        assert torch.equal(net.dw(x), plain)  # outside autocast: the original forward
        expected = torch.nn.functional.conv2d(x.bfloat16().float(), net.dw.weight, net.dw.bias, padding=1, groups=8)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autograd on: a training forward
        dw = net.dw(x)
        dw_from_bf16 = net.dw(x.bfloat16())  # a bf16 input (a previous bf16 layer's output) is cast up
        pw = net.pw(torch.randn(2, 3, 9, 9))
        with torch.no_grad():  # inference: the forward alone is faster in bf16, so autocast decides
            dw_inference = net.dw(x)
    assert dw.dtype == torch.float32 and torch.equal(dw, plain)
    assert dw_from_bf16.dtype == torch.float32 and torch.equal(dw_from_bf16, expected)
    assert pw.dtype == torch.bfloat16 and dw_inference.dtype == torch.bfloat16


def test_same_named_classes_get_their_own_subclass():
    other = type("Conv2d", (torch.nn.Conv2d,), {})  # e.g. a library's own Conv2d
    a, b = torch.nn.Conv2d(4, 4, 3, groups=4), other(4, 4, 3, groups=4)
    keep_depthwise_fp32(torch.nn.Sequential(a, b))
    assert type(a).__mro__[2] is torch.nn.Conv2d and type(b).__mro__[2] is other and type(a) is not type(b)
    assert type(pickle.loads(pickle.dumps(a))) is type(a)


def test_conv2d_same_keeps_its_padding():
    torch.manual_seed(0)
    conv = Conv2dSame(6, 6, 3, stride=2, groups=6)
    x = torch.randn(1, 6, 10, 10)
    with torch.no_grad():
        ref = conv(x)
    assert keep_depthwise_fp32(torch.nn.Sequential(conv)) == 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = conv(x)
    assert isinstance(conv, Conv2dSame) and out.dtype == torch.float32 and torch.allclose(out, ref, atol=0, rtol=0)


def test_build_model_applies_it_to_a_depthwise_encoder_only():
    eff = build_model(ModelConfig(arch="unet", encoder="tu-test_efficientnet"), num_classes=1, in_channels=3)
    n_dw = sum(1 for m in eff.modules() if isinstance(m, torch.nn.Conv2d) and m.groups == m.in_channels > 1)
    assert n_dw > 0 and sum(isinstance(m, Fp32UnderCpuAutocast) for m in eff.modules()) == n_dw
    res = build_model(ModelConfig(arch="unet", encoder="tu-test_resnet"), num_classes=1, in_channels=3)
    assert not any(isinstance(m, Fp32UnderCpuAutocast) for m in res.modules())
    with torch.autocast("cpu", dtype=torch.bfloat16):  # a bf16 training step runs through it
        out = eff(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 1, 64, 64) and out.dtype == torch.bfloat16
    out.float().mean().backward()
    dw = next(m for m in eff.modules() if isinstance(m, Fp32UnderCpuAutocast))
    assert dw.weight.grad is not None and dw.weight.grad.dtype == torch.float32 and torch.isfinite(dw.weight.grad).all()
