"""Command-line defects found in review: outputs a user made are never replaced without asking, flags say what they
do, and bad paths are refused (naming the flag or key) before any work."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import yaml

from seg_toolkit.cli import main
from seg_toolkit.config import ConfigError, config_from_dict, save_config
from seg_toolkit.cv import run_cv

from .conftest import demo_dict

TRAIN = {"epochs": 1, "batch_size": 4, "num_workers": 0}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_cfg(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def trained(demo_root, tmp_path_factory):
    """Two tiny trained runs a and b (2 folds x 1 epoch) and their config files."""
    tmp = tmp_path_factory.mktemp("review")
    paths = []
    for name in ("a", "b"):
        cfg = config_from_dict(demo_dict(demo_root, tmp / "runs", experiment=name, train=TRAIN,
                                         submission={"per_class": True, "path": str(tmp / f"{name}.csv")}))
        run_cv(cfg)
        save_config(cfg, tmp / f"{name}.yaml")
        paths.append(tmp / f"{name}.yaml")
    return tmp, paths


# ----------------------------------------------------------------------------- demo


def test_demo_replaces_only_its_own_submission(demo_root, tmp_path, capsys):
    """`demo CONFIG` predicted with overwrite=True: a submission the user made at the config's path was replaced."""
    sub = tmp_path / "sub.csv"
    cfg = _write_cfg(tmp_path / "cfg.yaml", demo_dict(demo_root, tmp_path / "runs", train=TRAIN,
                                                      submission={"per_class": True, "path": str(sub)}))
    sub.write_text("my own submission\n")
    assert main(["demo", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert str(sub) in err and "--overwrite" in err
    assert sub.read_text() == "my own submission\n"
    assert not (tmp_path / "runs").exists()  # refused before anything trained

    assert main(["demo", str(cfg), "--overwrite"]) == 0
    assert sub.read_text().startswith("ImageId_ClassId,")
    assert main(["demo", str(cfg)]) == 0  # its own submission (make demo twice in a row): replaced without asking
    capsys.readouterr()

    sub.write_text(sub.read_text() + "\n")  # edited by the user since
    before = sub.read_text()
    assert main(["demo", str(cfg)]) == 2
    assert "--overwrite" in capsys.readouterr().err and sub.read_text() == before


def test_demo_makes_data_only_in_a_missing_or_empty_root_of_its_layout(demo_root, tmp_path, capsys, monkeypatch):
    """`demo CONFIG` wrote the demo's files into the empty data folder of any config, then failed; its message named
    a flag `demo` does not have."""
    empty = tmp_path / "mine"
    empty.mkdir()
    folder = _write_cfg(tmp_path / "folder.yaml", {
        "experiment": "f", "runs_dir": str(tmp_path / "runs"),
        "data": {"root": str(empty), "task": "binary", "num_classes": 1, "layout": "folder"},
        "model": {"arch": "scratch_unet", "depth": 2, "base_width": 4}})
    assert main(["demo", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "data.root" in err and "data.layout" in err and "--overwrite" not in err
    assert list(empty.iterdir()) == []

    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    csv_cfg = _write_cfg(tmp_path / "csv.yaml", demo_dict(other, tmp_path / "runs"))
    assert main(["demo", str(csv_cfg)]) == 2
    assert "data.train_csv" in capsys.readouterr().err
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]

    import seg_toolkit.cv

    def stop(*a, **k):
        raise ConfigError("stopped before training")

    monkeypatch.setattr(seg_toolkit.cv, "run_cv", stop)
    missing = tmp_path / "made" / "demo"
    ours = _write_cfg(tmp_path / "ours.yaml", demo_dict(missing, tmp_path / "runs", data={
        "train_images": "train/images", "test_images": "./test/images", "class_names": ["a", "b", "c"]}))
    assert main(["demo", str(ours), "--set", "data.limit=4"]) == 2
    assert "stopped before training" in capsys.readouterr().err
    assert (missing / "train.csv").is_file() and (missing / "sample_submission.csv").is_file()


# ----------------------------------------------------------------------------- train --resume / --overwrite / --fold


def test_train_resume_and_overwrite_are_exclusive(demo_root, tmp_path, capsys):
    cfg = _write_cfg(tmp_path / "cfg.yaml", demo_dict(demo_root, tmp_path / "runs"))
    with pytest.raises(SystemExit) as e:
        main(["train", str(cfg), "--resume", "--overwrite"])
    assert e.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="--resume and --overwrite"):
        run_cv(config_from_dict(demo_dict(demo_root, tmp_path / "runs")), resume=True, overwrite=True)
    assert not (tmp_path / "runs").exists()


def test_train_fold_outside_folds_only_is_refused(demo_root, tmp_path, capsys):
    """`--fold 0` with folds.only [1] trained fold 0, which predict then used while bundle counted fold 1 missing."""
    cfg = _write_cfg(tmp_path / "cfg.yaml", demo_dict(demo_root, tmp_path / "runs", folds={"n_splits": 2, "only": [1]}))
    assert main(["train", str(cfg), "--fold", "0"]) == 2
    assert "--fold 0: the config trains folds.only [1]" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_fold_overwrite_restarts_that_fold_only(demo_root, tmp_path, capsys):
    """`train --fold 1 --overwrite` deleted the whole run: fold_0 was gone and cv.json covered fold 1 only."""
    runs = tmp_path / "runs"
    cfg = _write_cfg(tmp_path / "cfg.yaml", demo_dict(demo_root, runs, train=TRAIN))
    assert main(["train", str(cfg)]) == 0
    run = runs / "t"
    fold0 = _sha(run / "fold_0" / "best.pt")
    (run / "fold_1" / "notes.txt").write_text("mine")
    assert main(["train", str(cfg), "--fold", "1", "--overwrite"]) == 2  # a file of the user's in fold_1: refused
    assert "notes.txt" in capsys.readouterr().err and (run / "fold_1" / "done.json").is_file()
    (run / "fold_1" / "notes.txt").unlink()

    assert main(["train", str(cfg), "--fold", "1", "--overwrite", "--set", "optim.lr=0.02"]) == 2
    err = capsys.readouterr().err
    assert "optim.lr" in err and "without --fold" in err
    assert (run / "fold_1" / "done.json").is_file()  # nothing deleted

    assert main(["train", str(cfg), "--fold", "1", "--overwrite"]) == 0
    assert _sha(run / "fold_0" / "best.pt") == fold0 and (run / "fold_1" / "done.json").is_file()
    cv = yaml.safe_load((run / "cv.json").read_text())
    assert cv["folds"] == [0, 1]
    assert (run / "postprocess.json").is_file()  # tuned again on both folds once the last one ended


# ----------------------------------------------------------------------------- ensemble


def test_ensemble_checks_its_submission_before_building(trained, capsys, monkeypatch):
    """The default submissions/<ensemble name>.csv was checked only after the ensemble run was built; a retry with
    --out was then refused because the run existed, and --overwrite meant two things."""
    tmp, (a, b) = trained
    monkeypatch.chdir(tmp)
    mine = tmp / "submissions" / "ens_a_b.csv"
    mine.parent.mkdir()
    mine.write_text("my own\n")
    assert main(["ensemble", str(a), str(b)]) == 2
    err = capsys.readouterr().err
    assert "submissions/ens_a_b.csv exists" in err and "--overwrite-submission" in err
    assert not (tmp / "runs" / "ens_a_b").exists() and mine.read_text() == "my own\n"

    assert main(["ensemble", str(a), str(b), "--out", str(tmp / "ens.csv")]) == 0
    capsys.readouterr()
    # --overwrite remakes the ensemble run; the user's submission still needs its own flag, checked first
    ens_json = _sha(tmp / "runs" / "ens_a_b" / "ensemble.json")
    assert main(["ensemble", str(a), str(b), "--overwrite"]) == 2
    assert "--overwrite-submission" in capsys.readouterr().err and mine.read_text() == "my own\n"
    assert _sha(tmp / "runs" / "ens_a_b" / "ensemble.json") == ens_json
    assert main(["ensemble", str(a), str(b), "--overwrite", "--overwrite-submission"]) == 0
    assert mine.read_text().startswith("ImageId_ClassId,")

    with pytest.raises(SystemExit):
        main(["ensemble", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "submissions/<ensemble name>.csv" in text and "of the first config" not in text


# ----------------------------------------------------------------------------- paths


def test_run_folder_given_as_dot(trained, tmp_path, monkeypatch):
    """`cd runs/a && seg-toolkit predict .`: "experiment: '' must be a plain folder name"."""
    tmp, _ = trained
    monkeypatch.chdir(tmp / "runs" / "a")
    out = tmp_path / "dot.csv"
    assert main(["predict", ".", "--out", str(out)]) == 0 and out.is_file()


def test_predict_out_naming_a_folder_is_refused(trained, tmp_path, capsys, monkeypatch):
    tmp, (a, _) = trained
    monkeypatch.chdir(tmp_path)
    assert main(["predict", str(a), "--out", "newdir/"]) == 2
    assert "--out newdir/" in capsys.readouterr().err and not (tmp_path / "newdir").exists()
    (tmp_path / "there").mkdir()
    assert main(["predict", str(a), "--out", "there"]) == 2
    assert "folder" in capsys.readouterr().err and list((tmp_path / "there").iterdir()) == []


def test_predict_out_naming_the_config_or_its_base_is_refused(trained, tmp_path, capsys):
    """`predict cfg.yaml --out cfg.yaml --overwrite` replaced the config with the submission."""
    tmp, (a, _) = trained
    base = tmp_path / "base.yaml"
    base.write_text((tmp / "a.yaml").read_text())
    child = tmp_path / "child.yaml"
    child.write_text("base: base.yaml\n")
    for out in (child, base):
        assert main(["predict", str(child), "--out", str(out), "--overwrite"]) == 2
        assert f"--out {out} is the config {child} reads from" in capsys.readouterr().err
    assert child.read_text() == "base: base.yaml\n" and base.read_text() == (tmp / "a.yaml").read_text()


def test_report_takes_a_config_too(trained, capsys):
    """`report CONFIG.yaml` failed with "CONFIG.yaml/config.yaml: not found"."""
    tmp, (a, _) = trained
    assert main(["report", str(a), "--examples", "0"]) == 0
    assert (tmp / "runs" / "a" / "report" / "index.html").is_file()


def test_audit_out_existing_file_is_refused_first(demo_root, tmp_path, capsys, monkeypatch):
    """`audit --out FILE` ran the whole audit and then failed with a raw [Errno 17] File exists."""
    import seg_toolkit.audit

    def never(*a, **k):
        raise AssertionError("the audit ran")

    monkeypatch.setattr(seg_toolkit.audit, "audit", never)
    cfg = _write_cfg(tmp_path / "cfg.yaml", demo_dict(demo_root, tmp_path / "runs"))
    taken = tmp_path / "taken.txt"
    taken.write_text("mine")
    for out in (taken, taken / "sub"):
        assert main(["audit", str(cfg), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"{taken} is a file" in err and "Errno" not in err
    assert taken.read_text() == "mine"


def test_check_submission_config_with_format_flags_is_refused(demo_root, tmp_path, capsys):
    cfg = _write_cfg(tmp_path / "cfg.yaml", demo_dict(demo_root, tmp_path / "runs"))
    sample = str(demo_root / "sample_submission.csv")
    for flags in (["--order", "C"], ["--index-base", "1"], ["--relative"], ["--instances"]):
        assert main(["check-submission", sample, "--sample", sample, "--config", str(cfg), *flags]) == 2
        err = capsys.readouterr().err
        assert flags[0] in err and "--config" in err
    assert main(["check-submission", sample, "--sample", sample, "--order", "F", "--index-base", "1"]) == 0  # flags alone
    assert "OK" in capsys.readouterr().out


# ----------------------------------------------------------------------------- make-demo


def test_make_demo_overwrite_clears_the_old_images(tmp_path, capsys):
    """make-demo --overwrite left the old images beside the new ones: 16 files for 8 CSV rows."""
    out = tmp_path / "demo"
    assert main(["make-demo", str(out), "--n-train", "4", "--n-test", "2"]) == 0
    assert main(["make-demo", str(out), "--n-train", "2", "--n-test", "1", "--seed", "3"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["make-demo", str(out), "--n-train", "2", "--n-test", "1", "--seed", "3", "--overwrite"]) == 0
    assert len(list((out / "train/images").iterdir())) == 2 and len(list((out / "test/images").iterdir())) == 1
    assert len((out / "train.csv").read_text().splitlines()) == 1 + 2 * 3

    (out / "train/images/notes.txt").write_text("mine")
    assert main(["make-demo", str(out), "--overwrite"]) == 2
    assert "notes.txt" in capsys.readouterr().err and (out / "train/images/notes.txt").is_file()
    assert len(list((out / "train/images").glob("*.png"))) == 2

    other = tmp_path / "data"
    (other / "train/images").mkdir(parents=True)
    (other / "train/images/x.png").write_bytes(b"")
    (other / "train.csv").write_text("id,rle_mask\n")
    assert main(["make-demo", str(other), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "train/images/x.png" in err and "train.csv" in err
    assert (other / "train/images/x.png").is_file() and (other / "train.csv").read_text() == "id,rle_mask\n"
    shutil.rmtree(other)


def test_flags_a_command_would_ignore_are_refused(demo_root, tmp_path, capsys):
    """predict --estimate wrote nothing to --out; check-submission --config dropped --class-column and let --empty-token
    replace the config's token."""
    cfg = _write_cfg(tmp_path / "cfg.yaml", demo_dict(demo_root, tmp_path / "runs"))
    assert main(["predict", str(cfg), "--estimate", "--out", str(tmp_path / "s.csv")]) == 2
    assert "--estimate writes no submission" in capsys.readouterr().err
    sample = str(demo_root / "sample_submission.csv")
    for flag in (["--class-column", "ClassId"], ["--empty-token", "-1"]):
        assert main(["check-submission", sample, "--sample", sample, "--config", str(cfg), *flag]) == 2
        assert f"{flag[0]} with --config: the config's submission.* keys decide" in capsys.readouterr().err


def test_a_run_saves_its_data_root_absolute_and_reads_it_from_any_directory(demo_root, tmp_path, monkeypatch, capsys):
    """data.root: comp (relative) was saved as written: named from another directory holding its own comp/, the run
    predicted that project's test images without a word."""
    project, other = tmp_path / "project", tmp_path / "other"
    shutil.copytree(demo_root, project / "comp")
    (other / "comp").mkdir(parents=True)  # another project's data folder of the same name
    monkeypatch.chdir(project)
    cfg_data = demo_dict(Path("comp"), Path("runs"), train=TRAIN)
    cfg_data["submission"] = {"per_class": True}
    cfg = _write_cfg(project / "cfg.yaml", cfg_data)
    assert main(["train", str(cfg)]) == 0
    saved = yaml.safe_load((project / "runs" / "t" / "config.yaml").read_text())
    assert saved["data"]["root"] == str(project / "comp") and saved["runs_dir"] == "runs"
    assert main(["train", str(cfg), "--resume"]) == 0  # the relative spelling is the same folder: no change refused
    monkeypatch.chdir(other)
    out = other / "sub.csv"
    assert main(["predict", str(project / "runs" / "t"), "--out", str(out)]) == 0
    sample = (project / "comp" / "sample_submission.csv").read_text().splitlines()
    assert out.read_text().splitlines()[1].split(",")[0] == sample[1].split(",")[0]


@pytest.mark.parametrize("command, said", [
    ("train", "interrupted; finished epochs are checkpointed: add --resume to continue"),
    ("predict", "interrupted; what it had not finished is not used; run the command again"),
    ("ensemble", "interrupted; what it had not finished is not used; run it again with --overwrite"),
    ("demo", "interrupted; finished epochs are checkpointed: run it again to continue"),
])
def test_ctrl_c_says_what_the_command_can_do(command, said, monkeypatch, capsys):
    """Ctrl-C in predict or tune --tta said 'finished epochs are checkpointed: add --resume', which they have not."""
    from seg_toolkit import commands

    def stopped(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(commands, f"cmd_{command}", stopped)
    assert main([command, *({"ensemble": ["a", "b"]}.get(command, ["x.yaml"]))]) == 130
    assert capsys.readouterr().err.strip() == said
