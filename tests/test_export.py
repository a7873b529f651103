"""ONNX export of a run's fold models, and the ONNX Runtime backend of the predictor."""

from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from seg_toolkit.cli import main
from seg_toolkit.config import ConfigError, config_from_dict
from seg_toolkit.data import load_test_samples
from seg_toolkit.export import PARITY_BOUND, OnnxModel, export_run
from seg_toolkit.inference import predict_test, run_predictor
from seg_toolkit.run import Run, RunExistsError

from .conftest import demo_dict
from .test_inference import fake_run

pytest.importorskip("onnx", reason="the onnx extra is not installed (pip install -e '.[onnx]')")
pytest.importorskip("onnxruntime", reason="the onnx extra is not installed: onnxruntime is absent (pip install -e '.[onnx]')")


def _cfg(demo_root, runs, **sections):
    return config_from_dict(demo_dict(demo_root, runs, **sections))


@pytest.fixture(scope="module")
def scratch_run(demo_root, tmp_path_factory):
    """A 2-fold scratch U-Net run (seeded weights), exported once by the command line."""
    runs = tmp_path_factory.mktemp("export_runs")
    cfg = _cfg(demo_root, runs, model={"arch": "scratch_unet", "depth": 3, "base_width": 4},
               folds={"n_splits": 2, "method": "kfold", "seed": 0}, predict={"batch_size": 4, "tta": ["identity", "hflip"]})
    fake_run(cfg, seeds=(0, 1))
    _write_folds(cfg)  # the parity check reads each fold's validation ids
    return cfg


def _write_folds(cfg) -> None:
    from seg_toolkit.data import load_train_samples

    ids = [s.id for s in load_train_samples(cfg)]
    Run.of(cfg).folds_csv.write_text("id,fold\n" + "".join(f"{i},{k % 2}\n" for k, i in enumerate(ids)))


def test_export_writes_every_fold_and_checks_parity(scratch_run, capsys):
    run = Run.of(scratch_run)
    assert main(["export", str(run.dir), "--format", "onnx"]) == 0
    out = capsys.readouterr().out
    assert "fold 0" in out and "fold 1" in out and "max |onnx - torch| logits" in out
    manifest = json.loads(run.export_json.read_text())
    assert sorted(manifest["folds"]) == ["0", "1"] and manifest["opset"] == 17
    for k in (0, 1):
        entry = manifest["folds"][str(k)]
        assert run.onnx_path(k).is_file()
        assert entry["parity_inputs"].startswith(f"validation images of fold {k}")
        shapes = [p["shape"] for p in entry["parity"]]
        assert shapes[0] == [2, 3, 48, 64] and shapes[1][0] == 1 and shapes[1][2] % 2 == 1  # batch 2, then an odd size
        assert all(p["max_abs_diff"] <= p["bound"] <= PARITY_BOUND * 1e3 for p in entry["parity"])
    # re-exporting the same run replaces its own files
    assert main(["export", str(run.dir)]) == 0


def test_onnx_model_matches_torch_at_any_size(scratch_run):
    from seg_toolkit.checkpoint import load_model

    run = Run.of(scratch_run)
    if not run.onnx_path(0).is_file():
        export_run(scratch_run)
    model, _ = load_model(run.best_pt(0))
    session = OnnxModel(run.onnx_path(0))
    for shape in [(1, 3, 48, 64), (3, 3, 37, 50), (2, 3, 101, 101)]:
        x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            ref = model(x)
        got = session(x)
        assert got.shape == ref.shape and float((got - ref).abs().max()) < 1e-4


def test_smp_unet_exports(demo_root, tmp_path):
    cfg = _cfg(demo_root, tmp_path / "runs", model={"arch": "unet", "encoder": "tu-test_resnet", "encoder_weights": None})
    fake_run(cfg)
    _write_folds(cfg)
    result = export_run(cfg)
    (entry,) = result[str(Run.of(cfg).dir)]
    # fake_run's perturbed weights give logits ~1e4: the bound scales with them (1e-4 x max |logit|)
    assert all(p["max_abs_diff"] <= p["bound"] for p in entry["parity"])


def test_a_classifier_model_exports_and_its_presence_survives(demo_root, tmp_path):
    cfg = _cfg(demo_root, tmp_path / "runs", model={"arch": "scratch_unet", "depth": 2, "base_width": 4, "classifier": 0.5},
               predict={"batch_size": 4, "tta": ["identity", "hflip"]})
    fake_run(cfg)
    _write_folds(cfg)
    export_run(cfg)
    samples = load_test_samples(cfg)[:2]
    got = {}
    for backend in ("torch", "onnx"):
        c = config_from_dict({**_as_dict(cfg), "predict": {**_as_dict(cfg)["predict"], "backend": backend}})
        _, predictor = run_predictor(c)
        got[backend] = [(p, pr) for _, p, pr, _ in predictor.iter_predictions(samples)]
    for (p_t, pr_t), (p_o, pr_o) in zip(got["torch"], got["onnx"]):
        assert p_t.shape == p_o.shape == (3, 48, 64) and pr_t.shape == pr_o.shape == (3,)
        assert float((p_t - p_o).abs().max()) < 1e-4 and float((pr_t - pr_o).abs().max()) < 1e-4


