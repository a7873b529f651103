"""Images as folders of band files (``data.bands``), the Google contrails layout: ``<record_id>/band_11.npy`` ..,
each ``(H, W, T)`` float32 brightness temperatures, ``human_pixel_masks.npy`` beside them. The ash false colour
and raw bands checked against hand values, every misfit named at load or at the folder, and a contrails-shaped
competition through audit, training, OOF, prediction, the submission check and the report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from seg_toolkit.audit import audit
from seg_toolkit.config import ConfigError, config_from_dict
from seg_toolkit.cv import run_cv
from seg_toolkit.data import DataError
from seg_toolkit.data.bands import Bands, read_bands
from seg_toolkit.data.io import image_size, read_image, wide_values
from seg_toolkit.data.sample import read_config_image
from seg_toolkit.data.sources import load_test_samples, load_train_samples
from seg_toolkit.inference import predict_test
from seg_toolkit.report.page import build_report
from seg_toolkit.rle import RLESpec
from seg_toolkit.submission import row_pixels
from seg_toolkit.submission_check import check_submission

ASH = Bands(("band_11", "band_14", "band_15"), ".npy", 4, True)


def _record(folder: Path, planes: dict[str, np.ndarray], frames: int = 8, frame: int = 4) -> None:
    """Band files (H, W, frames) whose time step ``frame`` is ``planes[name]`` (the others: 0 K, never read)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, plane in planes.items():
        arr = np.zeros(plane.shape + (frames,), np.float32)
        arr[..., frame] = plane
        np.save(folder / f"{name}.npy", arr)


def test_the_ash_false_colour_by_hand(tmp_path):
    b11 = np.array([[270.0, 250.0, 280.0]], np.float32)
    b14 = np.array([[272.0, 400.0, 200.0]], np.float32)
    b15 = np.array([[271.0, 390.0, 210.0]], np.float32)
    _record(tmp_path / "r1", {"band_11": b11, "band_14": b14, "band_15": b15})
    out = read_bands(tmp_path / "r1/band_11.npy", ASH, 10**6)
    # pixel 0: R = (271 - 272 + 4) / 6 = 0.5 -> 127.5 -> 128; G = (272 - 270 + 4) / 9 -> 170; B = (272 - 243) / 60 -> 123.25 -> 123
    # pixel 1: R = (-10 + 4) / 6 < 0 -> 0; G = (150 + 4) / 9 > 1 -> 255; B = 157 / 60 > 1 -> 255
    # pixel 2: R = (10 + 4) / 6 > 1 -> 255; G = (-80 + 4) / 9 < 0 -> 0; B = (200 - 243) / 60 < 0 -> 0
    assert out.dtype == np.uint8 and out.tolist() == [[[128, 170, 123], [0, 255, 255], [255, 0, 0]]]
    assert read_image(tmp_path / "r1/band_11.npy", 3, bands=ASH).tolist() == out.tolist()
    assert image_size(tmp_path / "r1/band_11.npy") == (1, 3) and wide_values(tmp_path / "r1/band_11.npy", bands=ASH) is None
    # the other time steps are 0 K: frame 3 would read R = (0 + 4) / 6 -> 170, G = 4 / 9 -> 113, B -> 0
    frame3 = Bands(ASH.files, ".npy", 3, True)
    assert read_image(tmp_path / "r1/band_11.npy", 3, bands=frame3).tolist() == [[[170, 113, 0]] * 3]


def test_raw_bands_are_read_over_the_image_range(tmp_path):
    _record(tmp_path / "r", {"band_08": np.array([[200.0, 250.0]], np.float32), "band_16": np.array([[300.0, 310.0]], np.float32)}, frames=1, frame=0)
    two = Bands(("band_16", "band_08"), ".npy", 0, False)
    assert wide_values(tmp_path / "r/band_16.npy", bands=two) == ("bands float32", 200.0, 310.0)
    with pytest.raises(DataError, match=r"r: bands band_16, band_08 \(values 200..310 in this folder\) has no fixed range.*"
                                        r"data.image_range"):
        read_image(tmp_path / "r/band_16.npy", 2, bands=two)
    # [200, 300]: channel 0 is band_16 (300 -> 255, 310 clipped), channel 1 band_08 (200 -> 0, 250 -> 127.5 -> 128)
    out = read_image(tmp_path / "r/band_16.npy", 2, value_range=[200, 300], bands=two)
    assert out[..., 0].tolist() == [[255, 255]] and out[..., 1].tolist() == [[0, 128]]
    with pytest.raises(DataError, match=r"r: 2 band\(s\) make 2 channel\(s\); data.in_channels is 3"):
        read_image(tmp_path / "r/band_16.npy", 3, value_range=[200, 300], bands=two)


