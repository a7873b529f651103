"""Choosing the TTA set and merge mode by OOF score (``choose_tta``, ``tune --tta``) and its use in prediction."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

import seg_toolkit.data as data_pkg
import seg_toolkit.data.sources as sources_mod
import seg_toolkit.inference as inference_mod
import seg_toolkit.predictor as predictor_mod
from seg_toolkit.checkpoint import load_model
from seg_toolkit.config import ConfigError, config_from_dict, save_config
from seg_toolkit.cv import run_cv
from seg_toolkit.data import SegDataset, collate, load_test_samples, load_train_samples
from seg_toolkit.inference import predict_test
from seg_toolkit.evaluator import Evaluator
from seg_toolkit.postprocess import apply_postprocess, params_from_config
from seg_toolkit.predictor import Predictor
from seg_toolkit.run_settings import tta_settings
from seg_toolkit.files import read_json
from seg_toolkit.run import Run
from seg_toolkit.submission_check import check_submission
from seg_toolkit.tensors import probs_to_uint8, resize_to, uint8_to_probs
from seg_toolkit.tta import tta_predict
from seg_toolkit.tta_search import choose_tta
from seg_toolkit.tune import tune_postprocess

from .conftest import demo_dict

CANDIDATES = [["identity"], ["identity", "hflip"]]
MERGES = ["mean_prob", "mean_logit"]


@pytest.fixture(scope="module")
def run(demo_root, tmp_path_factory):
    """2 folds x 1 epoch of a depth-2, width-4 U-Net on the tiny demo (postprocess.json tuned by run_cv).

    Batch 2 and lr 0.05 (3 steps) so the model already predicts shapes: with the default batch
    (one step) every candidate's masks are empty after tuning and all scores tie."""
    runs = tmp_path_factory.mktemp("tta_runs")
    cfg = config_from_dict(demo_dict(demo_root, runs, train={"epochs": 1, "batch_size": 2, "num_workers": 0},
                                     optim={"lr": 0.05}, scheduler={"name": "none"}))
    run_cv(cfg)
    assert (cfg.run_dir / "postprocess.json").is_file()
    return cfg


@pytest.fixture(scope="module")
def chosen(run):
    return choose_tta(run, candidates=CANDIDATES, merges=MERGES)


@pytest.fixture
def keep_run_files(run, chosen, tmp_path):
    """Tests that choose again (rewriting oof/, tta.json, postprocess.json, cv.json, done.json)
    leave the module's run as they found it."""
    import shutil

    saved = tmp_path / "saved_run"
    shutil.copytree(Run.of(run).dir, saved)
    yield
    shutil.rmtree(Run.of(run).dir)
    shutil.copytree(saved, Run.of(run).dir)


def independent_probs(cfg, tta: list[str], merge: str, scales=(1.0,)) -> dict:
    """Each OOF image's probabilities under one candidate, computed directly: each fold's best.pt on
    its validation ids from folds.csv, tta_predict, resize to the image's size, uint8 as saved."""
    run = Run.of(cfg)
    folds = pd.read_csv(run.folds_csv, dtype={"id": str})
    samples = {s.id: s for s in load_train_samples(cfg)}
    out = {}
    for k in (0, 1):
        model, _ = load_model(run.fold_dir(k) / "best.pt")
        valid = [samples[i] for i in folds[folds.fold == k].id]
        loader = DataLoader(SegDataset(valid, cfg, "valid"), batch_size=3, collate_fn=collate)
        for batch in loader:
            with torch.no_grad():
                probs = tta_predict(model.eval(), batch["image"], cfg.data.task, tta, scales, merge=merge)
            for j, image_id in enumerate(batch["id"]):
                target = batch["target"][j]
                out[image_id] = (probs_to_uint8(resize_to(probs[j : j + 1], target.shape[-2:])[0]), target)
    return out


def independent_score(cfg, tta: list[str], merge: str, scales=(1.0,)) -> tuple[float, int]:
    """The untuned OOF score of one candidate: the config's post-processing on :func:`independent_probs`."""
    params = params_from_config(cfg)
    ev = Evaluator(cfg.metric, cfg.data.task, cfg.data.num_classes)
    probs = independent_probs(cfg, tta, merge, scales)
    for q, target in probs.values():
        ev.update_masks(torch.from_numpy(apply_postprocess(uint8_to_probs(q), cfg.data.task, params))[None], target[None])
    return float(ev.compute()["score"]), len(probs)


