"""Losses: hand-worked values, void handling, all-void and empty batches, combos, config errors.

Recurring numbers: sigmoid(0) = 0.5, sigmoid(ln 3) = 0.75; softmax([ln 3, 0]) = [0.75, 0.25],
softmax([0, 0]) = [0.5, 0.5]. ``V`` = 255 marks void pixels.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from seg_toolkit.config import IGNORE_INDEX, ConfigError, config_from_dict
from seg_toolkit.losses import LOSS_NAMES, LossCombo, build_loss, build_loss_term

V = float(IGNORE_INDEX)
LN2, LN3 = math.log(2.0), math.log(3.0)


def approx(x: float) -> object:
    return pytest.approx(x, rel=1e-5, abs=1e-6)


def binary_example() -> tuple[torch.Tensor, torch.Tensor]:
    """Three pixels: p = 0.5 (truth 1), p = 0.75 (truth 0), and a void pixel with logit 5."""
    logits = torch.tensor([0.0, LN3, 5.0]).view(1, 1, 1, 3)
    target = torch.tensor([1.0, 0.0, V]).view(1, 1, 1, 3)
    return logits, target


def multiclass_example() -> tuple[torch.Tensor, torch.Tensor]:
    """Three pixels, two classes: A p=[0.75, 0.25] truth 0, B p=[0.5, 0.5] truth 1, C void."""
    logits = torch.tensor([[LN3, 0.0, 9.0], [0.0, 0.0, -9.0]]).view(1, 2, 1, 3)
    target = torch.tensor([0, 1, IGNORE_INDEX]).view(1, 1, 3)
    return logits, target


def term(name: str, task: str = "binary", num_classes: int = 1, **params: object) -> torch.nn.Module:
    return build_loss_term(name, task, num_classes, params)


def make_cfg(task: str, num_classes: int, loss: dict, loss_params: dict | None = None):
    return config_from_dict(
        {"data": {"task": task, "num_classes": num_classes, **({} if task == "binary" else {"class_column": "c"})}, "loss": loss, "loss_params": loss_params or {},
         "submission": {"per_class": True}}
    )


def random_batch(task: str, c: int, seed: int = 0, void_frac: float = 0.3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, c, 5, 6, generator=g) * 2
    void = torch.rand(2, 5, 6, generator=g) < void_frac
    if task == "multiclass":
        target = torch.randint(0, c, (2, 5, 6), generator=g)
        target[void] = IGNORE_INDEX
    else:
        target = (torch.rand(2, c, 5, 6, generator=g) < 0.4).float()
        target[torch.rand(2, c, 5, 6, generator=g) < void_frac] = V
    return logits, target


TASK_SHAPES = [("binary", 1), ("multilabel", 3), ("multiclass", 3)]


def valid_names(task: str) -> list[str]:
    return [n for n in LOSS_NAMES if not (n == "ce" and task != "multiclass") and not (n == "bce" and task == "multiclass")]


ALL_CASES = [(n, t, c) for t, c in TASK_SHAPES for n in valid_names(t)]


# ----------------------------------------------------------------------------- hand-worked values


def test_bce_by_hand() -> None:
    logits, target = binary_example()
    # -ln(0.5) = ln2 for the positive; -ln(1 - 0.75) = ln4 for the negative; void left out
    assert term("bce")(logits, target).item() == approx((LN2 + 2 * LN2) / 2)
    # pos_weight 2 doubles the positive term: (2 ln2 + ln4) / 2 = 2 ln2
    assert term("bce", pos_weight=2.0)(logits, target).item() == approx(2 * LN2)


def test_bce_per_channel_pos_weight() -> None:
    # two channels, one pixel each, logit 0 and truth 1: -ln 0.5 = ln2 each, weighted by 1 and 3
    logits = torch.zeros(1, 2, 1, 1)
    target = torch.ones(1, 2, 1, 1)
    loss = term("bce", "multilabel", 2, pos_weight=[1.0, 3.0])(logits, target)
    assert loss.item() == approx((1 * LN2 + 3 * LN2) / 2)


def test_ce_by_hand() -> None:
    logits, target = multiclass_example()
    # A: -ln 0.75 = ln(4/3); B: -ln 0.5 = ln2; C void
    a, b = math.log(4 / 3), LN2
    assert term("ce", "multiclass", 2)(logits, target).item() == approx((a + b) / 2)
    # class weights [1, 3]: (1*a + 3*b) / (1 + 3), torch's weighted mean
    assert term("ce", "multiclass", 2, class_weights=[1.0, 3.0])(logits, target).item() == approx((a + 3 * b) / 4)
    # label smoothing 0.1 over 2 classes: (1 - 0.1) * nll + 0.1 / 2 * sum_c(-ln p_c)
    # A: 0.9 * ln(4/3) + 0.05 * (ln(4/3) + ln 4); B: 0.9 * ln2 + 0.05 * (ln2 + ln2) = ln2
    sa = 0.9 * a + 0.05 * (a + math.log(4))
    sb = 0.9 * b + 0.05 * 2 * b
    assert term("ce", "multiclass", 2, label_smoothing=0.1)(logits, target).item() == approx((sa + sb) / 2)


def test_ce_equals_torch_mean_with_weights_and_smoothing() -> None:
    logits, target = random_batch("multiclass", 3)
    w = [0.5, 1.0, 2.0]
    ours = term("ce", "multiclass", 3, class_weights=w, label_smoothing=0.2)(logits, target)
    ref = F.cross_entropy(logits, target, weight=torch.tensor(w), ignore_index=IGNORE_INDEX, label_smoothing=0.2)
    assert ours.item() == approx(ref.item())


def test_dice_jaccard_tversky_binary_by_hand() -> None:
    logits, target = binary_example()
    # soft counts over non-void pixels: TP = 0.5*1 = 0.5, sum p = 1.25, sum t = 1
    # dice = 2*0.5 / (1.25 + 1) = 4/9 -> loss 5/9
    assert term("dice")(logits, target).item() == approx(5 / 9)
    # jaccard = 0.5 / (1.25 + 1 - 0.5) = 2/7 -> loss 5/7
    assert term("jaccard")(logits, target).item() == approx(5 / 7)
    # tversky(alpha=FP weight 0.3, beta=FN weight 0.7): FP = 1.25 - 0.5 = 0.75, FN = 1 - 0.5 = 0.5
    # 0.5 / (0.5 + 0.3*0.75 + 0.7*0.5) = 0.5 / 1.075
    assert term("tversky", alpha=0.3, beta=0.7)(logits, target).item() == approx(1 - 0.5 / 1.075)
    # alpha = beta = 0.5 is dice
    assert term("tversky", alpha=0.5, beta=0.5)(logits, target).item() == approx(5 / 9)


def test_dice_multiclass_by_hand() -> None:
    logits, target = multiclass_example()
    # class 0: TP = 0.75, sum p = 0.75 + 0.5 = 1.25, sum t = 1 -> dice 1.5/2.25 = 2/3 -> 1/3
    # class 1: TP = 0.5, sum p = 0.25 + 0.5 = 0.75, sum t = 1 -> dice 1/1.75 = 4/7 -> 3/7
    assert term("dice", "multiclass", 2)(logits, target).item() == approx((1 / 3 + 3 / 7) / 2)
    # jaccard: class 0: 0.75 / (1.25 + 1 - 0.75) = 1/2; class 1: 0.5 / (0.75 + 1 - 0.5) = 2/5
    assert term("jaccard", "multiclass", 2)(logits, target).item() == approx((1 / 2 + 3 / 5) / 2)


def test_dice_multilabel_per_channel_with_empty_channel() -> None:
    # channel 0 = the binary example (loss 5/9); channel 1 has no true pixel -> smp gives it 0
    # (it still counts in the mean over channels): (5/9 + 0) / 2
    logits0, target0 = binary_example()
    logits = torch.cat([logits0, torch.zeros_like(logits0)], dim=1)
    target = torch.cat([target0, torch.tensor([0.0, 0.0, V]).view(1, 1, 1, 3)], dim=1)
    assert term("dice", "multilabel", 2)(logits, target).item() == approx(5 / 18)


REGION_PARAMS = {"dice": [{}, {"smooth": 1.0}, {"log_loss": True}], "jaccard": [{}, {"smooth": 0.5}, {"log_loss": True}],
                 "tversky": [{}, {"alpha": 0.3, "beta": 0.7, "smooth": 0.5}]}


def _smp_losses_0_6():
    """smp's losses as the reference; 0.6 is the version whose soft intersection (min(p, t)) and dice
    smoothing (tversky with alpha = beta = 0.5) ours keep: older ones computed both differently."""
    import segmentation_models_pytorch as smp
    import segmentation_models_pytorch.losses as smp_losses

    if tuple(int(x) for x in smp.__version__.split(".")[:2]) < (0, 6):
        pytest.skip(f"smp {smp.__version__} < 0.6 defines soft dice and its smoothing differently")
    return smp_losses


@pytest.mark.parametrize("task,c", TASK_SHAPES + [("multiclass", 5)])
@pytest.mark.parametrize("name,params", [(n, p) for n, ps in REGION_PARAMS.items() for p in ps])
@pytest.mark.parametrize("channels_last", [False, True])
def test_region_losses_equal_smp_value_and_gradient(task: str, c: int, name: str, params: dict, channels_last: bool) -> None:
    """Our dice / jaccard / tversky (three sums per channel) against smp's, the independent reference:
    void pixels, a class absent from the batch (multiclass, c=5: labels 0-2 only), smooth, log_loss."""
    smp_losses = _smp_losses_0_6()
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(3, c, 9, 11, generator=g) * 3
    if task == "multiclass":
        target = torch.randint(0, min(c, 3), (3, 9, 11), generator=g)
        target[torch.rand(3, 9, 11, generator=g) < 0.25] = IGNORE_INDEX
    else:
        target = (torch.rand(3, c, 9, 11, generator=g) < 0.4).float()
        target[torch.rand(3, c, 9, 11, generator=g) < 0.25] = V
        if c > 1:
            target[:, 1][target[:, 1] == 1.0] = 0.0  # a channel with no true pixel
    if channels_last:
        logits = logits.contiguous(memory_format=torch.channels_last)
    cls = {"dice": smp_losses.DiceLoss, "jaccard": smp_losses.JaccardLoss, "tversky": smp_losses.TverskyLoss}[name]
    ref_fn = cls(task, from_logits=True, ignore_index=IGNORE_INDEX, **params)
    x1, x2 = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    ours = term(name, task, c, **params)(x1, target)
    ref = ref_fn(x2, target)
    ours.backward()
    ref.backward()
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5, abs=1e-6)
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-4, atol=1e-7)


def test_region_losses_soft_binary_targets_equal_smp() -> None:
    """pseudo.soft gives probabilities as binary targets: the intersection is sum(min(p, t)), as in smp."""
    smp_losses = _smp_losses_0_6()

    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 1, 8, 8, generator=g)
    target = torch.rand(2, 1, 8, 8, generator=g)
    ours = term("dice")(logits, target)
    ref = smp_losses.DiceLoss("binary", from_logits=True, ignore_index=IGNORE_INDEX)(logits, target)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-6)
    # by hand: p = sigmoid(0) = 0.5 against t = 0.3: I = min = 0.3, dice = 0.3 / (0.5 * (0.5 + 0.3)) = 0.75
    one = term("dice")(torch.zeros(1, 1, 1, 1), torch.full((1, 1, 1, 1), 0.3))
    assert one.item() == approx(0.25)


def test_focal_binary_by_hand() -> None:
    logits, target = binary_example()
    # positive p_t = 0.5: (1 - 0.5)^2 * ln2; negative p_t = 1 - 0.75 = 0.25: (0.75)^2 * ln4
    pos, neg = 0.25 * LN2, 0.5625 * 2 * LN2
    assert term("focal", gamma=2.0)(logits, target).item() == approx((pos + neg) / 2)
    # alpha 0.25 weighs positives by 0.25 and negatives by 0.75
    assert term("focal", gamma=2.0, alpha=0.25)(logits, target).item() == approx((0.25 * pos + 0.75 * neg) / 2)
    # gamma 0 is bce
    assert term("focal", gamma=0.0)(logits, target).item() == approx(1.5 * LN2)


def test_focal_on_a_soft_target_is_smallest_at_its_probability() -> None:
    """pseudo.soft targets: the modulating factor came from a hard cut at 0.5, so a 0.7 target scored 0.055 at
    p = 0.7 and 0.00014 at p = 0.99 (trained towards 1). With |t - p| ** gamma it is 0 at p = t."""
    t = torch.full((1, 1, 1, 1), 0.7)
    focal = term("focal", gamma=2.0)
    loss = {p: focal(torch.logit(torch.full((1, 1, 1, 1), p)), t).item() for p in (0.5, 0.7, 0.9, 0.99)}
    assert loss[0.7] == approx(0.0) and loss[0.7] < loss[0.9] < loss[0.99] and loss[0.7] < loss[0.5]
    # by hand at p = 0.9: |0.7 - 0.9|^2 * BCE(0.7, 0.9) = 0.04 * -(0.7 ln 0.9 + 0.3 ln 0.1)
    assert loss[0.9] == pytest.approx(0.04 * -(0.7 * math.log(0.9) + 0.3 * math.log(0.1)), rel=1e-5)


def test_focal_multiclass_is_softmax_focal() -> None:
    logits, target = multiclass_example()
    # A: p_t = 0.75 -> 0.25^2 * ln(4/3); B: p_t = 0.5 -> 0.5^2 * ln2
    a, b = 0.0625 * math.log(4 / 3), 0.25 * LN2
    assert term("focal", "multiclass", 2, gamma=2.0)(logits, target).item() == approx((a + b) / 2)
    # per-class alpha [1, 3]: (1*a + 3*b) / 2 (mean over pixels)
    assert term("focal", "multiclass", 2, alpha=[1.0, 3.0])(logits, target).item() == approx((a + 3 * b) / 2)
    # gamma 0 is ce
    assert term("focal", "multiclass", 2, gamma=0.0)(logits, target).item() == approx(
        (math.log(4 / 3) + LN2) / 2
    )


def test_lovasz_hinge_by_hand() -> None:
    logits, target = binary_example()
    # errors 1 - x*sign: positive 1 - 0 = 1; negative 1 + ln3. Sorted: [1 + ln3 (gt 0), 1 (gt 1)]
    # |gt| = 1: intersection [1, 0], union [2, 2] -> J = [0.5, 1] -> grad [0.5, 0.5]
    # loss = 0.5 * (1 + ln3) + 0.5 * 1
    assert term("lovasz")(logits, target).item() == approx(1 + LN3 / 2)
    # margins >= 1 on the right side give 0
    good = torch.tensor([2.0, -2.0, 0.0]).view(1, 1, 1, 3)
    assert term("lovasz")(good, target).item() == approx(0.0)


def test_lovasz_hinge_counts_fitted_positives() -> None:
    # logits [0, ln3, 2], truth [1, 0, 1]: errors [1, 1 + ln3, -1]; the fitted third pixel is not
    # ranked (relu 0) but is one of the |gt| = 2 positives. Full ranking [1 + ln3 (gt 0), 1 (gt 1), -1 (gt 1)]:
    # intersection [2, 1, 0], union [3, 3, 3] -> J [1/3, 2/3, 1] -> grad [1/3, 1/3, 1/3]
    logits = torch.tensor([0.0, LN3, 2.0]).view(1, 1, 1, 3)
    target = torch.tensor([1.0, 0.0, 1.0]).view(1, 1, 1, 3)
    assert term("lovasz")(logits, target).item() == approx((2 + LN3) / 3)


def _lovasz_hinge_full_sort(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Berman et al.'s reference: every pixel ranked, relu applied after the sort."""
    errors = 1.0 - logits * (2.0 * labels - 1.0)
    errors_sorted, perm = torch.sort(errors, descending=True)
    gt = labels[perm]
    jaccard = 1.0 - (gt.sum() - gt.cumsum(0)) / (gt.sum() + (1.0 - gt).cumsum(0))
    grad = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])
    return (F.relu(errors_sorted) * grad).sum()