def test_onnx_backend_predicts_what_torch_predicts(scratch_run, tmp_path):
    run = Run.of(scratch_run)
    if not run.export_json.is_file():
        export_run(scratch_run)
    samples = load_test_samples(scratch_run)
    probs = {}
    for backend in ("torch", "onnx"):
        cfg = config_from_dict({**_as_dict(scratch_run), "predict": {**_as_dict(scratch_run)["predict"], "backend": backend}})
        _, predictor = run_predictor(cfg)
        probs[backend] = {i: p for i, p, _ in predictor.iter_probs(samples)}
    for i in probs["torch"]:
        assert float((probs["torch"][i] - probs["onnx"][i]).abs().max()) < 1e-4
    # the submissions agree except where a probability lies within 1e-4 of the threshold
    subs = {}
    for backend in ("torch", "onnx"):
        cfg = config_from_dict({**_as_dict(scratch_run), "predict": {**_as_dict(scratch_run)["predict"], "backend": backend}})
        subs[backend] = pd.read_csv(predict_test(cfg, out=tmp_path / f"{backend}.csv"), keep_default_na=False)
    near = any(float(((p - 0.5).abs() < 1e-4).sum()) for p in probs["torch"].values())
    assert near or subs["torch"].equals(subs["onnx"])


def _as_dict(cfg):
    from seg_toolkit.config import config_to_dict

    return config_to_dict(cfg)


def test_onnx_backend_errors_name_the_command(demo_root, tmp_path, monkeypatch):
    cfg = _cfg(demo_root, tmp_path / "runs", predict={"batch_size": 4, "backend": "onnx"})
    fake_run(_cfg(demo_root, tmp_path / "runs"))
    _write_folds(cfg)
    run = Run.of(cfg)
    with pytest.raises(ConfigError, match=r"fold 0 of .* is not exported .*seg-toolkit export .* --format onnx"):
        run_predictor(cfg)
    export_run(cfg)
    run_predictor(cfg)  # exported: fine
    # the fold trained again since the export: refused
    state = torch.load(run.best_pt(0), weights_only=True)
    state["epoch"] = 2
    torch.save(state, run.best_pt(0))
    with pytest.raises(ConfigError, match="exported from another best.pt"):
        run_predictor(cfg)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ConfigError, match=r"needs onnxruntime: pip install 'seg_toolkit\[onnx\]'"):
        run_predictor(cfg)
    assert main(["predict", str(run.dir), "--set", "predict.backend=onnx"]) == 2


def test_an_onnx_file_of_another_fold_or_damaged_is_refused(demo_root, tmp_path):
    """fold_0.onnx copied over fold_1.onnx was used silently (another submission than torch's); a corrupt file was an
    InvalidProtobuf traceback. Each file's own metadata (fold, best.pt hash) must be what export.json says."""
    import shutil

    cfg = _cfg(demo_root, tmp_path / "runs", model={"arch": "scratch_unet", "depth": 2, "base_width": 4},
               folds={"n_splits": 2, "method": "kfold", "seed": 0}, predict={"batch_size": 4, "backend": "onnx"})
    fake_run(cfg, seeds=(0, 1))
    _write_folds(cfg)
    export_run(cfg)
    run = Run.of(cfg)
    samples = load_test_samples(cfg)[:1]
    original = run.onnx_path(1).read_bytes()
    shutil.copyfile(run.onnx_path(0), run.onnx_path(1))
    _, predictor = run_predictor(cfg)
    with pytest.raises(ConfigError, match=r"fold_1.onnx: its metadata says fold '0'.*best_pt_sha256.*export.json fold '1'"):
        list(predictor.iter_probs(samples))
    run.onnx_path(1).write_bytes(original[: len(original) // 3])
    _, predictor = run_predictor(cfg)
    with pytest.raises(ConfigError, match=r"fold_1.onnx: not a readable ONNX model"):
        list(predictor.iter_probs(samples))
    run.onnx_path(1).write_bytes(original)
    _, predictor = run_predictor(cfg)
    assert len(list(predictor.iter_probs(samples))) == 1


def test_a_users_file_at_an_export_path_is_not_replaced(demo_root, tmp_path):
    cfg = _cfg(demo_root, tmp_path / "runs")
    fake_run(cfg)
    _write_folds(cfg)
    run = Run.of(cfg)
    run.export_dir.mkdir()
    run.onnx_path(0).write_bytes(b"my own model")
    with pytest.raises(RunExistsError, match="not an export of this toolkit"):
        export_run(cfg)
    assert run.onnx_path(0).read_bytes() == b"my own model"
    assert not run.export_json.exists()


def test_export_falls_back_to_random_inputs_without_data(demo_root, tmp_path):
    cfg = _cfg(demo_root, tmp_path / "runs")
    fake_run(cfg)  # no folds.csv: the validation images are unknown
    (entry,) = export_run(cfg)[str(Run.of(cfg).dir)]
    assert entry["parity_inputs"].startswith("random") and np.isfinite(entry["parity"][0]["max_abs_diff"])
