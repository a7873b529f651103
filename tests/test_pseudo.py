"""Pseudo-labelling: confidence filter, labels = the teacher's submitted masks, fold isolation, honest CV."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from seg_toolkit.config import ConfigError, config_from_dict
from seg_toolkit.cv import run_cv
from seg_toolkit.data.masks import train_rle_spec
from seg_toolkit.data.sources import load_test_samples
from seg_toolkit.postprocess import apply_postprocess, load_params
from seg_toolkit.predictor import Predictor
from seg_toolkit.pseudo import check_labels_unchanged, confident_fraction, label_settings
from seg_toolkit.run import Run

from .conftest import demo_dict

FOLDS = {"n_splits": 2, "method": "kfold", "seed": 0}


def test_confident_fraction_by_hand():
    probs = np.array([[[0.95, 0.5], [0.02, 0.91]], [[0.99, 0.99], [0.05, 0.2]]])  # 2 classes, 2x2
    # pixel confident when every class is >= 0.9 or <= 0.1: (0,0) yes; (0,1) no (0.5); (1,0) yes; (1,1) no (0.2)
    assert confident_fraction(probs, "multilabel", 0.9) == 0.5
    mc = np.array([[[0.95, 0.4]], [[0.05, 0.6]]])  # multiclass: max >= 0.9 at the first pixel only
    assert confident_fraction(mc, "multiclass", 0.9) == 0.5


@pytest.fixture(scope="module")
def teacher(demo_root, tmp_path_factory):
    runs = tmp_path_factory.mktemp("pseudo") / "runs"
    cfg = config_from_dict(demo_dict(demo_root, runs, experiment="teacher", folds=FOLDS, train={"epochs": 1, "batch_size": 2}))
    run_cv(cfg)
    return runs


def _student(demo_root, runs, name, **pseudo):
    return config_from_dict(demo_dict(demo_root, runs, experiment=name, folds=FOLDS, train={"epochs": 1, "batch_size": 2},
                                      pseudo={"teacher": str(runs / "teacher"), "confidence": 0.5,
                                              "min_confident_fraction": 0.0, **pseudo}))


def test_per_fold_labels_are_the_teachers_fold_k_masks_and_never_validated(demo_root, teacher):
    cfg = _student(demo_root, teacher, "student")
    cv = run_cv(cfg)
    run, trun = Run.of(cfg), Run(teacher / "teacher")
    tests = load_test_samples(cfg)
    spec, params = train_rle_spec(cfg), load_params(trun.config(), trun)
    predictor = Predictor.from_run(trun)
    for k in (0, 1):
        df = pd.read_csv(run.pseudo_csv(k), dtype=str, keep_default_na=False)
        assert sorted(df["id"]) == sorted(s.id for s in tests)  # confidence 0.5: every image passes
        expected = {i: apply_postprocess(p.numpy(), "multilabel", params) for i, p, _ in predictor.iter_probs(tests, fold=k)}
        for _, row in df.iterrows():
            mask = expected[row["id"]]
            for c in range(3):
                assert np.array_equal(spec.decode(row[f"rle_{c}"], mask.shape[1:]), mask[c]), (k, row["id"], c)
        done = json.loads(run.done_json(k).read_text())
        assert done["n_pseudo"] == len(tests) and done["n_train"] == 6 + len(tests) and done["n_valid"] == 6
        assert done["pseudo"]["leaky"] is False
    # OOF (and so CV) holds the 12 labelled images only
    assert cv["n_images"] == 12 and not any(p.stem.startswith("pseudo_") for p in run.oof_dir.glob("*.npy"))
    assert cv["pseudo"]["per_fold"] is True


def test_folds_that_differ_from_the_teachers_are_refused(demo_root, teacher):
    cfg = config_from_dict({**demo_dict(demo_root, teacher, experiment="other", train={"epochs": 1, "batch_size": 2},
                                        pseudo={"teacher": str(teacher / "teacher")}),
                            "folds": {"n_splits": 2, "method": "kfold", "seed": 5}})
    with pytest.raises(ConfigError, match="pseudo.teacher: .* in another fold"):
        run_cv(cfg)


def test_filter_and_cap(demo_root, teacher):
    cfg = _student(demo_root, teacher, "capped", max_images=2, confidence=0.6)
    run_cv(cfg, folds=[0])
    df = pd.read_csv(Run.of(cfg).pseudo_csv(0))
    assert len(df) <= 2 and df["confident_fraction"].is_monotonic_decreasing
    strict = _student(demo_root, teacher, "strict", confidence=1.0, min_confident_fraction=1.0)
    run_cv(strict, folds=[0])  # nothing is that sure: no pseudo images, training goes on
    assert len(pd.read_csv(Run.of(strict).pseudo_csv(0))) == 0


def test_shared_labels_are_reported_as_leaky(demo_root, teacher, caplog):
    cfg = _student(demo_root, teacher, "leaky", per_fold=False)
    with caplog.at_level(logging.WARNING):
        cv = run_cv(cfg)
    assert Run.of(cfg).pseudo_csv(None).is_file() and not Run.of(cfg).pseudo_csv(0).exists()
    assert cv["pseudo"]["leaky"] is True
    assert any("CV is optimistic" in r.message for r in caplog.records)


def test_checks(demo_root, tmp_path):
    with pytest.raises(ConfigError, match="pseudo.confidence"):
        config_from_dict(demo_dict(demo_root, tmp_path, pseudo={"teacher": "x", "confidence": 0.3}))
    with pytest.raises(ConfigError, match=r"pseudo.teacher: expected a run folder \(runs/<experiment>\) or null"):
        config_from_dict(demo_dict(demo_root, tmp_path, pseudo={"teacher": " "}))  # Path("") is the working directory
    cfg = config_from_dict(demo_dict(demo_root, tmp_path / "runs", pseudo={"teacher": str(tmp_path / "nowhere")}))
    with pytest.raises(ConfigError, match="pseudo.teacher: .* is not a run folder"):
        run_cv(cfg)
    assert not (tmp_path / "runs").exists()  # refused before anything was written


def test_soft_labels_are_the_teachers_probabilities(demo_root, teacher):
    from seg_toolkit.data.dataset import SegDataset
    from seg_toolkit.data.folds import read_folds
    from seg_toolkit.losses import build_loss
    from seg_toolkit.pseudo import pseudo_samples
    from seg_toolkit.tensors import probs_to_uint8

    import torch

    cfg = _student(demo_root, teacher, "soft", soft=True)
    cv = run_cv(cfg, folds=[0])
    assert math.isfinite(cv["score"]) and cv["pseudo"]["soft"] is True
    run, trun = Run.of(cfg), Run(teacher / "teacher")
    tests = load_test_samples(cfg)
    by_hand = {i: probs_to_uint8(p.numpy()) for i, p, _ in Predictor.from_run(trun).iter_probs(tests, fold=0)}
    samples = pseudo_samples(cfg, run, 0, read_folds(run.folds_csv), make=False)
    assert sorted(s.id for s in samples) == sorted(f"pseudo_{i}" for i in by_hand)
    for s in samples:
        assert np.array_equal(np.load(s.soft), by_hand[s.id.removeprefix("pseudo_")])
    # the training target of a pseudo image is q / 255, not a 0/1 mask (no augmentation configured)
    item = SegDataset(samples[:1], cfg, "train")[0]
    q = by_hand[samples[0].id.removeprefix("pseudo_")]
    assert item["target"].dtype == torch.float32 and torch.allclose(item["target"], torch.from_numpy(q / 255.0).float())
    assert ((item["target"] > 0) & (item["target"] < 1)).any()
    # BCE on a soft target is the cross-entropy with the probability, by hand
    loss_fn = build_loss(config_from_dict({**demo_dict(demo_root, teacher), "loss": {"bce": 1.0}}))
    t = item["target"][None]
    z = torch.zeros_like(t)
    assert loss_fn(z, t)[0].item() == pytest.approx(math.log(2), rel=1e-6)
    z = torch.full_like(t, 2.0)
    expected = -(t * torch.log(torch.sigmoid(z)) + (1 - t) * torch.log(1 - torch.sigmoid(z))).mean()
    assert loss_fn(z, t)[0].item() == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(ConfigError, match="pseudo.soft: soft targets are probabilities per channel"):
        config_from_dict({**demo_dict(demo_root, teacher, data={"task": "multiclass", "num_classes": 3},
                                      pseudo={"teacher": "x", "soft": True}), "loss": {"ce": 1.0}})
    # with max_images, only the kept images keep a soft file (the others were cut after ranking)
    capped = _student(demo_root, teacher, "soft_capped", soft=True, max_images=2)
    run_cv(capped, folds=[0])
    crun = Run.of(capped)
    kept = pseudo_samples(capped, crun, 0, read_folds(crun.folds_csv), make=False)
    assert len(kept) == 2 < len(samples)
    assert sorted(f.name for f in Path(kept[0].soft).parent.iterdir()) == sorted(Path(s.soft).name for s in kept)
    # a labels file written without soft labels is refused when soft is switched on
    hard = _student(demo_root, teacher, "hard_then_soft")
    run_cv(hard, folds=[0])
    with pytest.raises(ConfigError, match=r"made with other settings than this config.s \(soft: False there, True here\)"):
        pseudo_samples(_student(demo_root, teacher, "hard_then_soft", soft=True), Run.of(hard), 0, read_folds(Run.of(hard).folds_csv))


def test_a_leaky_teacher_or_init_from_makes_the_student_leaky(demo_root, teacher, tmp_path):
    """A student of per-fold labels from a teacher whose own CV is optimistic (a student of shared labels) inherits the
    optimism, and so does a stage that starts from such a run: recorded, named, not lost."""
    import shutil

    from seg_toolkit.pseudo import pseudo_info

    runs = tmp_path / "runs"
    shutil.copytree(teacher / "teacher", runs / "leaky_teacher")
    cv = json.loads((runs / "leaky_teacher" / "cv.json").read_text())
    (runs / "leaky_teacher" / "cv.json").write_text(json.dumps({**cv, "pseudo": {"teacher": "x", "leaky": True}}))
    honest = _student(demo_root, teacher, "honest")
    assert pseudo_info(honest)["leaky"] is False and pseudo_info(honest)["leaky_from"] == []
    student = config_from_dict(demo_dict(demo_root, runs, experiment="s", folds=FOLDS,
                                         pseudo={"teacher": str(runs / "leaky_teacher")}))
    info = pseudo_info(student)
    assert info["per_fold"] is True and info["leaky"] is True and info["leaky_from"] == [str(runs / "leaky_teacher")]
    stage = config_from_dict(demo_dict(demo_root, runs, experiment="s2", folds=FOLDS,
                                       train={"epochs": 1, "init_from": str(runs / "leaky_teacher")}))
    assert pseudo_info(stage) == {"teacher": None, "leaky": True, "leaky_from": [str(runs / "leaky_teacher")]}


def test_init_from_a_fold_without_done_json_is_refused(demo_root, teacher, tmp_path):
    import shutil

    runs = tmp_path / "runs"
    shutil.copytree(teacher / "teacher", runs / "half")
    (runs / "half" / "fold_1" / "done.json").unlink()  # killed after best.pt was written
    cfg = config_from_dict(demo_dict(demo_root, runs, experiment="s2", folds=FOLDS,
                                     train={"epochs": 1, "batch_size": 2, "init_from": str(runs / "half")}))
    with pytest.raises(ConfigError, match=r"train.init_from: .*half has no trained fold\(s\) \[1\] \(a fold is trained "
                                          r"once its done.json is written"):
        run_cv(cfg)
    assert not Run.of(cfg).dir.exists()  # refused before anything is written


def test_an_ensemble_teacher_whose_member_changed_is_refused(demo_root, teacher, tmp_path):
    """predict refuses an ensemble whose member was retrained or re-folded since it was built; its labels are refused too
    (the new member's fold k may have trained on the student's fold k validation images)."""
    import shutil

    from seg_toolkit.ensemble import build_ensemble

    from seg_toolkit.config import load_config

    runs = tmp_path / "runs"
    for name in ("teacher", "twin"):
        shutil.copytree(teacher / "teacher", runs / name)
    members = [load_config(runs / n / "config.yaml", [f"experiment={n}", f"runs_dir={runs}"]) for n in ("teacher", "twin")]
    build_ensemble(members, name="ens", weights=[0.5, 0.5])
    shutil.copy(runs / "teacher" / "fold_1" / "best.pt", runs / "teacher" / "fold_0" / "best.pt")  # "retrained"
    student = config_from_dict(demo_dict(demo_root, runs, experiment="s", folds=FOLDS, train={"epochs": 1, "batch_size": 2},
                                         pseudo={"teacher": str(runs / "ens"), "confidence": 0.5}))
    with pytest.raises(ConfigError, match=r"changed since the ensemble was built"):
        run_cv(student)


def test_a_teacher_stopped_before_its_tuning_is_refused_before_the_student_writes(demo_root, teacher, tmp_path):
    """A teacher trained to be tuned but stopped between cv.json and postprocess.json labels with untuned masks: refused,
    before the student's config.yaml, folds.csv and fold_0/ are written (it was found when the labels were made)."""
    import shutil

    runs = tmp_path / "runs"
    shutil.copytree(teacher / "teacher", runs / "teacher")
    (runs / "teacher" / "postprocess.json").unlink()
    cfg = _student(demo_root, runs, "student")
    with pytest.raises(ConfigError, match=r"teacher: trained with postprocess.tune true .* no postprocess.json"):
        run_cv(cfg)
    assert not Run.of(cfg).dir.exists()