def test_scores_cover_every_pair_and_the_choice_is_the_argmax(run, chosen):
    scores = chosen["scores"]
    assert [(s["tta"], s["merge"]) for s in scores] == [(c, m) for c in CANDIDATES for m in MERGES]
    assert chosen["metric"] == "dice" and chosen["folds"] == [0, 1] and chosen["n_images"] == 12
    best = max(s["score"] for s in scores)
    tied = [s for s in scores if s["score"] == best]
    fewest = min(s["n_transforms"] for s in tied)
    first = next(s for s in tied if s["n_transforms"] == fewest)
    assert (chosen["tta"], chosen["merge"], chosen["score"]) == (first["tta"], first["merge"], best)
    # 12 OOF images of 2 folds: the cross-fitted score (5 seeded groups) is reported for every candidate
    assert all(s["cross_fitted"] is not None for s in scores) and chosen["cross_fitted_within_choice"] == first["cross_fitted"]
    # and the choice among them nested: each group scored through the set the other groups' images chose
    assert chosen["cross_fitted"] is not None and len(chosen["cross_fitted_picks"]) == 5
    # one transform: the merge modes give the same probabilities, so the same scores
    assert scores[0]["score"] == pytest.approx(scores[1]["score"], abs=1e-12)
    assert scores[0]["cross_fitted"] == pytest.approx(scores[1]["cross_fitted"], abs=1e-12)
    assert all(s["score"] >= s["untuned"] for s in scores)  # tuning includes the config's values
    assert chosen["postprocess"] == "tuned on each candidate's own OOF probabilities"
    assert all(len(s["fold_scores"]) == 2 for s in scores)
    print("\nOOF TTA scores:", [(s["tta"], s["merge"], round(s["score"], 6)) for s in scores], "->", chosen["tta"], chosen["merge"])


def test_tta_json_is_written(run, chosen):
    on_disk = json.loads((run.run_dir / "tta.json").read_text())
    assert {"tta", "merge", "scores", "metric"} <= set(on_disk)
    assert on_disk["tta"] == chosen["tta"] and on_disk["merge"] == chosen["merge"]
    assert [s["score"] for s in on_disk["scores"]] == [s["score"] for s in chosen["scores"]]
    # postprocess.json records the cv.json it was tuned beside: the one rescored on the chosen OOF files (it kept the
    # old cv.json's score, and report then called the fresh tuning stale)
    cv = json.loads((run.run_dir / "cv.json").read_text())
    assert json.loads((run.run_dir / "postprocess.json").read_text())["cv_json_score"] == cv["score"]


@pytest.mark.parametrize("pair", [0, 1, 2, 3])
def test_each_score_equals_an_independent_computation(run, chosen, pair):
    s = chosen["scores"][pair]
    score, n = independent_score(run, s["tta"], s["merge"])
    assert n == 12
    assert s["untuned"] == pytest.approx(score, abs=1e-9)


def test_the_winner_becomes_the_runs_oof_and_post_processing(run, chosen):
    """What is tuned is what is submitted: the run's OOF files are the chosen candidate's
    probabilities, postprocess.json is tuned on them, and cv.json scores them."""
    r = Run.of(run)
    want = independent_probs(run, chosen["tta"], chosen["merge"])
    for image_id, (q, _) in want.items():
        assert np.array_equal(np.load(r.oof_path(image_id)), q), image_id
    pp = read_json(r.postprocess_json)
    assert pp["after"] == pytest.approx(chosen["score"], abs=1e-12)
    # the winner's whole tuning report, cross-fitted score included, as `tune` on the new OOF files writes it
    assert pp["cross_fitted"]["score"] == pytest.approx(chosen["cross_fitted"], abs=1e-12)
    assert pp["cross_fitted"]["within_tta_choice"] == pytest.approx(chosen["cross_fitted_within_choice"], abs=1e-12)
    again = tune_postprocess(run, write=False)  # `tune` alone knows one TTA set: the score within it
    assert again["after"] == pytest.approx(chosen["score"], abs=1e-12)
    assert again["cross_fitted"]["score"] == pytest.approx(chosen["cross_fitted_within_choice"], abs=1e-12)
    assert again["params"] == pp["params"]
    cv = read_json(r.cv_json)
    assert cv["oof"]["tta"] == chosen["tta"] and cv["oof"]["merge"] == chosen["merge"]
    assert cv["score"] == pytest.approx(chosen["untuned"], abs=1e-9)
    assert not (r.dir / "tta_search").exists()  # the candidates' scratch files are gone
    # each fold's done.json scores the new files, as cv.json does (the report's per-fold table showed the old TTA's)
    assert [read_json(r.done_json(k))["oof_score"] for k in cv["folds"]] == cv["fold_scores"]