@pytest.mark.parametrize("scale", [0.1, 3.0])  # nearly all pixels ranked / most of them fitted
def test_lovasz_hinge_equals_full_sort_value_and_gradient(scale: float) -> None:
    gen = torch.Generator().manual_seed(3)
    labels = (torch.rand(4, 1, 20, 20, generator=gen) > 0.6).float()
    base = (torch.randn(4, 1, 20, 20, generator=gen) + 2.0 * (2 * labels - 1)) * scale
    x1, x2 = base.clone().requires_grad_(), base.clone().requires_grad_()
    ours = term("lovasz")(x1, labels)
    ref = _lovasz_hinge_full_sort(x2.reshape(-1), labels.reshape(-1))
    ours.backward()
    ref.backward()
    fitted = (1.0 - base * (2 * labels - 1) <= 0).float().mean().item()
    assert (fitted < 0.05) if scale < 1 else (fitted > 0.5)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-5, atol=1e-7)


def test_symmetric_lovasz_by_hand() -> None:
    logits, target = binary_example()
    # foreground: 1 + ln3/2 (above). Background (-logits vs 1 - labels): the same errors, ranked
    # [1 + ln3 (the negative pixel, now gt 1), 1 (gt 0)]; |gt| = 1: intersection [0, 0], union [1, 2]
    # -> J [1, 1] -> grad [1, 0] -> 1 + ln3. The mean: 1 + 3 ln3 / 4
    assert term("lovasz", symmetric=True)(logits, target).item() == approx(1 + 0.75 * LN3)
    good = torch.tensor([2.0, -2.0, 0.0]).view(1, 1, 1, 3)  # both sides fitted with margin: 0
    assert term("lovasz", symmetric=True)(good, target).item() == approx(0.0)