def test_a_teacher_without_a_fold_to_label_is_refused_before_any_fold_trains(demo_root, teacher, tmp_path):
    """It was refused when fold 1 started, after fold 0 had trained (and spent its time budget)."""
    import shutil

    runs = tmp_path / "runs"
    shutil.copytree(teacher / "teacher", runs / "teacher")
    (runs / "teacher" / "fold_1" / "done.json").unlink()  # the budget left fold 1 out, or it is still training
    cfg = _student(demo_root, runs, "student")
    with pytest.raises(ConfigError, match=r"pseudo.teacher: per-fold labels need the teacher's fold k for each fold k to "
                                          r"train; not trained: fold\(s\) \[1\] in .*teacher"):
        run_cv(cfg)
    assert not Run.of(cfg).fold_dir(0).exists()
    run_cv(cfg, folds=[0])  # a --fold job of a fold the teacher has trains
    assert Run.of(cfg).pseudo_csv(0).is_file()


def test_labels_of_a_teacher_changed_since_are_refused_not_reused(demo_root, teacher, tmp_path):
    """Shared labels (per_fold: false) are written once, by the first fold, and read by the others: after the teacher
    was re-tuned (or retrained) they are not what it predicts now, so the next fold refuses them, naming the file."""
    import hashlib
    import shutil

    runs = tmp_path / "runs"
    shutil.copytree(teacher / "teacher", runs / "teacher")
    cfg = _student(demo_root, runs, "student", per_fold=False)
    run_cv(cfg, folds=[0])
    run, trun = Run.of(cfg), Run(runs / "teacher")
    made = json.loads(run.pseudo_teacher_json(None).read_text())
    names = ["config.yaml", "postprocess.json", "folds.csv", "fold_0/best.pt", "fold_1/best.pt"]
    assert made["teacher"] == str(trun.dir)
    assert made["files"] == {n: hashlib.sha256((trun.dir / n).read_bytes()).hexdigest() for n in names}
    assert made["made_with"] == label_settings(cfg) and made["made_with"]["confidence"] == 0.5
    tuned = trun.postprocess_json.read_text()
    pp = json.loads(tuned)
    pp["params"]["threshold"] = [0.9, 0.9, 0.9]  # `seg-toolkit tune` again, another choice
    trun.postprocess_json.write_text(json.dumps(pp))
    with pytest.raises(ConfigError, match=r"all\.csv: these pseudo-labels were made by .*teacher, whose postprocess\.json "
                                          r"changed since"):
        run_cv(cfg, folds=[1])
    assert not run.fold_dir(1).exists() or not run.done_json(1).exists()
    trun.postprocess_json.write_text(tuned)  # restored: the labels are the teacher's again
    run_cv(cfg, folds=[1], resume=True)
    assert run.done_json(1).is_file()


