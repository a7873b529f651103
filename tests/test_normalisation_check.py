"""The warning when ``transforms.mean/std`` differ from what a named pretrained encoder was trained with.

The values are timm's pretrained configs: ``tf_efficientnet_lite0`` (a TF port) 0.5 / 0.5, ``efficientnet_lite0``
ImageNet's (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225). Nothing is downloaded: the config only loads.
"""

from __future__ import annotations

import logging

import pytest

from seg_toolkit import config_consistency
from seg_toolkit.config import config_from_dict

from .conftest import demo_dict

IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
HALF = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch):
    monkeypatch.setattr(config_consistency, "_WARNED", set())


def _load(demo_root, tmp_path, encoder, weights="imagenet", transforms=None, trained=False, **sections):
    model = {"arch": "unet", "encoder": encoder, "encoder_weights": weights, "params": {"encoder_depth": 3, "decoder_channels": [8, 8, 8]}}
    data = demo_dict(demo_root, tmp_path / "runs", model=model, transforms=transforms or {}, **sections)
    return config_from_dict(data, trained=trained)


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "seg_toolkit.config_transform_checks" and r.levelno == logging.WARNING]


def test_imagenet_statistics_on_a_tf_port_are_named_with_the_values_to_set(demo_root, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        _load(demo_root, tmp_path, "tu-tf_efficientnet_lite0", transforms=IMAGENET)
    (msg,) = _warnings(caplog)
    assert "tu-tf_efficientnet_lite0" in msg
    assert "transforms.mean: [0.5, 0.5, 0.5] and transforms.std: [0.5, 0.5, 0.5]" in msg


def test_the_default_normalisation_is_imagenet_so_it_warns_for_a_tf_port(demo_root, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        _load(demo_root, tmp_path, "tu-tf_efficientnet_lite0")
    assert len(_warnings(caplog)) == 1


@pytest.mark.parametrize("encoder,transforms", [
    ("tu-tf_efficientnet_lite0", HALF),
    ("tu-efficientnet_lite0", IMAGENET),
    ("tu-efficientnet_lite0", {"mean": [0.48, 0.46, 0.41], "std": [0.23, 0.22, 0.22]}),  # within 0.01
])
def test_matching_statistics_say_nothing(demo_root, tmp_path, caplog, encoder, transforms):
    with caplog.at_level(logging.WARNING):
        _load(demo_root, tmp_path, encoder, transforms=transforms)
    assert _warnings(caplog) == []


def test_a_grey_image_compares_the_averaged_statistics(demo_root, tmp_path, caplog):
    """One channel: the dataset averages three values, so 0.5 / 0.5 fits a tf_ port and ImageNet's does not."""
    with caplog.at_level(logging.WARNING):
        _load(demo_root, tmp_path, "tu-tf_efficientnet_lite0", transforms=HALF, data={"in_channels": 1})
        assert _warnings(caplog) == []
        _load(demo_root, tmp_path, "tu-tf_efficientnet_lite0", transforms=IMAGENET, data={"in_channels": 1})
    assert len(_warnings(caplog)) == 1


def test_it_warns_once_per_process(demo_root, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            _load(demo_root, tmp_path, "tu-tf_efficientnet_lite0", transforms=IMAGENET)
    assert len(_warnings(caplog)) == 1


def test_no_warning_without_pretrained_weights_or_for_a_trained_run(demo_root, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        _load(demo_root, tmp_path, "tu-tf_efficientnet_lite0", weights=None, transforms=IMAGENET)
        _load(demo_root, tmp_path, "tu-tf_efficientnet_lite0", transforms=IMAGENET, trained=True)
    assert _warnings(caplog) == []