@pytest.mark.parametrize("scale", [0.1, 3.0])
def test_symmetric_lovasz_equals_mean_of_both_full_sorts(scale: float) -> None:
    gen = torch.Generator().manual_seed(5)
    labels = (torch.rand(4, 1, 20, 20, generator=gen) > 0.6).float()
    base = (torch.randn(4, 1, 20, 20, generator=gen) + 2.0 * (2 * labels - 1)) * scale
    x1, x2 = base.clone().requires_grad_(), base.clone().requires_grad_()
    ours = term("lovasz", symmetric=True)(x1, labels)
    flat_x, flat_y = x2.reshape(-1), labels.reshape(-1)
    ref = 0.5 * (_lovasz_hinge_full_sort(flat_x, flat_y) + _lovasz_hinge_full_sort(-flat_x, 1.0 - flat_y))
    ours.backward()
    ref.backward()
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-5, atol=1e-7)


def test_lovasz_multilabel_is_mean_of_channels() -> None:
    logits0, target0 = binary_example()
    logits = torch.cat([logits0, torch.tensor([2.0, -2.0, 0.0]).view(1, 1, 1, 3)], dim=1)
    target = torch.cat([target0, target0], dim=1)
    # channel 0: 1 + ln3/2 (above); channel 1: 0
    assert term("lovasz", "multilabel", 2)(logits, target).item() == approx((1 + LN3 / 2) / 2)