def test_a_teacher_whose_classes_are_named_in_another_order_is_refused(demo_root, teacher, tmp_path):
    """Task and number of classes agreed, so a teacher of [disc, rectangle, triangle] labelled a student of [rectangle,
    disc, triangle] with its first two channels swapped. Names given on one side only are not compared."""
    import shutil

    runs = tmp_path / "runs"
    shutil.copytree(teacher / "teacher", runs / "teacher")
    path = runs / "teacher" / "config.yaml"
    path.write_text(path.read_text().replace("class_names: []", "class_names: [disc, rectangle, triangle]"))
    named = config_from_dict(demo_dict(demo_root, runs, experiment="named", folds=FOLDS, train={"epochs": 1, "batch_size": 2},
                                       data={**demo_dict(demo_root, runs)["data"], "class_names": ["rectangle", "disc", "triangle"]},
                                       pseudo={"teacher": str(runs / "teacher")}))
    with pytest.raises(ConfigError, match=r"pseudo.teacher: .*teacher names its classes \['disc', 'rectangle', 'triangle'\], "
                                          r"this run \['rectangle', 'disc', 'triangle'\]"):
        run_cv(named)
    assert not Run.of(named).fold_dir(0).exists()  # before any fold trained
    from seg_toolkit.stages import check_same_classes

    check_same_classes(_student(demo_root, runs, "unnamed"), Run(runs / "teacher"))  # names on one side only
    # a later stage (train.init_from) of the same run was accepted: fold k started from weights whose channels 0 and 1
    # are the other's class (data.class_names is not among the keys a stage compares)
    stage = config_from_dict(demo_dict(demo_root, runs, experiment="stage2", folds=FOLDS, train={
        "epochs": 1, "batch_size": 2, "init_from": str(runs / "teacher")}, data={**demo_dict(demo_root, runs)["data"],
        "class_names": ["rectangle", "disc", "triangle"]}))
    with pytest.raises(ConfigError, match=r"train.init_from: .*teacher names its classes \['disc', 'rectangle', 'triangle'\]"):
        run_cv(stage)
    assert not Run.of(stage).fold_dir(0).exists()


