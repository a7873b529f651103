"""Images of more than 8 bits (``data.image_range``): 12-bit microscopy in 16-bit files, 32-bit integer and float
TIFFs. One mapping (raw ``[low, high]`` -> 0..255, clipped, rounded), the same in training, the predictor, the
audit and the report; without it 16-bit files are read over 0..65535 (a low span is warned about and named by the
audit) and 32-bit files are refused, never scaled each by its own range. Expected values worked out by hand."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from seg_toolkit.audit import audit
from seg_toolkit.config import ConfigError, config_from_dict
from seg_toolkit.data import DataError, SegDataset, load_train_samples
from seg_toolkit.data.io import read_image, wide_values
from seg_toolkit.data.sources import check_train_samples
from seg_toolkit.predictor import Member
from seg_toolkit.run_settings import TRAINED_KEYS, diff_of_keys


def _save(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


#: 12-bit values in a 16-bit file, one row: 0, 1000, 2048, 4095 and an out-of-range 5000
RAW12 = np.array([[0, 1000, 2048, 4095, 5000]], np.uint16)


def test_sixteen_bit_values_over_the_declared_range(tmp_path):
    path = _save(tmp_path / "a.png", RAW12)
    assert Image.open(path).mode == "I;16"
    # default: over 0..65535 -> round(v * 255 / 65535): 1000 -> 3.89 -> 4, 2048 -> 7.97 -> 8, 4095 -> 15.93 -> 16
    assert read_image(path, 1)[0, :, 0].tolist() == [0, 4, 8, 16, 19]
    # [0, 4095]: round(v * 255 / 4095): 1000 -> 62.27 -> 62, 2048 -> 127.53 -> 128, 4095 -> 255, 5000 clipped to 255
    assert read_image(path, 1, value_range=[0, 4095])[0, :, 0].tolist() == [0, 62, 128, 255, 255]
    # [1000, 3000]: 0 clipped to 0, 2048 -> 1048 * 255 / 2000 = 133.62 -> 134; grey replicated into RGB
    rgb = read_image(path, 3, value_range=[1000, 3000])
    assert rgb.shape == (1, 5, 3) and rgb[0, :, 1].tolist() == [0, 0, 134, 255, 255] and (rgb[..., 0] == rgb[..., 2]).all()
    assert wide_values(path) == ("I;16", 0.0, 5000.0)


def test_eight_bit_images_are_stretched_per_channel_only_when_asked(tmp_path):
    path = _save(tmp_path / "a.png", np.array([[[0, 50, 200], [10, 100, 255]]], np.uint8))
    assert read_image(path, 3).tolist() == [[[0, 50, 200], [10, 100, 255]]]
    # [0, 100]: v * 2.55: 50 -> 127.5 -> 128 (half up), 10 -> 25.5 -> 26, 200 and 255 clipped
    assert read_image(path, 3, value_range=[0, 100]).tolist() == [[[0, 128, 255], [26, 255, 255]]]
    assert wide_values(path) is None


def test_thirty_two_bit_images_need_a_range_and_finite_values(tmp_path):
    ints = _save(tmp_path / "i.tif", np.array([[0, 70000, 140000]], np.int32))
    floats = _save(tmp_path / "f.tif", np.array([[-1.5, 0.25, 2.0]], np.float32))
    assert Image.open(ints).mode == "I" and Image.open(floats).mode == "F"
    with pytest.raises(DataError, match=r"i.tif: a signed or 32-bit integer image \(PIL mode I; values 0..140000 in this file\).*"
                                        r"data.image_range"):
        read_image(ints, 1)
    with pytest.raises(DataError, match=r"f.tif: a 32-bit float image \(PIL mode F; values -1.5..2 in this file\)"):
        read_image(floats, 1)
    # 70000 / 140000 * 255 = 127.5 -> 128; (0.25 - -1) / 3 * 255 = 106.25 -> 106; -1.5 clipped
    assert read_image(ints, 1, value_range=[0, 140000])[0, :, 0].tolist() == [0, 128, 255]
    assert read_image(floats, 1, value_range=[-1, 2])[0, :, 0].tolist() == [0, 106, 255]
    nan = _save(tmp_path / "n.tif", np.array([[0.0, np.nan]], np.float32))
    with pytest.raises(DataError, match=r"n.tif: image holds 1 NaN or infinite value\(s\)"):
        read_image(nan, 1, value_range=[0, 1])


def _folder(root: Path, images: list[np.ndarray], ext: str = ".png", **data):
    for i, img in enumerate(images):
        _save(root / "train/images" / f"im{i}{ext}", img)
        mask = np.zeros(img.shape[:2], np.uint8)
        mask[: img.shape[0] // 2] = 255
        _save(root / "train/masks" / f"im{i}.png", mask)
    return config_from_dict({"data": {"root": str(root), "task": "binary", "num_classes": 1, "layout": "folder",
                                      "in_channels": 1, "image_ext": ext, **data},
                             "transforms": {"mean": [0.5], "std": [0.25]}, "folds": {"n_splits": 2}})


def test_config_checks_the_range_at_load(tmp_path):
    for bad in ([5, 5], [10, 0], [0], [0, float("nan")]):
        with pytest.raises(ConfigError, match=r"data.image_range: expected \[low, high\] with low < high"):
            config_from_dict({"data": {"image_range": bad}})
    assert config_from_dict({"data": {"image_range": [0, 4095]}}).data.image_range == [0, 4095]


def test_training_reads_the_range_and_the_audit_measures_it(tmp_path, caplog, monkeypatch):
    from seg_toolkit.data import io

    monkeypatch.setattr(io, "_SAID", set())  # said once per process: not yet in this one
    img = np.tile(np.array([[0, 1000, 2048, 4095]], np.uint16), (4, 1))
    cfg = _folder(tmp_path, [img, img])
    samples = load_train_samples(cfg)
    with caplog.at_level(logging.WARNING, logger="seg_toolkit.data.io"):
        check_train_samples(samples, cfg)
    assert "a 16-bit image with values 0..4095, read over 0..65535 as 0..16 of 0..255" in caplog.text
    res = audit(cfg)
    (p,) = res.problems
    assert p.kind == "image_range" and res.wide_values == {"I;16": [0.0, 4095.0]}
    assert "hold values 0..4095 over all 2 file(s); read over 0..65535 they become 0..16 of 0..255, 6.2% of the contrast: " \
           "set data.image_range: [0, 4095]" in p.message

    ranged = _folder(tmp_path, [img, img], image_range=[0, 4095])
    assert audit(ranged).problems == []
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="seg_toolkit.data.io"):
        check_train_samples(samples, ranged)
    assert caplog.text == ""
    # the dataset's tensor: (round(v * 255 / 4095) / 255 - 0.5) / 0.25 -> 0 -> -2, 62 -> -1.0275, 128 -> 0.0078, 255 -> 2
    x = SegDataset(load_train_samples(ranged), ranged, mode="valid")[0]["image"]
    expected = (torch.tensor([0, 62, 128, 255]) / 255.0 - 0.5) / 0.25
    assert torch.allclose(x[0, 0], expected, atol=1e-6)


def test_a_thirty_two_bit_training_set_is_refused_before_training(tmp_path):
    cfg = _folder(tmp_path, [np.array([[0, 7, 9, 11]] * 4, np.int32)] * 2, ext=".tif")
    samples = load_train_samples(cfg)
    assert Image.open(samples[0].image).mode == "I"
    with pytest.raises(DataError, match=r"im0.tif: a signed or 32-bit integer image .*values 0..11 in this file"):
        check_train_samples(samples, cfg)
    check_train_samples(samples, _folder(tmp_path, [np.array([[0, 7, 9, 11]] * 4, np.int32)] * 2, ext=".tif", image_range=[0, 11]))


def test_the_range_is_part_of_a_members_preprocessing_and_fixed_by_training(tmp_path):
    plain = _folder(tmp_path, [RAW12])
    ranged = _folder(tmp_path, [RAW12], image_range=[0, 4095])

    class _Run:  # what Member.preprocess reads: the member's own config
        def __init__(self, cfg):
            self.cfg = cfg

    assert Member.preprocess.fget(_Run(plain)) != Member.preprocess.fget(_Run(ranged))
    assert Member.preprocess.fget(_Run(ranged))[:2] == (1, (0, 4095))
    # a trained run's saved config against one with another range: refused like any key training fixes
    (line,) = diff_of_keys(plain, ranged, TRAINED_KEYS)
    assert line.startswith("data.image_range: ")


def test_max_image_pixels_decides_above_pils_own_limit(tmp_path, monkeypatch):
    """PIL's bomb guard (89 million pixels by default) refused images data.max_image_pixels allowed, without naming
    the key; 0 or a negative limit passed the config and refused every image."""
    from PIL import Image

    from seg_toolkit.config import ConfigError, config_from_dict
    from seg_toolkit.data.image_file import open_image

    path = tmp_path / "a.png"
    Image.fromarray(np.zeros((30, 40), np.uint8)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # PIL's limit below the image: stands in for 89 million
    assert open_image(path, max_pixels=2000).size == (40, 30)
    assert Image.MAX_IMAGE_PIXELS == 500  # put back
    # the header readers too: the sizes the data checks, CSV targets and the audit read (was: PIL's refusal)
    from seg_toolkit.data.image_file import read_color16
    from seg_toolkit.data.io import image_size

    assert image_size(path) == (30, 40) and Image.MAX_IMAGE_PIXELS == 500
    wide = tmp_path / "w.png"
    assert cv2.imwrite(str(wide), np.full((30, 40, 3), 4095, np.uint16))
    assert read_color16(wide, max_pixels=2000).shape == (30, 40, 3) and Image.MAX_IMAGE_PIXELS == 500
    with pytest.raises(Exception, match=r"a.png: refused before decoding, 40x30 = 1200 pixels is over data.max_image_pixels=1000"):
        open_image(path, max_pixels=1000)
    with pytest.raises(ConfigError, match=r"data.max_image_pixels: expected a number of pixels >= 1"):
        config_from_dict({"data": {"root": str(tmp_path), "max_image_pixels": 0}, "folds": {"n_splits": 2}})


def test_a_test_image_read_unlike_the_training_ones_is_said_once(tmp_path, caplog, monkeypatch):
    """Training checks its first image before epoch 1; test images were read without a word (found by an audit): a
    16-bit test file of 8-bit values (0..229) was read as 0..1 of 0..255, nearly black, and a data.image_range of
    [0, 1] on 8-bit files read every pixel as 255. Both are said now, once per process, naming the file."""
    from seg_toolkit.data import io

    monkeypatch.setattr(io, "_SAID", set())
    eight_in_16 = _save(tmp_path / "t16.png", np.tile(np.array([[0, 100, 229]], np.uint16), (3, 1)))
    with caplog.at_level(logging.WARNING, logger="seg_toolkit.data.io"):
        got = read_image(eight_in_16, 1)
        read_image(eight_in_16, 1)
    assert got[0, :, 0].tolist() == [0, 0, 1]  # round(229 * 255 / 65535) = 1: what the warning is about
    assert caplog.text.count("a 16-bit image with values 0..229, read over 0..65535 as 0..1 of 0..255") == 1
    assert "t16.png" in caplog.text and "8-bit values saved in 16-bit files" in caplog.text
    caplog.clear()
    eight = _save(tmp_path / "t8.png", np.tile(np.array([[0, 12, 204]], np.uint8), (3, 1)))
    with caplog.at_level(logging.WARNING, logger="seg_toolkit.data.io"):
        clipped = read_image(eight, 1, value_range=[0, 1])
        read_image(eight, 1, value_range=[0, 1])
    assert clipped[0, :, 0].tolist() == [0, 255, 255]
    assert caplog.text.count("66% of the values lie outside data.image_range [0, 1] (values 0..204)") == 1
    caplog.clear()
    monkeypatch.setattr(io, "_SAID", set())
    with caplog.at_level(logging.WARNING, logger="seg_toolkit.data.io"):
        read_image(_save(tmp_path / "r12.png", RAW12), 1, value_range=[0, 4095])  # 1 of 5 values above: fits
        read_image(_save(tmp_path / "full.png", np.array([[0, 30000, 65535]], np.uint16)), 1)  # spans the range
    assert caplog.text == ""