@pytest.mark.parametrize("cross_fit", [True, False])
def test_the_tuned_score_decides_the_cross_fitted_one_is_reported(run, monkeypatch, keep_run_files, cross_fit):
    """Candidate 0 tunes higher but holds up worse on images it was not tuned on (cross-fitted lower): the tuned
    score still decides (README: on the demo the cross-fitted choice scored lower on the hidden test), both are
    in tta.json, and the winner's report, cross-fitted score included, becomes postprocess.json."""
    import dataclasses

    import seg_toolkit.tune as tune_mod

    real = tune_mod.tune_postprocess
    made: dict[int, dict] = {}

    def rigged(cfg, run_dir=None, *, oof_dir=None, **kw):
        report = real(cfg, run_dir, oof_dir=oof_dir, **kw)
        i = int(Path(oof_dir).name.rsplit("_", 1)[-1])
        report["after"] = (0.9, 0.8)[i]
        if report["cross_fitted"] is not None:
            report["cross_fitted"] = {**report["cross_fitted"], "score": (0.6, 0.7)[i]}
        made[i] = report
        return report

    monkeypatch.setattr(tune_mod, "tune_postprocess", rigged)
    cfg = dataclasses.replace(run, postprocess=dataclasses.replace(run.postprocess, cross_fit=cross_fit))
    r = choose_tta(cfg, candidates=[["identity"], ["identity", "hflip"]], merges=["mean_prob"])
    assert [s["score"] for s in r["scores"]] == [0.9, 0.8] and r["tta"] == ["identity"]
    assert [s["cross_fitted"] for s in r["scores"]] == ([0.6, 0.7] if cross_fit else [None, None])
    assert r["cross_fitted_within_choice"] == (0.6 if cross_fit else None) and (r["cross_fitted"] is None) == (not cross_fit)
    on_disk = read_json(Run.of(run).postprocess_json)
    nested = {"score": r["cross_fitted"], "within_tta_choice": 0.6,
              "tta_choice": "nested: each group's TTA set chosen by the tuned score of the others"}
    assert on_disk["after"] == 0.9 and on_disk["cross_fitted"] == ({**made[0]["cross_fitted"], **nested} if cross_fit else None)


def test_scales_and_small_tta_batches_agree_with_tta_predict(run, keep_run_files):
    """predict.scales combine with every candidate, and chunking by max_tta_batch changes nothing."""
    import dataclasses

    cfg = dataclasses.replace(run, predict=dataclasses.replace(run.predict, scales=[1.0, 0.75], max_tta_batch=5))
    save_config(cfg, Run.of(run).config_yaml)  # the run's own scales, as `seg-toolkit oof --set predict.scales=...` records them
    r = choose_tta(cfg, candidates=[["identity", "transpose"]], merges=["mean_logit", "max"])
    assert r["scales"] == [1.0, 0.75] and r["scores"][0]["n_transforms"] == 4
    for s in r["scores"]:
        assert s["untuned"] == pytest.approx(independent_score(run, s["tta"], s["merge"], scales=(1.0, 0.75))[0], abs=1e-9)


def test_one_forward_pass_per_distinct_transform(run, monkeypatch, keep_run_files):
    """identity is shared by both candidates and both merges: 2 distinct transforms x 6 images per fold."""
    seen: list[int] = []

    def counting_load_model(path, **kw):
        model, cfg = load_model(path, **kw)
        model.register_forward_hook(lambda m, inp, out: seen.append(inp[0].shape[0]))
        return model, cfg

    monkeypatch.setattr(predictor_mod, "load_model", counting_load_model)
    r = choose_tta(run, candidates=CANDIDATES, merges=MERGES)
    assert sum(seen) == 2 * 12 == r["forward_passes"]  # not 4 candidates-merges x 1.5 transforms x 12


