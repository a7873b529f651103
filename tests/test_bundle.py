"""``seg-toolkit bundle``: a Kaggle code-competition folder that predicts offline, from any place,
exactly what ``seg-toolkit predict`` submits.

The network is made to fail in every process that runs a bundle: a ``sitecustomize`` on
``PYTHONPATH`` replaces ``socket.socket.connect`` (anything but a local Unix socket raises),
proxies point at a closed port, HF_HUB_OFFLINE and PIP_NO_INDEX are set and pip reads no config.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import nbformat
import pytest
import torch
import yaml

from seg_toolkit.bundle import BundleError, build_bundle, predict_bundle
from seg_toolkit.bundle_wheels import own_version
from seg_toolkit.files import sha256_file as sha256
from seg_toolkit.checkpoint import load_model, save_checkpoint
from seg_toolkit.cli import main
from seg_toolkit.config import config_from_dict, config_to_dict, save_config
from seg_toolkit.cv import run_cv
from seg_toolkit.export import parity_inputs
from seg_toolkit.data import load_test_samples
from seg_toolkit.predictor import Predictor
from seg_toolkit.files import write_json
from seg_toolkit.run import Run
from seg_toolkit.train import build_model_and_ema

from .conftest import demo_dict

BLOCK_NETWORK = '''\
import socket

_connect = socket.socket.connect


def _blocked(self, address, *args):
    if getattr(socket, "AF_UNIX", None) is not None and self.family == socket.AF_UNIX:
        return _connect(self, address, *args)
    raise OSError(f"network blocked by the bundle test (connect to {address!r})")


socket.socket.connect = _blocked
socket.socket.connect_ex = _blocked
'''


def offline_env(tmp: Path, **extra: str) -> dict[str, str]:
    site = tmp / "offline_site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(BLOCK_NETWORK)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") and k.lower() not in ("no_proxy", "pythonpath")}
    dead = "http://127.0.0.1:9"
    env.update(http_proxy=dead, https_proxy=dead, HTTP_PROXY=dead, HTTPS_PROXY=dead, ALL_PROXY=dead, all_proxy=dead,
               HF_HUB_OFFLINE="1", PIP_NO_INDEX="1", PIP_CONFIG_FILE=os.devnull, PYTHONPATH=str(site), **extra)
    return env


def assert_network_blocked(python: str, env: dict[str, str]) -> None:
    probe = "import socket\ntry:\n    socket.create_connection(('127.0.0.1', 9), timeout=2)\nexcept OSError as e:\n    print(e)"
    r = subprocess.run([python, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
    assert "network blocked by the bundle test" in r.stdout, r.stdout + r.stderr


def fake_run(cfg, saved_encoder_weights=None) -> Run:
    """Two finished folds of freshly initialised (seeded) models, saved like ``train`` saves them, with
    ``model.encoder_weights`` recorded as ``saved_encoder_weights`` (as if trained from pretrained weights)."""
    run = Run.of(cfg)
    run.dir.mkdir(parents=True)
    saved = config_to_dict(cfg)
    saved["model"]["encoder_weights"] = saved_encoder_weights
    save_config(config_from_dict(saved), run.config_yaml)
    for k in range(2):
        torch.manual_seed(k)
        model, _ = build_model_and_ema(cfg, torch.device("cpu"))
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.1)
        run.fold_dir(k).mkdir()
        save_checkpoint({"model": model.state_dict(), "ema": None, "config": saved, "epoch": 1, "best_score": 0.0,
                         "model_args": {"num_classes": cfg.data.num_classes, "in_channels": cfg.data.in_channels}},
                        run.best_pt(k))
        write_json(run.done_json(k), {"fold": k})
    return run


@pytest.fixture(scope="module")
def runs(demo_root, tmp_path_factory):
    """A trained tiny run (``tiny``: real training, tuned post-processing) and an ensemble ``ab`` of a
    scratch U-Net and an smp U-Net on a timm encoder recorded as imagenet-pretrained (no postprocess.json)."""
    base = tmp_path_factory.mktemp("bundle_runs")
    tiny = config_from_dict(demo_dict(demo_root, base / "runs", experiment="tiny"))
    run_cv(tiny)
    others = base / "others"
    a = fake_run(config_from_dict(demo_dict(demo_root, others, experiment="a")))
    b_cfg = config_from_dict(demo_dict(demo_root, others, experiment="b", model={"arch": "unet", "encoder": "tu-test_resnet"}))
    b = fake_run(b_cfg, saved_encoder_weights="imagenet")
    ab = Run(others / "ab")
    ab.dir.mkdir()
    save_config(config_from_dict(demo_dict(demo_root, others, experiment="ab")), ab.config_yaml)
    write_json(ab.ensemble_json, {"members": [{"run": ab.member_ref(a), "weight": 0.7}, {"run": ab.member_ref(b), "weight": 0.3}],
                                  "space": "logit", "folds": [0, 1]})
    refs = {}
    for name, run in (("tiny", Run.of(tiny)), ("ab", ab)):
        refs[name] = base / f"ref_{name}.csv"
        assert main(["predict", str(run.dir), "--out", str(refs[name])]) == 0
    return {"tiny": Run.of(tiny), "a": a, "b": b, "ab": ab, "refs": refs, "root": demo_root}


def read_only(path: Path) -> None:
    for p in [path, *path.rglob("*")]:
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def writable(path: Path) -> None:
    for p in [path, *path.rglob("*")]:
        p.chmod(p.stat().st_mode | stat.S_IWUSR)


def test_bundle_predicts_offline_from_anywhere_what_predict_submits(runs, tmp_path, capsys, monkeypatch):
    made = tmp_path / "made" / "bundle"
    assert main(["bundle", str(runs["tiny"].dir), str(runs["ab"].dir), "--out", str(made), "--no-wheels"]) == 0
    printed = capsys.readouterr().out
    assert "warning: ab: untuned post-processing (no postprocess.json)" in printed
    info = json.loads((made / "bundle.json").read_text())
    assert info["default_run"] == "tiny" and info["named"] == ["tiny", "ab"] and info["wheels"] is None
    assert [r["name"] for r in info["runs"]] == ["tiny", "ab", "a", "b"]
    assert len(info["warnings"]) == 1 and info["warnings"][0].startswith("ab: untuned post-processing")
    assert info["versions"]["bundled_with"]["torch"] == torch.__version__
    by_name = {r["name"]: r for r in info["runs"]}
    assert by_name["ab"]["members"] == [{"run": "../a", "weight": 0.7}, {"run": "../b", "weight": 0.3}]
    assert by_name["b"]["encoder_weights_at_training"] == "imagenet"
    for name in ("tiny", "a", "b"):  # weights only, float32, checksums as recorded, no pretrained source named
        assert by_name[name]["folds"] == [0, 1]
        for k, w in by_name[name]["weights"].items():
            path = made / w["file"]
            assert w["sha256"] == sha256(path) and w["dtype"] == "float32"
            state = torch.load(path, weights_only=True)
            assert set(state) == {"model", "ema", "config", "model_args", "epoch", "best_score"} and state["ema"] is None
            assert state["config"]["model"]["encoder_weights"] is None
            assert all(t.dtype != torch.float16 for t in state["model"].values())
            assert (made / "runs" / name / f"fold_{k}" / "done.json").is_file()
        assert yaml.safe_load((made / "runs" / name / "config.yaml").read_text())["model"]["encoder_weights"] is None
    kept = {"config.yaml", "cv.json", "fold_0", "fold_1", "fold_balance.csv", "folds.csv", "postprocess.json"}
    assert kept <= {p.name for p in (made / "runs" / "tiny").iterdir()} <= kept | {"amp.json"}
    nbformat.validate(nbformat.read(made / "predict.ipynb", as_version=4))
    readme = (made / "README.md").read_text()
    # made with --no-wheels: the README asks for seg_toolkit installed already, not for wheels it lacks
    assert "must be installed already (no wheels here)" in readme and "--find-links" not in readme
    assert "--data-root" in readme and "## Base environment" in readme

    # moved elsewhere (the place it was made is gone), read-only, run from another folder, network failing
    bundle = tmp_path / "elsewhere" / "kaggle_input" / "my-bundle"
    shutil.copytree(made, bundle)
    shutil.rmtree(made.parent)
    read_only(bundle)
    work = tmp_path / "work"
    work.mkdir()
    env = offline_env(tmp_path)
    assert_network_blocked(sys.executable, env)
    try:
        r = subprocess.run([sys.executable, str(bundle / "predict.py"), "--data-root", str(runs["root"]), "--out", "submission.csv"],
                           cwd=work, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        assert (work / "submission.csv").read_bytes() == runs["refs"]["tiny"].read_bytes()

        # the ensemble of the same bundle, in this process with connect() failing: the same bytes as predict
        monkeypatch.chdir(work)
        monkeypatch.setattr(socket.socket, "connect", lambda *a: (_ for _ in ()).throw(OSError("network blocked")))
        out = predict_bundle(bundle, runs["root"], "ab.csv", run="ab")
        assert out.read_bytes() == runs["refs"]["ab"].read_bytes()
        assert sorted(p.name for p in (bundle / "runs" / "ab").iterdir()) == ["config.yaml", "ensemble.json"]
    finally:
        writable(bundle)


def test_a_bundle_build_a_kill_cut_short_is_removed_by_the_next_one(runs, tmp_path):
    """A killed `bundle` left bundles/.b.<pid>.partial/ (weights and wheels) for good: it went only when a later build
    had the same process id. One whose process is gone goes with the next build of that bundle."""
    from seg_toolkit.files import aside_folder

    out = tmp_path / "b"
    left = aside_folder(out, "partial").with_name(aside_folder(out, "partial").name.replace(f".{os.getpid()}-", ".999999999-"))
    (left / "runs").mkdir(parents=True)
    (left / "runs" / "weights.pt").write_bytes(b"x" * 100)
    build_bundle([runs["tiny"]], out, wheels=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"] and (out / "bundle.json").is_file()


def test_fp16_weights_are_half_the_size_and_load_as_float32(runs, tmp_path):
    full, half = tmp_path / "fp32", tmp_path / "fp16"
    build_bundle([runs["tiny"]], full, wheels=False)
    info = build_bundle([runs["tiny"]], half, fp16=True, wheels=False)
    for w in info["runs"][0]["weights"].values():
        state = torch.load(half / w["file"], weights_only=True)
        floats = [t for t in state["model"].values() if t.is_floating_point()]
        assert floats and all(t.dtype == torch.float16 for t in floats) and w["dtype"] == "float16"
        whole = torch.load(full / w["file"], weights_only=True)["model"]
        nbytes = lambda sd: sum(t.numel() * t.element_size() for t in sd.values() if t.is_floating_point())  # noqa: E731
        assert nbytes(state["model"]) * 2 == nbytes(whole) > 0  # every float tensor at half the bytes
        # the file is smaller by those bytes; its config and pickling overhead (paths of the tmp folder) are not halved
        assert w["bytes"] < (full / w["file"]).stat().st_size - 0.9 * nbytes(state["model"])
        model, _ = load_model(half / w["file"])
        assert all(p.dtype == torch.float32 for p in model.parameters())
    probs = {}
    for name, folder in (("fp32", full), ("fp16", half)):
        run = Run(folder / "runs" / "tiny")
        cfg = run.config()
        probs[name] = torch.stack([p for _, p, _ in Predictor.from_run(run).iter_probs(load_test_samples(cfg))])
    assert 0 < (probs["fp32"] - probs["fp16"]).abs().max() < 1e-2
    # the gap the bundle records per fold: the two files' own models on the inputs it names (the fold's validation
    # images, preprocessed by the predictor, and an odd-sized copy), the run being fp32 (`train.amp: none`)
    member = Predictor.from_run(runs["tiny"]).members[0]
    gaps, moved = {}, {}
    for k, w in info["runs"][0]["weights"].items():
        x32, x16 = (load_model(folder / w["file"])[0].eval() for folder in (full, half))
        with torch.inference_mode():
            pairs = [(torch.sigmoid(x32(x)), torch.sigmoid(x16(x))) for x in parity_inputs(member, int(k))[0]]
        gaps[k] = max(float((a - b).abs().max()) for a, b in pairs)
        # the share of values on another step of the 1/255 grid (what post-processing and ensembles read)
        grid = lambda p: torch.round(p.clamp(0, 1) * 255)  # noqa: E731
        moved[k] = sum(int((grid(a) != grid(b)).sum()) for a, b in pairs) / sum(a.numel() for a, _ in pairs)
        assert w["fp16_max_prob_diff"] == pytest.approx(gaps[k], abs=1e-7) and gaps[k] > 0
        assert w["fp16_grid_moved"] == pytest.approx(moved[k], abs=1e-9)
    assert any(x.startswith(f"--fp16: the float16 weights move the probabilities by up to {max(gaps.values()):.3g} ")
               and f"and {max(moved.values()):.2%} of the values move a whole step on the 1/255 grid" in x
               for x in info["warnings"])
    assert "**warning**: --fp16: the float16 weights" in (half / "README.md").read_text()
    assert not any("fp16" in x for x in build_bundle([runs["tiny"]], tmp_path / "again32", wheels=False)["warnings"])
    out = predict_bundle(half, runs["root"], tmp_path / "sub16.csv")
    assert main(["check-submission", str(out), "--sample", str(runs["root"] / "sample_submission.csv"),
                 "--config", str(half / "runs" / "tiny")]) == 0


def test_missing_folds_refused_unless_allowed(runs, tmp_path, capsys):
    broken = tmp_path / "runs" / "a"
    shutil.copytree(runs["a"].dir, broken)
    (broken / "fold_1" / "done.json").unlink()
    with pytest.raises(BundleError, match=r"1 of 2 folds missing: fold 1 \(no done.json: unfinished\).*--allow-missing-folds"):
        build_bundle([Run(broken)], tmp_path / "b1", wheels=False)
    assert not (tmp_path / "b1").exists() and list(tmp_path.glob(".b1.*")) == []  # nothing half-made left
    assert main(["bundle", str(broken), "--out", str(tmp_path / "b1"), "--no-wheels"]) == 2
    assert "error: " in capsys.readouterr().err
    info = build_bundle([Run(broken)], tmp_path / "b2", wheels=False, allow_missing_folds=True)
    assert info["runs"][0]["folds"] == [0] and not (tmp_path / "b2" / "runs" / "a" / "fold_1").exists()
    assert any("without fold 1" in w for w in info["warnings"]) and any("untuned" in w for w in info["warnings"])
    with pytest.raises(FileExistsError, match="--overwrite"):
        build_bundle([Run(broken)], tmp_path / "b2", wheels=False, allow_missing_folds=True)
    with pytest.raises(BundleError, match=r"sub is inside the run folder .*runs/a, which the bundle copies from"):
        build_bundle([Run(broken)], broken / "sub", wheels=False, allow_missing_folds=True)
    assert not (broken / "sub").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    with pytest.raises(BundleError, match="not a bundle"):
        build_bundle([runs["a"]], tmp_path / "mine", wheels=False, overwrite=True)
    # cv.json scored fold 1 too (fold 1 retrained with --overwrite, say): the target's predict refuses that run, so
    # the bundle does, instead of building one that fails on Kaggle
    (broken / "cv.json").write_text(json.dumps({"folds": [0, 1], "score": 0.5}))
    with pytest.raises(BundleError, match=r"fold\(s\) \[1\] are scored in cv.json but not bundled"):
        build_bundle([Run(broken)], tmp_path / "b3", wheels=False, allow_missing_folds=True)


def test_base_env_leaves_out_what_only_it_needs():
    """The requirement tree stops at the base packages: what only torch needs is left out, what a
    bundled package needs as well (filelock for huggingface_hub) is kept; --base-env adds to the base."""
    from seg_toolkit.bundle_wheels import _closure

    requires = [r for r in metadata.distribution("seg_toolkit").requires if "extra ==" not in r]
    found, on_base = _closure(requires, {"torch", "torchvision"})
    assert {"timm", "segmentation-models-pytorch", "albumentations", "numpy", "huggingface-hub", "filelock"} <= set(found)
    assert not set(found) & {"torch", "torchvision", "triton", "sympy", "networkx", "mpmath"}
    assert not any(n.startswith("nvidia") for n in found) and set(on_base) == {"torch", "torchvision"}
    assert any("by seg_toolkit" in r for r in on_base["torch"])
    fewer, _ = _closure(requires, {"torch", "torchvision", "numpy"})
    assert "numpy" not in fewer and "scipy" in fewer
    # the instances extra (a run cutting objects along p) adds scikit-image and what it needs, networkx included
    every = list(metadata.distribution("seg_toolkit").requires)
    with_extra, _ = _closure(every, {"torch", "torchvision"}, ["instances"])
    assert {"scikit-image", "networkx", "tifffile", "imageio"} <= set(with_extra) and "scikit-image" not in found
    assert set(with_extra) - {"scikit-image", "networkx", "tifffile", "imageio", "lazy-loader"} <= set(found)


# ----------------------------------------------------------------------------- wheels: a fresh environment


def _index_reachable(tmp: Path) -> str | None:
    """None when pip can download from the configured index, else why not."""
    r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(tmp),
                        f"tqdm=={metadata.version('tqdm')}"], capture_output=True, text=True, timeout=120)
    return None if r.returncode == 0 else (r.stderr.strip().splitlines() or ["pip download failed"])[-1]


def _base_site(folder: Path, names: tuple[str, ...]) -> list[str]:
    """``folder`` holding links to the installed files of ``names`` and everything they need: what the
    Kaggle image provides (torch, torchvision, pip), and nothing else of this environment."""
    from packaging.requirements import Requirement

    folder.mkdir()
    todo, seen = [(n, ()) for n in names], set()
    while todo:
        name, extras = todo.pop()
        dist = metadata.distribution(name)
        if (dist.metadata["Name"].lower(), extras) in seen:
            continue
        seen.add((dist.metadata["Name"].lower(), extras))
        for f in dist.files or []:
            top = f.parts[0]
            if top != ".." and top != "__pycache__" and not (folder / top).exists():
                (folder / top).symlink_to(Path(dist.locate_file(top)).resolve())
        for r in dist.requires or []:
            req = Requirement(r)
            if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in ("", *extras)):
                try:
                    metadata.distribution(req.name)
                    todo.append((req.name, tuple(sorted(req.extras))))
                except metadata.PackageNotFoundError:
                    pass
    return sorted({n for n, _ in seen})


@pytest.mark.slow
def test_wheels_install_in_a_fresh_environment_and_predict_offline(runs, tmp_path):
    """The bundle's wheels alone (plus torch/torchvision as the image provides them) install seg_toolkit;
    the notebook's own cells install it and predict in that environment, network failing: same bytes."""
    why = _index_reachable(tmp_path / "probe")
    if why:
        pytest.skip(f"the package index is unreachable, so wheels cannot be gathered: {why}")
    bundle = tmp_path / "bundle"
    info = build_bundle([runs["tiny"]], bundle)
    w = info["wheels"]
    names = {f.split("-")[0].lower() for f in w["files"]}
    assert "seg_toolkit" in names and {"timm", "segmentation_models_pytorch", "albumentations", "numpy"} <= names
    assert not names & {"torch", "torchvision", "triton", "sympy", "networkx"} and not any(n.startswith("nvidia") for n in names)
    assert w["verified"].startswith("pip install --dry-run --no-index resolved seg_toolkit")
    # the wheel's version carries its code's sha256: pip replaces a seg_toolkit 0.1.0 of other code on the target
    assert (bundle / "requirements.txt").read_text().splitlines()[0] == f"seg-toolkit=={own_version()}"
    assert own_version().startswith(f"{metadata.version('seg_toolkit')}+code.")
    with zipfile.ZipFile(next((bundle / "wheels").glob("seg_toolkit-*.whl"))) as z:
        assert "seg_toolkit/bundle.py" in z.namelist() and "seg_toolkit/bundle_templates.py" in z.namelist()

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    python = str(venv / "bin" / "python")
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    provided = _base_site(tmp_path / "base_env", ("torch", "torchvision", "pip"))  # the image's pip too
    assert "torch" in provided and "timm" not in provided
    (site / "kaggle_base.pth").write_text(str(tmp_path / "base_env") + "\n")

    read_only(bundle)
    work = tmp_path / "work"
    work.mkdir()
    env = offline_env(tmp_path, SEG_BUNDLE=str(bundle), SEG_DATA_ROOT=str(runs["root"]), SEG_OUT=str(work / "submission.csv"),
                      PIP_NO_COMPILE="1")  # no .pyc of all 40-odd packages: saves half the install time here
    assert_network_blocked(python, env)
    nb = nbformat.read(bundle / "predict.ipynb", as_version=4)
    script = "\n\n".join(c.source for c in nb.cells if c.cell_type == "code")
    try:
        r = subprocess.run([python, "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=600)
    finally:
        writable(bundle)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert (work / "submission.csv").read_bytes() == runs["refs"]["tiny"].read_bytes()
    where = subprocess.run([python, "-c", "import seg_toolkit, timm, albumentations, torch; "
                            "print(seg_toolkit.__file__, timm.__file__, albumentations.__file__, torch.__file__)"],
                           cwd=work, env=env, capture_output=True, text=True, check=True).stdout.split()
    assert all(p.startswith(str(site)) for p in where[:3]), where  # installed from the wheels, not this checkout
    assert where[3].startswith(str(tmp_path / "base_env"))
