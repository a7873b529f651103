"""One run, one predictor: OOF, predict and ensembles of experiments with different preprocessing.

Two experiments trained on the tiny demo differ in everything a predictor could mix up:
``a`` reads RGB at native size with ImageNet statistics and predicts with hflip TTA; ``b``
reads grayscale resized to 32x48 with mean/std 0.5. Their ensemble must feed each member its
own inputs, and its saved test probabilities must be the weighted mean of each member's own.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from seg_toolkit.checkpoint import load_model
from seg_toolkit.cli import main
from seg_toolkit.config import ConfigError, config_from_dict, load_config, save_config
from seg_toolkit.cv import run_cv
from seg_toolkit.data import SegDataset, collate, load_test_samples, load_train_samples
from seg_toolkit.ensemble import build_ensemble, merge_probs, weight_grid
from seg_toolkit.inference import predict_test
from seg_toolkit.oof import remake_oof
from seg_toolkit.files import read_json, write_json
from seg_toolkit.run import Run
from seg_toolkit.submission_check import check_submission
from seg_toolkit.tensors import probs_to_uint8, resize_to, uint8_to_probs
from seg_toolkit.tta import tta_predict

from .conftest import demo_dict

TRAIN = {"epochs": 1, "batch_size": 2, "num_workers": 0}


@pytest.fixture(scope="module")
def trained(demo_root, tmp_path_factory):
    """Runs a and b (2 folds x 1 epoch each), their config files, and each member's own test probabilities."""
    tmp = tmp_path_factory.mktemp("ens")
    runs = tmp / "runs"
    a = config_from_dict(demo_dict(demo_root, runs, experiment="a", train=TRAIN, optim={"lr": 0.05},
                                   predict={"batch_size": 4, "tta": ["identity", "hflip"], "save_probs": "float16"},
                                   submission={"per_class": True, "path": str(tmp / "a.csv")}))
    b = config_from_dict(demo_dict(demo_root, runs, experiment="b", train=TRAIN, optim={"lr": 0.05},
                                   data={"in_channels": 1},
                                   transforms={"resize": [32, 48], "mean": [0.5], "std": [0.5]},
                                   predict={"batch_size": 4, "save_probs": "float16"},
                                   submission={"per_class": True, "path": str(tmp / "b.csv")}))
    paths = []
    for cfg in (a, b):
        run_cv(cfg)
        predict_test(cfg)
        save_config(cfg, tmp / f"{cfg.experiment}.yaml")
        paths.append(str(tmp / f"{cfg.experiment}.yaml"))
    return a, b, paths, tmp


def _test_probs(run: Run, ids: list[str]) -> dict[str, np.ndarray]:
    return {i: np.load(run.test_prob_path(i)).astype(np.float32) for i in ids}


def test_oof_files_come_from_the_predictor_with_predicts_tta(trained):
    """Each OOF file is the fold model's hflip-TTA prediction at the image's size, as predict makes it."""
    a, *_ = trained
    run = Run.of(a)
    folds = run.fold_of()
    samples = {s.id: s for s in load_train_samples(a)}
    for k in (0, 1):
        model, _ = load_model(run.best_pt(k))
        valid = [samples[i] for i, f in folds.items() if f == k]
        for batch in DataLoader(SegDataset(valid, a, "valid"), batch_size=4, collate_fn=collate):
            with torch.no_grad():
                probs = tta_predict(model.eval(), batch["image"], "multilabel", ["identity", "hflip"], [1.0], "mean_prob")
            for j, image_id in enumerate(batch["id"]):
                want = probs_to_uint8(resize_to(probs[j : j + 1], batch["target"][j].shape[-2:])[0])
                assert np.array_equal(np.load(run.oof_path(image_id)), want), image_id
    cv = read_json(run.cv_json)
    assert cv["oof"] == {"tta": ["identity", "hflip"], "merge": "mean_prob", "scales": [1.0], "tile_size": None}
    assert read_json(run.postprocess_json)["n_images"] == 12  # tuned on those files


def _grid(p: np.ndarray) -> np.ndarray:
    """Probabilities on the OOF files' 1/255 grid, where an ensemble merges its members."""
    return uint8_to_probs(probs_to_uint8(p))


def test_ensemble_test_probs_are_the_weighted_mean_of_each_members_own(trained):
    a, b, paths, tmp = trained
    cv = build_ensemble([a, b], name="ens_fixed", weights=[0.6, 0.4])
    ens = Run(Run.of(a).dir.parent / "ens_fixed")
    # members named relative to the ensemble's folder, so the runs folder can move as a whole
    members = read_json(ens.ensemble_json)["members"]
    assert ens.is_ensemble and [(m["run"], m["weight"]) for m in members] == [("../a", 0.6), ("../b", 0.4)]
    assert [m["oof"] for m in members] == [read_json(Run.of(c).cv_json)["oof"] for c in (a, b)]  # how each member's OOF was made
    assert ens.members() == [(Run.of(a), 0.6), (Run.of(b), 0.4)]
    out = predict_test(ens.config(), out=tmp / "ens_fixed.csv")
    assert check_submission(out, a.data_path(a.data.sample_submission)) == []
    ids = [s.id for s in load_test_samples(a)]
    pa, pb, pe = _test_probs(Run.of(a), ids), _test_probs(Run.of(b), ids), _test_probs(ens, ids)
    for i in ids:
        assert pe[i].shape == pa[i].shape == (3, 48, 64)
        # float16 storage: each file is within 2^-11 relative of the float32 it came from; each member's is put on
        # the OOF files' 1/255 grid before the merge (a float16 near a half step may round the other way: up to 1/255 over the members)
        np.testing.assert_allclose(pe[i], 0.6 * _grid(pa[i]) + 0.4 * _grid(pb[i]), atol=2e-3 + 1 / 255)
        assert np.abs(pa[i] - pb[i]).max() > 0.01  # the members disagree, so the check has teeth
    # the ensemble's OOF is the weighted merge of the members' OOF files, scored beside theirs
    for s in load_train_samples(a):
        qa, qb = (uint8_to_probs(np.load(Run.of(c).oof_path(s.id))) for c in (a, b))
        assert np.array_equal(np.load(ens.oof_path(s.id)), probs_to_uint8(0.6 * qa + 0.4 * qb))
    saved = read_json(ens.cv_json)
    members = saved["ensemble"]["members"]
    assert [m["run"] for m in members] == [str(Run.of(a).dir), str(Run.of(b).dir)]
    assert [m["weight"] for m in members] == [0.6, 0.4]
    for m, cfg in zip(members, (a, b)):  # each member's OOF score over the same images equals its own cv.json
        assert m["score"] == pytest.approx(read_json(Run.of(cfg).cv_json)["score"], abs=1e-9)
    assert saved["score"] == pytest.approx(cv["score"]) and saved["n_images"] == 12
    assert read_json(ens.postprocess_json)["n_images"] == 12  # post-processing tuned on the ensemble's OOF


