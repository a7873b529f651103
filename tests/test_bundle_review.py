"""``seg-toolkit bundle`` after review: what it must reproduce (a real ensemble, a run trained from a weights
file mapped by order, a run naming a tracker) and what it must refuse (a stale ensemble, a bundle whose files
were changed, deleted or added after it was made)."""

from __future__ import annotations

import importlib.util
import json
import os
import runpy
import shlex
import shutil
import subprocess
import sys

import nbformat
import pytest
import torch
import yaml

import seg_toolkit
from seg_toolkit.bundle import BundleError, build_bundle, predict_bundle
from seg_toolkit.bundle_check import BundleIntegrityError
from seg_toolkit.bundle_templates import notebook, predict_py, readme
from seg_toolkit.cli import main
from seg_toolkit.checkpoint import load_model
from seg_toolkit.config import ConfigError, config_from_dict, load_config
from seg_toolkit.cv import run_cv
from seg_toolkit.ensemble import build_ensemble, member_fingerprint
from seg_toolkit.files import read_json, sha256_file, write_json
from seg_toolkit.run import Run

from .conftest import demo_dict
from .test_bundle import fake_run, offline_env


@pytest.fixture(scope="module")
def trained(demo_root, tmp_path_factory):
    """Two trained runs ``x`` and ``y`` (tuned post-processing) and their ensemble ``ens``, made by
    :func:`build_ensemble` (member fingerprints recorded), with what ``seg-toolkit predict`` submits for each."""
    base = tmp_path_factory.mktemp("bundle_review")
    runs = base / "runs"
    x = config_from_dict(demo_dict(demo_root, runs, experiment="x"))
    y = config_from_dict(demo_dict(demo_root, runs, experiment="y", model={"arch": "scratch_unet", "depth": 2, "base_width": 8}))
    for cfg in (x, y):
        run_cv(cfg)
    build_ensemble([x, y], name="ens", weights=[0.6, 0.4])
    refs = {}
    for name in ("x", "ens"):
        refs[name] = base / f"ref_{name}.csv"
        assert main(["predict", str(runs / name), "--out", str(refs[name])]) == 0
    return {"root": demo_root, "runs": runs, "x": Run(runs / "x"), "ens": Run(runs / "ens"), "refs": refs, "base": base}


# ----------------------------------------------------------------------------- 1: encoder_weights_map: order


def test_a_run_trained_from_a_weights_file_mapped_by_order_is_bundled_and_predicts_without_it(trained, tmp_path, capsys):
    import timm

    weights = tmp_path / "test_resnet_w.pth"
    torch.manual_seed(0)
    torch.save(timm.create_model("test_resnet").state_dict(), weights)
    model = {"arch": "unet", "encoder": "tu-test_resnet", "encoder_weights": str(weights), "encoder_weights_map": "order"}
    cfg = config_from_dict(demo_dict(trained["root"], tmp_path / "runs", experiment="w", model=model))
    run = fake_run(cfg, saved_encoder_weights=str(weights))
    ref = tmp_path / "ref_w.csv"
    assert main(["predict", str(run.dir), "--out", str(ref)]) == 0

    bundle = tmp_path / "bundle"
    assert main(["bundle", str(run.dir), "--out", str(bundle), "--no-wheels"]) == 0, capsys.readouterr().err
    saved = yaml.safe_load((bundle / "runs" / "w" / "config.yaml").read_text())["model"]
    assert saved["encoder_weights"] is None and saved["encoder_weights_map"] == "names"
    for k in (0, 1):
        inner = torch.load(bundle / "runs" / "w" / f"fold_{k}" / "best.pt", weights_only=True)["config"]["model"]
        assert inner["encoder_weights"] is None and inner["encoder_weights_map"] == "names"
    info = json.loads((bundle / "bundle.json").read_text())
    assert info["runs"][0]["encoder_weights_at_training"] == str(weights)

    weights.unlink()  # the target has no such file: the checkpoints hold every weight
    out = predict_bundle(bundle, trained["root"], tmp_path / "w.csv")
    assert out.read_bytes() == ref.read_bytes()

    # the run folder itself predicts without the file too (the checkpoints hold every weight); training refuses
    again = tmp_path / "again.csv"
    assert main(["predict", str(run.dir), "--out", str(again)]) == 0, capsys.readouterr().err
    assert again.read_bytes() == ref.read_bytes()
    model, saved_cfg = load_model(run.best_pt(0))
    assert saved_cfg.model.encoder_weights == str(weights)
    with pytest.raises(ConfigError, match="weights file not found"):
        load_config(run.config_yaml)
    capsys.readouterr()
    assert main(["train", str(run.dir), "--resume"]) == 2
    assert "weights file not found" in capsys.readouterr().err