def test_pseudo_samples_read_the_image_part_of_a_pair_file(demo_root, teacher, tmp_path):
    """With data.pair_split the test images it labelled were read as the photo half; a pseudo sample read the whole
    photo | label file as its input."""
    import dataclasses

    from seg_toolkit.data.sample import pair_of
    from seg_toolkit.pseudo import pseudo_samples

    cfg = _student(demo_root, teacher, "pair_student")
    run_cv(cfg, folds=[0])
    folds = pd.read_csv(Run.of(cfg).folds_csv)
    paired = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, pair_split="image_left"))
    samples = pseudo_samples(paired, Run.of(cfg), 0, folds, make=False)
    assert samples and all(s.pair == pair_of(paired) is not None for s in samples)
    assert all(s.pair is None for s in pseudo_samples(cfg, Run.of(cfg), 0, folds, make=False))


def test_a_fold_trained_leaky_stays_leaky_in_cv_json_after_its_source_changes_or_moves(demo_root, teacher, tmp_path, caplog):
    """cv.json's pseudo record was rebuilt from the config and the teacher's / init_from's cv.json as they are now:
    once the leaky start run was retrained honestly (or moved), `seg-toolkit oof` or `cv` recorded the stage as
    honest, though its folds' weights grew from the leaky run."""
    import shutil

    from seg_toolkit.cv import compute_cv

    runs = tmp_path / "runs"
    shutil.copytree(teacher / "teacher", runs / "start")
    cv = json.loads((runs / "start" / "cv.json").read_text())
    (runs / "start" / "cv.json").write_text(json.dumps({**cv, "pseudo": {"teacher": "x", "leaky": True}}))
    stage = config_from_dict(demo_dict(demo_root, runs, experiment="stage", folds=FOLDS,
                                       train={"epochs": 1, "batch_size": 2, "init_from": str(runs / "start")}))
    run_cv(stage, folds=[0])
    assert json.loads(Run.of(stage).done_json(0).read_text())["pseudo"]["leaky"] is True
    (runs / "start" / "cv.json").write_text(json.dumps({**cv, "pseudo": None}))  # retrained honestly since
    record = compute_cv(stage)["pseudo"]
    assert record["leaky"] is True and record["leaky_folds"] == [0] and record["leaky_from"] == [str(runs / "start")]
    shutil.move(runs / "start", tmp_path / "moved")
    with caplog.at_level(logging.WARNING):
        assert compute_cv(stage)["pseudo"]["leaky"] is True  # was a ConfigError: init_from is not a run folder
    assert "from the folds' done.json only" in caplog.text


