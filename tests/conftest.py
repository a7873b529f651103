"""Shared fixtures: small generated competitions in temporary folders, and the shared data path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from seg_toolkit.config import config_from_dict
from seg_toolkit.data.demo import make_demo

# A config's track.backend: auto would open an MLflow store beside every test run; tests track only when they
# set track.backend themselves (tests/test_track.py). Subprocesses (CLI, notebook, DDP tests) inherit it.
os.environ.setdefault("SEG_TOOLKIT_TRACK", "none")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_dataset(name: str) -> Path:
    """Path of a real dataset in ../shared/data, or skip the test saying why."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real dataset {name!r} not available: {path} does not exist (it lives in ../shared/data beside the checkout)")
    return path


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """A tiny demo competition: 12 train and 4 test images of 48x64 (non-square)."""
    return make_demo(tmp_path_factory.mktemp("demo"), n_train=12, n_test=4, height=48, width=64, seed=1)


def demo_dict(root: Path, runs: Path, **sections) -> dict:
    """Plain config data for the tiny demo; ``sections`` override whole keys."""
    data = {
        "experiment": "t",
        "runs_dir": str(runs),
        "data": {
            "root": str(root), "task": "multilabel", "num_classes": 3, "layout": "csv",
            "id_column": "ImageId", "class_column": "ClassId", "rle_column": "EncodedPixels",
        },
        "folds": {"n_splits": 2, "method": "kfold", "seed": 0},
        "model": {"arch": "scratch_unet", "depth": 2, "base_width": 4},
        "loss": {"bce": 0.5, "dice": 0.5},
        "train": {"epochs": 1, "batch_size": 4, "num_workers": 0},
        "predict": {"batch_size": 4},
        "submission": {"per_class": True, "path": str(runs / "sub.csv")},
    }
    for k, v in sections.items():
        if k == "model" and isinstance(v, dict) and v.get("arch", "scratch_unet") != "scratch_unet":
            data[k] = dict(v)  # another architecture: the scratch U-Net's depth / base_width are not its keys
        elif isinstance(v, dict) and isinstance(data.get(k), dict):
            data[k] = {**data[k], **v}
        else:
            data[k] = v
    return data


@pytest.fixture
def demo_cfg(demo_root, tmp_path):
    return config_from_dict(demo_dict(demo_root, tmp_path / "runs"))


# One torch thread per test process: the tests run tiny tensors, where a second thread costs
# more in hand-offs than it gains, most of all when pytest-xdist runs two processes on 2 cores.
# The processes tests start (the notebook's kernel, DDP ranks, killed-and-resumed training, a
# bundle's predict.py) inherit it: the notebook test took 172 s beside another worker with the
# kernel's default 2 threads, 32 s alone.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def _load_warnings_per_test(monkeypatch):
    """The config's load-time consistency warnings are said once per process (config_consistency._warn_once): each
    test starts as a fresh process would, so a warning one test expects is not taken by an earlier test's load."""
    from seg_toolkit import config_consistency

    monkeypatch.setattr(config_consistency, "_WARNED", set())
