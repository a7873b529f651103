"""Bad input through the command line: one clear `error:` line naming the file, row or key, exit code 2."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from seg_toolkit.cli import main

from .conftest import demo_dict


@pytest.fixture
def comp(demo_root, tmp_path):
    """A private copy of the tiny demo competition and a config file for it."""
    root = tmp_path / "comp"
    shutil.copytree(demo_root, root)
    cfg = demo_dict(root, tmp_path / "runs")
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return root, path


def _run(capsys, *argv) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


@pytest.mark.parametrize("workers", [0, 1])
def test_truncated_image_during_training(comp, capsys, workers):
    root, cfg = comp
    victim = sorted((root / "train/images").iterdir())[3]
    victim.write_bytes(victim.read_bytes()[:100])
    code, err = _run(capsys, "train", str(cfg), "--set", f"train.num_workers={workers}")
    assert code == 2
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: ") and victim.name in line and ("truncated" in line or "not a readable image" in line)
    assert "Traceback" not in err


def test_malformed_rle_row(comp, capsys):
    root, cfg = comp
    df = pd.read_csv(root / "train.csv", dtype=str, keep_default_na=False)
    df.loc[5, "EncodedPixels"] = "10 5 3 2"
    df.to_csv(root / "train.csv", index=False)
    code, err = _run(capsys, "train", str(cfg))
    assert code == 2 and "train.csv line 7" in err and "RLE runs are unsorted" in err


def test_config_typo_and_bad_override(comp, capsys):
    _, cfg = comp
    code, err = _run(capsys, "train", str(cfg), "--set", "train.epoch=3")
    assert code == 2 and "unknown config key 'train.epoch'; did you mean 'train.epochs'?" in err
    code, err = _run(capsys, "train", str(cfg), "--set", "model.arch=unett")
    assert code == 2 and "model.arch" in err and "unet" in err


def test_missing_data_and_predict_before_training(comp, capsys, tmp_path):
    _, cfg = comp
    # a mistyped root was reported as its first file missing, under data.train_csv (audit): the root is named
    code, err = _run(capsys, "train", str(cfg), "--set", f"data.root={tmp_path / 'nowhere'}")
    assert code == 2 and f"data.root: the data folder '{tmp_path / 'nowhere'}' not found; set data.root" in err
    code, err = _run(capsys, "train", str(cfg), "--set", "data.root=data/demoo")
    assert code == 2 and f"'data/demoo' not found, {Path.cwd() / 'data/demoo'} from the working directory {Path.cwd()}" in err
    # paths given absolute never read data.root: the test images found with the training folder gone (review)
    from seg_toolkit.config import load_config
    from seg_toolkit.data import load_test_samples

    root, _ = comp
    gone = load_config(str(cfg), [f"data.root={tmp_path / 'nowhere'}", f"data.test_images={root / 'test' / 'images'}",
                                  f"data.sample_submission={root / 'sample_submission.csv'}"])
    assert sorted(x.image for x in load_test_samples(gone)) == sorted((root / "test" / "images").iterdir())
    code, err = _run(capsys, "predict", str(cfg))
    assert code == 2 and "no run folder (config.yaml); train the experiment first" in err


def test_check_submission_reports_problems(comp, capsys, tmp_path):
    root, _ = comp
    sample = pd.read_csv(root / "sample_submission.csv", dtype=str, keep_default_na=False)
    bad = sample.copy()
    bad.iloc[0, 1] = "5 2 1 1"
    bad = bad.drop(index=3)
    bad.to_csv(tmp_path / "bad.csv", index=False)
    code = main(["check-submission", str(tmp_path / "bad.csv"), "--sample", str(root / "sample_submission.csv")])
    out = capsys.readouterr().out
    assert code == 1 and "rows; the sample has" in out and "unsorted" in out and "missing" in out


def test_bad_postprocess_fails_at_load_before_any_work(comp, capsys, tmp_path):
    """A 3-class multilabel config with 2 thresholds: one error line naming the key, exit 2, no run folder."""
    _, cfg = comp
    code, err = _run(capsys, "train", str(cfg), "--set", "postprocess.threshold=[0.5,0.5]")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err
    assert "postprocess.threshold: 2 values for data.num_classes=3 (give one, or one per class)" in lines[0]
    assert not (tmp_path / "runs").exists()  # no run folder, no folds.csv, no fold trained


def test_multiclass_without_per_class_fails_at_load(comp, capsys, tmp_path):
    _, cfg = comp
    data = yaml.safe_load(cfg.read_text())
    data["data"]["task"], data["loss"] = "multiclass", {"ce": 1.0}
    del data["submission"]["per_class"]
    cfg.write_text(yaml.safe_dump(data))
    code, err = _run(capsys, "train", str(cfg))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "submission.per_class" in lines[0]
    assert not (tmp_path / "runs").exists()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("command", ["train", "predict", "evaluate"])
def test_missing_cuda_fails_before_any_work(comp, capsys, tmp_path, command):
    _, cfg = comp
    code, err = _run(capsys, command, str(cfg), "--set", "train.device=cuda")
    assert code == 2 and err.count("\n") == 1
    if command == "train":
        assert err.startswith("error: train.device: 'cuda' but CUDA is not available on this machine")
        assert not (tmp_path / "runs").exists()  # nothing written


@pytest.mark.parametrize("argv, message", [
    (["predict", "configs/demo.yaml", "--estimate", "--budget", "0"], "--budget '0': expected a positive duration"),
    (["ensemble", "configs/demo.yaml", "configs/demo.yaml", "--name", "../outside"], "--name: '../outside' must be a plain folder name"),
    (["ensemble", "configs/demo.yaml", "configs/demo.yaml", "--name", "a/b"], "--name: 'a/b' must be a plain folder name"),
])
def test_options_refused_before_any_work(argv, message, capsys, monkeypatch):
    """--budget 0 ran the whole estimate and divided by zero; ensemble --name ../x wrote outside runs_dir."""
    from pathlib import Path

    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_a_full_disk_is_one_error_line_and_config_yaml_is_written_whole(comp, capsys, monkeypatch, tmp_path):
    """A run's config.yaml was written in place (a full disk left half of it, and a folder `train` then refused as
    not a run) and the OSError came out as a traceback."""
    import os

    from seg_toolkit.config import config_from_dict, save_config

    _, cfg = comp
    target = tmp_path / "config.yaml"
    target.write_text("experiment: old\n")

    def full(fd, *a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)  # the write fails before the rename
    with pytest.raises(OSError):
        save_config(config_from_dict(yaml.safe_load(cfg.read_text())), target)
    assert target.read_text() == "experiment: old\n" and [p.name for p in tmp_path.glob("*config.yaml*")] == ["config.yaml"]
    code, err = _run(capsys, "train", str(cfg))
    assert code == 2 and err.strip().splitlines()[-1] == "error: [Errno 28] No space left on device"


def test_an_empty_config_and_a_negative_examples_count_are_refused(tmp_path, capsys):
    """An empty (or comments-only) YAML loaded as every default: `audit` wrote runs/demo/audit.html, other commands
    named data/demo/train.csv as missing. `report --examples -3` read as 0 and deleted the overlay pictures."""
    from seg_toolkit.cli import main

    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n")
    for cmd in ("audit", "train"):
        assert main([cmd, str(empty)]) == 2
        err = capsys.readouterr().err
        assert f"{empty}: the config file holds no keys (empty, or comments only)" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()
    with pytest.raises(SystemExit) as e:
        main(["report", str(tmp_path), "--examples", "-3"])
    assert e.value.code == 2 and "expected a whole number >= 0, got -3" in capsys.readouterr().err


def test_cli_logs_above_progress_bars_and_leaves_a_callers_file_logging_alone(tmp_path, monkeypatch):
    """Log lines went into the middle of a progress bar (the visual audit); the redirect through tqdm must not give a
    caller that logs to a file only a console handler (the second review), nor stay after the command."""
    import logging
    import os

    import seg_toolkit.cli as cli

    seen = []

    def probe(args):
        seen.append([type(h).__name__ for h in logging.getLogger().handlers])
        logging.getLogger("seg_toolkit").warning("probe")
        return 0

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    monkeypatch.setattr(parser, "parse_args", lambda argv: type("A", (), {"func": staticmethod(probe), "verbose": False,
                                                                           "command": "probe"})())
    root = logging.getLogger()
    saved = root.handlers[:]
    try:
        root.handlers = [logging.StreamHandler()]  # a console: redirected through tqdm while the command runs
        assert cli.main([]) == 0
        assert seen[-1] == ["_TqdmLoggingHandler"] and [type(h).__name__ for h in root.handlers] == ["StreamHandler"]
        root.handlers = [logging.FileHandler(tmp_path / "log.txt")]  # a caller's file only: left as it is
        assert cli.main([]) == 0
        assert seen[-1] == ["FileHandler"] and "probe" in (tmp_path / "log.txt").read_text()
    finally:
        for h in root.handlers:
            h.close()
        root.handlers = saved
    assert os.environ.get("NO_ALBUMENTATIONS_UPDATE") == "1"  # set when the CLI is imported