def test_lovasz_per_image_averages_images() -> None:
    logits0, target0 = binary_example()
    good = torch.tensor([2.0, -2.0, 0.0]).view(1, 1, 1, 3)
    logits, target = torch.cat([logits0, good]), torch.cat([target0, target0])
    assert term("lovasz", per_image=True)(logits, target).item() == approx((1 + LN3 / 2) / 2)


def test_lovasz_softmax_by_hand() -> None:
    logits, target = multiclass_example()
    # class 0: fg [1, 0], p0 [0.75, 0.5] -> errors [0.25, 0.5]; sorted [0.5 (fg 0), 0.25 (fg 1)]
    #   |fg| = 1: intersection [1, 0], union [2, 2] -> J [0.5, 1] -> grad [0.5, 0.5] -> 0.375
    # class 1: fg [0, 1], p1 [0.25, 0.5] -> errors [0.25, 0.5]; sorted [0.5 (fg 1), 0.25 (fg 0)]
    #   intersection [0, 0], union [1, 2] -> J [1, 1] -> grad [1, 0] -> 0.5
    assert term("lovasz", "multiclass", 2)(logits, target).item() == approx((0.375 + 0.5) / 2)


def test_lovasz_softmax_batched_equals_one_sort_per_class() -> None:
    """The batched ranking (one sort of every present class's errors) gives the loss and gradient of the per-class
    loop of Berman et al.'s reference (``bench/bench_lovasz.py``'s textbook function, which the bench times it
    against); classes absent from the labels are left out of the mean."""
    import importlib.util
    from pathlib import Path

    from seg_toolkit.losses.lovasz import lovasz_softmax_flat

    path = Path(__file__).resolve().parents[1] / "bench" / "bench_lovasz.py"
    spec = importlib.util.spec_from_file_location("_bench_lovasz_reference", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(3000, 6, generator=gen)
    labels = torch.randint(0, 5, (3000,), generator=gen)  # class 5 absent
    x1, x2 = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    ours, ref = lovasz_softmax_flat(x1.softmax(1), labels), bench.textbook_softmax_flat(x2.softmax(1), labels)
    ours.backward()
    ref.backward()
    assert ours.item() == pytest.approx(ref.item(), rel=1e-6)
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-5, atol=1e-8)