def test_weights_chosen_on_oof_with_a_cross_half_check(trained, capsys, tmp_path):
    a, b, paths, tmp = trained
    code = main(["ensemble", *paths, "--name", "ens_search", "--out", str(tmp_path / "s.csv")])
    out = capsys.readouterr().out
    assert code == 0 and "submission:" in out and "weights:" in out
    ens = Run(Run.of(a).dir.parent / "ens_search")
    search = read_json(ens.ensemble_json)["weights_search"]
    assert search["searched"] == 11  # 0.0, 0.1, ..., 1.0 for a; equal weights first
    assert search["equal_weights"]["weights"] == [0.5, 0.5]
    assert len(search["cross_half"]) == 2 and {tuple(h["chosen_on_folds"]) for h in search["cross_half"]} == {(0,), (1,)}
    chosen = search["chosen"]["weights"]
    if search["cross_half_score"] > search["cross_half_equal_score"]:
        assert chosen == search["best_in_sample"]["weights"]
    else:
        assert chosen == [0.5, 0.5]
    cv = read_json(ens.cv_json)
    assert [m["weight"] for m in cv["ensemble"]["members"]] == chosen
    assert cv["ensemble"]["weights_search"]["cross_half_score"] == search["cross_half_score"]


def test_members_must_share_folds(trained):
    a, b, _, _ = trained
    other = Run(Run.of(a).dir.parent / "a_other_folds")
    shutil.copytree(Run.of(a).dir, other.dir)
    lines = other.folds_csv.read_text().splitlines()
    first = lines[1].split(",")
    first[1] = str(1 - int(first[1]))
    other.folds_csv.write_text("\n".join([lines[0], ",".join(first), *lines[2:]]) + "\n")
    c = config_from_dict({**demo_dict(a.data.root, Run.of(a).dir.parent, experiment="a_other_folds"),
                          "train": TRAIN, "optim": {"lr": 0.05},
                          "predict": {"batch_size": 4, "tta": ["identity", "hflip"], "save_probs": "float16"},
                          "submission": {"per_class": True, "path": a.submission.path}})
    with pytest.raises(ConfigError, match=r"ensemble members must share folds.csv: .*a_other_folds/folds.csv differs .* for 1 ids"):
        build_ensemble([a, c], name="never")
    assert not (Run.of(a).dir.parent / "never").exists()


def test_members_with_other_classes_are_refused(trained, tmp_path):
    a, _, _, _ = trained
    d = Run(Run.of(a).dir.parent / "a_two_classes")
    shutil.copytree(Run.of(a).dir, d.dir)
    text = d.config_yaml.read_text().replace("num_classes: 3", "num_classes: 2")
    d.config_yaml.write_text(text)
    two = load_config(d.config_yaml, [f"experiment={d.dir.name}", f"runs_dir={d.dir.parent}"])
    with pytest.raises(ConfigError, match="ensemble members disagree on data.num_classes"):
        build_ensemble([a, two], name="never")


def test_remake_oof_without_tta_is_stated_and_predict_warns(trained, tmp_path, caplog):
    a, *_ = trained
    copy = Run(tmp_path / "runs" / "a")
    shutil.copytree(Run.of(a).dir, copy.dir)
    cfg = load_config(copy.config_yaml, [f"runs_dir={tmp_path / 'runs'}", "predict.oof_tta=identity"])
    cv = remake_oof(cfg)
    assert cv["oof"]["tta"] == ["identity"] and read_json(copy.cv_json)["oof"]["tta"] == ["identity"]
    assert "postprocess" in cv and read_json(copy.postprocess_json)["cv_json_score"] == pytest.approx(cv["score"])
    first = load_train_samples(a)[0].id
    assert not np.array_equal(np.load(copy.oof_path(first)), np.load(Run.of(a).oof_path(first)))  # hflip TTA there
    predict_test(cfg, out=tmp_path / "x.csv")
    assert "remake them with `seg-toolkit oof CONFIG`" in caplog.text
    assert not copy.oof_incomplete_json.exists()  # written while the files were rewritten, removed once they agree
    from seg_toolkit.errors import SegToolkitError
    from seg_toolkit.oof import mark_oof_rewrite

    mark_oof_rewrite(copy, f"seg-toolkit oof {copy.dir}")  # as an `oof` stopped half-way leaves it
    with pytest.raises(SegToolkitError, match=r"being rewritten by `seg-toolkit oof .*` .* before tuning, predicting or ensembling"):
        build_ensemble([cfg, load_config(Run.of(trained[1]).config_yaml, [f"runs_dir={tmp_path / 'runs'}"])], name="e")