@pytest.mark.parametrize("make, bands, message", [
    (lambda d: np.save(d / "band_14.npy", np.zeros((1, 3, 2), np.float32)), ASH,
     r"band_14.npy: band of shape \(1, 3, 2\) has 2 time steps; data.bands.frame is 4"),
    (lambda d: np.save(d / "band_14.npy", np.zeros((1, 3), np.float32)), ASH,
     r"band_14.npy: band of shape \(1, 3\); data.bands.frame=4 expects \(height, width, time\)"),
    (lambda d: np.save(d / "band_14.npy", np.zeros((2, 3, 8), np.float32)), ASH,
     r"band_14.npy: band of 3x2 pixels; band_11.npy beside it is 3x1"),
    (lambda d: np.save(d / "band_15.npy", np.full((1, 3, 8), np.nan, np.float32)), ASH,
     r"band_15.npy: band holds 3 NaN or infinite value"),
    (lambda d: (d / "band_15.npy").unlink(), ASH, r"band_15.npy: file not found"),
    (lambda d: None, Bands(ASH.files, ".npy", None, True),
     r"band_11.npy: band of shape \(1, 3, 8\); expected \(height, width\) without data.bands.frame"),
])
def test_bad_band_files_are_named(tmp_path, make, bands, message):
    plane = np.full((1, 3), 260.0, np.float32)
    _record(tmp_path / "r", {"band_11": plane, "band_14": plane, "band_15": plane})
    make(tmp_path / "r")
    with pytest.raises(DataError, match=message):
        read_image(tmp_path / "r/band_11.npy", 3, bands=bands)


def _cfg(tmp_path: Path, bands: dict | None = None, **data) -> dict:
    return {
        "experiment": "contrails", "runs_dir": str(tmp_path / "runs"),
        "data": {"root": str(tmp_path / "data"), "task": "binary", "num_classes": 1, "layout": "folder",
                 "train_images": "train", "test_images": "test", "image_ext": ".npy", "in_channels": 3,
                 "bands": bands if bands is not None else {"files": ["band_11", "band_14", "band_15"], "frame": 4,
                                                           "ash": True, "mask": "human_pixel_masks.npy"}, **data},
        "transforms": {"mean": [0.5] * 3, "std": [0.25] * 3},
        "folds": {"n_splits": 2}, "model": {"arch": "scratch_unet", "depth": 2, "base_width": 8},
        "loss": {"bce": 1.0}, "train": {"epochs": 1, "batch_size": 4, "amp": "none"}, "postprocess": {"tune": False},
        "submission": {"empty_token": "-"},
    }