# ----------------------------------------------------------------------------- void pixels


@pytest.mark.parametrize("name", ["ce", "dice", "jaccard", "tversky", "focal", "lovasz"])
def test_multiclass_void_pixels_equal_cropping_them(name: str) -> None:
    logits, target = random_batch("multiclass", 3, seed=1)
    fn = term(name, "multiclass", 3)
    valid = target != IGNORE_INDEX
    flat_logits = logits.movedim(1, -1)[valid].T.reshape(1, 3, 1, -1)  # (1, C, 1, P)
    flat_target = target[valid].reshape(1, 1, -1)
    assert fn(logits, target).item() == approx(fn(flat_logits, flat_target).item())


@pytest.mark.parametrize("name", ["bce", "dice", "jaccard", "tversky", "focal", "lovasz"])
def test_binary_void_pixels_equal_cropping_them(name: str) -> None:
    logits, target = random_batch("binary", 1, seed=2)
    fn = term(name)
    valid = target != V
    cropped = fn(logits[valid].view(1, 1, 1, -1), target[valid].view(1, 1, 1, -1))
    assert fn(logits, target).item() == approx(cropped.item())


@pytest.mark.parametrize("name,task,c", ALL_CASES)
def test_void_logits_change_nothing(name: str, task: str, c: int) -> None:
    logits, target = random_batch(task, c, seed=3)
    void = (target == IGNORE_INDEX).unsqueeze(1).expand_as(logits) if task == "multiclass" else target == V
    fn = term(name, task, c)
    x = logits.clone().requires_grad_(True)
    base = fn(x, target)
    base.backward()
    assert torch.all(x.grad[void] == 0)
    other = torch.where(void, torch.full_like(logits, 50.0), logits)
    assert fn(other, target).item() == approx(base.item())


