"""``predict --estimate``: the projection's arithmetic, and one loose check against a real ``predict``."""

from __future__ import annotations

import json
import time

import pytest

from seg_toolkit.cli import main
from seg_toolkit.config import ConfigError, config_from_dict
from seg_toolkit.data.demo import make_demo
from seg_toolkit.budget import format_duration, parse_duration
from seg_toolkit.estimate import estimate_predict, project, scale_costs
from seg_toolkit.inference import predict_test
from seg_toolkit.run import Run

from .conftest import demo_dict
from .test_inference import fake_run


@pytest.mark.parametrize("text, seconds", [("9h", 32400), ("30m", 1800), ("3600s", 3600), ("1h30m", 5400),
                                           ("90", 90), ("2.5h", 9000), (" 45S ", 45)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "9x", "1d", "-3h", "m30"])
def test_parse_duration_refuses(text):
    with pytest.raises(ConfigError, match="expected a duration such as 9h"):
        parse_duration(text)


def test_format_duration():
    assert [format_duration(s) for s in (3.04, 75, 3600, 9 * 3600 + 125)] == ["3.0s", "1m15s", "1h00m", "9h02m"]


def _measured(**member):
    m = {"run": "runs/a", "folds": 5, "tta": ["identity", "hflip", "vflip", "rot90"], "scales": [1.0], "tiles": 1.0,
         "forward_s": 2.0, **member}
    return {"load_models_s": 10.0, "warmup_extra_s": 5.0, "per_image_s": 2.5, "members": [m]}


def test_projection_arithmetic():
    r = project(_measured(), n_images=1000)
    assert r["total_s"] == pytest.approx(15 + 2500) and r["passes_per_image"] == 20 and "fits" not in r
    r = project(_measured(), n_images=1000, budget=3000)
    assert r["fits"] and r["drops"] == []
    # over budget: each TTA transform is a quarter of the 2.0 s forward time; drop the last non-identity one first
    r = project(_measured(), n_images=1000, budget=1600)
    assert not r["fits"]
    first = r["drops"][0]
    assert first["drop"] == "TTA rot90" and first["passes_factor"] == pytest.approx(0.75)
    assert first["total_s"] == pytest.approx(15 + 1000 * 2.0) and first["tta"] == ["identity", "hflip", "vflip"]
    assert r["drops"][1]["drop"] == "TTA vflip" and r["drops"][1]["total_s"] == pytest.approx(1515)
    assert r["drops"][1]["fits"] and len(r["drops"]) == 2 and not r["drops"][0]["fits"]


def test_a_large_scale_is_dropped_before_a_transform():
    # scales 1 and 1.5 cost 1 : 2.25 of the 2.0 s; 1.5 is 2.25/3.25 of it, more than half a transform's share
    r = project(_measured(tta=["identity", "hflip"], scales=[1.0, 1.5]), n_images=100, budget=1)
    assert r["drops"][0]["drop"] == "scale 1.5" and r["drops"][0]["scales"] == [1.0]
    assert r["drops"][0]["per_image_s"] == pytest.approx(2.5 - 2.0 * 2.25 / 3.25)
    assert r["drops"][1]["drop"] == "TTA hflip"
    assert not r["drops"][-1]["fits"]  # nothing left: identity at scale 1


def _member(scales, tile_size=None, overlap=0.5, resize=None):
    from types import SimpleNamespace as NS

    cfg = NS(transforms=NS(resize=resize), predict=NS(tile_size=tile_size, tile_overlap=overlap))
    return NS(cfg=cfg, scales=lambda: list(scales))


def test_a_scale_costs_the_pixels_of_its_passes_tiles_included():
    # whole 256x256 images: s^2 of the pass at 1.0 (384x384 at 1.5)
    assert scale_costs(_member([1.0, 1.5]), [(256, 256)]) == [256 * 256, 384 * 384]
    # tiles of 256 with overlap 0.5 (stride 128): one tile at 1.0, at 1.5 starts [0, 128] on each axis: 4 tiles,
    # 4x the pixels where s^2 says 2.25x
    assert scale_costs(_member([1.0, 1.5], tile_size=[256, 256]), [(256, 256)]) == [256 * 256, 4 * 256 * 256]
    # an image smaller than the tile is one tile of its own size; transforms.resize sets the input, not the image
    assert scale_costs(_member([1.0, 2.0], tile_size=[256, 256]), [(100, 100)]) == [100 * 100, 200 * 200]
    assert scale_costs(_member([1.0], resize=[64, 32]), [(500, 700), (10, 10)]) == [64 * 32]
    # averaged over the images: 300x256 at 1.0 has starts [0, 44] (2 tiles) on its first axis, 256x256 one
    assert scale_costs(_member([1.0], tile_size=[256, 256]), [(300, 256), (256, 256)]) == [(2 + 1) / 2 * 256 * 256]


