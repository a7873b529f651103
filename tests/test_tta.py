"""Tests for seg_toolkit.tta: exact D4 inverses, batching, merge modes, multi-scale."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from seg_toolkit.config import ConfigError
from seg_toolkit.tta import (
    TRANSFORMS,
    apply_transform,
    expand_tta,
    invert_transform,
    merge_logits,
    tta_predict,
)

D4 = list(TRANSFORMS)


def _seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _conv1x1(c_in: int = 3, c_out: int = 2, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Conv2d(c_in, c_out, 1).eval()


def _d4_symmetric_conv(c_in: int = 3, c_out: int = 2, seed: int = 0) -> nn.Module:
    """3x3 conv (zero padding) whose kernel is invariant under all of D4: D4-equivariant."""
    torch.manual_seed(seed)
    conv = nn.Conv2d(c_in, c_out, 3, padding=1)
    with torch.no_grad():
        k = conv.weight.clone()
        conv.weight.copy_(sum(apply_transform(k, t) for t in D4) / 8)
    return conv.eval()


class _Asymmetric(nn.Module):
    """Conv net that is NOT flip-equivariant (so TTA changes its output)."""

    def __init__(self, c_in: int = 3, c_out: int = 2) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.net = nn.Sequential(
            nn.Conv2d(c_in, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, c_out, 3, padding=1)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class _FixedLogits(nn.Module):
    """Returns the same logits map for every input (of the map's spatial size)."""

    def __init__(self, logits: Tensor) -> None:
        super().__init__()
        self.logits = logits  # (C, H, W)

    def forward(self, x: Tensor) -> Tensor:
        assert tuple(x.shape[-2:]) == tuple(self.logits.shape[-2:])
        return self.logits.expand(x.shape[0], *self.logits.shape).clone()


# ----------------------------------------------------------------------------- names


def test_expand_d4_has_eight_distinct_members() -> None:
    names = expand_tta(["d4"])
    assert sorted(names) == sorted(
        ["identity", "hflip", "vflip", "transpose", "rot90", "rot180", "rot270", "transverse"]
    )
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    outs = [apply_transform(x, n) for n in names]
    for i in range(8):
        for j in range(i + 1, 8):
            assert not torch.equal(outs[i], outs[j]), (names[i], names[j])


def test_expand_dedupes_and_keeps_order() -> None:
    assert expand_tta(["hflip", "identity", "hflip"]) == ["hflip", "identity"]
    assert len(expand_tta(["identity", "d4"])) == 8


def test_unknown_name_lists_choices_and_closest() -> None:
    with pytest.raises(ConfigError, match=r"hflipp.*did you mean 'hflip'.*choices:.*rot90.*d4"):
        expand_tta(["hflipp"])
    with pytest.raises(ConfigError):
        expand_tta([])


@pytest.mark.parametrize(
    "bad", [{"merge": "mean"}, {"task": "regression"}, {"scales": [0.0]}, {"max_batch": 0}]
)
def test_bad_arguments_raise(bad: dict) -> None:
    kwargs = {"task": "binary", **bad}
    with pytest.raises(ValueError):  # ConfigError is a ValueError
        tta_predict(_conv1x1(c_out=1), torch.zeros(1, 3, 4, 4), **kwargs)


# ----------------------------------------------------------------------------- transforms


@pytest.mark.parametrize("name", D4)
def test_inverse_restores_non_square_exactly(name: str) -> None:
    x = torch.randn(2, 3, 5, 7, generator=_seeded())
    y = apply_transform(x, name)
    expected_hw = (7, 5) if TRANSFORMS[name].swaps_hw else (5, 7)
    assert tuple(y.shape[-2:]) == expected_hw
    assert torch.equal(invert_transform(y, name), x)
    assert torch.equal(apply_transform(invert_transform(x, name), name), x)


def test_transverse_is_anti_transpose() -> None:
    x = torch.arange(6.0).reshape(1, 1, 2, 3)
    y = apply_transform(x, "transverse")
    h, w = 2, 3
    for i in range(w):
        for j in range(h):
            assert y[0, 0, i, j] == x[0, 0, h - 1 - j, w - 1 - i]


# ----------------------------------------------------------------------------- equivariance


@pytest.mark.parametrize("task", ["binary", "multiclass"])
@pytest.mark.parametrize("merge", ["mean_prob", "mean_logit", "geometric", "max"])
def test_equivariant_model_tta_equals_plain(task: str, merge: str) -> None:
    c_out = 1 if task == "binary" else 3
    x = torch.randn(2, 3, 6, 9, generator=_seeded())  # non-square: both shape groups
    for model in (_conv1x1(c_out=c_out), _d4_symmetric_conv(c_out=c_out)):
        plain = tta_predict(model, x, task)
        tta = tta_predict(model, x, task, transforms=["d4"], merge=merge)
        assert tta.shape == plain.shape == (2, c_out, 6, 9)
        assert tta.dtype == torch.float32
        torch.testing.assert_close(tta, plain, atol=1e-6, rtol=0)


def test_plain_output_is_activation_of_model() -> None:
    model = _Asymmetric(c_out=3)
    x = torch.randn(2, 3, 8, 8, generator=_seeded())
    with torch.no_grad():
        logits = model(x)
    torch.testing.assert_close(tta_predict(model, x, "multiclass"), logits.softmax(1), atol=1e-6, rtol=0)
    torch.testing.assert_close(tta_predict(model, x, "multilabel"), logits.sigmoid(), atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- batching


@pytest.mark.parametrize("merge", ["mean_prob", "mean_logit", "geometric", "max"])
def test_batched_equals_sequential(merge: str) -> None:
    model = _Asymmetric(c_out=2)
    x = torch.randn(2, 3, 6, 10, generator=_seeded())
    kwargs = dict(task="multiclass", transforms=["d4"], scales=[0.5, 1.0, 1.5], merge=merge)
    batched = tta_predict(model, x, max_batch=64, **kwargs)
    sequential = tta_predict(model, x, batched=False, **kwargs)
    torch.testing.assert_close(batched, sequential, atol=1e-6, rtol=0)
    # and TTA really does something for this model
    assert not torch.allclose(batched, tta_predict(model, x, "multiclass"), atol=1e-3)


def test_batched_uses_few_forward_passes() -> None:
    calls: list[tuple[int, ...]] = []
    model = _conv1x1(c_out=1)
    model.register_forward_hook(lambda m, inp, out: calls.append(tuple(inp[0].shape)))
    x = torch.randn(4, 3, 6, 10, generator=_seeded())
    tta_predict(model, x, "binary", transforms=["d4"], max_batch=64)
    assert sorted(calls) == [(16, 3, 6, 10), (16, 3, 10, 6)]
    calls.clear()
    tta_predict(model, x, "binary", transforms=["d4"], max_batch=6)
    assert all(c[0] <= 6 for c in calls) and sum(c[0] for c in calls) == 32
    assert len(calls) == 6  # 16 images per shape group -> 6 + 6 + 4, twice


@pytest.mark.parametrize("max_batch", [1, 3, 5])
def test_chunking_does_not_change_output(max_batch: int) -> None:
    model = _Asymmetric(c_out=1)
    x = torch.randn(3, 3, 7, 5, generator=_seeded())
    kwargs = dict(task="binary", transforms=["d4"], scales=[0.75, 1.0], merge="mean_prob")
    ref = tta_predict(model, x, max_batch=64, **kwargs)
    torch.testing.assert_close(tta_predict(model, x, max_batch=max_batch, **kwargs), ref, atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- merge modes


def _sig(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def test_merge_modes_hand_computed_binary() -> None:
    # identity sees [0, 2]; hflip sees [0, 2] on the flipped image -> [2, 0] after inversion
    model = _FixedLogits(torch.tensor([[[0.0, 2.0]]]))
    x = torch.zeros(1, 1, 1, 2)
    expected = {
        "mean_prob": (_sig(0) + _sig(2)) / 2,
        "mean_logit": _sig(1.0),
        "geometric": math.sqrt(_sig(0) * _sig(2)),
        "max": _sig(2),
    }
    for merge, value in expected.items():
        out = tta_predict(model, x, "binary", transforms=["identity", "hflip"], merge=merge)
        torch.testing.assert_close(out, torch.full((1, 1, 1, 2), value), atol=1e-6, rtol=0)


def test_merge_modes_hand_computed_multiclass() -> None:
    a = torch.tensor([[0.0, 1.0], [2.0, 0.0]])  # variant A: classes x pixels (H=1, W=2)
    b = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    logits = torch.stack([a, b]).unsqueeze(1).unsqueeze(3)  # (V=2, N=1, C=2, H=1, W=2)

    def softmax2(u: float, v: float) -> tuple[float, float]:
        eu, ev = math.exp(u), math.exp(v)
        return eu / (eu + ev), ev / (eu + ev)

    for px in range(2):
        pa, pb = softmax2(a[0, px], a[1, px]), softmax2(b[0, px], b[1, px])
        mean_prob = [(pa[c] + pb[c]) / 2 for c in range(2)]
        mean_logit = softmax2((a[0, px] + b[0, px]) / 2, (a[1, px] + b[1, px]) / 2)
        g = [math.sqrt(pa[c] * pb[c]) for c in range(2)]
        geometric = [v / sum(g) for v in g]
        mx = [max(pa[c], pb[c]) for c in range(2)]
        for merge, want in [("mean_prob", mean_prob), ("mean_logit", mean_logit),
                            ("geometric", geometric), ("max", mx)]:
            got = merge_logits(logits, "multiclass", merge)[0, :, 0, px]
            torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float32), atol=1e-6, rtol=0)


def test_geometric_is_stable_for_extreme_logits() -> None:
    # p = e^-80 and e^-90: their float32 product underflows to 0, the geometric mean e^-85 does not
    logits = torch.tensor([-80.0, -90.0]).reshape(2, 1, 1, 1, 1)
    assert (logits.sigmoid().prod(0) == 0).all()
    out = merge_logits(logits, "binary", "geometric")
    assert (out > 0).all()
    torch.testing.assert_close(out.log(), torch.tensor(-85.0).reshape(1, 1, 1, 1), atol=1e-3, rtol=0)
    extreme = torch.tensor([[0.0, 500.0], [500.0, 0.0]]).reshape(2, 1, 2, 1, 1)
    multi = merge_logits(extreme, "multiclass", "geometric")
    torch.testing.assert_close(multi.flatten(), torch.tensor([0.5, 0.5]))


def test_merge_logits_list_equals_stack() -> None:
    items = [torch.randn(2, 3, 4, 5, generator=_seeded(i)) for i in range(3)]
    for merge in ["mean_prob", "mean_logit", "geometric", "max"]:
        torch.testing.assert_close(merge_logits(items, "multilabel", merge),
                                   merge_logits(torch.stack(items), "multilabel", merge))


# ----------------------------------------------------------------------------- multi-scale


def test_scale_one_equals_plain_exactly() -> None:
    model = _Asymmetric(c_out=1)
    x = torch.randn(2, 3, 6, 10, generator=_seeded())
    assert torch.equal(tta_predict(model, x, "binary", scales=[1.0]), tta_predict(model, x, "binary"))


def test_multiscale_shapes_and_constant_image() -> None:
    model = _conv1x1(c_out=2)
    x = torch.full((2, 3, 7, 5), 0.3)  # a constant image resizes to itself
    out = tta_predict(model, x, "multiclass", transforms=["d4"], scales=[0.75, 1.0, 1.3])
    assert out.shape == (2, 2, 7, 5)
    torch.testing.assert_close(out, tta_predict(model, x, "multiclass"), atol=1e-6, rtol=0)


def test_multiscale_matches_manual_resize() -> None:
    model = _Asymmetric(c_out=1)
    x = torch.randn(1, 3, 8, 6, generator=_seeded())
    resize = torch.nn.functional.interpolate
    with torch.no_grad():
        small = resize(model(resize(x, size=(4, 3), mode="bilinear", align_corners=False)),
                       size=(8, 6), mode="bilinear", align_corners=False)
        want = (small.sigmoid() + model(x).sigmoid()) / 2
    torch.testing.assert_close(tta_predict(model, x, "binary", scales=[0.5, 1.0]), want, atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- modes / dtypes


def test_works_inside_inference_mode_and_float64() -> None:
    model = _Asymmetric(c_out=1).double()
    x = torch.randn(2, 3, 6, 6, generator=_seeded()).double()
    with torch.inference_mode():
        out = tta_predict(model, x, "binary", transforms=["d4"])
    assert out.dtype == torch.float32 and out.shape == (2, 1, 6, 6)
    out2 = tta_predict(model, x, "binary", transforms=["d4"])  # outside: no grad graph either
    assert not out2.requires_grad
    torch.testing.assert_close(out, out2)
    out2 *= 2  # an ordinary tensor, not an inference tensor


def test_autocast_bfloat16_cpu() -> None:
    model = _Asymmetric(c_out=1)
    x = torch.randn(2, 3, 6, 6, generator=_seeded())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = tta_predict(model, x, "binary", transforms=["hflip", "identity"])
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, tta_predict(model, x, "binary", transforms=["hflip", "identity"]),
                               atol=2e-2, rtol=0)


def test_wrong_model_output_shape_is_explained() -> None:
    with pytest.raises(ValueError, match="logits"):
        tta_predict(lambda t: t[:, :, ::2], torch.zeros(1, 1, 4, 4), "binary")