def test_multilabel_focal_with_void_pixels_works() -> None:
    # smp's FocalLoss raises IndexError here; ours is the mean over non-void elements
    logits = torch.zeros(1, 2, 1, 2)
    target = torch.tensor([[[[1.0, V]], [[V, 0.0]]]])
    # two non-void elements, both p_t = 0.5: 0.25 * ln2 each
    assert term("focal", "multilabel", 2)(logits, target).item() == approx(0.25 * LN2)


# ----------------------------------------------------------------------------- degenerate batches


ALL_VOID_CASES = [pytest.param(n, t, c, {}, id=f"{n}-{t}") for n, t, c in ALL_CASES] + [
    pytest.param("lovasz", t, c, {"per_image": True}, id=f"lovasz_per_image-{t}") for t, c in TASK_SHAPES
]


@pytest.mark.parametrize("name,task,c,params", ALL_VOID_CASES)
def test_all_void_batch_is_zero_with_finite_grad(name: str, task: str, c: int, params: dict) -> None:
    logits = torch.randn(2, c, 3, 4, requires_grad=True)
    shape = (2, 3, 4) if task == "multiclass" else (2, c, 3, 4)
    target = torch.full(shape, IGNORE_INDEX, dtype=torch.long) if task == "multiclass" else torch.full(shape, V)
    loss = term(name, task, c, **params)(logits, target)
    assert loss.dim() == 0
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(logits.grad).all() and torch.all(logits.grad == 0)


@pytest.mark.parametrize("name,task,c", ALL_CASES)
def test_empty_target_is_finite(name: str, task: str, c: int) -> None:
    logits = torch.randn(2, c, 3, 4, requires_grad=True)
    shape = (2, 3, 4) if task == "multiclass" else (2, c, 3, 4)
    target = torch.zeros(shape, dtype=torch.long if task == "multiclass" else torch.float32)
    loss = term(name, task, c)(logits, target)
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_empty_binary_target_by_hand() -> None:
    logits = torch.zeros(1, 1, 1, 2)  # p = 0.5 everywhere
    target = torch.zeros(1, 1, 1, 2)
    assert term("bce")(logits, target).item() == approx(LN2)
    assert term("focal")(logits, target).item() == approx(0.25 * LN2)
    # no true pixel: smp's region losses give 0 by convention
    for name in ("dice", "jaccard", "tversky"):
        assert term(name)(logits, target).item() == 0.0
    # errors 1 - 0 = 1 each; |gt| = 0: intersection 0, union [1, 2] -> J [1, 1] -> grad [1, 0] -> 1
    assert term("lovasz")(logits, target).item() == approx(1.0)


# ----------------------------------------------------------------------------- combination


