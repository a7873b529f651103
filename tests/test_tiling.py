"""Tests for seg_toolkit.tiling: tiled inference matches whole-image inference."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import Tensor, nn

from seg_toolkit.tiling import gaussian_importance_map, sliding_window_predict, tile_starts
from seg_toolkit.tta import tta_predict

RADIUS = 2  # receptive radius of _two_convs


def _seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _conv1x1(c_in: int = 3, c_out: int = 2) -> nn.Module:
    torch.manual_seed(0)
    return nn.Conv2d(c_in, c_out, 1).eval()


def _two_convs(c_in: int = 3, c_out: int = 2) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(c_in, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, c_out, 3, padding=1))
    return net.eval()


def _clean_mask(size: tuple[int, int], tile: tuple[int, int], overlap: float, radius: int) -> Tensor:
    """Pixels that are more than ``radius`` from every inner edge of every tile covering them
    (edges on the image border do not count: whole-image inference has the same border)."""
    h, w = size
    bad = torch.zeros(h, w, dtype=torch.bool)
    for y in tile_starts(h, tile[0], overlap):
        for x in tile_starts(w, tile[1], overlap):
            tile_bad = torch.zeros(tile, dtype=torch.bool)
            if y > 0:
                tile_bad[:radius] = True
            if y + tile[0] < h:
                tile_bad[-radius:] = True
            if x > 0:
                tile_bad[:, :radius] = True
            if x + tile[1] < w:
                tile_bad[:, -radius:] = True
            bad[y:y + tile[0], x:x + tile[1]] |= tile_bad
    return ~bad


# ----------------------------------------------------------------------------- tile layout


def test_tile_starts() -> None:
    assert tile_starts(10, 4, 0.5) == [0, 2, 4, 6]
    assert tile_starts(10, 4, 0.0) == [0, 4, 6]  # last tile aligned to the border
    assert tile_starts(4, 4, 0.25) == [0]
    assert tile_starts(3, 4, 0.25) == [0]  # smaller than a tile: padded
    assert tile_starts(9, 4, 0.99) == list(range(6))  # stride floors at 1
    with pytest.raises(ValueError):
        tile_starts(10, 4, 1.0)
    with pytest.raises(ValueError):
        tile_starts(10, 0, 0.5)


@pytest.mark.parametrize("size", [(8, 8), (9, 6), (5, 12)])
def test_gaussian_map_positive_symmetric(size: tuple[int, int]) -> None:
    g = gaussian_importance_map(size, sigma_scale=1 / 8)
    assert g.shape == size and g.dtype == torch.float32
    assert (g > 0).all() and g.max() == 1.0
    assert torch.equal(g, g.flip(0)) and torch.equal(g, g.flip(1))
    if size[0] == size[1]:
        assert torch.equal(g, g.T)
    # a tiny sigma underflows the tails: they are floored, not 0
    assert (gaussian_importance_map(size, sigma_scale=0.01) > 0).all()


# ----------------------------------------------------------------------------- equivalence


@pytest.mark.parametrize("gaussian", [True, False])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5])
def test_pointwise_model_equal_everywhere(gaussian: bool, overlap: float) -> None:
    model = _conv1x1()
    x = torch.randn(2, 3, 13, 22, generator=_seeded())
    with torch.no_grad():
        whole = model(x)
    tiled = sliding_window_predict(model, x, (8, 8), overlap, gaussian=gaussian, max_batch=5)
    assert tiled.shape == whole.shape and tiled.dtype == torch.float32
    torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=0)


@pytest.mark.parametrize("gaussian", [True, False])
@pytest.mark.parametrize("size,tile,overlap", [((24, 24), (12, 12), 0.5), ((17, 26), (8, 12), 0.25),
                                               ((16, 24), (8, 8), 0.0)])
def test_receptive_field_interior_equal(gaussian: bool, size: tuple[int, int], tile: tuple[int, int],
                                        overlap: float) -> None:
    model = _two_convs()
    x = torch.randn(2, 3, *size, generator=_seeded())
    with torch.no_grad():
        whole = model(x)
    tiled = sliding_window_predict(model, x, tile, overlap, gaussian=gaussian)
    mask = _clean_mask(size, tile, overlap, RADIUS)
    assert mask.float().mean() > 0.2  # the check covers a real part of the image
    torch.testing.assert_close(tiled[..., mask], whole[..., mask], atol=1e-5, rtol=0)
    assert not torch.allclose(tiled, whole, atol=1e-5)  # and tile edges do differ


@pytest.mark.parametrize("size", [(5, 5), (6, 7), (5, 11), (11, 3)])
def test_image_smaller_than_tile(size: tuple[int, int]) -> None:
    x = torch.randn(1, 3, *size, generator=_seeded())
    model = _conv1x1()
    with torch.no_grad():
        whole = model(x)
    out = sliding_window_predict(model, x, (8, 8), 0.25)
    assert out.shape == whole.shape
    torch.testing.assert_close(out, whole, atol=1e-5, rtol=0)


@pytest.mark.parametrize("pad_mode", ["constant", "replicate", "reflect"])
def test_small_image_padding_modes(pad_mode: str) -> None:
    # one padded tile: a 3x3 model is exact where it never sees the padding
    x = torch.randn(2, 3, 6, 7, generator=_seeded())
    model = _two_convs()
    with torch.no_grad():
        whole = model(x)
    out = sliding_window_predict(model, x, (8, 10), 0.25, pad_mode=pad_mode)
    assert out.shape == whole.shape
    r = RADIUS
    torch.testing.assert_close(out[..., r:-r, r:-r], whole[..., r:-r, r:-r], atol=1e-5, rtol=0)


def test_reflect_padding_of_a_side_under_half_a_tile_replicates() -> None:
    """10 rows into 32-row tiles need 11 rows of padding on each side, more than reflect can mirror (it raised
    "Padding size should be less than the corresponding input dimension"): those sides are replicated."""
    x = torch.randn(1, 3, 10, 40, generator=_seeded())
    seen = []

    def identity(t):
        seen.append(t)
        return t

    out = sliding_window_predict(identity, x, (32, 32), 0.25, pad_mode="reflect")
    torch.testing.assert_close(out, x)  # an identity model gives the image back
    first = seen[0][0]  # the tile at (0, 0): 11 padded rows, the image's 10, 11 padded rows; 32 of its 40 columns
    assert tuple(first.shape) == (3, 32, 32) and torch.equal(first[:, 11:21], x[0, :, :, :32])
    assert torch.equal(first[:, :11], x[0, :, :1, :32].expand(3, 11, 32))  # row 0 repeated above
    assert torch.equal(first[:, 21:], x[0, :, 9:, :32].expand(3, 11, 32))  # row 9 below


def test_model_sees_only_tiles_of_tile_size() -> None:
    seen: list[tuple[int, ...]] = []
    model = _conv1x1()
    model.register_forward_hook(lambda m, inp, out: seen.append(tuple(inp[0].shape)))
    x = torch.randn(3, 3, 10, 19, generator=_seeded())
    sliding_window_predict(model, x, (8, 8), 0.5, max_batch=4)
    n_tiles = 3 * len(tile_starts(10, 8, 0.5)) * len(tile_starts(19, 8, 0.5))
    assert all(s[1:] == (3, 8, 8) and s[0] <= 4 for s in seen)
    assert sum(s[0] for s in seen) == n_tiles


def test_chunking_does_not_change_output() -> None:
    model = _two_convs()
    x = torch.randn(2, 3, 15, 21, generator=_seeded())
    a = sliding_window_predict(model, x, (8, 8), 0.5, max_batch=1)
    b = sliding_window_predict(model, x, (8, 8), 0.5, max_batch=64)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_task_applies_activation_after_merge() -> None:
    model = _two_convs(c_out=3)
    x = torch.randn(1, 3, 12, 20, generator=_seeded())
    logits = sliding_window_predict(model, x, (8, 8), 0.5)
    probs = sliding_window_predict(model, x, (8, 8), 0.5, task="multiclass")
    torch.testing.assert_close(probs, logits.softmax(1))


def test_tta_per_tile() -> None:
    model = _conv1x1(c_out=1)  # D4-equivariant, so TTA per tile changes nothing
    x = torch.randn(2, 3, 14, 19, generator=_seeded())
    fn = functools.partial(tta_predict, model, task="binary", transforms=["d4"], max_batch=8)
    probs = sliding_window_predict(fn, x, (8, 8), 0.25)  # task=None: fn returns probabilities
    with torch.no_grad():
        want = model(x).sigmoid()
    torch.testing.assert_close(probs, want, atol=1e-5, rtol=0)


def test_bad_arguments() -> None:
    x = torch.zeros(1, 3, 8, 8)
    with pytest.raises(ValueError):
        sliding_window_predict(_conv1x1(), x, (8,), 0.25)
    with pytest.raises(ValueError):
        sliding_window_predict(_conv1x1(), x, (4, 4), 1.0)
    with pytest.raises(ValueError, match="must be"):
        sliding_window_predict(lambda t: t[:, :, :2], x, (4, 4), 0.0)


def test_inside_inference_mode_and_in_place_after() -> None:
    model = _two_convs()
    x = torch.randn(1, 3, 12, 12, generator=_seeded())
    with torch.inference_mode():
        a = sliding_window_predict(model, x, (8, 8), 0.5)
    b = sliding_window_predict(model, x, (8, 8), 0.5)
    torch.testing.assert_close(a, b)
    b += 1  # an ordinary tensor outside inference mode


# ----------------------------------------------------------------------------- the predictor's tiled model


def test_tiled_model_never_pads_an_image_smaller_than_a_tile():
    """A 20x28 image under 32x32 tiles: a tile is cut to the image (one tile, the model's own border), where padding
    it with zeros to the tile changed the edges (0.019 in probability on a trained demo model)."""
    from seg_toolkit.tiling import TiledModel

    net = _two_convs()
    x = torch.randn(2, 3, 20, 28, generator=_seeded(3))
    with torch.no_grad():
        whole = net(x)
        tiled = TiledModel(net, [32, 32], 0.25, max_batch=8)(x)
        padded = sliding_window_predict(net, x, (32, 32), 0.25)  # what it did: zeros around the image
    assert torch.allclose(tiled, whole, atol=1e-6)
    assert (padded - whole).abs().max() > 1e-3


def test_tiled_model_blends_one_image_at_a_time():
    """A TTA chunk holds many images; the blended full-size map is kept for one at a time, and the result is the same."""
    from seg_toolkit.tiling import TiledModel

    seen = []

    class Recording(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, tiles: Tensor) -> Tensor:
            seen.append(tiles.shape[0])
            return self.inner(tiles)

    net = _two_convs()
    x = torch.randn(3, 3, 40, 40, generator=_seeded(4))
    with torch.no_grad():
        tiled = TiledModel(Recording(net), [24, 24], 0.5, max_batch=64)(x)
        together = sliding_window_predict(net, x, (24, 24), 0.5, max_batch=64)
    per_image = len(tile_starts(40, 24, 0.5)) ** 2
    assert seen == [per_image] * 3 and torch.allclose(tiled, together, atol=1e-6)


def test_a_tile_overlap_change_is_a_difference_and_an_older_record_without_it_is_not(demo_cfg):
    import dataclasses

    from seg_toolkit.inference import _differs
    from seg_toolkit.predictor import Member
    from seg_toolkit.run import Run

    cfg = dataclasses.replace(demo_cfg, predict=dataclasses.replace(demo_cfg.predict, tile_size=[64, 64], tile_overlap=0.0))
    now = Member(Run.of(cfg), cfg, [0]).made()
    assert now == {"tta": ["identity"], "merge": "mean_prob", "scales": [1.0], "tile_size": [64, 64], "tile_overlap": 0.0}
    assert _differs({**now, "tile_overlap": 0.5}, now)  # the overlap the OOF files were made with
    older = {k: v for k, v in now.items() if k != "tile_overlap"}  # recorded before the overlap was kept
    assert not _differs(older, now) and _differs({**older, "tile_size": [48, 48]}, now)
    assert _differs({k: v for k, v in now.items() if k != "scales"}, now)  # only the later key is unknown when absent
    untiled = Member(Run.of(demo_cfg), demo_cfg, [0]).made()
    assert "tile_overlap" not in untiled  # without tiles the overlap changes nothing


def test_the_classifier_with_tiles_is_refused_at_load(demo_cfg):
    from seg_toolkit.config import ConfigError, config_from_dict, config_to_dict

    d = config_to_dict(demo_cfg)
    d["model"] = {"arch": "smp_unet", "encoder": "tu-test_resnet", "encoder_weights": None, "classifier": 0.2}
    d["predict"] = {**d.get("predict", {}), "tile_size": [64, 64]}
    with pytest.raises(ConfigError, match=r"model.classifier with predict.tile_size \[64, 64\]: .* per tile"):
        config_from_dict(d)


def test_tune_tta_records_the_tile_overlap_as_predict_does(demo_root, tmp_path):
    """tune --tta wrote the folds' OOF record without tile_overlap: a later overlap change went unnoticed."""
    import json

    from seg_toolkit.config import config_from_dict
    from seg_toolkit.cv import run_cv
    from seg_toolkit.run import Run
    from seg_toolkit.tta_search import choose_tta

    from .conftest import demo_dict

    cfg = config_from_dict(demo_dict(demo_root, tmp_path / "runs", train={"epochs": 1, "batch_size": 2},
                                     predict={"batch_size": 4, "tile_size": [64, 64], "tile_overlap": 0.5}))
    run_cv(cfg)
    choose_tta(cfg, candidates=[["identity"], ["identity", "hflip"]], merges=["mean_prob"])
    for k in (0, 1):
        made = json.loads(Run.of(cfg).done_json(k).read_text())["oof"]
        assert made["tile_size"] == [64, 64] and made["tile_overlap"] == 0.5