def test_labels_of_an_ensemble_teacher_whose_member_was_retuned_are_refused(demo_root, teacher, tmp_path):
    """A member's tta.json (`tune --tta` on it) changes what the ensemble predicts, but only the ensemble's own files
    were fingerprinted: shared labels written before were reused by the later folds."""
    import shutil

    from seg_toolkit.config import load_config
    from seg_toolkit.ensemble import build_ensemble
    from seg_toolkit.pseudo import teacher_files

    runs = tmp_path / "runs"
    for name in ("teacher", "twin"):
        shutil.copytree(teacher / "teacher", runs / name)
    members = [load_config(runs / n / "config.yaml", [f"experiment={n}", f"runs_dir={runs}"]) for n in ("teacher", "twin")]
    build_ensemble(members, name="ens", weights=[0.5, 0.5])
    files = teacher_files(Run(runs / "ens"), 0)
    assert {"member twin/config.yaml", "member twin/fold_0/best.pt", "member teacher/fold_0/best.pt"} <= set(files)
    assert "member twin/fold_1/best.pt" not in files  # fold 0's labels come from fold 0's models
    student = config_from_dict(demo_dict(demo_root, runs, experiment="s", folds=FOLDS, train={"epochs": 1, "batch_size": 2},
                                         pseudo={"teacher": str(runs / "ens"), "confidence": 0.5, "per_fold": False}))
    run_cv(student, folds=[0])
    # `oof twin --set predict.tta=[identity,hflip]`: the member predicts otherwise, and the ensemble built on its old
    # OOF files is refused first
    from seg_toolkit.oof import remake_oof

    remake_oof(load_config(runs / "twin" / "config.yaml", ["experiment=twin", f"runs_dir={runs}", "predict.tta=[identity,hflip]"]))
    with pytest.raises(ConfigError, match=r"member .*twin's OOF files were merged and tuned on as made with"):
        run_cv(student, folds=[1])
    # built again on the member as it is: a teacher again, but not the one the shared labels came from
    members = [load_config(runs / n / "config.yaml", [f"experiment={n}", f"runs_dir={runs}"]) for n in ("teacher", "twin")]
    build_ensemble(members, name="ens", weights=[0.5, 0.5], overwrite=True)
    with pytest.raises(ConfigError, match=r"whose .*member twin/config.yaml.* changed since"):
        run_cv(student, folds=[1])


