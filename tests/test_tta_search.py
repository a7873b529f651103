"""Choosing the TTA set and merge mode by OOF score (``choose_tta``, ``tune --tta``) and its use in prediction."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

import seg_toolkit.data as data_pkg
import seg_toolkit.data.dataset as dataset_mod
import seg_toolkit.data.sources as sources_mod
import seg_toolkit.inference as inference_mod
import seg_toolkit.tta_search as tta_search_mod
from seg_toolkit.checkpoint import load_model
from seg_toolkit.config import ConfigError, config_from_dict, save_config
from seg_toolkit.cv import run_cv
from seg_toolkit.data import SegDataset, collate, load_train_samples
from seg_toolkit.inference import load_members, predict_probs, predict_test, tta_settings
from seg_toolkit.metrics import Evaluator
from seg_toolkit.postprocess import apply_postprocess, load_params
from seg_toolkit.submission import check_submission
from seg_toolkit.tensors import resize_to
from seg_toolkit.tta import tta_predict
from seg_toolkit.tta_search import choose_tta

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
def keep_run_files(run, chosen):
    """Tests that rewrite tta.json / postprocess.json leave the module's run as they found it."""
    paths = [run.run_dir / n for n in ("tta.json", "postprocess.json")]
    saved = {q: q.read_text() for q in paths}
    yield
    for q, text in saved.items():
        q.write_text(text)


def independent_score(cfg, tta: list[str], merge: str, scales=(1.0,)) -> tuple[float, int]:
    """The OOF score of one candidate, computed directly: each fold's best.pt on its validation
    ids from folds.csv, tta_predict, resize, apply_postprocess (postprocess.json), Evaluator."""
    run = cfg.run_dir
    folds = pd.read_csv(run / "folds.csv", dtype={"id": str})
    samples = {s.id: s for s in load_train_samples(cfg)}
    params = load_params(cfg, run)
    ev = Evaluator(cfg.metric, cfg.data.task, cfg.data.num_classes)
    n = 0
    for k in (0, 1):
        model, _ = load_model(run / f"fold_{k}" / "best.pt")
        valid = [samples[i] for i in folds[folds.fold == k].id]
        loader = DataLoader(SegDataset(valid, cfg, "valid"), batch_size=3, collate_fn=collate)
        for batch in loader:
            with torch.no_grad():
                probs = tta_predict(model.eval(), batch["image"], cfg.data.task, tta, scales, merge=merge)
            for j in range(probs.shape[0]):
                target = batch["target"][j]
                p = resize_to(probs[j : j + 1], target.shape[-2:])[0].numpy()
                ev.update_masks(torch.from_numpy(apply_postprocess(p, cfg.data.task, params))[None], target[None])
                n += 1
    return float(ev.compute()["score"]), n


def test_scores_cover_every_pair_and_the_choice_is_the_argmax(run, chosen):
    scores = chosen["scores"]
    assert [(s["tta"], s["merge"]) for s in scores] == [(c, m) for c in CANDIDATES for m in MERGES]
    assert chosen["metric"] == "dice" and chosen["folds"] == [0, 1] and chosen["n_images"] == 12
    best = max(s["score"] for s in scores)
    tied = [s for s in scores if s["score"] == best]
    fewest = min(s["n_transforms"] for s in tied)
    first = next(s for s in tied if s["n_transforms"] == fewest)
    assert (chosen["tta"], chosen["merge"], chosen["score"]) == (first["tta"], first["merge"], best)
    # one transform: the merge modes give the same probabilities, so the same score
    assert scores[0]["score"] == pytest.approx(scores[1]["score"], abs=1e-12)
    assert chosen["postprocess"] == str(run.run_dir / "postprocess.json")
    assert all(len(s["fold_scores"]) == 2 for s in scores)
    print("\nOOF TTA scores:", [(s["tta"], s["merge"], round(s["score"], 6)) for s in scores], "->", chosen["tta"], chosen["merge"])


def test_tta_json_is_written(run, chosen):
    on_disk = json.loads((run.run_dir / "tta.json").read_text())
    assert {"tta", "merge", "scores", "metric"} <= set(on_disk)
    assert on_disk["tta"] == chosen["tta"] and on_disk["merge"] == chosen["merge"]
    assert [s["score"] for s in on_disk["scores"]] == [s["score"] for s in chosen["scores"]]


@pytest.mark.parametrize("pair", [0, 1, 2, 3])
def test_each_score_equals_an_independent_computation(run, chosen, pair):
    s = chosen["scores"][pair]
    score, n = independent_score(run, s["tta"], s["merge"])
    assert n == 12
    assert s["score"] == pytest.approx(score, abs=1e-9)