def test_merge_probs_and_weight_grid_by_hand():
    p = [np.full((1, 1, 1), 0.2, np.float32), np.full((1, 1, 1), 0.8, np.float32)]
    assert merge_probs(p, [0.5, 0.5], "prob", "binary")[0, 0, 0] == pytest.approx(0.5)
    # logit(0.2) = -ln 4, logit(0.8) = ln 4: weights 0.75 / 0.25 -> sigmoid(-0.5 ln 4) = 1 / (1 + 2) = 1/3
    assert merge_probs(p, [0.75, 0.25], "logit", "binary")[0, 0, 0] == pytest.approx(1 / 3, abs=1e-6)
    grid = weight_grid(3)
    assert grid[0] == pytest.approx((1 / 3,) * 3) and len(grid) == 1 + 66  # equal + C(12, 2) grid points
    assert all(sum(w) == pytest.approx(1.0) for w in grid)


def test_offline_weights_setting_is_not_a_preprocessing_change(trained, tmp_path):
    """Kaggle kernels are offline: predicting with model.encoder_weights=null must stay allowed
    (a checkpoint holds every weight), while a model change is refused."""
    from seg_toolkit.run_settings import check_same_training

    a, *_ = trained
    check_same_training(load_config(Run.of(a).config_yaml, ["model.encoder_weights=null", "model.channels_last=true"]), Run.of(a))
    with pytest.raises(ConfigError, match=r"model.base_width: 4 -> 8"):
        check_same_training(load_config(Run.of(a).config_yaml, ["model.base_width=8"]), Run.of(a))
    # which part of a photo | label file is the image decides the model's input as the resize does
    from seg_toolkit.run_settings import TRAINED_KEYS, diff_of_keys

    pair = config_from_dict({"data": {"root": str(tmp_path), "layout": "folder", "train_masks": "x", "pair_split": "image_left"},
                             "folds": {"n_splits": 2}})
    moved = config_from_dict({"data": {"root": str(tmp_path), "layout": "folder", "train_masks": "x", "pair_split": "image_left",
                                       "pair_split_at": 300}, "folds": {"n_splits": 2}})
    assert [line.split(":")[0] for line in diff_of_keys(pair, moved, TRAINED_KEYS)] == ["data.pair_split_at"]


def test_an_ensemble_run_moves_with_its_members(trained, tmp_path):
    """Copy the whole runs folder elsewhere: the ensemble still finds its members and predicts the same."""
    a, b, _, tmp = trained
    build_ensemble([a, b], name="ens_move", weights=[0.5, 0.5])
    moved = tmp_path / "elsewhere" / "runs"
    shutil.copytree(Run.of(a).dir.parent, moved)
    ens = Run(moved / "ens_move")
    assert [r.dir for r, _ in ens.members()] == [moved / "a", moved / "b"]
    cfg = load_config(ens.config_yaml, [f"runs_dir={moved}", "predict.save_probs=float16"])
    predict_test(cfg, out=tmp_path / "moved.csv")
    ids = [s.id for s in load_test_samples(a)]
    for i in ids:
        want = 0.5 * _grid(np.load(Run.of(a).test_prob_path(i)).astype(np.float32)) + 0.5 * _grid(np.load(Run.of(b).test_prob_path(i)).astype(np.float32))
        np.testing.assert_allclose(np.load(ens.test_prob_path(i)).astype(np.float32), want, atol=2e-3 + 1 / 255)  # every member may round the other way: 1/255


def test_a_run_folder_is_found_from_any_working_directory(trained, tmp_path, monkeypatch, capsys):
    """`seg-toolkit predict RUN_DIR` uses the run where it is named, not runs_dir relative to the cwd."""
    a, *_ = trained
    run = Run(tmp_path / "project" / "runs" / "a")
    shutil.copytree(Run.of(a).dir, run.dir)
    text = run.config_yaml.read_text()
    run.config_yaml.write_text(text.replace(f"runs_dir: {Run.of(a).dir.parent}", "runs_dir: runs"))  # as `train` saves it from a project root
    assert "runs_dir: runs\n" in run.config_yaml.read_text()
    monkeypatch.chdir(tmp_path)  # not the project root: runs/a does not exist here
    out = tmp_path / "from_elsewhere.csv"
    assert main(["predict", str(run.dir), "--out", str(out)]) == 0
    assert check_submission(out, a.data_path(a.data.sample_submission)) == []



def test_a_member_predicting_otherwise_than_the_ensemble_was_built_on_is_refused(trained, tmp_path, caplog, demo_root):
    """ensemble.json keeps how each member's OOF files were made; a member's TTA chosen again afterwards
    (`tune --tta` writes its tta.json) makes the ensemble's weights and tuned post-processing stale: predict and a
    student's pseudo-labels refuse it (predict only warned, and submitted other probabilities than those tuned on)."""
    a, *_ = trained
    runs = tmp_path / "runs"
    shutil.copytree(Run.of(a).dir.parent, runs, ignore=shutil.ignore_patterns("ens*"))
    cfgs = [load_config(runs / name / "config.yaml", [f"runs_dir={runs}"]) for name in ("a", "b")]
    build_ensemble(cfgs, name="ens_drift", weights=[0.5, 0.5])
    ens = Run(runs / "ens_drift")
    members = read_json(ens.ensemble_json)["members"]
    assert members[0]["oof"]["tta"] == ["identity", "hflip"] and members[1]["oof"]["tta"] == ["identity"]
    ens_cfg = load_config(ens.config_yaml, [f"runs_dir={runs}"])
    predict_test(ens_cfg, out=tmp_path / "before.csv")
    assert "build the ensemble again" not in caplog.text
    (runs / "a" / "tta.json").write_text('{"tta": ["identity"], "merge": "mean_prob"}')  # as `tune a --tta` would choose
    with pytest.raises(ConfigError, match=rf"member {runs / 'a'}'s OOF files were merged and tuned on as made with .*"
                                          r"'hflip'.* but it now predicts with .*build the ensemble again"):
        predict_test(ens_cfg, out=tmp_path / "after.csv")
    assert not (tmp_path / "after.csv").exists()
    student = config_from_dict(demo_dict(demo_root, runs, experiment="student", train=TRAIN,
                                         pseudo={"teacher": str(ens.dir), "confidence": 0.5}))
    with pytest.raises(ConfigError, match="build the ensemble again"):
        run_cv(student, folds=[0])
    assert not Run.of(student).done_json(0).exists()