def test_never_reads_test_images(run, demo_root, monkeypatch, keep_run_files):
    read: list[Path] = []
    real_read = predictor_mod.read_image

    def recording_read(path, *a, **k):
        read.append(Path(path))
        return real_read(path, *a, **k)

    def refuse(*a, **k):
        raise AssertionError("choose_tta asked for the test samples")

    monkeypatch.setattr(predictor_mod, "read_image", recording_read)
    for mod in (data_pkg, sources_mod, inference_mod):
        monkeypatch.setattr(mod, "load_test_samples", refuse)
    choose_tta(run, candidates=[["identity"]], merges=["mean_prob"])
    assert len(read) == 12
    assert all(p.parent == Path(demo_root) / "train" / "images" for p in read)


def test_predict_follows_tta_json(run, monkeypatch, keep_run_files, caplog):
    calls: list[tuple[list[str], str]] = []
    real = predictor_mod.tta_predict

    def recording(model, images, task, transforms, scales, merge, max_batch):
        calls.append((list(transforms), merge))
        return real(model, images, task, transforms, scales, merge, max_batch)

    monkeypatch.setattr(predictor_mod, "tta_predict", recording)
    r = Run.of(run)
    saved = r.tta_json.read_text()
    samples = load_test_samples(run)[:2]
    # a choice edited by hand, other than the one the OOF files were made with
    r.tta_json.write_text(json.dumps({**json.loads(saved), "tta": ["identity", "vflip"], "merge": "mean_logit"}))
    assert tta_settings(run) == (["identity", "vflip"], "mean_logit")
    list(Predictor.from_run(r, device="cpu").iter_probs(samples))
    assert calls == [(["identity", "vflip"], "mean_logit")] * 2  # both folds
    calls.clear()
    out = predict_test(run, overwrite=True)
    assert calls and all(c == (["identity", "vflip"], "mean_logit") for c in calls)
    assert check_submission(out, Path(run.data.root) / "sample_submission.csv") == []
    assert "the OOF files" in caplog.text and "remake them with `seg-toolkit oof" in caplog.text
    # without tta.json: the config's
    r.tta_json.unlink()
    assert tta_settings(run) == (["identity"], "mean_prob")
    calls.clear()
    list(Predictor.from_run(r, device="cpu").iter_probs(samples[:1]))
    assert calls == [(["identity"], "mean_prob")] * 2


def test_bad_tta_json_and_bad_candidates_are_clear(run, tmp_path):
    cfg = config_from_dict(demo_dict(run.data.root, tmp_path / "runs"))
    cfg.run_dir.mkdir(parents=True)
    (cfg.run_dir / "tta.json").write_text(json.dumps({"tta": ["hflp"], "merge": "mean_prob"}))
    with pytest.raises(ConfigError, match=r"tta.json: not a TTA choice .*'hflp' \(did you mean 'hflip'\?\)"):
        tta_settings(cfg)
    (cfg.run_dir / "tta.json").write_text(json.dumps({"tta": ["hflip"], "merge": "median"}))
    with pytest.raises(ConfigError, match="merge 'median' is not one of"):
        tta_settings(cfg)
    with pytest.raises(ConfigError, match="'vflipp' \\(did you mean 'vflip'\\?\\)"):
        choose_tta(run, candidates=[["vflipp"]])
    with pytest.raises(ConfigError, match="unknown merge mode 'mean_probs' \\(did you mean 'mean_prob'\\?\\)"):
        choose_tta(run, merges=["mean_probs"])
    with pytest.raises(FileNotFoundError, match="no completed fold"):
        choose_tta(cfg)