@pytest.mark.parametrize("bands, data, message", [
    ({"files": ["band_11", "band_15", "band_14"], "ash": True}, {}, r"data.bands.ash: the ash false colour is made of bands 11, 14 and 15"),
    ({"files": ["band_11", "band_14"], "ash": True}, {}, r"data.bands.ash: .*\['band_11', 'band_14'\]"),
    ({"files": ["band_11", "band_14", "band_15"], "ash": True}, {"image_range": [0, 1]}, r"data.image_range: the ash false colour has fixed ranges"),
    ({"files": ["band_11", "band_14", "band_15"]}, {}, r"data.image_range: band values .* have no fixed range"),
    ({"files": ["band_11", "band_14"]}, {"image_range": [200, 300]}, r"data.in_channels: 2 band file\(s\) .* make 2 channel\(s\); got 3"),
    ({"frame": 4}, {}, r"data.bands.frame: only used with data.bands.files"),
    ({"files": ["band_11", "band_11", "band_14"], "ash": True}, {}, r"data.bands.files: listed more than once: 'band_11'"),
    ({"files": ["../band_11", "band_14", "band_15"], "ash": True}, {}, r"data.bands.files\[0\]: expected a band file name"),
    ({"files": ["band_11", "band_14", "band_15"], "ash": True}, {"image_ext": ".png"}, r"data.image_ext: band files are .npy arrays"),
    ({"files": ["band_11", "band_14", "band_15"], "ash": True, "mask": "m.npy"}, {"layout": "csv"}, r"data.bands.mask: .*data.layout is csv"),
    ({"files": ["band_11", "band_14", "band_15"], "ash": True, "mask": "band_14.npy"}, {}, r"data.bands.mask: 'band_14.npy' is one of"),
    ({"files": ["band_11", "band_14", "band_15"], "ash": True}, {"instance_folders": True}, r"data.bands: .* do not combine with data.instance_folders"),
    ({"files": ["band_11", "band_14", "band_15"], "ash": True, "frame": -1}, {}, r"data.bands.frame: .* >= 0, got -1"),
    ({"file": ["band_11"]}, {}, r"unknown config key 'data.bands.file'; did you mean 'data.bands.files'"),
])
def test_band_settings_are_checked_at_load(tmp_path, bands, data, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(_cfg(tmp_path, bands, **data))


def _contrails(root: Path, rng: np.random.Generator, n_train: int = 12, n_test: int = 3) -> None:
    """Records of 32x32 pixels, 8 time steps; a contrail (a diagonal band) at frame 4 is cold in band 11 against band 14,
    so it is bright in the ash colour's green; the masks are ``human_pixel_masks.npy`` (32, 32, 1) int32."""
    for split, n in (("train", n_train), ("test", n_test)):
        for i in range(n):
            base = rng.normal(270.0, 1.0, (32, 32)).astype(np.float32)
            line = np.zeros((32, 32), bool)
            if i % 3:
                off = int(rng.integers(-8, 8))
                yy, xx = np.mgrid[:32, :32]
                line = np.abs(yy - xx - off) < 3
            b11 = base - np.where(line, 4.0, -3.0).astype(np.float32)  # b14 - b11: 4 on the contrail, -3 elsewhere
            folder = root / split / str(1000 + i)
            _record(folder, {"band_08": base, "band_11": b11, "band_14": base, "band_15": base - 0.5})
            if split == "train":
                np.save(folder / "human_pixel_masks.npy", line[..., None].astype(np.int32))
                np.save(folder / "human_individual_masks.npy", np.zeros((32, 32, 1, 2), np.int32))
    pd.DataFrame({"record_id": [str(1000 + i) for i in range(n_test)], "encoded_pixels": ["-"] * n_test}).to_csv(
        root / "sample_submission.csv", index=False)


def test_a_contrails_competition_trains_predicts_and_submits(tmp_path):
    root = tmp_path / "data"
    _contrails(root, np.random.default_rng(0))
    cfg = config_from_dict(_cfg(tmp_path))
    samples = load_train_samples(cfg)
    assert [s.id for s in samples] == [str(1000 + i) for i in range(12)]
    assert samples[1].image == root / "train/1001/band_11.npy" and samples[1].mask == root / "train/1001/human_pixel_masks.npy"
    # the ash green (b14 - b11 over -4..5 K): 4 K on the contrail -> 8/9 -> 227, -3 K off it -> 1/9 -> 28
    green, line = read_config_image(samples[1].image, cfg)[..., 1], np.load(samples[1].mask)[..., 0] == 1
    assert set(green[line].tolist()) == {227} and set(green[~line].tolist()) == {28}
    assert [s.image for s in load_test_samples(cfg)] == [root / f"test/{1000 + i}/band_11.npy" for i in range(3)]
    res = audit(cfg)
    assert res.problems == [] and res.image_sizes == {(32, 32): 12} and res.wide_values == {}
    assert res.image_modes == {"band folder: 3 x npy float32 as the ash colour": 12}
    assert res.class_pixels == [sum(int(np.load(s.mask).sum()) for s in samples)]
    cv = run_cv(cfg)
    assert 0.0 <= cv["score"] <= 1.0
    out = predict_test(cfg, out=tmp_path / "sub.csv")
    sub = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert list(sub.columns) == ["record_id", "encoded_pixels"] and sub["record_id"].tolist() == ["1000", "1001", "1002"]
    for rle in sub["encoded_pixels"]:
        assert rle == "-" or RLESpec().decode(rle, (32, 32)).shape == (32, 32)
    assert check_submission(out, root / "sample_submission.csv", empty_tokens=("-",), n_pixels=row_pixels(cfg)) == []
    assert row_pixels(cfg) == {"1000": 1024, "1001": 1024, "1002": 1024}
    page = build_report(Path(cfg.run_dir))
    assert page.is_file() and "<img" in page.read_text()


def test_raw_bands_train_and_a_missing_band_is_named(tmp_path):
    root = tmp_path / "data"
    _contrails(root, np.random.default_rng(1), n_train=8, n_test=2)
    raw = {"files": ["band_08", "band_11", "band_14", "band_15"], "frame": 4, "mask": "human_pixel_masks.npy"}
    cfg = config_from_dict(_cfg(tmp_path, raw, in_channels=4, image_range=[255, 290]) | {
        "transforms": {"mean": [0.5] * 4, "std": [0.25] * 4}})
    res = audit(cfg)
    assert res.problems == [] and res.image_modes == {"band folder: 4 x npy float32": 8}
    lo, hi = res.wide_values["bands float32"]
    assert 255 < lo < hi < 290
    run_cv(cfg)
    (root / "train/1003/band_14.npy").unlink()
    with pytest.raises(DataError, match=r"train/1003/band_14.npy: band file not found \(data.bands.files"):
        load_train_samples(cfg)
    assert [p.kind for p in audit(cfg).problems] == ["missing_file"]