def test_predict_warns_when_folds_oof_files_were_made_alike_or_not(trained, tmp_path, caplog):
    a, *_ = trained
    copy = Run(tmp_path / "runs" / "a")
    shutil.copytree(Run.of(a).dir, copy.dir)
    cfg = load_config(copy.config_yaml, [f"runs_dir={tmp_path / 'runs'}"])
    predict_test(cfg, out=tmp_path / "same.csv")
    assert "different settings per fold" not in caplog.text and "remake them" not in caplog.text
    cv = read_json(copy.cv_json)  # as after `train --fold 1 --set predict.tta=[identity]` on a run whose fold 0 used hflip
    cv["oof"] = [cv["oof"], {**cv["oof"], "tta": ["identity"]}]
    write_json(copy.cv_json, cv)
    predict_test(cfg, out=tmp_path / "mixed.csv")
    assert "made with different settings per fold" in caplog.text


# ----------------------------------------------------------------------------- members that cannot be merged as they are


def _copy_runs(trained, tmp_path, **edits) -> tuple[Path, list]:
    """The trained runs a and b copied under tmp_path/runs; ``edits``: run name -> (old, new) text of its config.yaml."""
    a, *_ = trained
    runs = tmp_path / "runs"
    shutil.copytree(Run.of(a).dir.parent, runs, ignore=shutil.ignore_patterns("ens*", "a_*"))
    for name, (old, new) in edits.items():
        path = runs / name / "config.yaml"
        text = path.read_text()
        assert old in text
        path.write_text(text.replace(old, new))
    return runs, [load_config(runs / n / "config.yaml", [f"runs_dir={runs}"]) for n in ("a", "b")]


def test_members_reading_other_images_or_classes_are_refused(trained, tmp_path, demo_root):
    """b trained on its own data.root (its images stored preprocessed, say) would be predicted on a's images; b's
    classes in another order would be merged channel by channel with a's. Both were built without a word."""
    other_root = tmp_path / "other_data"
    shutil.copytree(demo_root, other_root)
    _, cfgs = _copy_runs(trained, tmp_path / "x", b=(f"root: {demo_root}", f"root: {other_root}"))
    with pytest.raises(ConfigError, match=r"ensemble members disagree on data.root: a -> b: data.root: .* -> .*other_data"):
        build_ensemble(cfgs, name="never")
    _, cfgs = _copy_runs(trained, tmp_path / "y", b=("class_names: []", "class_names: [rectangle, disc, triangle]"))
    with pytest.raises(ConfigError, match=r"disagree on data.class_names: .*Members must read the same images and targets"):
        build_ensemble(cfgs, name="never")
    # a relative and an absolute spelling of one root are the same root; in_channels (b reads grayscale) is b's own
    from seg_toolkit.ensemble import _check_same_data

    rel = os.path.relpath(demo_root)
    runs, cfgs = _copy_runs(trained, tmp_path / "z", b=(f"root: {demo_root}", f"root: {rel}"))
    _check_same_data([Run(runs / "a"), Run(runs / "b")], cfgs)


def test_a_member_retrained_after_the_ensemble_is_refused_at_predict(trained, tmp_path):
    runs, cfgs = _copy_runs(trained, tmp_path)
    build_ensemble(cfgs, name="ens", weights=[0.5, 0.5])
    ens = Run(runs / "ens")
    fingerprint = read_json(ens.ensemble_json)["members"][1]["fingerprint"]
    from seg_toolkit.files import sha256_file

    assert fingerprint == {"folds_csv": sha256_file(runs / "b" / "folds.csv"),
                           "best_pt": {k: sha256_file(runs / "b" / f"fold_{k}" / "best.pt") for k in ("0", "1")}}
    ens_cfg = load_config(ens.config_yaml, [f"runs_dir={runs}"])
    predict_test(ens_cfg, out=tmp_path / "ok.csv")
    shutil.copyfile(runs / "b" / "fold_1" / "best.pt", runs / "b" / "fold_0" / "best.pt")  # as `train b --overwrite` leaves it
    with pytest.raises(ConfigError, match=r"member .*/b changed since the ensemble was built \(fold_0/best.pt differ\)"):
        predict_test(ens_cfg, out=tmp_path / "stale.csv")
    assert not (tmp_path / "stale.csv").exists()


def test_a_member_whose_oof_was_made_otherwise_is_refused_at_build(trained, tmp_path):
    """a's OOF files were made with hflip TTA; a tta.json choosing identity since (as `tune --tta` writes it) means the
    ensemble would tune on hflip probabilities and submit identity ones: rebuilding would not help, `oof a` does."""
    runs, cfgs = _copy_runs(trained, tmp_path)
    (runs / "a" / "tta.json").write_text('{"tta": ["identity"], "merge": "mean_prob"}')
    with pytest.raises(ConfigError, match=r"member .*/a: its OOF files were made with .*'hflip'.* remake them first "
                                          r"\(`seg-toolkit oof .*/a`\)"):
        build_ensemble(cfgs, name="never")