def test_scales_other_than_the_runs_are_refused_before_anything_is_rewritten(run, keep_run_files):
    """`tune --tta --set predict.scales=[1.0,1.25]` once re-predicted the OOF images at those scales and tuned on them,
    while predict kept the run's [1.0]: the OOF files, tuning and submission no longer matched."""
    import dataclasses

    from seg_toolkit.cli import main

    before = {p.name: p.read_bytes() for p in (Run.of(run).postprocess_json, Run.of(run).cv_json)}
    other = dataclasses.replace(run, predict=dataclasses.replace(run.predict, scales=[1.0, 1.25]))
    with pytest.raises(ConfigError, match=r"predict.scales: \[1.0\] -> \[1.0, 1.25\].*seg-toolkit oof CONFIG --set"):
        choose_tta(other, candidates=CANDIDATES, merges=MERGES)
    cfg_path = run.run_dir.parent / "config_for_cli.yaml"
    save_config(run, cfg_path)
    assert main(["tune", str(cfg_path), "--tta", "--set", "predict.scales=[1.0,1.25]"]) == 2
    assert {p.name: p.read_bytes() for p in (Run.of(run).postprocess_json, Run.of(run).cv_json)} == before
    assert not Run.of(run).tta_json.exists() or json.loads(Run.of(run).tta_json.read_text())["scales"] == [1.0]
    # what tune --tta chooses itself may differ from the run's config; plain tune reads only the OOF files
    chosen_elsewhere = dataclasses.replace(run, predict=dataclasses.replace(run.predict, tta=["identity", "vflip"], merge="max"))
    assert choose_tta(chosen_elsewhere, candidates=[["identity"]], merges=["mean_prob"])["tta"] == ["identity"]
    assert main(["tune", str(cfg_path), "--set", "predict.scales=[1.0,1.25]"]) == 0


def test_cli_tune_tta_prints_the_table(run, capsys, keep_run_files):
    from seg_toolkit.cli import main

    cfg_path = run.run_dir.parent / "config_for_cli.yaml"
    save_config(run, cfg_path)
    assert main(["tune", str(cfg_path), "--tta"]) == 0
    out = capsys.readouterr().out
    r = json.loads(Run.of(run).tta_json.read_text())
    assert [s["tta"] for s in r["scores"]][::2] == [["identity"], ["identity", "hflip"], ["identity", "hflip", "vflip"], ["d4"]]
    assert "OOF TTA choice (dice, 12 OOF images, folds [0, 1]; post-processing tuned per candidate" in out
    for s in r["scores"]:
        assert f"{' '.join(s['tta'])}" in out and f"{s['untuned']:>8.4f} {s['score']:>8.4f}" in out
    assert out.count("<- chosen") == 1
    assert "d4" in out and r["forward_passes"] == 8 * 12  # d4 holds the other candidates' transforms


def test_ties_go_to_fewer_transforms_and_nan_never_wins():
    from seg_toolkit.tta_search import _better

    assert _better(0.5, 1, (0.5, 2)) and not _better(0.5, 2, (0.5, 1)) and not _better(0.5, 1, (0.5, 1))
    assert _better(0.6, 8, (0.5, 1)) and not _better(float("nan"), 1, (0.1, 8)) and _better(0.1, 8, (float("nan"), 1))
    assert _better(0.0, 8, None)
    # scores equal but for float summation order are a tie: fewer transforms win (0.1 + 0.2 is 0.30000000000000004)
    assert not _better(0.1 + 0.2, 8, (0.3, 1)) and _better(0.3, 1, (0.1 + 0.2, 8))


