"""The U-Net paper's weight map (``data.border_weight``): the map against hand-worked values and an
unbounded reference, its way through the augmentations and the batch, the weighted pixel losses,
and the config checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from seg_toolkit.config import ConfigError, config_from_dict
from seg_toolkit.data import load_train_samples
from seg_toolkit.data.dataset import SegDataset, collate
from seg_toolkit.data.weight_map import border_weight_map, sample_weight_map
from seg_toolkit.losses import build_loss, model_loss

from .test_instance_metrics import _objects_problem, _write_object_run


def reference(objects: list[np.ndarray], background: np.ndarray, w0: float, sigma: float) -> np.ndarray:
    """The map as the paper writes it: every object's distance over the whole image, the two smallest per pixel."""
    d = np.sort(np.stack([ndimage.distance_transform_edt(~m) for m in objects]), axis=0)
    w = 1.0 + w0 * np.exp(-((d[0] + d[1]) ** 2) / (2 * sigma**2))
    return np.where(background, w, 1.0)


def test_a_hand_worked_row():
    """Two one-pixel objects four pixels apart: every pixel between them has d1 + d2 = 4, so weighs
    1 + 10 exp(-16 / 50) = 8.261490; the objects themselves 1."""
    a, b = np.zeros((1, 5), bool), np.zeros((1, 5), bool)
    a[0, 0], b[0, 4] = True, True
    w = border_weight_map([a, b], ~(a | b), 10.0, 5.0)
    assert w.dtype == np.float32
    np.testing.assert_allclose(w[0], [1.0, 8.261490, 8.261490, 8.261490, 1.0], atol=1e-6)
    # one pixel below the two: d1 = 1, d2 = sqrt(17) from (1, 0); 1 + 10 exp(-(1 + 4.1231056)^2 / 50) = 6.9168
    c = np.zeros((2, 5), bool)
    c[0, 0] = True
    e = np.zeros((2, 5), bool)
    e[0, 4] = True
    w = border_weight_map([c, e], ~(c | e), 10.0, 5.0)
    assert w[1, 0] == pytest.approx(1 + 10 * math.exp(-((1 + math.sqrt(17)) ** 2) / 50), abs=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_random_objects_equal_the_unbounded_reference(seed):
    """Discs and boxes at random on a 96x80 image (some overlapping, some near the edges): the map measured
    within 6 sigma of each object's box equals the map measured over the whole image."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:96, :80]
    objects = []
    for _ in range(int(rng.integers(2, 9))):
        cy, cx, r = rng.integers(0, 96), rng.integers(0, 80), rng.integers(1, 9)
        objects.append((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r)
    background = ~np.any(objects, axis=0)
    sigma = float(rng.uniform(1.5, 6.0))
    np.testing.assert_allclose(border_weight_map(objects, background, 10.0, sigma),
                               reference(objects, background, 10.0, sigma), rtol=0, atol=2e-6)


def test_fewer_than_two_objects_or_w0_zero_weigh_one():
    m = np.zeros((8, 8), bool)
    m[2:4, 2:4] = True
    assert (border_weight_map([m], ~m, 10.0, 5.0) == 1).all()
    assert (border_weight_map([m, np.zeros_like(m)], ~m, 10.0, 5.0) == 1).all()  # an empty object file is none
    assert (border_weight_map([m, m.T], ~(m | m.T), 0.0, 5.0) == 1).all()


def _problem_cfg(tmp_path, **data):
    """The object-folder images of test_instance_metrics (two 4x4 squares a column apart in each) with the
    weight map on, flipped in every training item."""
    images = _objects_problem(4)
    cfg = _write_object_run(tmp_path, images, transforms={"train": [{"HorizontalFlip": {"p": 1.0}}]})
    d = config_from_dict({**_as_dict(cfg), "data": {**_as_dict(cfg)["data"], "border_weight": 10.0, **data},
                          "loss": {"bce": 0.5, "dice": 0.5}})
    return images, d


def _as_dict(cfg) -> dict:
    import dataclasses

    return dataclasses.asdict(cfg)


def test_training_items_carry_the_map_flipped_with_the_target(tmp_path):
    images, cfg = _problem_cfg(tmp_path)
    samples = load_train_samples(cfg)
    ds = SegDataset(samples, cfg, "train")
    item = ds[(0, 7)]
    objects = images[samples[0].id][0]
    target = np.any(objects, axis=0)
    expect = reference(objects, ~target, 10.0, 5.0)[:, ::-1]
    assert item["weight"].shape == (1, *target.shape) and item["weight"].dtype == torch.float32
    np.testing.assert_allclose(item["weight"][0].numpy(), expect, atol=2e-6)
    np.testing.assert_array_equal(item["target"][0].numpy(), target[:, ::-1])
    # the gap column between the squares weighs most: d1 = d2 = 1
    assert item["weight"][0].max().item() == pytest.approx(1 + 10 * math.exp(-4 / 50), abs=1e-6)
    batch = collate([ds[(0, 1)], ds[(1, 2)]])
    assert batch["weight"].shape == (2, 1, *target.shape)
    assert "weight" not in SegDataset(samples, cfg, "valid")[0]
    off = config_from_dict({**_as_dict(cfg), "data": {**_as_dict(cfg)["data"], "border_weight": 0.0}})
    assert "weight" not in SegDataset(samples, off, "train")[(0, 7)]


def test_object_rows_make_the_same_map_as_object_files(tmp_path):
    """data.rle_instances (Airbus: one CSV row per object) reads each row as one object: the same map as the
    object files of the same images."""
    images = _objects_problem(3)
    rows = _write_object_run(tmp_path / "rows", images, rows=True)
    rows = config_from_dict({**_as_dict(rows), "data": {**_as_dict(rows)["data"], "border_weight": 10.0},
                             "loss": {"bce": 1.0}})
    _, files = _problem_cfg(tmp_path / "files")
    for a, b in zip(load_train_samples(rows), load_train_samples(files)):
        objects = images[a.id][0]
        target = np.any(objects, axis=0)[..., None].astype(np.uint8)
        want = reference(objects, target[..., 0] == 0, 10.0, 5.0)
        np.testing.assert_allclose(sample_weight_map(a, rows, target), want, atol=2e-6)
        np.testing.assert_allclose(sample_weight_map(b, files, target), want, atol=2e-6)


def test_sample_map_of_a_pseudo_labelled_image_uses_its_components(tmp_path):
    """An image without object files or rows (a pseudo label) takes the 8-connected components of its target
    as its objects; void (255) is none."""
    from seg_toolkit.data.sample import Sample

    _, cfg = _problem_cfg(tmp_path)
    t = np.zeros((6, 9, 1), np.uint8)
    t[1:5, 0:3], t[1:5, 5:8], t[0, 8] = 1, 1, 255
    s = Sample("pseudo_x", tmp_path / "x.png", rles=("",))
    objects = [t[..., 0] == 1]
    a, b = objects[0].copy(), objects[0].copy()
    a[:, 4:] = False
    b[:, :4] = False
    np.testing.assert_allclose(sample_weight_map(s, cfg, t), reference([a, b], t[..., 0] == 0, 10.0, 5.0), atol=2e-6)
    # a soft label of the same masks (pseudo.soft: the teacher's probabilities, rarely exactly 0 or 1): the same map,
    # objects and background both cut at 0.5 (the background was t == 0, so its gaps weighed 1)
    soft = np.where(t == 1, 0.93, 0.02).astype(np.float32)
    soft[0, 8] = 255
    np.testing.assert_allclose(sample_weight_map(s, cfg, soft), sample_weight_map(s, cfg, t), atol=0)
    assert sample_weight_map(s, cfg, soft)[2, 4] == pytest.approx(1 + 10 * math.exp(-9 / 50), abs=1e-6)  # the gap: 2 + 1


def test_weighted_bce_and_focal_by_hand():
    """bce: sum(w * l) / sum(w) over the non-void pixels, the map's void pixels left out; dice unweighted."""
    torch.manual_seed(0)
    logits = torch.randn(2, 1, 4, 5)
    target = (torch.rand(2, 1, 4, 5) > 0.5).float()
    target[0, 0, 0, :2] = 255
    weight = 1 + 9 * torch.rand(2, 1, 4, 5)
    cfg = config_from_dict({"data": {"task": "binary"}, "loss": {"bce": 1.0, "dice": 1.0, "focal": 1.0}})
    loss_fn = build_loss(cfg)
    total, terms = loss_fn(logits, target, weight)
    valid = target != 255
    clean = torch.where(valid, target, torch.zeros_like(target))
    per = F.binary_cross_entropy_with_logits(logits, clean, reduction="none")
    expect_bce = (per * weight)[valid].sum() / weight[valid].sum()
    assert terms["bce"].item() == pytest.approx(expect_bce.item(), rel=1e-6)
    p = torch.sigmoid(logits)
    pt = torch.where(clean > 0.5, p, 1 - p)
    expect_focal = ((1 - pt) ** 2 * per * weight)[valid].sum() / weight[valid].sum()
    assert terms["focal"].item() == pytest.approx(expect_focal.item(), rel=1e-5)
    assert terms["dice"].item() == pytest.approx(loss_fn(logits, target)[1]["dice"].item(), abs=0)
    assert total.item() == pytest.approx((terms["bce"] + terms["dice"] + terms["focal"]).item(), rel=1e-6)
    # weight 1 everywhere is the unweighted mean; deep supervision passes the map to every output
    ones = torch.ones_like(weight)
    assert loss_fn(logits, target, ones)[1]["bce"].item() == pytest.approx(loss_fn(logits, target)[1]["bce"].item(), rel=1e-6)
    aux = logits.flip(-1)
    loss, parts = model_loss(loss_fn, (logits, [aux]), target, 0.4, 0.0, weight)
    assert parts["aux"].item() == pytest.approx(loss_fn(aux, target, weight)[0].item(), rel=1e-6)
    with pytest.raises(ValueError, match=r"the weight map must be \(N, 1, H, W\)"):
        loss_fn(logits, target, weight[:, :, :2])


def test_a_short_training_run_uses_the_map(tmp_path, monkeypatch):
    """The weight map reaches the loss of every training step (and lr-find's): train one fold for one epoch and
    see the maps the loss was given."""
    from seg_toolkit.cv import run_cv
    from seg_toolkit.losses import combo

    _, cfg = _problem_cfg(tmp_path)
    cfg = config_from_dict({**_as_dict(cfg), "experiment": "weighted", "folds": {"n_splits": 2, "method": "kfold"},
                            "model": {"arch": "scratch_unet", "depth": 2, "base_width": 4},
                            "train": {"epochs": 1, "batch_size": 2, "num_workers": 0, "amp": "none"},
                            "predict": {"batch_size": 2}})
    seen = []
    forward = combo.LossCombo.forward

    def spy(self, logits, target, weight=None):
        if torch.is_grad_enabled():  # the training steps (validation runs without gradients)
            seen.append(weight)
        return forward(self, logits, target, weight)

    monkeypatch.setattr(combo.LossCombo, "forward", spy)
    cv = run_cv(cfg, folds=[0])
    trained = [w for w in seen if w is not None]
    # 2 training images, batch 2: one step, its map with the gap column's 1 + 10 exp(-4 / 50)
    assert len(trained) == 1 and trained[0].shape == (2, 1, 16, 24)
    assert trained[0].max().item() == pytest.approx(1 + 10 * math.exp(-4 / 50), abs=1e-5)
    assert math.isfinite(cv["score"])


def test_lr_find_steps_take_the_map(tmp_path, monkeypatch):
    """lr-find's training steps pass the batch's weight map to the loss, as training does."""
    from seg_toolkit.losses import combo
    from seg_toolkit.lr_find import lr_find

    _, cfg = _problem_cfg(tmp_path)
    cfg = config_from_dict({**_as_dict(cfg), "experiment": "lr", "model": {"arch": "scratch_unet", "depth": 2, "base_width": 4},
                            "train": {"batch_size": 2, "num_workers": 0, "amp": "none"}})
    seen = []
    forward = combo.LossCombo.forward

    def spy(self, logits, target, weight=None):
        if torch.is_grad_enabled():
            seen.append(weight)
        return forward(self, logits, target, weight)

    monkeypatch.setattr(combo.LossCombo, "forward", spy)
    r = lr_find(cfg, fold=0, start=1e-5, end=1e-1, steps=12)
    assert math.isfinite(r["suggested_lr"])
    steps = [w for w in seen if w is not None]
    assert len(steps) >= 12 and all(w.shape[1] == 1 and w.max() > 8 for w in steps)


@pytest.mark.parametrize("data, loss, message", [
    ({"border_weight": 10}, {"bce": 1.0}, "data.border_weight: the weight map measures each pixel's distance"),
    ({"layout": "folder", "instance_folders": True, "border_weight": 10}, {"dice": 1.0},
     "data.border_weight: the weight map weighs the pixel terms bce and focal"),
    ({"layout": "folder", "instance_folders": True, "border_weight": -1}, {"bce": 1.0}, "data.border_weight: expected a number >= 0"),
    ({"layout": "folder", "instance_folders": True, "border_weight": 10, "border_sigma": 0}, {"bce": 1.0},
     "data.border_sigma: expected a number > 0"),
    ({"layout": "folder", "instance_folders": True, "border_sigma": 3}, {"bce": 1.0},
     "data.border_sigma: only used with data.border_weight > 0"),
])
def test_config_checks(data, loss, message):
    with pytest.raises(ConfigError) as e:
        config_from_dict({"data": {"task": "binary", **data}, "loss": loss})
    assert message in str(e.value)


def test_the_audit_batch_shows_the_map_beside_each_mask(tmp_path):
    """Under data.border_weight each tile of the audit's augmented batch has a third panel: the weight map of that
    crop, 1 black and 1 + w0 bright (inferno's ends: (0, 0, 4) and (252, 255, 164)), void grey."""
    from seg_toolkit.audit_pictures import _batch_tiles, weight_panel
    from seg_toolkit.data import EpochSampler, class_colors

    w = np.array([[1.0, 11.0, 255.0]], np.float32)
    panel = weight_panel(w, np.array([[False, False, True]]), 10.0, (1, 3))
    assert panel.tolist() == [[[0, 0, 4], [252, 255, 164], [128, 128, 128]]]
    _, cfg = _problem_cfg(tmp_path)
    samples = load_train_samples(cfg)
    tiles, _ = _batch_tiles(cfg, samples, class_colors(cfg), [True])
    ds = SegDataset(samples, cfg, "train")
    for (_, panels), key in zip(tiles, EpochSampler(len(samples), shuffle=True, seed=cfg.train.seed)):
        assert len(panels) == 3
        item = ds[key]
        void = item["target"][0].numpy() == 255
        np.testing.assert_array_equal(panels[2], weight_panel(item["weight"][0].numpy(), void, 10.0, panels[0].shape[:2]))