def test_ensemble_cli_edges(trained, tmp_path):
    runs, cfgs = _copy_runs(trained, tmp_path)
    build_ensemble(cfgs, name="ens", weights=[0.5, 0.5])
    ens = Run(runs / "ens")
    # keys of the members' prediction would be ignored: refused, naming them
    with pytest.raises(ConfigError, match=r"is an ensemble: its members predict with their own saved settings .*predict.tta: "
                                          r"\['identity', 'hflip'\] -> \['d4'\] would be ignored"):
        predict_test(load_config(ens.config_yaml, [f"runs_dir={runs}", "predict.tta=[d4]"]), out=tmp_path / "x.csv")
    # oof on an ensemble: not 'no completed fold; train first'
    with pytest.raises(ConfigError, match=r"is an ensemble: its OOF files are its members' merged, so `seg-toolkit oof`"):
        remake_oof(load_config(ens.config_yaml, [f"runs_dir={runs}"]))
    # lr-find on an ensemble: refused, not a sweep of a model it never trains written into it
    assert main(["lr-find", str(ens.dir)]) == 2
    assert not (ens.dir / "lr_find.json").exists() and not (ens.dir / "lr_find.png").exists()
    # the ensemble folder moved without its members
    alone = tmp_path / "alone" / "ens"
    shutil.copytree(ens.dir, alone)
    with pytest.raises(FileNotFoundError, match=r"ensemble.json: member .*/alone/a .* is not a run folder any more; .*move the runs folder"):
        Run(alone).members()


def test_a_leaky_pseudo_label_member_is_named_in_the_ensembles_cv(trained, tmp_path, caplog):
    runs, cfgs = _copy_runs(trained, tmp_path)
    cv = read_json(runs / "b" / "cv.json")
    cv["pseudo"] = {"teacher": "runs/t", "per_fold": False, "leaky": True}  # as `train` records pseudo.per_fold: false
    write_json(runs / "b" / "cv.json", cv)
    out = build_ensemble(cfgs, name="ens", weights=[0.5, 0.5])
    assert out["pseudo"] == {"members": {"b": cv["pseudo"]}, "leaky": True}
    assert read_json(runs / "ens" / "cv.json")["pseudo"]["leaky"] is True
    assert "trained on pseudo-labels that are not per fold" in caplog.text


def test_logit_merge_uses_the_oof_files_grid():
    """The ensemble's OOF merges uint8 files; predict merges floats. Below 1/510 a float 0.0015 and a stored 0 gave
    logits -6.5 and -13.8 (merge 0.649 at predict, 0.177 in the OOF). Both now sit on the 1/255 grid, floored at
    half a step: 0.3 * logit(0.5/255) + 0.7 * logit(249/255), sigmoid."""
    import math

    floats = [np.full((1, 1, 1), 0.0015, np.float32), np.full((1, 1, 1), 0.975, np.float32)]
    stored = [uint8_to_probs(probs_to_uint8(p)) for p in floats]
    want = 1 / (1 + math.exp(-(0.3 * math.log((0.5 / 255) / (1 - 0.5 / 255)) + 0.7 * math.log(249 / 6))))
    for probs in (floats, stored):
        assert merge_probs(probs, [0.3, 0.7], "logit", "binary")[0, 0, 0] == pytest.approx(want, abs=1e-6)
    # multiclass log-probabilities: the same grid and floor
    three = [np.array([0.0015, 0.4985, 0.5], np.float32)[:, None, None], np.array([0.2, 0.3, 0.5], np.float32)[:, None, None]]
    assert np.allclose(merge_probs(three, [0.5, 0.5], "logit", "multiclass"),
                       merge_probs([uint8_to_probs(probs_to_uint8(p)) for p in three], [0.5, 0.5], "logit", "multiclass"))


def test_prob_merge_uses_the_oof_files_grid():
    """Probability space too: predict merged unrounded floats, the ensemble's OOF the members' uint8 files, so 6% of
    the values landed one 1/255 step apart (a pixel at a tuned threshold could flip). 0.4 * 0.31 + 0.6 * 0.72 from the
    floats is 0.556; from their stored 79/255 and 184/255 (79.05 and 183.6 rounded) it is (0.4 * 79 + 0.6 * 184) / 255
    = 142 / 255 = 0.55686."""
    floats = [np.full((1, 1, 1), 0.31, np.float32), np.full((1, 1, 1), 0.72, np.float32)]
    stored = [uint8_to_probs(probs_to_uint8(p)) for p in floats]
    assert [int(probs_to_uint8(p)[0, 0, 0]) for p in floats] == [79, 184]
    for probs in (floats, stored):
        assert merge_probs(probs, [0.4, 0.6], "prob", "binary")[0, 0, 0] == pytest.approx(142 / 255, abs=1e-6)
    rng = np.random.default_rng(0)
    many = [rng.random((2, 8, 8), dtype=np.float32) for _ in range(2)]
    assert np.array_equal(merge_probs(many, [0.4, 0.6], "prob", "multilabel"),
                          merge_probs([uint8_to_probs(probs_to_uint8(p)) for p in many], [0.4, 0.6], "prob", "multilabel"))


@pytest.mark.parametrize("space", ["logit", "prob"])
def test_one_member_left_is_its_own_probabilities(space):
    """Weights [1, 0] in logit space: the ensemble's OOF went through the space's clamp and back (a stored 255 became
    254, a multiclass 129 became 130), while predict runs the one member and submits its probabilities as they are."""
    grid = [uint8_to_probs(np.array(v, np.uint8)[:, None, None]) for v in ([255, 0, 129], [3, 200, 52])]
    for task in ("binary", "multiclass"):
        one = merge_probs(grid, [1.0, 0.0], space, task)
        assert np.array_equal(probs_to_uint8(one), np.array([255, 0, 129], np.uint8)[:, None, None])
    assert not np.array_equal(probs_to_uint8(merge_probs(grid, [0.5, 0.5], space, "binary")),
                              np.array([255, 0, 129], np.uint8)[:, None, None])  # two members do merge


