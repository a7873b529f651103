""".npy images and masks (``data.image_ext: .npy``): any number of channels (multispectral bands, time steps, as
contrails and satellite competitions ship them), integers or floats read over ``data.image_range``; class-id masks.
The readers checked against hand values, every bad array named with what was expected, and a 5-band float dataset
through audit, training, OOF, prediction and the report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from seg_toolkit.audit import audit
from seg_toolkit.audit_report import write_audit
from seg_toolkit.config import ConfigError, config_from_dict
from seg_toolkit.cv import run_cv
from seg_toolkit.data import DataError
from seg_toolkit.data.io import image_size, read_image, wide_values
from seg_toolkit.data.mask_io import read_mask
from seg_toolkit.inference import predict_test
from seg_toolkit.report.overlays import as_rgb
from seg_toolkit.report.page import build_report
from seg_toolkit.rle import RLESpec


def test_array_images_keep_their_channels_and_values(tmp_path):
    bands = np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 3, 5)
    np.save(tmp_path / "u8.npy", bands)
    assert read_image(tmp_path / "u8.npy", 5).tolist() == bands.tolist()
    assert image_size(tmp_path / "u8.npy") == (2, 3) and wide_values(tmp_path / "u8.npy") is None
    with pytest.raises(DataError, match=r"u8.npy: array of shape \(2, 3, 5\) has 5 channel\(s\); data.in_channels is 3"):
        read_image(tmp_path / "u8.npy", 3)
    np.save(tmp_path / "grey.npy", np.array([[0, 65535], [257, 1000]], np.uint16))  # (H, W): one channel
    # uint16 over 0..65535: 257 -> 1, 1000 -> 3.89 -> 4
    assert read_image(tmp_path / "grey.npy", 1)[..., 0].tolist() == [[0, 255], [1, 4]]
    assert wide_values(tmp_path / "grey.npy") == ("npy uint16", 0.0, 65535.0)
    temps = np.array([[[200.0, 0.5], [250.0, 0.0]], [[300.0, 1.0], [310.0, -0.2]]], np.float32)  # (2, 2, 2)
    np.save(tmp_path / "f.npy", temps)
    with pytest.raises(DataError, match=r"f.npy: a float32 array \(values -0.2..310 in this file\) has no fixed range.*"
                                        r"data.image_range"):
        read_image(tmp_path / "f.npy", 2)
    # [0, 300]: v * 255 / 300: 200 -> 170, 250 -> 212.5 -> 213 (half up), 300 -> 255, 310 clipped; 0.5 -> 0.425 -> 0
    out = read_image(tmp_path / "f.npy", 2, value_range=[0, 300])
    assert out[..., 0].tolist() == [[170, 213], [255, 255]] and out[..., 1].tolist() == [[0, 0], [1, 0]]
    np.save(tmp_path / "b.npy", np.array([[True, False]]))
    assert read_image(tmp_path / "b.npy", 1)[..., 0].tolist() == [[255, 0]]


@pytest.mark.parametrize("make, message", [
    (lambda p: np.save(p, np.zeros((2, 2, 2, 2), np.uint8)), r"array of shape \(2, 2, 2, 2\); expected \(height, width\) or"),
    (lambda p: np.save(p, np.array([["a", "b"]])), r"array of dtype <U1; expected numbers"),
    (lambda p: np.save(p, np.array([[{"x": 1}]], dtype=object), allow_pickle=True), r"not a readable .npy array"),
    (lambda p: p.write_bytes(b"\x93NUMPY junk"), r"not a readable .npy array"),
    (lambda p: (np.save(p, np.zeros((64, 64), np.uint8)), p.write_bytes(p.read_bytes()[:200])), r"not a readable .npy array, or truncated"),
    (lambda p: p.write_bytes(b""), r"file is empty \(0 bytes\)"),
    (lambda p: np.save(p, np.array([[0.0, np.nan]], np.float32)), r"image holds 1 NaN or infinite value"),
])
def test_bad_arrays_are_named(tmp_path, make, message):
    path = tmp_path / "x.npy"
    make(path)
    with pytest.raises(DataError, match=f"x.npy: {message}"):
        read_image(path, 1, value_range=[0, 1])


def test_array_masks_are_class_ids(tmp_path):
    np.save(tmp_path / "m.npy", np.array([[0, 2], [1, 300]], np.int64))
    assert read_mask(tmp_path / "m.npy").tolist() == [[0, 2], [1, 300]] and read_mask(tmp_path / "m.npy").dtype == np.int32
    np.save(tmp_path / "m1.npy", np.array([[[1], [0]]], np.int32))  # (H, W, 1): contrails' human_pixel_masks.npy
    assert read_mask(tmp_path / "m1.npy").tolist() == [[1, 0]]
    np.save(tmp_path / "f.npy", np.array([[0.0, 1.0]], np.float32))
    with pytest.raises(DataError, match=r"f.npy: mask array of dtype float32; expected integers \(class ids\)"):
        read_mask(tmp_path / "f.npy")
    np.save(tmp_path / "neg.npy", np.array([[0, -1]], np.int16))
    with pytest.raises(DataError, match=r"neg.npy: mask array holds values -1..0; expected class ids >= 0"):
        read_mask(tmp_path / "neg.npy")


def test_channels_are_checked_at_load():
    with pytest.raises(ConfigError, match=r"data.in_channels: expected 1, 3 or 4 \(any number for .npy images"):
        config_from_dict({"data": {"in_channels": 5}})
    with pytest.raises(ConfigError, match=r"transforms.mean: 3 values for data.in_channels=5"):
        config_from_dict({"data": {"in_channels": 5, "image_ext": ".npy"}})
    config_from_dict({"data": {"in_channels": 5, "image_ext": ".npy"}, "transforms": {"mean": [0.5] * 5, "std": [0.25] * 5}})


def test_as_rgb_shows_the_first_three_bands_or_grey():
    five = np.arange(5, dtype=np.uint8).reshape(1, 1, 5)
    assert as_rgb(five).tolist() == [[[0, 1, 2]]]
    assert as_rgb(five[..., :2]).tolist() == [[[0, 0, 0]]] and as_rgb(five[..., 1:2]).tolist() == [[[1, 1, 1]]]


def _bands_competition(root: Path, rng: np.random.Generator) -> None:
    """A square hot in band 3 (brightness temperatures around 250-290 K) marks the object; 5 float32 bands."""
    for split, n in (("train", 12), ("test", 3)):
        for i in range(n):
            x = rng.normal(260.0, 5.0, (32, 32, 5)).astype(np.float32)
            mask = np.zeros((32, 32, 1), np.int32)
            if i % 3:
                y0, x0 = rng.integers(2, 18, 2)
                x[y0 : y0 + 12, x0 : x0 + 12, 3] += 25.0
                mask[y0 : y0 + 12, x0 : x0 + 12] = 1
            for sub, arr in (("images", x), ("masks", mask)):
                (root / split / sub).mkdir(parents=True, exist_ok=True)
                np.save(root / split / sub / f"{split}{i}.npy", arr)
    pd.DataFrame({"id": [f"test{i}" for i in range(3)], "rle_mask": ["", "", ""]}).to_csv(root / "sample_submission.csv", index=False)


def test_a_five_band_float_dataset_trains_predicts_and_reports(tmp_path):
    root = tmp_path / "data"
    _bands_competition(root, np.random.default_rng(0))
    cfg = config_from_dict({
        "experiment": "bands", "runs_dir": str(tmp_path / "runs"),
        "data": {"root": str(root), "task": "binary", "num_classes": 1, "layout": "folder", "image_ext": ".npy",
                 "mask_ext": ".npy", "in_channels": 5, "image_range": [230, 310]},
        "transforms": {"mean": [0.4] * 5, "std": [0.2] * 5},
        "folds": {"n_splits": 2}, "model": {"arch": "scratch_unet", "depth": 2, "base_width": 8},
        "loss": {"bce": 1.0}, "train": {"epochs": 1, "batch_size": 4, "amp": "none"}, "postprocess": {"tune": False},
    })
    res = audit(cfg)
    assert res.problems == [] and res.image_modes == {"npy float32 x5": 12} and res.class_pixels == [8 * 144]
    assert res.wide_values["npy float32"][0] > 200
    write_audit(cfg, tmp_path / "audit", res)  # its pictures show the first three bands
    assert (tmp_path / "audit/audit_samples.png").is_file() and (tmp_path / "audit/audit_batch.png").is_file()
    cv = run_cv(cfg)
    assert 0.0 <= cv["score"] <= 1.0
    out = predict_test(cfg, out=tmp_path / "sub.csv")
    sub = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert sub["id"].tolist() == ["test0", "test1", "test2"]
    for rle in sub["rle_mask"]:
        assert RLESpec().decode(rle, (32, 32)).shape == (32, 32)
    page = build_report(Path(cfg.run_dir))
    assert page.is_file() and "<img" in page.read_text()
