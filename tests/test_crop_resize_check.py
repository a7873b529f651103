"""The warning when a crop in ``transforms.train`` runs before ``transforms.resize``, which stretches
each crop to the resize size (training then sees objects at another scale than prediction)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from seg_toolkit import config_consistency
from seg_toolkit.config import config_from_dict
from seg_toolkit.data.dataset import build_transforms

from .conftest import demo_dict


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch):
    monkeypatch.setattr(config_consistency, "_WARNED", set())


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "seg_toolkit.config_transform_checks" and r.levelno == logging.WARNING and "stretches" in r.getMessage()]


def _load(demo_root, tmp_path, train, resize=(32, 48)):
    return config_from_dict(demo_dict(demo_root, tmp_path / "runs", transforms={"resize": list(resize) if resize else None,
                                                                                "train": train}))


def test_a_crop_then_resize_is_named_with_both_sizes(demo_root, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        cfg = _load(demo_root, tmp_path, [{"HorizontalFlip": {"p": 0.5}}, {"RandomCrop": {"height": 32, "width": 32}}])
    (msg,) = _warnings(caplog)
    assert msg.startswith("transforms.train[1]: RandomCrop makes 32x32 crops, which transforms.resize [32, 48] then stretches to 32x48")
    # what the warning says is what training does: a 64x64 image, cropped to 32x32, comes out 32x48
    cfg.transforms.train = [{"RandomCrop": {"height": 32, "width": 32}}]
    out = build_transforms(cfg, train=True)(image=np.zeros((64, 64, 3), np.uint8))["image"]
    assert out.shape == (32, 48, 3)


def test_crops_inside_oneof_and_of_varying_size_are_found(demo_root, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        _load(demo_root, tmp_path, [{"OneOf": {"transforms": [{"HorizontalFlip": {}},
                                                              {"CenterCrop": {"height": 40, "width": 40}}], "p": 0.5}},
                                    {"RandomCropFromBorders": {"p": 0.3}}])
    msgs = _warnings(caplog)
    assert len(msgs) == 2
    assert msgs[0].startswith("transforms.train[0].OneOf.transforms[1]: CenterCrop makes 40x40 crops")
    assert msgs[1].startswith("transforms.train[1]: RandomCropFromBorders makes crops of varying size")


@pytest.mark.parametrize("train,resize", [
    ([{"RandomCrop": {"height": 32, "width": 48}}], (32, 48)),  # the crop is already the resize size
    ([{"RandomResizedCrop": {"size": [32, 48]}}], (32, 48)),  # a zoom that outputs the resize size
    ([{"RandomCrop": {"height": 32, "width": 32}}], None),  # crop only: the same scale as prediction
    ([{"HorizontalFlip": {"p": 0.5}}, {"PadIfNeeded": {"min_height": 64, "min_width": 64}}], (32, 48)),
])
def test_crops_that_keep_the_scale_say_nothing(demo_root, tmp_path, caplog, train, resize):
    with caplog.at_level(logging.WARNING):
        _load(demo_root, tmp_path, train, resize)
    assert _warnings(caplog) == []