def test_a_zero_weight_classifier_member_is_not_run(trained, tmp_path, demo_root):
    """The only member with the empty-mask classifier at weight 0: predict divided by zero; now it is not run, and
    the ensemble predicts exactly as its other member alone."""
    a, *_ = trained
    runs, cfgs = _copy_runs(trained, tmp_path)
    c = config_from_dict(demo_dict(demo_root, runs, experiment="c", train=TRAIN, optim={"lr": 0.05},
                                   model={"arch": "scratch_unet", "depth": 2, "base_width": 4, "classifier": 0.5},
                                   predict={"batch_size": 4, "save_probs": "float16"}, submission={"per_class": True}))
    run_cv(c)
    build_ensemble([cfgs[1], c], name="ens", weights=[1, 0])
    ens = Run(runs / "ens")
    predict_test(load_config(ens.config_yaml, [f"runs_dir={runs}", "predict.save_probs=float16"]), out=tmp_path / "e.csv")
    predict_test(load_config(runs / "b" / "config.yaml", [f"runs_dir={runs}"]), out=tmp_path / "b.csv")
    for s in load_test_samples(a):
        assert np.array_equal(np.load(ens.test_prob_path(s.id)), np.load(Run(runs / "b").test_prob_path(s.id)))
        assert not ens.test_presence_path(s.id).exists()


def test_repeated_scales_are_one_prediction():
    from seg_toolkit.predictor import Member

    cfg = config_from_dict(demo_dict(Path("x"), Path("runs"), predict={"scales": [1.0, 0.75, 1.0]}))
    member = Member(Run(Path("runs/t")), cfg, [0])
    assert member.made()["scales"] == [1.0, 0.75] and member.passes(2) == 2 * 1 * 2


def test_an_ensemble_predicts_with_the_folds_it_was_built_on(trained, tmp_path, caplog):
    """b's fold 1 missing when the ensemble was built: its weights and post-processing were chosen on fold 0 alone.
    Trained later, b's fold 1 (and a's, there all along) must not join its test predictions unchecked."""
    from seg_toolkit.predictor import Predictor

    runs, cfgs = _copy_runs(trained, tmp_path)
    shutil.move(runs / "b" / "fold_1", tmp_path / "b_fold_1")
    build_ensemble(cfgs, name="ens", weights=[0.5, 0.5])
    ens = Run(runs / "ens")
    assert read_json(ens.ensemble_json)["folds"] == [0]
    shutil.move(tmp_path / "b_fold_1", runs / "b" / "fold_1")  # trained after the ensemble was built
    predictor = Predictor.from_run(ens)
    assert [m.folds for m in predictor.members] == [[0], [0]]  # was [[0, 1], [0, 1]]
    assert Predictor.from_run(Run(runs / "a")).members[0].folds == [0, 1]  # a run alone: all its folds


def test_ensemble_overwrite_keeps_the_old_ensemble_when_the_new_one_cannot_be_built(trained, tmp_path):
    runs, cfgs = _copy_runs(trained, tmp_path)
    build_ensemble(cfgs, name="ens", weights=[0.5, 0.5])
    ens = Run(runs / "ens")
    before = sorted(p.relative_to(ens.dir) for p in ens.dir.rglob("*"))
    a_oof = sorted(Run(runs / "a").dir.glob("oof/*.npy"))[0]
    a_oof.rename(tmp_path / "aside.npy")  # a member's OOF file lost: the new ensemble cannot be built
    with pytest.raises(FileNotFoundError, match=r"OOF file missing"):
        build_ensemble(cfgs, name="ens", weights=[0.3, 0.7], overwrite=True)
    assert sorted(p.relative_to(ens.dir) for p in ens.dir.rglob("*")) == before  # was deleted before the check
    (tmp_path / "aside.npy").rename(a_oof)
    build_ensemble(cfgs, name="ens", weights=[0.3, 0.7], overwrite=True)
    assert [m["weight"] for m in read_json(ens.ensemble_json)["members"]] == [0.3, 0.7]


def test_cv_on_an_ensemble_keeps_how_it_was_built(trained, tmp_path):
    """`seg-toolkit cv runs/ens/config.yaml` rewrote the ensemble's cv.json without its members, weights and their
    pseudo-label record."""
    from seg_toolkit.cv import compute_cv

    runs, cfgs = _copy_runs(trained, tmp_path)
    built = build_ensemble(cfgs, name="ens", weights=[0.5, 0.5])
    ens = Run(runs / "ens")
    again = compute_cv(load_config(ens.config_yaml, [f"runs_dir={runs}"]), ens)
    assert again["ensemble"] == built["ensemble"] and "pseudo" in again and again["score"] == built["score"]


def test_images_are_read_with_the_largest_limit_of_the_members_that_run(trained):
    """data.max_image_pixels is each member's own: the lead member's limit refused images another member reads."""
    import dataclasses

    from seg_toolkit.predictor import Member, Predictor

    a, b, *_ = trained
    small = dataclasses.replace(a, data=dataclasses.replace(a.data, max_image_pixels=100))
    lead = Member.load(Run.of(a), cfg=small)
    both = Predictor([lead, Member.load(Run.of(b))], device="cpu")
    assert both.loader(load_test_samples(a)).dataset.max_pixels == b.data.max_image_pixels
    lead_only = Predictor([lead, Member.load(Run.of(b), weight=0.0)], device="cpu")  # b never runs: a's limit
    assert lead_only.loader(load_test_samples(a)).dataset.max_pixels == 100