# ----------------------------------------------------------------------------- 2: a real ensemble


def test_a_real_ensemble_is_bundled_with_fingerprints_of_the_bundled_files(trained, tmp_path):
    bundle = tmp_path / "bundle"
    info = build_bundle([trained["ens"]], bundle, wheels=False)
    out = predict_bundle(bundle, trained["root"], tmp_path / "ens.csv", run="ens")
    assert out.read_bytes() == trained["refs"]["ens"].read_bytes()
    source = read_json(trained["ens"].ensemble_json)
    bundled = read_json(bundle / "runs" / "ens" / "ensemble.json")
    assert [m["run"] for m in bundled["members"]] == ["../x", "../y"]
    for was, now, name in zip(source["members"], bundled["members"], ("x", "y")):
        assert was["fingerprint"] and now["fingerprint"] == member_fingerprint(Run(bundle / "runs" / name), bundled["folds"])
        assert now["fingerprint"]["best_pt"] != was["fingerprint"]["best_pt"]  # best.pt is rewritten weights only
        assert now["fingerprint"]["folds_csv"] == was["fingerprint"]["folds_csv"]
        assert {k: v for k, v in now.items() if k != "fingerprint"} == {k: v for k, v in was.items() if k != "fingerprint"}
    assert info["runs"][0]["members"] == bundled["members"]


def test_a_stale_ensemble_is_refused_when_bundled_not_on_the_target(trained, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(trained["runs"], runs)
    shutil.copyfile(runs / "x" / "fold_0" / "best.pt", runs / "x" / "fold_1" / "best.pt")  # x "retrained" after the ensemble
    with pytest.raises(ConfigError, match=r"member .*x changed since the ensemble was built \(fold_1/best.pt differ\)"):
        build_bundle([Run(runs / "ens")], tmp_path / "bundle", wheels=False)
    assert not (tmp_path / "bundle").exists() and list(tmp_path.glob(".bundle.*")) == []


# ----------------------------------------------------------------------------- 3: trackers


@pytest.mark.parametrize("backend", ["mlflow", "tensorboard"])
def test_a_run_naming_a_tracker_predicts_where_the_tracker_is_not_installed(trained, tmp_path, monkeypatch, backend):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed here: a run naming it cannot be made")
    monkeypatch.setenv("SEG_TOOLKIT_TRACK", "none")
    cfg = config_from_dict(demo_dict(trained["root"], tmp_path / "runs", experiment="t", track={"backend": backend}))
    run = fake_run(cfg)
    assert yaml.safe_load(run.config_yaml.read_text())["track"]["backend"] == backend
    ref = tmp_path / "ref.csv"
    assert main(["predict", str(run.dir), "--out", str(ref)]) == 0
    bundle = tmp_path / "bundle"
    build_bundle([run], bundle, wheels=False)
    assert yaml.safe_load((bundle / "runs" / "t" / "config.yaml").read_text())["track"]["backend"] == "none"
    for k in (0, 1):
        assert torch.load(bundle / "runs" / "t" / f"fold_{k}" / "best.pt", weights_only=True)["config"]["track"]["backend"] == "none"

    find_spec = importlib.util.find_spec  # the target: no mlflow, no tensorboard
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: None if name in ("mlflow", "tensorboard") else find_spec(name, *a, **k))
    out = predict_bundle(bundle, trained["root"], tmp_path / "t.csv")
    assert out.read_bytes() == ref.read_bytes()