def test_lr_find_sweeps_the_pseudo_labelled_batches_training_reads(demo_root, teacher):
    from seg_toolkit.lr_find import lr_find

    cfg = _student(demo_root, teacher, "swept")
    r = lr_find(cfg, fold=0, start=1e-5, end=1e-1, steps=12)
    n_test = len(load_test_samples(cfg))
    assert r["n_pseudo"] == n_test and r["n_train"] == 6 + n_test  # 12 labelled images, 2 folds: 6 train + the test set
    labels = Run.of(cfg).pseudo_csv(0)
    written = labels.read_bytes()
    run_cv(cfg, folds=[0])  # training reads the same labels file, untouched
    assert labels.read_bytes() == written
    assert json.loads(Run.of(cfg).done_json(0).read_text())["n_pseudo"] == n_test


def test_labels_made_with_other_settings_are_refused(demo_root, teacher, tmp_path):
    """lr-find writes a fold's labels but no config.yaml, so train had nothing to compare its settings with: labels
    of another confidence filter, or encoded in another RLE order (read back scrambled), were trained on."""
    import shutil

    runs = tmp_path / "runs"
    shutil.copytree(teacher / "teacher", runs / "teacher")
    from seg_toolkit.lr_find import lr_find

    lr_find(_student(demo_root, runs, "s", confidence=0.5), fold=0, start=1e-4, end=1e-2, steps=11)
    stricter = _student(demo_root, runs, "s", confidence=0.9)
    with pytest.raises(ConfigError, match=r"fold_0\.csv: these pseudo-labels were made with other settings than this "
                                          r"config's \(confidence: 0\.5 there, 0\.9 here\)"):
        run_cv(stricter, folds=[0])
    Run.of(stricter).config_yaml.unlink()  # as lr-find left the folder: no config to compare with
    reordered = config_from_dict({**demo_dict(demo_root, runs, experiment="s", folds=FOLDS,
                                              train={"epochs": 1, "batch_size": 2},
                                              pseudo={"teacher": str(runs / "teacher"), "confidence": 0.5,
                                                      "min_confident_fraction": 0.0}),
                                  "data": {**demo_dict(demo_root, runs)["data"], "rle_order": "C"}})
    with pytest.raises(ConfigError, match=r"other settings than this config's \(rle: .*'order': 'F'.* there, "
                                          r".*'order': 'C'.* here\)"):
        run_cv(reordered, folds=[0])
    Run.of(reordered).config_yaml.unlink()
    run_cv(_student(demo_root, runs, "s", confidence=0.5), folds=[0])  # the settings it was made with: read


