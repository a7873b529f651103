"""Prediction: streaming with bounded memory, weighted ensembles, and the submission conventions."""

from __future__ import annotations

import json
import resource
import tracemalloc
import weakref
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import seg_toolkit.inference as inference_mod
import seg_toolkit.predictor as predictor_mod
from seg_toolkit.checkpoint import load_model, save_checkpoint
from seg_toolkit.cli import main
from seg_toolkit.config import ConfigError, config_from_dict, config_to_dict, save_config
from seg_toolkit.data.demo import make_demo
from seg_toolkit.data import load_test_samples
from seg_toolkit.inference import predict_test
from seg_toolkit.predictor import Member, Predictor
from seg_toolkit.rle import rle_decode
from seg_toolkit.run import Run
from seg_toolkit.submission import SubmissionError
from seg_toolkit.submission import SubmissionWriter, mask_rows
from seg_toolkit.submission_check import check_submission
from seg_toolkit.train import build_model_and_ema

from .conftest import demo_dict


def fake_run(cfg, seeds=(0,)) -> None:
    """Completed folds without training: a freshly initialised model per fold (seeded), saved the way
    ``train.save_epoch`` saves ``best.pt``, a ``done.json`` and the run's config.yaml. Enough to predict."""
    run = Run.of(cfg)
    run.dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run.config_yaml)
    for k, seed in enumerate(seeds):
        torch.manual_seed(seed)
        model, _ = build_model_and_ema(cfg, torch.device("cpu"))
        with torch.no_grad():  # a non-trivial output: random biases instead of zeros
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.1)
        run.fold_dir(k).mkdir(parents=True, exist_ok=True)
        save_checkpoint({"model": model.state_dict(), "ema": None, "config": config_to_dict(cfg),
                         "model_args": {"num_classes": cfg.data.num_classes, "in_channels": cfg.data.in_channels},
                         "epoch": 1, "best_score": 0.0}, run.best_pt(k))
        run.done_json(k).write_text(json.dumps({"fold": k, "metric": "dice", "oof_score": 0.0}))


# ----------------------------------------------------------------------------- streaming, bounded memory


class AliveCounter:
    """Counts tensors alive (weakref finalizers) and the most alive at once."""

    def __init__(self) -> None:
        self.alive = self.peak = self.total = 0

    def track(self, t: torch.Tensor) -> torch.Tensor:
        self.alive += 1
        self.total += 1
        self.peak = max(self.peak, self.alive)
        weakref.finalize(t, self._gone)
        return t

    def _gone(self) -> None:
        self.alive -= 1


@pytest.fixture(scope="module")
def big_test(tmp_path_factory):
    """400 test images of 32x32 (3 rows each in the sample) and a 200-image sample over the first 200."""
    root = make_demo(tmp_path_factory.mktemp("big"), n_train=2, n_test=400, height=32, width=32, seed=5)
    sample = pd.read_csv(root / "sample_submission.csv", dtype=str, keep_default_na=False)
    sample.iloc[: 3 * 200].to_csv(root / "sample_200.csv", index=False)
    return root