@pytest.mark.parametrize(
    "task,c,loss,params",
    [
        ("multiclass", 3, {"ce": 1.0, "dice": 1.0}, {"ce": {"label_smoothing": 0.1}}),
        ("binary", 1, {"bce": 0.5, "dice": 0.5}, {}),
        ("multilabel", 2, {"focal": 1.0, "lovasz": 0.5}, {"focal": {"gamma": 1.5, "alpha": 0.25}}),
        ("binary", 1, {"bce": 1.0, "jaccard": 0.3, "tversky": 0.2}, {"tversky": {"alpha": 0.3, "beta": 0.7}}),
    ],
)
def test_combo_total_is_weighted_sum(task: str, c: int, loss: dict, params: dict) -> None:
    combo = build_loss(make_cfg(task, c, loss, params))
    assert isinstance(combo, LossCombo)
    logits, target = random_batch(task, c, seed=4)
    logits.requires_grad_(True)
    total, parts = combo(logits, target)
    assert list(parts) == list(loss)
    assert all(not p.requires_grad for p in parts.values())
    assert total.requires_grad and total.dim() == 0
    assert total.item() == approx(sum(w * parts[n].item() for n, w in loss.items()))
    # each part is the term computed on its own
    for name in loss:
        alone = build_loss_term(name, task, c, params.get(name))(logits, target)
        assert parts[name].item() == approx(alone.item())
    total.backward()
    assert torch.isfinite(logits.grad).all()


def test_combo_accepts_half_logits_and_uint8_targets() -> None:
    combo = build_loss(make_cfg("binary", 1, {"bce": 0.5, "dice": 0.5}))
    logits, target = binary_example()
    total_half, _ = combo(logits.half(), target.to(torch.uint8))
    total, _ = combo(logits, target)
    assert total_half.dtype == torch.float32
    assert total_half.item() == pytest.approx(total.item(), abs=1e-3)