# ----------------------------------------------------------------------------- 4: integrity


@pytest.fixture(scope="module")
def bundle_x(trained):
    bundle = trained["base"] / "bundle_x"
    build_bundle([trained["x"]], bundle, wheels=False)
    return bundle


def test_bundle_json_records_the_sha256_of_every_bundled_file(bundle_x):
    files = json.loads((bundle_x / "bundle.json").read_text())["files"]
    on_disk = sorted(p.relative_to(bundle_x).as_posix() for p in (bundle_x / "runs").rglob("*") if p.is_file())
    assert sorted(files) == on_disk
    assert {"runs/x/config.yaml", "runs/x/postprocess.json", "runs/x/cv.json", "runs/x/folds.csv",
            "runs/x/fold_0/best.pt", "runs/x/fold_1/best.pt", "runs/x/fold_0/done.json"} <= set(files)
    assert all(files[f] == sha256_file(bundle_x / f) for f in files)


@pytest.mark.parametrize("tamper,message", [
    (lambda b: shutil.copyfile(b / "runs/x/fold_0/best.pt", b / "runs/x/fold_1/best.pt"),
     r"runs/x/fold_1/best.pt changed \(expected sha256 {fold_1}, found {fold_0}\)"),
    (lambda b: (b / "runs/x/postprocess.json").unlink(), r"runs/x/postprocess.json is missing \(expected sha256 {post}\)"),
    (lambda b: (b / "runs/x/tta.json").write_text('{"tta": ["identity", "hflip"], "merge": "mean_prob"}'),
     r"runs/x/tta.json was added"),
], ids=["swapped_weights", "deleted_postprocess", "added_tta"])
def test_a_tampered_bundle_refuses_to_predict(trained, bundle_x, tmp_path, tamper, message):
    bundle = tmp_path / "bundle"
    shutil.copytree(bundle_x, bundle)
    files = json.loads((bundle / "bundle.json").read_text())["files"]
    tamper(bundle)
    want = message.format(fold_0=files["runs/x/fold_0/best.pt"], fold_1=files["runs/x/fold_1/best.pt"],
                          post=files["runs/x/postprocess.json"])
    with pytest.raises(BundleIntegrityError, match=want):
        predict_bundle(bundle, trained["root"], tmp_path / "sub.csv")
    assert not (tmp_path / "sub.csv").exists()