def test_a_tiled_scale_is_dropped_by_its_tiles_not_its_square():
    # the tiled member above: scale 1.5 is 4/5 of the 2.0 s forward time (s^2 would say 2.25/3.25)
    r = project(_measured(tta=["identity", "hflip"], scales=[1.0, 1.5], scale_cost=[65536, 262144]), n_images=100, budget=1)
    assert r["drops"][0]["drop"] == "scale 1.5" and r["drops"][0]["per_image_s"] == pytest.approx(2.5 - 2.0 * 4 / 5)
    assert r["drops"][1]["drop"] == "TTA hflip" and r["drops"][1]["per_image_s"] == pytest.approx(2.5 - 1.6 - 0.4 / 2)


@pytest.fixture(scope="module")
def timed_run(tmp_path_factory):
    """A 2-fold run (hflip TTA) and 160 test images of 64x64: enough that per-image costs dominate."""
    root = make_demo(tmp_path_factory.mktemp("est"), n_train=4, n_test=160, height=64, width=64, seed=3)
    runs = tmp_path_factory.mktemp("est_runs")
    cfg = config_from_dict(demo_dict(root, runs, model={"arch": "scratch_unet", "depth": 3, "base_width": 8},
                                     predict={"batch_size": 8, "tta": ["identity", "hflip"]}))
    fake_run(cfg, seeds=(0, 1))
    return cfg


def test_estimate_is_within_5x_of_the_real_predict(timed_run, tmp_path):
    """Alone the two agree within 10% (3.66 s estimated, 3.86 s predicted); beside the other xdist worker's
    notebook kernel the estimate once came out at 3.7x the predict's time (12.6 s vs 3.4 s): the bound is for an
    estimate gone wrong, not for a busy machine."""
    r = estimate_predict(timed_run, min_seconds=1.0)
    assert r["n_images"] == 160 and r["passes_per_image"] == 4 and r["images_timed"] % 8 == 0 and r["images_timed"] >= 16
    assert 0 < r["members"][0]["forward_s"] < r["per_image_s"]
    assert r["members"][0]["scale_cost"] == [64 * 64]  # one scale, the 64x64 test images whole
    # each timed twice, the faster kept: other work on the machine only adds time (once 11.4 s for a 1.7 s estimate
    # while the other xdist worker ran a heavy test), and it rarely hits both runs of one of them
    estimated = min(r["total_s"], estimate_predict(timed_run, min_seconds=1.0)["total_s"])
    real = []
    for k in range(2):
        start = time.perf_counter()
        predict_test(timed_run, out=tmp_path / f"sub{k}.csv")
        real.append(time.perf_counter() - start)
    assert 1 / 5 < estimated / min(real) < 5, (estimated, real)


def test_estimate_command(timed_run, capsys):
    run = Run.of(timed_run)
    before = sorted(p.name for p in run.dir.iterdir())
    code = main(["predict", str(run.dir), "--estimate", "--n-images", "100000", "--budget", "1m"])
    out = capsys.readouterr().out
    assert code == 1  # over budget
    assert "forward passes per image: 4" in out and "projected for 100000 images" in out
    assert "does NOT fit the budget of 1m00s" in out and "drop TTA hflip (" in out and "x0.5" in out
    assert sorted(p.name for p in run.dir.iterdir()) == sorted(set(before) | {"estimate.json"})
    assert json.loads(run.estimate_json.read_text())["n_images"] == 100000
    assert not (run.dir.parent / "sub.csv").exists()  # nothing predicted
    assert main(["predict", str(run.dir), "--budget", "1h"]) == 2  # --budget without --estimate