def test_choose_weights_scores_each_halfs_pick_on_the_other_half():
    """Worked by hand: A wins half 0 (0.9) and B half 1 (0.9), but each scores 0.1 on the half it was not chosen
    on; equal weights score 0.5 there, so they are kept although A has the best in-sample score (0.6)."""
    from seg_toolkit.ensemble import _choose_weights

    equal = {"weights": [0.5, 0.5], "score": 0.5, "half_scores": [0.5, 0.5]}
    a = {"weights": [1.0, 0.0], "score": 0.6, "half_scores": [0.9, 0.1]}
    b = {"weights": [0.0, 1.0], "score": 0.4, "half_scores": [0.1, 0.9]}
    r = _choose_weights([equal, a, b], [0, 1], [{0}, {1}])
    assert r["cross_half"] == [{"chosen_on_folds": [0], "weights": [1.0, 0.0], "score_on_other_half": 0.1},
                               {"chosen_on_folds": [1], "weights": [0.0, 1.0], "score_on_other_half": 0.1}]
    assert r["cross_half_score"] == pytest.approx(0.1) and r["cross_half_equal_score"] == 0.5
    assert r["best_in_sample"] is a and r["chosen"] is equal and r["decision"].startswith("equal weights")
    # weights that hold up on both halves (0.7 > 0.5 on each held-out half) are kept
    steady = {"weights": [0.7, 0.3], "score": 0.55, "half_scores": [0.7, 0.7]}
    r = _choose_weights([equal, steady, a], [0, 1], [{0}, {1}])
    assert [x["weights"] for x in r["cross_half"]] == [[1.0, 0.0], [0.7, 0.3]]  # a wins half 0, steady half 1
    assert r["cross_half_score"] == pytest.approx((0.1 + 0.7) / 2)  # 0.4 < 0.5: equal weights again
    assert r["chosen"] is equal
    assert r["in_sample"] is False  # equal weights: no weights were fitted to the OOF images
    r = _choose_weights([equal, steady], [0, 1], [{0}, {1}])
    assert r["cross_half_score"] == pytest.approx(0.7) and r["chosen"] is steady
    # kept, the searched weights' OOF score (0.55 here) is their best over these very images: said so (the tuning audit)
    assert r["in_sample"] is True
    # one fold: no halves, the in-sample best
    r = _choose_weights([equal, a], [0], [{0}])
    assert r["chosen"] is a and "cross_half" not in r and r["in_sample"] is True


def test_an_ensembles_oof_files_are_what_its_predictor_gives_value_for_value(trained, tmp_path, demo_root):
    """Tuned on the ensemble's OOF files, submitted from its predictor: the two must hold the same numbers. Three
    members (two with the empty-mask classifier), uneven weights, both merge spaces: every stored probability and
    presence value equals the predictor's for the same fold's models on the same images, rounded alike. Before, the
    presence was merged from unrounded floats (8 of 36 values a step off, and a class gate could flip) and
    ``add_(t, alpha=w)`` rounded once where the OOF merge rounded the product (1.8% of 4 members' values)."""
    from seg_toolkit.predictor import Predictor

    runs, cfgs = _copy_runs(trained, tmp_path)
    with_classifier = [config_from_dict(demo_dict(demo_root, runs, experiment=name, train=TRAIN, optim={"lr": lr},
                                                  model={"arch": "scratch_unet", "depth": 2, "base_width": 4, "classifier": 0.5},
                                                  predict={"batch_size": 4}, submission={"per_class": True}))
                       for name, lr in (("c", 0.05), ("d", 0.02))]
    for c in with_classifier:
        run_cv(c)
    for space in ("prob", "logit"):
        build_ensemble([cfgs[0], *with_classifier], name=f"ens_{space}", weights=[0.45, 0.35, 0.2], space=space)
        ens = Run(runs / f"ens_{space}")
        predictor, fold_of = Predictor.from_run(ens, device="cpu"), ens.fold_of()
        samples = load_train_samples(cfgs[0])
        n_presence = 0
        for k in (0, 1):
            for image_id, probs, presence, _ in predictor.iter_predictions([s for s in samples if fold_of[s.id] == k], fold=k):
                assert np.array_equal(probs_to_uint8(probs), np.load(ens.oof_path(image_id))), (space, image_id)
                assert np.array_equal(probs_to_uint8(presence), np.load(ens.oof_presence_path(image_id))), (space, image_id)
                n_presence += presence.numel()
        assert n_presence == 3 * len(samples)


def test_members_oof_files_of_other_sizes_are_named(trained, tmp_path):
    """An image replaced between two members' trainings: a bare torch size error before, now both files named."""
    from seg_toolkit.data.data_errors import DataError

    runs, cfgs = _copy_runs(trained, tmp_path)
    image_id = load_train_samples(cfgs[0])[3].id
    late = Run(runs / "b").oof_path(image_id)
    np.save(late, np.zeros((3, 49, 64), np.uint8))
    with pytest.raises(DataError, match=rf"{late}: OOF probabilities of shape \(3, 49, 64\) .*a/oof/{image_id}\.npy has "
                                        rf"\(3, 48, 64\): the members predicted image '{image_id}' at other sizes"):
        build_ensemble(cfgs, name="ens_sizes", weights=[0.5, 0.5])


def test_a_batch_of_images_of_other_sizes_names_the_runs_that_read_them():
    from seg_toolkit.data.data_errors import DataError
    from seg_toolkit.predictor import _collate

    items = [{"id": i, "size": hw, "images": {"native": torch.zeros(3, *hw)}} for i, hw in (("a", (4, 5)), ("b", (6, 5)))]
    with pytest.raises(DataError, match=r"differ in size \[\(3, 4, 5\), \(3, 6, 5\)\] as runs/na read them \(ids \['a', "
                                        r"'b'\]...\); .*predict.batch_size: 1"):
        _collate(items, {"native": ["runs/na"]})
    assert _collate(items[:1], {"native": ["runs/na"]})["images"]["native"].shape == (1, 3, 4, 5)