def test_a_tune_tta_stopped_while_moving_its_files_in_is_refused_until_run_again(run, monkeypatch, keep_run_files, tmp_path):
    """Stopped half-way through moving the winner's OOF files into oof/, the run held files of two TTA choices beside
    the old tta.json and postprocess.json, and predict used them silently: now oof_incomplete.json refuses it."""
    from seg_toolkit.errors import SegToolkitError

    r = Run.of(run)
    original, moved = Path.replace, [0]

    def replace(self, target):
        if Path(target).parent == r.oof_dir:
            moved[0] += 1
            if moved[0] == 3:
                raise KeyboardInterrupt
        return original(self, target)

    monkeypatch.setattr(Path, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        choose_tta(run, candidates=CANDIDATES, merges=MERGES)
    monkeypatch.setattr(Path, "replace", original)
    assert json.loads(r.oof_incomplete_json.read_text())["command"] == f"seg-toolkit tune {r.dir} --tta"
    assert not r.tta_search_root.exists()  # the scratch folder is gone: the mix can only be undone by choosing again
    for call in (lambda: tune_postprocess(run), lambda: predict_test(run, out=tmp_path / "sub.csv")):
        with pytest.raises(SegToolkitError, match=r"were being rewritten by `seg-toolkit tune .* --tta`.*Run `seg-toolkit tune"):
            call()
    choose_tta(run, candidates=CANDIDATES, merges=MERGES)  # the remedy: every file rewritten, the marker gone
    assert not r.oof_incomplete_json.exists()
    tune_postprocess(run)
    predict_test(run, out=tmp_path / "sub.csv")


def test_training_a_fold_with_other_predict_settings_than_the_trained_folds_is_refused(run, keep_run_files):
    """`train --fold 1 --set predict.tta=[...]` (or `--resume --set ...`) once trained with the new TTA beside folds whose
    OOF files used the old one, and saved it as the run's: post-processing was then tuned on a mix."""
    import dataclasses

    from seg_toolkit.run_guard import RunExistsError

    other = dataclasses.replace(run, predict=dataclasses.replace(run.predict, tta=["identity", "hflip"]))
    before = Run.of(run).config_yaml.read_bytes()
    for resume in (False, True):
        with pytest.raises(RunExistsError, match=r"fold\(s\) \[0, 1\] made their OOF files with other predict settings "
                                                 r"\(predict.tta: .*seg-toolkit oof CONFIG --set"):
            run_cv(other, folds=[1], resume=resume)
    assert Run.of(run).config_yaml.read_bytes() == before
    run_cv(dataclasses.replace(run, predict=dataclasses.replace(run.predict, batch_size=3)), folds=[1], resume=True)  # others may change


def test_a_fold_trained_after_tune_tta_makes_its_oof_as_the_choice_rewrote_the_others(demo_root, tmp_path):
    """`predict.oof_tta: identity`, fold 0, `tune --tta`, then fold 1: fold 1's OOF files were identity while fold 0's
    had been rewritten with the chosen TTA, and the post-processing was tuned on the mix."""
    cfg = config_from_dict(demo_dict(demo_root, tmp_path / "runs", train={"epochs": 1, "batch_size": 2, "num_workers": 0},
                                     optim={"lr": 0.05}, scheduler={"name": "none"}, predict={"oof_tta": "identity"}))
    run_cv(cfg, folds=[0])
    chosen = choose_tta(cfg, candidates=[["identity", "hflip"]], merges=["mean_logit"])
    run_cv(cfg, folds=[1])
    made = read_json(Run.of(cfg).cv_json)["oof"]
    assert isinstance(made, dict) and (made["tta"], made["merge"]) == (chosen["tta"], chosen["merge"]) == (["identity", "hflip"], "mean_logit")
    assert read_json(Run.of(cfg).done_json(1))["oof"] == made


def test_an_oof_remake_stopped_while_tuning_is_refused_until_run_again(demo_root, tmp_path, monkeypatch):
    """`oof --set predict.tta=[identity, hflip]` stopped in its tuning left new OOF files, config and cv.json beside the
    postprocess.json tuned on the old ones, with no mark: predict applied the old thresholds without a word."""
    import dataclasses

    import seg_toolkit.tune as tune_mod
    from seg_toolkit.errors import SegToolkitError
    from seg_toolkit.oof import remake_oof

    cfg = config_from_dict(demo_dict(demo_root, tmp_path / "runs", train={"epochs": 1, "batch_size": 2, "num_workers": 0}))
    run_cv(cfg)
    r = Run.of(cfg)
    old = read_json(r.postprocess_json)
    hflip = dataclasses.replace(cfg, predict=dataclasses.replace(cfg.predict, tta=["identity", "hflip"]))

    def stopped(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(tune_mod, "tune_postprocess", stopped)
    with pytest.raises(KeyboardInterrupt):
        remake_oof(hflip)
    monkeypatch.undo()
    assert read_json(r.postprocess_json) == old and r.config().predict.tta == ["identity", "hflip"]
    with pytest.raises(SegToolkitError, match=r"were being rewritten by `seg-toolkit oof .*`.*Run `seg-toolkit oof"):
        predict_test(hflip, out=tmp_path / "sub.csv")
    cv = remake_oof(hflip)  # the remedy: OOF, config, cv.json and postprocess.json made again together
    assert not r.oof_incomplete_json.exists() and cv["postprocess"] == read_json(r.postprocess_json)
    predict_test(hflip, out=tmp_path / "sub.csv")


@pytest.mark.parametrize("merge", ["mean_prob", "mean_logit"])
def test_tune_tta_probabilities_are_predicts_bit_for_bit(run, merge):
    """The candidate path (what `tune --tta` writes as the run's OOF files) and the predictor's own path (evaluate,
    predict, `oof`) give the same float32 probabilities, not just close ones: on 48x64 images identity and transpose
    go to the model in different shape groups, so a plain mean over [identity, transpose, hflip] summed them in
    another order than the predictor (1.2e-7 apart, now and then a 1/255 step of the OOF files); a TTA batch of 3
    splits each variant's 6 images into chunks too."""
    import dataclasses

    from seg_toolkit.predictor import Member

    cfg = dataclasses.replace(run, predict=dataclasses.replace(run.predict, max_tta_batch=3))
    r, samples = Run.of(run), load_train_samples(run)
    fold_of = r.fold_of()
    tta = ["identity", "transpose", "hflip"]
    for k in (0, 1):
        mine = [s for s in samples if fold_of[s.id] == k]
        cand = {i: p[0] for i, p, _, _ in Predictor([Member.load(r, cfg=cfg, folds=[k])]).iter_candidate_probs(
            mine, k, [(tta, merge)])}
        own = Predictor([Member.load(r, cfg=cfg, folds=[k], tta=tta, merge=merge)])
        got = {i: p for i, p, _ in own.iter_probs(mine, fold=k)}
        assert got.keys() == cand.keys() and len(got) == 6
        for i, p in got.items():
            assert torch.equal(p, cand[i]), (i, float((p - cand[i]).abs().max()))


def test_the_tta_choice_is_nested_in_the_cross_fitted_score():
    """tune --tta chose its set on every image's tuned score and reported the winner's own cross-fitted score: the
    choice saw every group's labels (changing fold 0's labels changed the set fold 0 was scored through, 0.540 ->
    0.723). Group g now takes the set whose parameters tuned without g score best on the other groups (REST[g]), and
    is scored with that set's counts. Worked by hand: 3 groups of 2 images, score = mean of the per-image values."""
    from seg_toolkit.tune_crossfit import COUNTS, REST, Counts, nested_choice

    groups = np.array([0, 0, 1, 1, 2, 2])

    def score(arrays, rows=None):
        (v,) = arrays
        return float(v.mean() if rows is None else v[rows].mean())

    a = {COUNTS: Counts(score, (np.array([1.0, 1.0, 0.2, 0.2, 0.5, 0.5]),)), REST: [0.3, 0.9, 0.6]}
    b = {COUNTS: Counts(score, (np.array([0.0, 0.0, 0.8, 0.8, 0.7, 0.7]),)), REST: [0.4, 0.1, 0.6]}
    got, picks = nested_choice(groups, [a, b], lambda g, i, j: [a, b][i][REST][g] > [a, b][j][REST][g])
    # group 0: b (0.4 > 0.3) -> 0.0, 0.0; group 1: a (0.9 > 0.1) -> 0.2, 0.2; group 2: a tie keeps the first -> 0.5, 0.5
    assert picks == [1, 0, 0] and got == pytest.approx((0 + 0 + 0.2 + 0.2 + 0.5 + 0.5) / 6)


def test_the_runs_own_tta_setting_is_always_a_candidate(demo_root, tmp_path):
    """The parity audit: the default candidates are a fixed list, so a run predicting with [identity, transpose]
    could have it replaced by a set that scored lower, its own never scored. It is one of the candidates now."""
    from seg_toolkit.tta_search import DEFAULT_CANDIDATES, DEFAULT_MERGES

    cfg = config_from_dict(demo_dict(demo_root, tmp_path / "runs", train={"epochs": 1, "batch_size": 2},
                                     predict={"batch_size": 4, "tta": ["identity", "transpose"], "merge": "mean_logit"},
                                     postprocess={"tune": True, "cross_fit": False}))
    before = run_cv(cfg)["score"]  # the OOF files made with the run's own setting
    result = choose_tta(cfg)
    pairs = [(s["tta"], s["merge"]) for s in result["scores"]]
    assert pairs == [(c, m) for c in DEFAULT_CANDIDATES for m in DEFAULT_MERGES] + [(["identity", "transpose"], "mean_logit")]
    own = result["scores"][-1]
    assert own["untuned"] == pytest.approx(before, abs=1e-12)  # the same probabilities as the OOF files it had
    assert result["score"] >= own["score"]  # the choice never scores below the setting it replaces