def test_combo_rejects_wrong_shapes() -> None:
    combo = build_loss(make_cfg("multiclass", 3, {"ce": 1.0}))
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        combo(torch.zeros(1, 3, 2, 2), torch.zeros(1, 1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="num_classes=3"):
        combo(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    combo = build_loss(make_cfg("binary", 1, {"bce": 1.0}))
    with pytest.raises(ValueError, match="shape"):
        combo(torch.zeros(1, 1, 2, 2), torch.zeros(1, 2, 2))


# ----------------------------------------------------------------------------- config errors


def test_unknown_loss_name_suggests_closest() -> None:
    with pytest.raises(ConfigError, match=r"loss\.dcie.*did you mean 'dice'.*valid names: ce, bce, dice"):
        build_loss(make_cfg("binary", 1, {"dcie": 1.0}))


def test_loss_not_valid_for_task() -> None:
    with pytest.raises(ConfigError, match=r"loss\.ce: 'ce' supports task multiclass only.*'binary'.*use bce"):
        build_loss(make_cfg("binary", 1, {"ce": 1.0}))
    with pytest.raises(ConfigError, match=r"loss\.bce:.*binary / multilabel only.*'multiclass'"):
        build_loss(make_cfg("multiclass", 3, {"bce": 1.0}))


def test_unknown_param_lists_accepted() -> None:
    with pytest.raises(ConfigError, match=r"loss_params\.focal\.gama:.*did you mean 'gamma'.*accepts: gamma, alpha"):
        build_loss(make_cfg("binary", 1, {"focal": 1.0}, {"focal": {"gama": 2}}))


@pytest.mark.parametrize(
    "task,c,loss,params,pattern",
    [
        ("multiclass", 3, {"ce": 1.0}, {"ce": {"class_weights": [1.0, 2.0]}}, r"loss_params\.ce\.class_weights: expected a list of 3"),
        ("multiclass", 3, {"ce": 1.0}, {"ce": {"label_smoothing": 1.5}}, r"loss_params\.ce\.label_smoothing"),
        ("multiclass", 3, {"focal": 1.0}, {"focal": {"alpha": 0.25}}, r"loss_params\.focal\.alpha: .*list of 3"),
        ("binary", 1, {"focal": 1.0}, {"focal": {"alpha": 2.0}}, r"loss_params\.focal\.alpha: expected <= 1"),
        ("binary", 1, {"bce": 1.0}, {"bce": {"pos_weight": "x"}}, r"loss_params\.bce\.pos_weight"),
        ("binary", 1, {"lovasz": 1.0}, {"lovasz": {"per_image": 1}}, r"loss_params\.lovasz\.per_image: expected true/false"),
        ("multiclass", 3, {"lovasz": 1.0}, {"lovasz": {"symmetric": True}}, r"loss_params\.lovasz\.symmetric: the hinge of binary"),
        ("binary", 1, {"tversky": 1.0}, {"tversky": {"alpha": 0, "beta": 0}}, r"loss_params\.tversky\.alpha: expected > 0"),
        # a loss whose best answer is a trivial mask: tversky without FP (FN), focal without negatives (positives),
        # ce with a uniform target
        ("binary", 1, {"tversky": 1.0}, {"tversky": {"alpha": 0.0}}, r"tversky\.alpha: expected > 0 \(no false positive"),
        ("binary", 1, {"tversky": 1.0}, {"tversky": {"beta": 0}}, r"tversky\.beta: expected > 0 \(no false negative"),
        ("binary", 1, {"focal": 1.0}, {"focal": {"alpha": 0}}, r"focal\.alpha: expected between 0 and 1.*drops the positives"),
        ("binary", 1, {"focal": 1.0}, {"focal": {"alpha": 1.0}}, r"focal\.alpha: .*drops the negatives.*everything scores 0"),
        ("multiclass", 3, {"ce": 1.0}, {"ce": {"label_smoothing": 1.0}}, r"ce\.label_smoothing: expected < 1"),
        ("binary", 1, {"bce": -1.0}, {}, r"loss\.bce: the weight"),
        ("binary", 1, {"bce": 0.0, "dice": 0.0}, {}, r"at least one weight must be > 0"),
    ],
)
def test_bad_params_and_weights(task: str, c: int, loss: dict, params: dict, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        build_loss(make_cfg(task, c, loss, params))


def test_loss_weights_that_silence_the_loss_are_refused(tmp_path):
    """A per-channel pos_weight of 0 dropped that class's positives (a single 0 was refused); a multiclass focal alpha
    of all zeros made the loss exactly 0 (ce's class_weights were checked)."""
    base = {"data": {"root": str(tmp_path), "task": "multilabel", "num_classes": 2, "class_column": "c"},
            "folds": {"n_splits": 2}, "submission": {"per_class": True}}
    with pytest.raises(ConfigError, match=r"loss_params.bce.pos_weight\[1\]: expected > 0"):
        build_loss(config_from_dict({**base, "loss": {"bce": 1.0}, "loss_params": {"bce": {"pos_weight": [2.0, 0.0]}}}))
    mc = {"data": {"root": str(tmp_path), "task": "multiclass", "num_classes": 3, "layout": "folder"}, "folds": {"n_splits": 2},
          "submission": {"per_class": True}}
    with pytest.raises(ConfigError, match=r"loss_params.focal.alpha: at least one class weight must be > 0"):
        build_loss(config_from_dict({**mc, "loss": {"focal": 1.0}, "loss_params": {"focal": {"alpha": [0, 0, 0]}}}))


@pytest.mark.parametrize("name, task, c, params", [
    ("dice", "multiclass", 4, {}), ("jaccard", "multiclass", 4, {}), ("tversky", "multiclass", 4, {"alpha": 0.3, "beta": 0.7}),
    ("ce", "multiclass", 4, {"class_weights": [1.0, 2.0, 1.0, 0.5]}), ("focal", "multiclass", 4, {"alpha": [1.0, 2.0, 1.0, 0.5]}),
    ("lovasz", "multiclass", 4, {}), ("bce", "multilabel", 4, {"pos_weight": [1.0, 2.0, 3.0, 4.0]}),
    ("focal", "multilabel", 4, {"alpha": 0.25}), ("dice", "multilabel", 4, {}),
])
def test_half_precision_logits_are_summed_in_float32(name, task, c, params):
    """A term called on its own with bf16 / fp16 logits (LossCombo casts them; a user's loop may not): the multiclass
    dice of 8x4x128x128 bf16 logits read 0.984 for fp32's 0.750 (index_add bins kept in bf16 round small additions
    away), ce with class weights raised a dtype error; now each equals the same logits' fp32 value."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(8, c, 128, 128, generator=g)
    if task == "multiclass":
        target = torch.randint(0, c, (8, 128, 128), generator=g)
    else:
        target = torch.randint(0, 2, (8, c, 128, 128), generator=g).float()
    loss = term(name, task, c, **params)
    for dtype in (torch.bfloat16, torch.float16):
        half = logits.to(dtype)
        assert loss(half, target).dtype == torch.float32
        assert loss(half, target).item() == approx(loss(half.float(), target).item())


def test_float64_logits_stay_float64():
    """bce and focal computed float64 logits against a float32 target (a float32 loss, gradcheck failing)."""
    logits = torch.randn(2, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    target = (torch.rand(2, 1, 3, 3) > 0.5).float()
    for name, params in (("bce", {"pos_weight": 2.0}), ("focal", {"alpha": 0.25})):
        loss = term(name, **params)
        assert loss(logits, target).dtype == torch.float64
        assert torch.autograd.gradcheck(lambda x, f=loss: f(x, target), (logits,))