def test_scales_and_small_tta_batches_agree_with_tta_predict(run, keep_run_files):
    """predict.scales combine with every candidate, and chunking by max_tta_batch changes nothing."""
    import dataclasses

    cfg = dataclasses.replace(run, predict=dataclasses.replace(run.predict, scales=[1.0, 0.75], max_tta_batch=5))
    r = choose_tta(cfg, candidates=[["identity", "transpose"]], merges=["mean_logit", "max"])
    assert r["scales"] == [1.0, 0.75] and r["scores"][0]["n_transforms"] == 4
    for s in r["scores"]:
        assert s["score"] == pytest.approx(independent_score(run, s["tta"], s["merge"], scales=(1.0, 0.75))[0], abs=1e-9)


def test_one_forward_pass_per_distinct_transform(run, monkeypatch, keep_run_files):
    """identity is shared by both candidates and both merges: 2 distinct transforms x 6 images per fold."""
    seen: list[int] = []

    def counting_load_model(path, **kw):
        model, cfg = load_model(path, **kw)
        model.register_forward_hook(lambda m, inp, out: seen.append(inp[0].shape[0]))
        return model, cfg

    monkeypatch.setattr(tta_search_mod, "load_model", counting_load_model)
    r = choose_tta(run, candidates=CANDIDATES, merges=MERGES)
    assert sum(seen) == 2 * 12 == r["forward_passes"]  # not 4 candidates-merges x 1.5 transforms x 12


def test_never_reads_test_images(run, demo_root, monkeypatch, keep_run_files):
    read: list[Path] = []
    real_read = dataset_mod.read_image

    def recording_read(path, *a, **k):
        read.append(Path(path))
        return real_read(path, *a, **k)

    def refuse(*a, **k):
        raise AssertionError("choose_tta asked for the test samples")

    monkeypatch.setattr(dataset_mod, "read_image", recording_read)
    for mod in (data_pkg, sources_mod, inference_mod):
        monkeypatch.setattr(mod, "load_test_samples", refuse)
    choose_tta(run, candidates=[["identity"]], merges=["mean_prob"])
    assert len(read) == 12
    assert all(p.parent == Path(demo_root) / "train" / "images" for p in read)


def test_predict_follows_tta_json(run, monkeypatch, keep_run_files):
    calls: list[tuple[list[str], str]] = []
    real = inference_mod.tta_predict

    def recording(model, images, task, transforms, scales, merge, max_batch):
        calls.append((list(transforms), merge))
        return real(model, images, task, transforms, scales, merge, max_batch)

    monkeypatch.setattr(inference_mod, "tta_predict", recording)
    path = run.run_dir / "tta.json"
    saved = path.read_text()
    # a choice that differs from the config's (identity, mean_prob)
    path.write_text(json.dumps({**json.loads(saved), "tta": ["identity", "vflip"], "merge": "mean_logit"}))
    assert tta_settings(run) == (["identity", "vflip"], "mean_logit")
    members = load_members([run], None, torch.device("cpu"))
    predict_probs(members, torch.zeros(2, 3, 48, 64), run.data.task)
    assert calls == [(["identity", "vflip"], "mean_logit")] * 2  # both folds
    calls.clear()
    out = predict_test([run])
    assert calls and all(c == (["identity", "vflip"], "mean_logit") for c in calls)
    assert check_submission(out, Path(run.data.root) / "sample_submission.csv") == []
    # without tta.json: the config's
    path.unlink()
    assert tta_settings(run) == (["identity"], "mean_prob")
    calls.clear()
    predict_probs(load_members([run], None, torch.device("cpu")), torch.zeros(1, 3, 48, 64), run.data.task)
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


def test_cli_tune_tta_prints_the_table(run, capsys, keep_run_files):
    from seg_toolkit.cli import main

    cfg_path = run.run_dir / "config_for_cli.yaml"
    save_config(run, cfg_path)
    assert main(["tune", str(cfg_path), "--tta"]) == 0
    out = capsys.readouterr().out
    r = json.loads((run.run_dir / "tta.json").read_text())
    assert [s["tta"] for s in r["scores"]][::2] == [["identity"], ["identity", "hflip"], ["identity", "hflip", "vflip"], ["d4"]]
    assert "OOF TTA choice (dice, 12 OOF images, folds [0, 1]" in out
    for s in r["scores"]:
        assert f"{' '.join(s['tta'])}" in out and f"{s['score']:.4f}" in out
    assert out.count("<- chosen") == 1
    assert "d4" in out and r["forward_passes"] == 8 * 12  # d4 holds the other candidates' transforms


def test_ties_go_to_fewer_transforms_and_nan_never_wins():
    from seg_toolkit.tta_search import _better

    assert _better(0.5, 1, (0.5, 2)) and not _better(0.5, 2, (0.5, 1)) and not _better(0.5, 1, (0.5, 1))
    assert _better(0.6, 8, (0.5, 1)) and not _better(float("nan"), 1, (0.1, 8)) and _better(0.1, 8, (float("nan"), 1))
    assert _better(0.0, 8, None)