def _measure(cfg, monkeypatch) -> dict:
    batches, images = AliveCounter(), AliveCounter()
    real_probs, real_iter = Predictor._member_probs, Predictor.iter_predictions

    def probs_tracked(*a, **k):
        return batches.track(real_probs(*a, **k))

    def iter_tracked(*a, **k):
        for image_id, p, presence, target in real_iter(*a, **k):
            yield image_id, images.track(p), presence, target

    monkeypatch.setattr(Predictor, "_member_probs", probs_tracked)
    monkeypatch.setattr(Predictor, "iter_predictions", iter_tracked)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        out = predict_test(cfg, overwrite=True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return {"out": out, "peak": peak - base, "batches": batches.peak, "images": images.peak, "n": images.total,
            "rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0}


def _n_and_2n(big_test, runs):
    """Configs predicting the first 200 and all 400 test images with the same (fake) trained run."""
    base = demo_dict(big_test, runs, predict={"batch_size": 16}, train={"num_workers": 0})
    cfg_n = config_from_dict({**base, "data": {**base["data"], "sample_submission": "sample_200.csv"},
                              "submission": {**base["submission"], "path": str(runs / "sub200.csv")}})
    cfg_2n = config_from_dict({**base, "submission": {**base["submission"], "path": str(runs / "sub400.csv")}})
    fake_run(cfg_2n)
    return cfg_n, cfg_2n


def test_streaming_memory_is_flat_when_the_test_set_doubles(big_test, tmp_path, monkeypatch):
    cfg_n, cfg_2n = _n_and_2n(big_test, tmp_path / "runs")
    predict_test(cfg_n)  # warm-up: imports, caches, first-call allocations
    m_n = _measure(cfg_n, monkeypatch)
    monkeypatch.undo()
    m_2n = _measure(cfg_2n, monkeypatch)
    print(f"\nstreaming: N=200 peak {m_n['peak'] / 1e6:.3f} MB (maxrss +{m_n['rss_kb']} kB); "
          f"2N=400 peak {m_2n['peak'] / 1e6:.3f} MB (maxrss +{m_2n['rss_kb']} kB); "
          f"most alive: batch probs {m_n['batches']}/{m_2n['batches']}, image probs {m_n['images']}/{m_2n['images']}")
    assert (m_n["n"], m_2n["n"]) == (200, 400)
    assert check_submission(m_2n["out"], big_test / "sample_submission.csv") == []
    assert len(pd.read_csv(m_2n["out"])) == 1200
    # one batch of probabilities (and the image being written) alive at a time, whatever N
    assert m_n["batches"] == m_2n["batches"] <= 2
    assert m_n["images"] == m_2n["images"] <= 2
    # Python/NumPy peak: per-image data of all N images would add >= 3 kB x 200 (uint8 masks);
    # the O(N) that remains is the sample's ids (3 strings per image)
    assert m_2n["peak"] < 1.2 * m_n["peak"] + 200_000


def test_the_memory_check_sees_a_leak(big_test, tmp_path, monkeypatch):
    """Control: keep every image's mask (as a leaky writer would) and the bound above fails."""
    cfg_n, cfg_2n = _n_and_2n(big_test, tmp_path / "runs")
    kept: list[np.ndarray] = []
    real = inference_mod.apply_postprocess

    def leaky(*a, **k):
        kept.append(real(*a, **k))
        return kept[-1]

    peaks = []
    for cfg in (cfg_n, cfg_2n):
        kept.clear()
        monkeypatch.setattr(inference_mod, "apply_postprocess", leaky)
        peaks.append(_measure(cfg, monkeypatch)["peak"])
        monkeypatch.undo()
    print(f"\nleaky control: N=200 peak {peaks[0] / 1e6:.3f} MB; 2N=400 peak {peaks[1] / 1e6:.3f} MB")
    assert not peaks[1] < 1.2 * peaks[0] + 200_000


# ----------------------------------------------------------------------------- ensembles


@pytest.fixture
def two_experiments(demo_root, tmp_path):
    runs = tmp_path / "runs"
    a = config_from_dict(demo_dict(demo_root, runs, experiment="a"))
    b = config_from_dict(demo_dict(demo_root, runs, experiment="b", model={"arch": "scratch_unet", "depth": 2, "base_width": 6}))
    fake_run(a, seeds=(1, 2))
    fake_run(b, seeds=(3,))
    paths = []
    for cfg in (a, b):
        save_config(cfg, tmp_path / f"{cfg.experiment}.yaml")
        paths.append(str(tmp_path / f"{cfg.experiment}.yaml"))
    return a, b, paths


def _probs(predictor: Predictor, cfg, n=2) -> torch.Tensor:
    return torch.stack([p for _, p, _ in predictor.iter_probs(load_test_samples(cfg)[:n])])


def test_ensemble_probabilities_are_the_weighted_mean(two_experiments):
    a, b, _ = two_experiments
    ra, rb = Run.of(a), Run.of(b)
    pa = _probs(Predictor([Member.load(ra)], device="cpu"), a)
    pb = _probs(Predictor([Member.load(rb)], device="cpu"), a)
    # pA is the mean of the two folds' sigmoids, computed without the toolkit's predictor
    from seg_toolkit.data import SegDataset, collate

    ds = SegDataset(load_test_samples(a)[:2], a, "test")
    images = collate([ds[i] for i in range(2)])["image"]
    folds = [load_model(ra.best_pt(k))[0] for k in (0, 1)]
    with torch.no_grad():
        assert torch.allclose(pa, sum(torch.sigmoid(m(images)) for m in folds) / 2, atol=1e-6)
    assert (pa - pb).abs().max() > 0.01  # the experiments disagree, so the weights matter
    both = Predictor([Member.load(ra, weight=0.6), Member.load(rb, weight=0.4)], device="cpu")
    assert both.weights == pytest.approx([0.6, 0.4])
    def grid(p):  # the OOF files' 1/255 grid, where the members' OOF files merge for tuning
        return (p * 255).round() / 255

    assert torch.allclose(_probs(both, a), 0.6 * grid(pa) + 0.4 * grid(pb), atol=1e-6)
    # weights are normalised: 3:2 is 0.6:0.4
    normalised = Predictor([Member.load(ra, weight=3), Member.load(rb, weight=2)], device="cpu")
    assert normalised.weights == pytest.approx([0.6, 0.4])
    assert torch.allclose(_probs(normalised, a), 0.6 * grid(pa) + 0.4 * grid(pb), atol=1e-6)
    # logit space: sigmoid of the weighted mean of each member's logits, a member's prediction being its folds'
    # mean probability as it predicts alone (pa, pb; it was the mean of every fold's logits: sharper than a's own),
    # each on the OOF files' 1/255 grid, at least half a step from 0 and 1
    def grid_logit(p):
        return torch.logit(((p * 255).round() / 255).clamp(0.5 / 255, 1 - 0.5 / 255))

    logit = Predictor([Member.load(ra, weight=0.6), Member.load(rb, weight=0.4)], space="logit", device="cpu")
    want = torch.sigmoid(0.6 * grid_logit(pa) + 0.4 * grid_logit(pb))
    assert torch.allclose(_probs(logit, a), want, atol=1e-5)
    alone = Predictor([Member.load(ra)], space="logit", device="cpu")  # one member: its own prediction, as it is
    assert torch.equal(_probs(alone, a), pa)


def test_wrong_weights_are_a_clear_error(two_experiments, tmp_path, capsys):
    a, b, paths = two_experiments
    out = tmp_path / "never.csv"
    assert main(["ensemble", *paths, "--weights", "1", "--out", str(out)]) == 2
    assert "error: --weights: 1 weights for 2 experiments" in capsys.readouterr().err
    assert main(["ensemble", *paths, "--weights", "1", "-1", "--out", str(out)]) == 2
    assert "expected finite non-negative weights" in capsys.readouterr().err
    for bad in ("nan", "inf"):  # NaN passed both checks (w < 0 and sum <= 0 are false): an all-empty submission, exit 0
        assert main(["ensemble", *paths, "--weights", bad, "1", "--out", str(out)]) == 2
        assert "expected finite non-negative weights" in capsys.readouterr().err
    assert not out.exists()
    for bad in (-1, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="expected finite non-negative weights with a positive sum"):
            Predictor([Member.load(Run.of(a), weight=1), Member.load(Run.of(b), weight=bad)], device="cpu")


def test_an_ensemble_json_with_bad_members_is_named(tmp_path):
    ens = Run(tmp_path)
    for members, message in (([{"run": "../a", "weight": "x"}], "expected members as"), ([{"weight": 1}], "expected members as"),
                             ([{"run": "../a", "weight": float("nan")}], "must be finite and non-negative")):
        ens.ensemble_json.write_text(json.dumps({"members": members}))
        with pytest.raises(ConfigError, match=message):
            ens.members()


def test_a_run_whose_config_and_checkpoints_disagree_is_refused(two_experiments, tmp_path):
    """The run's config.yaml edited (mean/std: the submission changed silently, exit 0) or another run's best.pt copied
    into a fold (a conv traceback): preprocessing comes from one, the model from the other, so the pair is checked."""
    import shutil

    a, b, _ = two_experiments
    run = Run.of(a)
    text = run.config_yaml.read_text()
    edited = config_from_dict({**config_to_dict(a), "transforms": {**config_to_dict(a)["transforms"], "mean": [0.1, 0.2, 0.3]}})
    save_config(edited, run.config_yaml)
    with pytest.raises(ConfigError, match=r"fold_0/best.pt was trained with other settings than .*config.yaml says "
                                          r"\(transforms.mean: "):
        predict_test(run.config(), out=tmp_path / "x.csv")
    run.config_yaml.write_text(text)
    shutil.copyfile(Run.of(b).best_pt(0), run.best_pt(1))  # b's smaller U-Net in a's fold 1
    with pytest.raises(ConfigError, match=r"fold_1/best.pt was trained with other settings .*model.base_width"):
        predict_test(run.config(), out=tmp_path / "x.csv")
    assert not (tmp_path / "x.csv").exists()


def test_a_scored_fold_that_is_gone_stops_predict(two_experiments, tmp_path):
    """A fold folder moved away: predict submitted with the other fold (exit 0) while cv.json scored both."""
    import dataclasses
    import os

    a, _, _ = two_experiments
    run = Run.of(a)
    run.cv_json.write_text(json.dumps({"score": 0.5, "folds": [0, 1]}))
    os.replace(run.fold_dir(1), tmp_path / "fold_1_aside")
    with pytest.raises(FileNotFoundError, match=r"fold\(s\) \[1\] are scored in cv.json but have no finished model"):
        predict_test(a, out=tmp_path / "x.csv")
    os.replace(tmp_path / "fold_1_aside", run.fold_dir(1))
    untuned = dataclasses.replace(a, postprocess=dataclasses.replace(a.postprocess, tune=False))  # a fake run: never tuned
    assert predict_test(untuned, out=tmp_path / "x.csv").is_file()


def test_test_images_without_a_sample_row_are_named(two_experiments, tmp_path, caplog):
    """The samples come from the sample submission, so comparing with them never found an image the sample lacks;
    the test folder is listed now."""
    import logging
    import shutil

    from seg_toolkit.inference import _expected_ids

    a, _, _ = two_experiments
    samples = load_test_samples(a)
    extra = samples[0].image.with_name("not_in_sample" + samples[0].image.suffix)
    shutil.copyfile(samples[0].image, extra)
    try:
        with caplog.at_level(logging.WARNING, logger="seg_toolkit.inference"):
            _expected_ids(a, load_test_samples(a))
    finally:
        extra.unlink()
    assert "1 test image(s) in" in caplog.text and "(e.g. 'not_in_sample'): they are not submitted" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="seg_toolkit.inference"):
        _expected_ids(a, load_test_samples(a))
    assert "not submitted" not in caplog.text


def test_a_sample_submission_with_a_column_the_submission_cannot_fill_is_refused(two_experiments, tmp_path):
    """predict wrote two columns (exit 0) and check-submission then failed on the sample's third ('Usage')."""
    import dataclasses

    a, _, _ = two_experiments
    sample = a.data_path(a.data.sample_submission)
    df = pd.read_csv(sample, dtype=str, keep_default_na=False)
    df.assign(Usage="Public").to_csv(tmp_path / "sample3.csv", index=False)
    cfg = dataclasses.replace(a, data=dataclasses.replace(a.data, sample_submission=str(tmp_path / "sample3.csv")))
    with pytest.raises(SubmissionError, match=r"sample3.csv: columns \[.*'Usage'\]; a submission here has 2 columns, .* so "
                                              r"\['Usage'\] could not be filled in"):
        predict_test(cfg, out=tmp_path / "x.csv")
    assert not (tmp_path / "x.csv").exists()


def test_a_sample_of_its_header_only_takes_the_test_images_rows(two_experiments, tmp_path, capsys):
    """A code competition's public sample may be its header only (UW-Madison's was): predict refused it ("a sample
    submission lists every test id") and check-submission too. Now the rows are the test images', in file name order,
    under the sample's columns; the same rows as the full sample gives, and check-submission checks all but the ids."""
    import dataclasses

    a, _, _ = two_experiments
    sample = a.data_path(a.data.sample_submission)
    full = pd.read_csv(predict_test(a, out=tmp_path / "full.csv"), dtype=str, keep_default_na=False)
    (tmp_path / "header.csv").write_text(sample.read_text().splitlines()[0] + "\n")
    cfg = dataclasses.replace(a, data=dataclasses.replace(a.data, sample_submission=str(tmp_path / "header.csv")))
    samples = load_test_samples(cfg)
    assert [s.image.name for s in samples] == sorted(p.name for p in a.data_path(a.data.test_images).glob("*.png"))
    out = predict_test(cfg, out=tmp_path / "header_only.csv")
    got = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert list(got.columns) == list(full.columns)
    key = list(full.columns)[0]
    assert got.sort_values(key).to_numpy().tolist() == full.sort_values(key).to_numpy().tolist()
    assert got[key].tolist() == [f"{s.id}_{c}" for s in samples for c in (1, 2, 3)]
    assert check_submission(out, tmp_path / "header.csv") == []
    bad = got.copy()
    bad.loc[1, key] = bad.loc[0, key]  # a repeated id and a malformed string are still found
    bad.loc[2, "EncodedPixels"] = "3 x"
    bad.to_csv(tmp_path / "bad.csv", index=False)
    problems = check_submission(tmp_path / "bad.csv", tmp_path / "header.csv")
    assert any("duplicate ids" in p for p in problems) and any("'x'" in p for p in problems), problems
    # with the config (check-submission --config), the rows predict writes stand for the sample's: an empty file or a
    # made-up id is found (the review: both passed)
    from seg_toolkit.submission import row_pixels

    pixels = row_pixels(cfg)
    assert list(pixels) == got[key].tolist()
    assert check_submission(out, tmp_path / "header.csv", n_pixels=pixels) == []
    got.iloc[:0].to_csv(tmp_path / "empty.csv", index=False)
    assert any("the sample has 12" in p for p in check_submission(tmp_path / "empty.csv", tmp_path / "header.csv",
                                                                   n_pixels=pixels))
    made_up = got.copy()
    made_up.loc[0, key] = "notanimage_1"
    made_up.to_csv(tmp_path / "made_up.csv", index=False)
    assert any("ids not in the sample" in p for p in check_submission(tmp_path / "made_up.csv", tmp_path / "header.csv",
                                                                       n_pixels=pixels))
    # no test image (a code competition's public run): no row is what predict writes, so a made-up one is found
    assert any("12 ids not in the sample" in p for p in check_submission(tmp_path / "made_up.csv", tmp_path / "header.csv",
                                                                         n_pixels={}))


def test_a_header_only_sample_trains_and_an_empty_public_test_folder_submits_the_header(demo_root, tmp_path):
    """The review: with a header-only sample the check before training crashed (IndexError) once the test folder held
    images, and an empty test folder (a code competition's public run, the test hidden) stopped predict and the
    exported kernel ('no *.png test images'), where the header alone is the submission to make."""
    import shutil

    root = tmp_path / "data"
    shutil.copytree(demo_root, root)
    header = (root / "sample_submission.csv").read_text().splitlines()[0] + "\n"
    (root / "sample_submission.csv").write_text(header)
    cfg = config_from_dict(demo_dict(root, tmp_path / "runs", postprocess={"tune": False}, train={"epochs": 1}))
    from seg_toolkit.cv import run_cv

    run_cv(cfg)
    for p in (root / "test" / "images").iterdir():
        p.unlink()
    out = predict_test(cfg, out=tmp_path / "public.csv")
    assert out.read_text() == header
    assert check_submission(out, root / "sample_submission.csv") == []


def test_out_is_never_a_run_file_or_a_folder(two_experiments, tmp_path, capsys):
    """`predict --out RUN/fold_0/best.pt --overwrite` replaced the checkpoint with the CSV (exit 0); a folder as --out
    failed after every image was predicted; `ensemble --out existing.csv` was refused only after the ensemble run was made."""
    a, b, paths = two_experiments
    run = Run.of(a)
    best = run.best_pt(0)
    before = best.read_bytes()
    for target in (best, run.postprocess_json, run.config_yaml):
        if target.is_file():
            assert main(["predict", paths[0], "--out", str(target), "--overwrite"]) == 2
            assert "is a file of the run" in capsys.readouterr().err
    assert best.read_bytes() == before
    assert main(["predict", paths[0], "--out", str(tmp_path), "--overwrite"]) == 2
    assert "is a folder; name a file" in capsys.readouterr().err
    answers = Path(a.data.root) / "test_solution.csv"  # in data.root but named by no config key: the user's answers
    before_answers = answers.read_bytes()
    assert main(["predict", paths[0], "--out", str(answers), "--overwrite"]) == 2
    assert "is a file in data.root" in capsys.readouterr().err and answers.read_bytes() == before_answers
    inside = run.dir / "my_submission.csv"  # a submission kept in the run folder may be written again
    assert main(["predict", paths[0], "--out", str(inside)]) == 0
    assert main(["predict", paths[0], "--out", str(inside), "--overwrite"]) == 0
    capsys.readouterr()
    taken = tmp_path / "taken.csv"
    taken.write_text("mine\n")
    assert main(["ensemble", *paths, "--name", "never_made", "--out", str(taken)]) == 2
    err = capsys.readouterr().err
    assert "taken.csv exists; pass --overwrite" in err and not (run.dir.parent / "never_made").exists()
    assert taken.read_text() == "mine\n"


def test_predict_refuses_a_changed_preprocessing(two_experiments, tmp_path, capsys):
    """A trained run predicts with its own preprocessing; --set cannot silently change it."""
    _, _, paths = two_experiments
    code = main(["predict", paths[0], "--set", "transforms.resize=[32, 32]", "--out", str(tmp_path / "x.csv")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "was made with other settings than this config: transforms.resize: None -> [32, 32]" in err
    code = main(["predict", paths[0], "--set", "predict.tta=[identity,hflip]", "--out", str(tmp_path / "x.csv")])
    err = capsys.readouterr().err
    assert code == 2 and "predict.tta: ['identity'] -> ['identity', 'hflip']" in err and "seg-toolkit oof" in err
    assert not (tmp_path / "x.csv").exists()


# ----------------------------------------------------------------------------- submission conventions


def conv_cfg(task="binary", num_classes=1, **submission):
    loss = {"ce": 1.0} if task == "multiclass" else {"bce": 1.0}
    rows = {} if task == "binary" else {"class_column": "ClassId"}  # RLE rows of several classes name the class
    return config_from_dict({"data": {"task": task, "num_classes": num_classes, **rows}, "submission": submission, "loss": loss})


# 2 x 3 (non-square); pixels numbered 1..6
#   [[0, 1, 1],      column-major (F): 0 1 | 1 0 | 1 0  -> pixels 2, 3, 5     -> "2 2 5 1"
#    [1, 0, 0]]      row-major    (C): 0 1 1 | 1 0 0    -> pixels 2, 3, 4     -> "2 3"
MASK = np.array([[0, 1, 1], [1, 0, 0]], np.uint8)


def test_row_major_and_column_major_on_a_non_square_mask():
    assert mask_rows("img", MASK[None], conv_cfg()) == [("img", "2 2 5 1")]  # data.rle_order F, the default
    assert mask_rows("img", MASK[None], conv_cfg(rle_order="C")) == [("img", "2 3")]
    assert mask_rows("img", MASK[None], config_from_dict({"data": {"rle_order": "C"}})) == [("img", "2 3")]
    # submission.rle_order wins over data.rle_order
    f_over_c = config_from_dict({"data": {"rle_order": "C"}, "submission": {"rle_order": "F"}})
    assert mask_rows("img", MASK[None], f_over_c) == [("img", "2 2 5 1")]
    np.testing.assert_array_equal(rle_decode("2 2 5 1", (2, 3), "F"), MASK)
    np.testing.assert_array_equal(rle_decode("2 3", (2, 3), "C"), MASK)


@pytest.mark.parametrize("token", ["", "-", "-1"])
def test_empty_token_written_and_checked(tmp_path, token):
    cfg = conv_cfg(empty_token=token)
    empty = np.zeros((1, 2, 3), np.uint8)
    assert mask_rows("e", empty, cfg) == [("e", token)]
    sample = tmp_path / "sample.csv"
    sample.write_text("id,rle\ne,1 1\nf,1 1\n")
    sub = tmp_path / "sub.csv"
    with SubmissionWriter(sub, ("id", "rle"), ["e", "f"]) as w:
        w.write(mask_rows("e", empty, cfg))
        w.write(mask_rows("f", MASK[None], cfg))
    assert sub.read_text() == f"id,rle\ne,{token}\nf,2 2 5 1\n"
    assert check_submission(sub, sample, empty_tokens=(token,)) == []
    for other in {"-", "-1"} - {token}:
        bad = tmp_path / f"bad{other}.csv"
        bad.write_text(f"id,rle\ne,{other}\nf,2 2 5 1\n")
        problems = check_submission(bad, sample, empty_tokens=(token,))
        expected = "odd number of tokens" if other == "-1" else "token '-' is not an integer"  # '-1' is one integer
        assert len(problems) == 1 and "line 2 (id 'e')" in problems[0] and expected in problems[0]


def test_empty_cell_rejected_when_the_token_is_minus_one(tmp_path):
    sample = tmp_path / "sample.csv"
    sample.write_text("id,rle\ne,1 1\n")
    sub = tmp_path / "sub.csv"
    sub.write_text("id,rle\ne,\n")
    assert check_submission(sub, sample, empty_tokens=("-1",)) == [
        "line 2 (id 'e'): empty field, but an empty mask is written as '-1' in this competition"]
    assert check_submission(sub, sample, empty_tokens=("",)) == []


def test_one_row_per_image_or_per_image_and_class():
    three = np.stack([MASK, np.zeros_like(MASK), np.ones_like(MASK)])
    # binary, one row per image
    assert mask_rows("a", MASK[None], conv_cfg(per_class=False)) == [("a", "2 2 5 1")]
    # multilabel, one row per image and class (classes from 1), two id formats
    ml = dict(task="multilabel", num_classes=3, per_class=True)
    rows = mask_rows("a", three, conv_cfg(**ml, id_format="{id}_{cls}"))
    assert rows == [("a_1", "2 2 5 1"), ("a_2", ""), ("a_3", "1 6")]
    rows = mask_rows("a", three, conv_cfg(**ml, id_format="{id}:{cls}"))
    assert rows == [("a:1", "2 2 5 1"), ("a:2", ""), ("a:3", "1 6")]
    with pytest.raises(ConfigError, match="submission.per_class"):  # refused when the config loads
        conv_cfg(task="multilabel", num_classes=3, per_class=False)


def test_multiclass_label_map_gives_per_class_rows_without_background():
    label = np.array([[0, 2, 2], [1, 0, 0]], np.uint8)
    cfg = conv_cfg(task="multiclass", num_classes=4, per_class=True, id_format="{id}_{cls}")
    # class 1: pixel (1,0) -> F index 2; class 2: (0,1), (0,2) -> F 3 and 5; class 3 absent -> empty
    assert mask_rows("m", label, cfg) == [("m_1", "2 1"), ("m_2", "3 1 5 1"), ("m_3", "")]


def _check_cli(sub: Path, sample: Path, capsys) -> str:
    code = main(["check-submission", str(sub), "--sample", str(sample)])
    out = capsys.readouterr().out
    assert code == 1 and f"{sub}: " in out
    return out


def test_check_submission_cli_names_each_problem(tmp_path, capsys):
    sample = tmp_path / "sample.csv"
    sample.write_text("ImageId,EncodedPixels\na,1 1\nb,1 1\nc,1 1\nd,1 1\n")
    good = tmp_path / "good.csv"
    good.write_text("ImageId,EncodedPixels\na,1 2\nb,\nc,3 4\nd,\n")
    assert main(["check-submission", str(good), "--sample", str(sample)]) == 0
    assert "OK" in capsys.readouterr().out

    cols = tmp_path / "cols.csv"
    cols.write_text("Id,Pixels\na,\nb,\nc,\nd,\n")
    out = _check_cli(cols, sample, capsys)
    assert "columns are ['Id', 'Pixels']; the sample has ['ImageId', 'EncodedPixels']" in out

    broken = tmp_path / "broken.csv"  # 'a' twice, 'b' missing, and an RLE with an odd token count on line 4
    broken.write_text("ImageId,EncodedPixels\na,1 2\na,\nc,1 2 3\nd,\n")
    out = _check_cli(broken, sample, capsys)
    assert "3 problem(s)" in out
    assert "duplicate ids: 'a' (lines 2 and 3)" in out
    assert "1 sample ids missing, e.g. ['b']" in out
    assert "line 4 (id 'c'): RLE has an odd number of tokens (3)" in out

    order = tmp_path / "order.csv"
    order.write_text("ImageId,EncodedPixels\na,\nb,\nd,\nc,\n")
    out = _check_cli(order, sample, capsys)
    assert "rows are in a different order than the sample: line 4 has 'd', the sample 'c'" in out

    runs = tmp_path / "runs.csv"  # unsorted / overlapping runs and a non-integer token
    runs.write_text("ImageId,EncodedPixels\na,5 2 1 2\nb,1 3 2 2\nc,1 x\nd,0 1\n")
    out = _check_cli(runs, sample, capsys)
    assert "line 2 (id 'a'): RLE runs are unsorted" in out
    assert "line 3 (id 'b'): RLE runs are overlapping" in out
    assert "line 4 (id 'c'): RLE token 'x' is not an integer" in out
    assert "line 5 (id 'd'): RLE start 0 (pair 1) is < 1" in out


def test_each_experiment_follows_its_own_tta_choice(two_experiments, monkeypatch):
    a, b, _ = two_experiments
    Run.of(b).tta_json.write_text(json.dumps({"tta": ["identity", "rot180"], "merge": "mean_logit", "scores": []}))
    calls = []
    real = predictor_mod.tta_predict
    monkeypatch.setattr(predictor_mod, "tta_predict",
                        lambda model, images, task, t, s, merge, mb: calls.append((list(t), merge)) or real(model, images, task, t, s, merge, mb))
    _probs(Predictor([Member.load(Run.of(a)), Member.load(Run.of(b))], device="cpu"), a)
    assert calls == [(["identity"], "mean_prob")] * 2 + [(["identity", "rot180"], "mean_logit")]


def test_header_only_test_ids_take_the_training_ids_form(demo_root, tmp_path):
    """A header-only sample says nothing of the ids' form; ids that carry the extension in train.csv (Severstal's
    0002cc93b.jpg) lost it for the test images (3fcd72a7_1 beside training's d3e45131.png). They take training's now."""
    import shutil

    root = tmp_path / "data"
    shutil.copytree(demo_root, root)
    train = pd.read_csv(root / "train.csv", dtype=str, keep_default_na=False)
    train.assign(ImageId=train.ImageId + ".png").to_csv(root / "train.csv", index=False)
    header = (root / "sample_submission.csv").read_text().splitlines()[0] + "\n"
    (root / "sample_submission.csv").write_text(header)
    cfg = config_from_dict(demo_dict(root, tmp_path / "runs"))
    names = sorted(p.name for p in (root / "test" / "images").iterdir())
    assert [s.id for s in load_test_samples(cfg)] == names
    train.to_csv(root / "train.csv", index=False)  # ids without it: the file names' stems
    assert [s.id for s in load_test_samples(cfg)] == [n[:-4] for n in names]
    # the second review: a kernel without train.csv wrote the other form; the run's folds.csv (a bundle carries it)
    # holds the ids it trained on and decides first
    Run.of(cfg).dir.mkdir(parents=True)
    Run.of(cfg).folds_csv.write_text("id,fold,stratum\n" + "".join(f"{i}.png,0,\n" for i in train.ImageId.unique()))
    (root / "train.csv").unlink()
    assert [s.id for s in load_test_samples(cfg)] == names


def test_nan_probabilities_are_refused_not_submitted_as_background(demo_root, tmp_path, monkeypatch):
    """The tuning audit: a model whose weights diverged gave NaN probabilities, which the 1/255 grid turned into 0
    (np.rint of NaN cast to uint8): scored, tuned and submitted as empty masks without a word."""
    from seg_toolkit.cv import run_cv
    from seg_toolkit.predictor import NonFiniteError

    cfg = config_from_dict(demo_dict(demo_root, tmp_path / "runs", postprocess={"tune": False}, train={"epochs": 1}))
    run_cv(cfg)
    real = Predictor._member_probs

    def diverged(self, m, images, fold, tta, merge):
        out = real(self, m, images, fold, tta, merge).clone()
        out[0, 0, 0, 0] = float("nan")  # one pixel of the batch's first image
        return out

    monkeypatch.setattr(Predictor, "_member_probs", diverged)
    with pytest.raises(NonFiniteError, match=r"image '[^']+': .* gave NaN probabilities"):
        predict_test(cfg, out=tmp_path / "nan.csv")
    assert not (tmp_path / "nan.csv").exists()


def test_present_drift_by_hand():
    from seg_toolkit.postprocess import present_drift

    oof = {"share": [0.27, 0.5, 0.0], "n_images": 100}
    # 0 of 40 open where 27% of the OOF were: 0.27 apart; se = sqrt(0.27 x 0.73 / 40) = 0.070, 4 se = 0.281 > 0.27: not
    # flagged. At 400 images se = 0.022, 4 se = 0.089, the floor 0.1 decides: flagged
    assert present_drift(oof, np.array([0, 20, 0]), 40, ["a", "b", "c"]) == []
    assert present_drift(oof, np.array([0, 200, 0]), 400, ["a", "b", "c"]) == [
        "a: 0% of 400 test images decided non-empty, 27% of the OOF images"]
    # a class never present on the OOF: p(1-p) floored at 1/n_images = 0.01, se = 0.005 at 400: the 0.1 floor decides
    assert present_drift(oof, np.array([108, 200, 20]), 400, ["a", "b", "c"]) == []
    assert present_drift(oof, np.array([108, 200, 80]), 400, ["a", "b", "c"]) == [
        "c: 20% of 400 test images decided non-empty, 0% of the OOF images"]
    assert present_drift(None, np.array([0, 0, 0]), 400, ["a", "b", "c"]) == []  # nothing tuned
    # the OOF's own uncertainty counts (the review: 30 OOF images beside 2000 test ones warned in 29% of equal draws):
    # 65% of 2000 against 50% of 30 is 0.15 apart, within 4 pooled standard errors (4 x 0.088 = 0.35)
    assert present_drift({"share": [0.5], "n_images": 30}, np.array([1300]), 2000, ["a"]) == []
    assert present_drift(oof, np.array([0, 0, 0]), 19, ["a", "b", "c"]) == []  # too few test images to say


def test_predict_warns_when_test_masks_are_unlike_the_tuned_oof_masks(demo_root, tmp_path, caplog):
    """The tuning audit: thresholds and gates tuned on one fold model's OOF, applied to the folds' mean, shut on every
    test image (27% of OOF images open, 0% of test): predict now says so, class by class. tune records the OOF shares,
    checked here against the OOF files themselves."""
    import logging

    from seg_toolkit.cv import run_cv
    from seg_toolkit.files import read_oof
    from seg_toolkit.postprocess import PostParams, apply_postprocess, present_classes
    from seg_toolkit.run import Run
    from seg_toolkit.tensors import uint8_to_probs

    cfg = config_from_dict(demo_dict(demo_root, tmp_path / "runs", train={"epochs": 2}))
    run_cv(cfg)
    run = Run.of(cfg)
    tuned = json.loads(run.postprocess_json.read_text())
    params = PostParams(**tuned["params"])
    files = sorted(run.oof_dir.glob("*.npy"))
    present = sum(present_classes(apply_postprocess(uint8_to_probs(read_oof(f)), "multilabel", params), "multilabel", 3)
                  for f in files)
    assert tuned["decided_present"] == {"share": (present / len(files)).tolist(), "n_images": len(files)}
    # the test set is 4 images: too few to say anything
    with caplog.at_level(logging.WARNING, logger="seg_toolkit"):
        predict_test(cfg, out=tmp_path / "a.csv")
    assert "not like the OOF masks" not in caplog.text
    # the same tuned parameters over many test images whose masks all come out non-empty, where the OOF's mostly were not
    tuned["decided_present"] = {"share": [0.0, 0.0, 0.0], "n_images": 12}
    run.postprocess_json.write_text(json.dumps(tuned))
    from seg_toolkit.inference import _say_drift

    with caplog.at_level(logging.WARNING, logger="seg_toolkit"):
        _say_drift(cfg, run, params, np.array([30, 0, 30]), 30)
    assert "class_1: 100% of 30 test images decided non-empty, 0% of the OOF images; class_3: 100%" in caplog.text