def test_predict_py_exits_2_on_a_swapped_weights_file_and_a_bundle_without_hashes_is_refused(trained, bundle_x, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(bundle_x, bundle)
    (bundle / "runs/x/.DS_Store").write_bytes(b"\0")  # a hidden file a file browser leaves is no run file
    out = predict_bundle(bundle, trained["root"], tmp_path / "intact.csv")  # intact: the bytes of predict
    assert out.read_bytes() == trained["refs"]["x"].read_bytes()
    shutil.copyfile(bundle / "runs/x/fold_0/best.pt", bundle / "runs/x/fold_1/best.pt")
    r = subprocess.run([sys.executable, str(bundle / "predict.py"), "--data-root", str(trained["root"]), "--out",
                        str(tmp_path / "sub.csv")], env=offline_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "error: " in r.stderr and "runs/x/fold_1/best.pt changed" in r.stderr, r.stdout + r.stderr
    assert "fetching version info" not in r.stderr  # albumentations did not try PyPI (NO_ALBUMENTATIONS_UPDATE)
    assert not (tmp_path / "sub.csv").exists()

    shutil.copyfile(bundle_x / "runs/x/fold_1/best.pt", bundle / "runs/x/fold_1/best.pt")
    info = json.loads((bundle / "bundle.json").read_text())
    del info["files"]
    (bundle / "bundle.json").write_text(json.dumps(info))
    with pytest.raises(BundleIntegrityError, match="records no sha256 of the bundled files"):
        predict_bundle(bundle, trained["root"], tmp_path / "sub.csv")


# ----------------------------------------------------------------------------- 5: network, quoting, --no-wheels


def test_predict_py_turns_off_albumentations_version_check_before_importing_it(bundle_x, monkeypatch):
    for key in ("HF_HUB_OFFLINE", "HF_HUB_DISABLE_TELEMETRY", "TORCH_HOME"):  # set by predict.py: restored after
        monkeypatch.setenv(key, os.environ.get(key, ""))
    monkeypatch.delenv("NO_ALBUMENTATIONS_UPDATE", raising=False)
    runpy.run_path(str(bundle_x / "predict.py"), run_name="bundle_predict")  # the module's top level, not main()
    assert os.environ["NO_ALBUMENTATIONS_UPDATE"] == "1"
    text = (bundle_x / "predict.py").read_text()
    assert text.index('setdefault("NO_ALBUMENTATIONS_UPDATE", "1")') < text.index("from seg_toolkit")
    monkeypatch.setenv("NO_ALBUMENTATIONS_UPDATE", "0")  # a user's own setting is kept
    runpy.run_path(str(bundle_x / "predict.py"), run_name="bundle_predict")
    assert os.environ["NO_ALBUMENTATIONS_UPDATE"] == "0"


def test_the_printed_command_is_quoted_and_a_no_wheels_notebook_installs_nothing(trained, tmp_path, capsys):
    out = tmp_path / "my bundles" / "it's here"
    assert main(["bundle", str(trained["x"].dir), "--out", str(out), "--no-wheels"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("run it: "))
    words = shlex.split(line[len("run it: "):])
    assert words[:4] == ["python", str(out / "predict.py"), "--data-root", "DATA"]
    assert str(out / "README.md") + ")" in words

    cells = [c.source for c in nbformat.read(out / "predict.ipynb", as_version=4).cells if c.cell_type == "code"]
    assert len(cells) == 3 and not any("pip" in c or "--find-links" in c for c in cells)
    assert 'find_spec("seg_toolkit")' in cells[1]
    with_wheels = [c["source"] for c in json.loads(notebook("t", "test", wheels=True))["cells"]]
    assert any('"pip", "install", "--no-index", "--find-links"' in c for c in with_wheels)
    # the README and predict.py of a bundle without wheels do not send the user to a wheels/ folder it lacks
    readme, script = (out / "README.md").read_text(), (out / "predict.py").read_text()
    assert not (out / "wheels").exists() and not (out / "requirements.txt").exists()
    assert "--find-links" not in readme and "requirements.txt" not in readme and "--find-links" not in script
    assert readme.count("and its dependencies must be installed already (no wheels here)") == 2
    assert "made with --no-wheels" in script and "has no wheels: install seg_toolkit" in script
    compile(script, "predict.py", "exec")


def test_the_notebook_finds_a_competition_whose_name_starts_with_the_bundles(monkeypatch):
    """The bundle /kaggle/input/tgs was a string prefix of /kaggle/input/tgs-salt-identification-challenge, so the
    competition folder was skipped as if it were the bundle."""
    import glob as glob_mod

    cells = [c["source"] for c in json.loads(notebook("t", "test", wheels=False))["cells"]]
    code = next(c for c in cells if "def find(" in c)
    code = code[code.index("def find("):]
    code = code[: code.index("\n\n\n") if "\n\n\n" in code else len(code)]
    hits = {1: ["/kaggle/input/tgs/test", "/kaggle/input/tgs-salt-identification-challenge/test"]}
    monkeypatch.setattr(glob_mod, "glob", lambda pattern: hits.get(pattern.count("/*"), []))
    scope = {"glob": glob_mod}
    exec(code, scope)
    assert scope["find"]("test", skip="/kaggle/input/tgs") == "/kaggle/input/tgs-salt-identification-challenge"
    assert scope["find"]("test", skip="/kaggle/input/tgs/") == "/kaggle/input/tgs-salt-identification-challenge"
    assert scope["find"]("test", skip="/kaggle/input/tgs-salt-identification-challenge") == "/kaggle/input/tgs"


def test_a_run_whose_oof_rewrite_stopped_is_not_bundled(trained, tmp_path):
    """predict refuses a run whose oof / tune --tta stopped half-way (new TTA, old post-processing); bundle copied it
    and the target submitted the mix."""
    from seg_toolkit.errors import SegToolkitError
    from seg_toolkit.files import write_json

    copy = tmp_path / "runs" / "x"
    shutil.copytree(trained["x"].dir, copy)
    write_json(Run(copy).oof_incomplete_json, {"command": "seg-toolkit oof runs/x", "started": "now"})
    with pytest.raises(SegToolkitError, match=r"were being rewritten by `seg-toolkit oof runs/x`"):
        build_bundle([Run(copy)], tmp_path / "b", wheels=False)
    assert not (tmp_path / "b").exists()


def test_bundle_overwrite_keeps_files_the_bundle_did_not_write(trained, tmp_path):

    out = tmp_path / "b"
    build_bundle([trained["x"]], out, wheels=False)
    (out / "dataset-metadata.json").write_text('{"title": "mine", "id": "me/tgs"}')  # kaggle datasets init -p b
    with pytest.raises(BundleError, match=r"holds dataset-metadata.json, which the bundle did not write"):
        build_bundle([trained["x"]], out, wheels=False, overwrite=True)
    assert (out / "dataset-metadata.json").read_text().startswith('{"title": "mine"')
    (out / "dataset-metadata.json").unlink()
    build_bundle([trained["x"]], out, wheels=False, overwrite=True)
    # files inside the bundle's folders too: only the top level was checked, and --overwrite deleted these
    run_dir = next((out / "runs").iterdir())
    (run_dir / "MY_NOTES.txt").write_text("notes")
    (out / "wheels").mkdir(exist_ok=True)
    (out / "wheels" / "mypkg-1.0-py3-none-any.whl").write_bytes(b"mine")
    with pytest.raises(BundleError, match=rf"holds runs/{run_dir.name}/MY_NOTES.txt, wheels/mypkg-1.0-py3-none-any.whl, "
                                          "which the bundle did not write"):
        build_bundle([trained["x"]], out, wheels=False, overwrite=True)
    assert (run_dir / "MY_NOTES.txt").is_file() and (out / "wheels" / "mypkg-1.0-py3-none-any.whl").is_file()
    (run_dir / "MY_NOTES.txt").unlink()
    (out / "wheels" / "mypkg-1.0-py3-none-any.whl").unlink()
    build_bundle([trained["x"]], out, wheels=False, overwrite=True)  # its own files only: replaced
    # a text the bundle wrote, edited since (the user's fix to predict.py): the edit was dropped without a word
    (out / "predict.py").write_text((out / "predict.py").read_text() + "# mine\n")
    with pytest.raises(BundleError, match=r"holds predict.py, which the bundle did not write \(or that were edited since\)"):
        build_bundle([trained["x"]], out, wheels=False, overwrite=True)
    assert (out / "predict.py").read_text().endswith("# mine\n")
    # nor among the images a run reads (predict --out and audit --out refused it; bundle did not)
    cfg = trained["x"].config()
    inside = cfg.data_path(cfg.data.train_images) / "bundle"
    with pytest.raises(ConfigError, match=r"bundle --out .*/bundle lies inside data.train_images"):
        build_bundle([trained["x"]], inside, wheels=False)
    assert not inside.exists()


def test_bundle_errors_name_the_file(tmp_path):
    """A checkpoint without model_args and a hand-edited bundle.json ended in a bare KeyError traceback."""
    import torch

    from seg_toolkit.bundle import bundle_config
    from seg_toolkit.bundle_weights import write_weights
    from seg_toolkit.checkpoint import save_checkpoint

    run = Run(tmp_path / "r")
    run.best_pt(0).parent.mkdir(parents=True)
    save_checkpoint({"model": {"w": torch.zeros(1)}, "config": {}}, run.best_pt(0))
    with pytest.raises(BundleError, match=r"best.pt: a checkpoint without model_args"):
        write_weights(run, 0, tmp_path / "out.pt", use_ema=False, fp16=False)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "bundle.json").write_text('{"format": 2}')
    with pytest.raises(BundleError, match=r"bundle.json: not a bundle's record \(KeyError"):
        bundle_config(tmp_path / "b", tmp_path)


def test_predicting_a_bundle_names_libraries_installed_at_other_versions(caplog):
    """Only seg_toolkit's version was compared; the image's own timm or albumentations, kept by pip, went unnamed."""
    from seg_toolkit.bundle import _warn_other_versions
    from seg_toolkit.versions import library_versions

    now = library_versions()
    with caplog.at_level("WARNING"):
        _warn_other_versions({**now, "torch": now["torch"].split("+")[0] + "+cu999"})  # the build tag alone: same
    assert "other versions" not in caplog.text
    with caplog.at_level("WARNING"):
        _warn_other_versions({**now, "timm": "0.0.1", "albumentations": "0.0.2"})
    assert f"timm {now['timm']} (bundled with 0.0.1); albumentations {now['albumentations']} (bundled with 0.0.2)" in caplog.text


def test_an_absolute_data_path_is_refused_when_bundled(trained, tmp_path):
    """data.test_images: /home/me/comp/test ignored --data-root and pointed at this machine's disk on Kaggle."""
    import yaml

    copy = tmp_path / "runs" / "x"
    shutil.copytree(trained["x"].dir, copy)
    data = yaml.safe_load((copy / "config.yaml").read_text())
    data["data"]["test_images"] = str(trained["root"] / "test" / "images")
    (copy / "config.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(BundleError, match=r"data.test_images '.*test/images' is an absolute path, which --data-root"):
        build_bundle([Run(copy)], tmp_path / "b", wheels=False)
    assert not (tmp_path / "b").exists() and list(tmp_path.glob(".b.*")) == []


def test_a_run_that_cuts_objects_along_p_bundles_the_instances_extra(trained, tmp_path):
    """A run whose tuned post-processing splits objects by probability (scikit-image) records seg_toolkit[instances]
    as what its wheels install (bundle.json, README.md; the wheels then hold scikit-image's tree: gather_wheels'
    closure, test_bundle, pinned in requirements.txt); a plain run names seg_toolkit."""
    copy = tmp_path / "runs" / "split"
    shutil.copytree(trained["x"].dir, copy)
    saved = read_json(copy / "postprocess.json")
    saved["params"]["split_by"] = "probability"
    (copy / "postprocess.json").write_text(json.dumps(saved))
    info = build_bundle([Run(copy)], tmp_path / "b", wheels=False)
    assert info["install"] == "seg_toolkit[instances]"
    assert "# seg_toolkit[instances] (" in (tmp_path / "b" / "README.md").read_text()  # what must be installed
    plain = build_bundle([trained["x"]], tmp_path / "p", wheels=False)
    assert plain["install"] == "seg_toolkit" and "# seg_toolkit (" in (tmp_path / "p" / "README.md").read_text()
    data = read_json(tmp_path / "b" / "bundle.json")  # with wheels, the pinned paragraph names the extra
    assert "the environment the bundle was made in, seg_toolkit[instances]\n" in readme("t", {**data, "wheels": {
        "base_env": {}, "count": 1, "verified": "checked"}, "base_env": []}, "test", "sample.csv")


def test_every_install_command_of_a_bundle_installs_its_pinned_versions(trained, tmp_path):
    """`pip install --no-index --find-links wheels seg_toolkit` keeps an image's own timm or albumentations wherever
    it fits seg_toolkit's ranges (an audit installed 2.0.8 / 1.0.31 wheels over an image of 2.0.1 / 1.0.3 and kept
    the old ones): the runs then resized and normalised otherwise than tuned. README.md, predict.py's hint and the
    notebook now install requirements.txt, the exact versions of the wheels."""
    build_bundle([trained["x"]], tmp_path / "b", wheels=False)  # its bundle.json, given wheels: the texts of one with
    data = {**read_json(tmp_path / "b" / "bundle.json"), "wheels": {"base_env": {}, "count": 1, "verified": "checked"},
            "base_env": []}
    text = readme("t", data, "test", "sample.csv")
    assert "--find-links /kaggle/input/<this-dataset>/wheels -r /kaggle/input/<this-dataset>/requirements.txt" in text
    assert "--find-links BUNDLE/wheels -r BUNDLE/requirements.txt" in text
    script = predict_py("x", wheels=True)
    assert "-r {HERE / 'requirements.txt'}" in script and "-r WHERE/requirements.txt" in script
    compile(script, "predict.py", "exec")
    cells = [c["source"] for c in json.loads(notebook("t", "test", wheels=True))["cells"]]
    assert any('"-r", f"{BUNDLE}/requirements.txt"' in c for c in cells)
    assert not any("seg_toolkit\"]" in c or "'seg_toolkit'" in c for c in cells)


def test_runs_predict_refuses_are_refused_when_bundled(trained, tmp_path):
    """bundle copied a run predict refuses and the bundle's predict.py refused it on the target (found by an audit):
    a config.yaml edited since its folds trained (model.dropout here), and an ensemble whose member predicts with
    another TTA since the ensemble was built (`oof MEMBER --set predict.tta=...`)."""
    runs = tmp_path / "runs"
    shutil.copytree(trained["runs"], runs)
    x = runs / "x"
    saved = yaml.safe_load((x / "config.yaml").read_text())
    edited = tmp_path / "edited" / "x"
    shutil.copytree(x, edited)
    saved["model"]["dropout"] = 0.25
    (edited / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    assert main(["predict", str(edited), "--out", str(tmp_path / "p.csv")]) == 2
    with pytest.raises(ConfigError, match=r"best.pt was trained with other settings than .*config.yaml says "
                                          r"\(model.dropout: 0.0 -> 0.25\); the run folder's files disagree"):
        build_bundle([Run(edited)], tmp_path / "b1", wheels=False)
    assert main(["oof", str(x), "--set", "predict.tta=[identity,vflip]"]) == 0
    with pytest.raises(BundleError, match=r"runs/ens: predict refuses this run, so the bundle's predict.py would: .*member "
                                          r".*x's OOF files were merged and tuned on as made with"):
        build_bundle([Run(runs / "ens")], tmp_path / "b2", wheels=False)
    assert not (tmp_path / "b1").exists() and not (tmp_path / "b2").exists()


def test_bundle_of_a_yaml_that_differs_from_its_run_is_refused(trained, tmp_path, capsys):
    """`bundle CONFIG.yaml` bundled the run folder as saved, while `predict CONFIG.yaml` predicts with the YAML's
    submission keys: with empty_token '-1' in the YAML every empty row of the two submissions differed (an audit).
    The same YAML as the run's bundles as before."""
    same = tmp_path / "same.yaml"
    data = demo_dict(trained["root"], trained["runs"], experiment="x")
    same.write_text(yaml.safe_dump(data))
    assert main(["bundle", str(same), "--out", str(tmp_path / "ok"), "--no-wheels"]) == 0
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({**data, "submission": {**data.get("submission", {}), "empty_token": "-1"}}))
    assert main(["bundle", str(other), "--out", str(tmp_path / "b"), "--no-wheels"]) == 2
    err = capsys.readouterr().err
    assert "other.yaml differs from the saved config of the run it names" in err and "submission.empty_token" in err
    assert not (tmp_path / "b").exists()


def test_bundle_overwrite_keeps_a_requirements_txt_a_no_wheels_bundle_did_not_write(trained, tmp_path):
    """A --no-wheels bundle writes no requirements.txt, yet --overwrite counted one as its own and deleted the
    user's (any other file there was refused): the texts a bundle wrote are now recorded in bundle.json."""
    out = tmp_path / "b"
    info = build_bundle([trained["x"]], out, wheels=False)
    assert info["texts"] == ["predict.py", "predict.ipynb", "README.md"]
    (out / "requirements.txt").write_text("my-pins==1.0\n")
    with pytest.raises(BundleError, match=r"holds requirements.txt, which the bundle did not write"):
        build_bundle([trained["x"]], out, wheels=False, overwrite=True)
    assert (out / "requirements.txt").read_text() == "my-pins==1.0\n"


def test_a_bundle_predicts_with_the_code_it_was_made_with_or_says_so(trained, bundle_x, tmp_path, caplog):
    """The bundled wheel was always seg_toolkit 0.1.0: pip kept another 0.1.0 already installed as 'already satisfied'
    and predict.py ran that code silently, 14 of 72 rows differing (audit). The wheel now carries its code's sha256 as
    a local version, which requirements.txt pins, and predicting checks the imported code against bundle.json."""
    from packaging.version import Version

    from seg_toolkit.bundle_wheels import own_version
    from seg_toolkit.versions import code_sha256

    code = code_sha256()
    assert read_json(bundle_x / "bundle.json")["versions"]["seg_toolkit_code"] == code
    v = Version(own_version())
    assert v.public == seg_toolkit.__version__ and v.local == f"code.{code[:12]}"
    bundle = tmp_path / "bundle"
    shutil.copytree(bundle_x, bundle)
    info = read_json(bundle / "bundle.json")
    info["versions"]["seg_toolkit_code"] = "0" * 64  # made with other code than runs here
    write_json(bundle / "bundle.json", info)
    with caplog.at_level("WARNING"):  # no wheels: nothing to install from, said
        predict_bundle(bundle, trained["root"], tmp_path / "nowheels.csv")
    assert "is other code than this bundle (made with --no-wheels) was made with (sha256 000000000000...)" in caplog.text
    info["wheels"] = {"count": 1}
    write_json(bundle / "bundle.json", info)
    with pytest.raises(BundleError, match=r"is other code than this bundle was made with \(code sha256 000000000000\.\.\., "
                                          rf"installed {code[:12]}\.\.\.\).*--no-deps --force-reinstall"):
        predict_bundle(bundle, trained["root"], tmp_path / "sub.csv")
    assert not (tmp_path / "sub.csv").exists()


def test_the_code_hash_covers_what_a_wheel_ships(tmp_path):
    """A stray script in a plain folder of the checkout (no __init__.py) is not in the wheel: hashed, it made the
    installed wheel's code differ from bundle.json's and the bundle refused after its own install command (review)."""
    from seg_toolkit.versions import code_sha256

    tree = tmp_path / "pkg"
    for rel, text in {"__init__.py": "", "a.py": "x = 1\n", "sub/__init__.py": "", "sub/b.py": "y = 2\n"}.items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_text(text)
    shipped = code_sha256(tree)
    (tree / "scratch").mkdir()
    (tree / "scratch" / "notes.py").write_text("print('mine')\n")
    assert code_sha256(tree) == shipped
    (tree / "sub" / "b.py").write_text("y = 3\n")
    assert code_sha256(tree) != shipped