def test_the_oof_cache_keeps_the_stored_bytes_within_its_budget_and_is_dropped_before_cv(trained, monkeypatch):
    """The cache held float32 copies of every member and the targets where its check counted 5x the uint8 files
    (1.2x over budget for 2 members), and stayed alive through compute_cv and tune (audit). It now keeps what was read
    while it fits, and cv.json is the same with any budget."""
    import weakref

    import seg_toolkit.cv as cv_module
    from seg_toolkit.ensemble import _OOF, build_ensemble

    a, b, _, _ = trained
    kept: list[int] = []
    made: list[weakref.ref] = []
    real_cv, real_init = cv_module.compute_cv, _OOF.__init__

    def init_spy(self, *args, **kwargs):
        made.append(weakref.ref(self))
        real_init(self, *args, **kwargs)

    def cv_spy(*args, **kwargs):
        kept.append(sum(o() is not None and o()._cache is not None for o in made))
        return real_cv(*args, **kwargs)

    monkeypatch.setattr(_OOF, "__init__", init_spy)
    monkeypatch.setattr(cv_module, "compute_cv", cv_spy)
    results = {}
    for budget in (0, 40_000, 1 << 30):
        real_iter = _OOF.__iter__
        held: list[int] = []

        def iter_spy(self, real_iter=real_iter, held=held):
            yield from real_iter(self)
            if self._cache is not None:
                held.append(sum(sum(q.nbytes for q in e[2]) + e[3].nbytes for e in self._cache))

        monkeypatch.setattr(_OOF, "__iter__", iter_spy)
        results[budget] = build_ensemble([a, b], name=f"ens_budget_{budget}", weights=[0.6, 0.4], memory_budget=budget)
        monkeypatch.setattr(_OOF, "__iter__", real_iter)
        assert all(h <= budget for h in held)
        assert bool(held) == (budget == 1 << 30)  # 12 images of 3x48x64 bytes x 2 members and their targets: 0.2 MB
    assert kept == [0, 0, 0]  # no ensemble cache alive while cv.json is written
    scores = {k: (r["score"], r["fold_scores"]) for k, r in results.items()}
    assert len(set(map(repr, scores.values()))) == 1, scores


def test_an_ensemble_stopped_before_its_cv_json_is_refused_until_made_again(trained, tmp_path, monkeypatch):
    """A killed `ensemble` left ensemble.json and part of its OOF files: rerunning it said 'exists', and predict
    submitted with them and untuned post-processing (exit 0). The run is marked until its cv.json is written."""
    import seg_toolkit.cv
    from seg_toolkit.errors import SegToolkitError

    runs, cfgs = _copy_runs(trained, tmp_path)

    from seg_toolkit.run_lock import _holder_of

    held = []

    def stopped(*args, **kwargs):  # while it is made, the ensemble's lock says so to a predict in another process
        held.append(_holder_of(Run(runs / "ens").lock_file))
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(seg_toolkit.cv, "compute_cv", stopped)
        with pytest.raises(KeyboardInterrupt):
            build_ensemble(cfgs, name="ens", weights=[0.5, 0.5])
    ens = Run(runs / "ens")
    assert ens.is_ensemble and not ens.cv_json.exists()
    assert held[0] is not None and "seg-toolkit ensemble --name ens: making it" in held[0]
    ens_cfg = load_config(ens.config_yaml, [f"runs_dir={runs}"])
    with pytest.raises(SegToolkitError, match=r"the `seg-toolkit ensemble` that made it stopped .* before its OOF files "
                                              r"and cv.json were all written .*oof_incomplete.json\); run that command "
                                              r"again with --overwrite"):
        predict_test(ens_cfg, out=tmp_path / "x.csv")
    assert not (tmp_path / "x.csv").exists()
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        build_ensemble(cfgs, name="ens", weights=[0.5, 0.5])
    # stopped right after its mark, before ensemble.json: the folder holds the mark alone, and --overwrite takes it
    for p in sorted(ens.dir.iterdir()):
        if p != ens.oof_incomplete_json:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    assert not ens.is_ensemble
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        build_ensemble(cfgs, name="ens", weights=[0.5, 0.5])
    build_ensemble(cfgs, name="ens", weights=[0.5, 0.5], overwrite=True)
    assert not ens.oof_incomplete_json.exists() and ens.postprocess_json.is_file()
    assert check_submission(predict_test(ens_cfg, out=tmp_path / "x.csv"), cfgs[0].data_path(cfgs[0].data.sample_submission)) == []


def test_a_run_stopped_between_cv_json_and_its_tuning_is_not_predicted_untuned(trained, tmp_path):
    """train killed after cv.json and before postprocess.json: predict used the config's threshold without a word
    (24 of 72 rows differed from the tuned run's)."""
    runs, cfgs = _copy_runs(trained, tmp_path)
    run = Run(runs / "a")
    tuned = read_json(run.postprocess_json)
    run.postprocess_json.unlink()
    with pytest.raises(ConfigError, match=r"trained with postprocess.tune true and cv.json scores every fold, but there is "
                                          r"no postprocess.json .*run `seg-toolkit tune .*a` \(predict and evaluate also "
                                          r"take --set postprocess.tune=false"):
        predict_test(cfgs[0], out=tmp_path / "x.csv")
    untuned = load_config(run.config_yaml, [f"runs_dir={runs}", "postprocess.tune=false"])
    assert predict_test(untuned, out=tmp_path / "y.csv").is_file()  # the config's values, as asked
    from seg_toolkit.tune import tune_postprocess

    tune_postprocess(cfgs[0], run.dir)
    assert read_json(run.postprocess_json)["params"] == tuned["params"]
    assert predict_test(cfgs[0], out=tmp_path / "x.csv").is_file()
    # a run trained with tune: false predicts with the config's values, whatever the predicting config says
    from seg_toolkit.config import save_config

    run.postprocess_json.unlink()
    save_config(untuned, run.config_yaml)
    assert predict_test(cfgs[0], out=tmp_path / "z.csv").is_file()