def test_a_fold_resumed_on_other_labels_is_refused(demo_root, teacher, tmp_path):
    """A fresh fold keeps its labels' SHA-256 (done.json names it); resumed on labels made again since, refused."""
    from seg_toolkit.files import sha256_file
    from seg_toolkit.fold_state import TrainState

    cfg = _student(demo_root, teacher, "kept")
    run_cv(cfg, folds=[0])
    run = Run.of(cfg)
    done = json.loads(run.done_json(0).read_text())
    assert done["pseudo_sha256"] == sha256_file(run.pseudo_csv(0))
    state = TrainState()
    check_labels_unchanged(cfg, run, 0, state, fresh=True)
    assert state.pseudo_sha256 == done["pseudo_sha256"]
    check_labels_unchanged(cfg, run, 0, state, fresh=False)  # the same labels: resumed
    state.pseudo_sha256 = "0" * 64  # what a fold started on labels moved away since would hold
    with pytest.raises(ConfigError, match=r"fold 0 started on other pseudo-labels than .*fold_0\.csv holds now .* "
                                          r"--fold 0 --overwrite"):
        check_labels_unchanged(cfg, run, 0, state, fresh=False)
    check_labels_unchanged(cfg, run, 0, TrainState(), fresh=False)  # a checkpoint from before the hash was kept


def test_test_images_that_are_training_images_are_refused(demo_root, teacher, tmp_path):
    """Pseudo-labelled, a training image would join the training set of the fold that validates on it."""
    import shutil

    root = tmp_path / "data"
    shutil.copytree(demo_root, root)
    train_dir = root / "train" / "images"
    first = sorted(train_dir.iterdir())[0]
    shutil.copy(first, root / "test" / "images" / first.name)  # the same bytes, under a training image's id
    with (root / "sample_submission.csv").open("a") as fh:
        fh.writelines(f"{first.stem}_{k},1 1\n" for k in (1, 2, 3))
    cfg = _student(root, teacher, "dup")
    with pytest.raises(ConfigError, match=rf"pseudo.teacher: 1 test image\(s\) are training images too \(e.g. "
                                          rf".*{first.name}, id '{first.stem}'\)"):
        run_cv(cfg, folds=[0])
    (root / "test" / "images" / first.name).write_bytes(first.read_bytes()[:-1] + b"x")  # another file of that id
    run_cv(_student(root, teacher, "dup1"), folds=[0])  # another image, though its name is a training image's
