"""``seg-toolkit bundle``: trained runs as one self-contained folder for a Kaggle code competition.

A code competition runs a notebook offline; everything else is uploaded beforehand as a
dataset. ``build_bundle([Run("runs/a")], "bundle")`` (``seg-toolkit bundle runs/a --out bundle``) writes::

    bundle/
      bundle.json        what is inside: runs, members, folds, sha256 of every file under runs/ (checked
                         before predicting: seg_toolkit/bundle_check.py), versions, base environment,
                         warnings (untuned post-processing, folds left out)
      runs/<name>/       each run (an ensemble and each of its members) as a run folder
                         (seg_toolkit/run.py): config.yaml, folds.csv, cv.json, postprocess.json,
                         tta.json, ensemble.json (members named ../<member>, fingerprints of the
                         bundled files), fold_<k>/best.pt
                         (weights only, optionally stored float16) and fold_<k>/done.json
      wheels/            seg_toolkit and every dependency outside the base environment
      requirements.txt   the exact versions of wheels/
      predict.py         python predict.py --data-root ROOT --out submission.csv [--overwrite]
      predict.ipynb      the same in a notebook: pip install from wheels/, then predict.py
      README.md          the exact commands

The bundled runs are predicted by :func:`~seg_toolkit.inference.predict_test`, the function of
``seg-toolkit predict``: with float32 weights the submission is the same byte for byte.
Models are rebuilt with ``model.encoder_weights: null`` (the checkpoint holds every weight),
so nothing is downloaded, and no tracker is named (``track.backend: none``; seg_toolkit/bundle_check.py).
The wheels are the requirement tree of seg_toolkit's own wheel, walked through the installed
distributions and stopped at the base environment (default torch and torchvision, which Kaggle
images carry): what only they need (nvidia-*, triton, sympy, ...) is left out, what a bundled
package needs too is kept. They are fetched at the
installed versions (``pip download``; sdists are built into wheels) and checked with pip's
resolver: ``pip install --dry-run --no-index`` must resolve seg_toolkit from ``wheels/``
alone, the base packages stood in for by empty stubs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import yaml

from .budget_run import run_folds
from .bundle_templates import notebook, predict_py, readme
from .bundle_weights import fp16_warning, write_weights
from .bundle_wheels import gather_wheels, install_spec
from .bundle_check import BundleError, check_ensemble, file_manifest, offline_config, refingerprint, verify_bundle
from .config import ConfigError
from .config_yaml import read_yaml
from .versions import code_sha256, library_versions
from .files import aside_folder, read_json, sha256_file, stale_asides, write_json, write_text
from .run import Run
from .run_guard import check_not_input, delete_path

log = logging.getLogger(__name__)

__all__ = ["BundleError", "DEFAULT_BASE_ENV", "build_bundle", "bundle_config", "check_bundled_config", "predict_bundle"]

DEFAULT_BASE_ENV = ("torch", "torchvision")
_COPIED = ("folds_csv", "fold_balance_csv", "cv_json", "postprocess_json", "tta_json", "amp_json")  # Run properties


# ----------------------------------------------------------------------------- runs and weights


def _runs(runs: Sequence[Run]) -> tuple[list[Run], dict[str, Run]]:
    """The runs named (deduplicated) and every run to copy (those and ensemble members), by folder name."""
    top: list[Run] = []
    by_name: dict[str, Run] = {}

    def add(r: Run, why: str) -> None:
        if not r.config_yaml.is_file():
            raise FileNotFoundError(f"{r.dir}: no run folder (config.yaml){why}; train it first")
        name = r.dir.resolve().name
        if name in by_name and by_name[name] != r:
            raise BundleError(f"two runs are named {name!r} ({by_name[name].dir} and {r.dir}); runs/<name>/ of the "
                              "bundle must be unique: bundle them separately or rename one experiment")
        by_name[name] = r

    for r in runs:
        add(r, "")
        if r not in top:
            top.append(r)
        for m, _ in r.members() if r.is_ensemble else []:
            if m.is_ensemble:
                raise BundleError(f"{r.dir}: member {m.dir} is itself an ensemble; not supported")
            add(m, f", member of the ensemble {r.dir}")
    return top, by_name


def _folds(run: Run, allow_missing: bool) -> tuple[list[int], list[str]]:
    """``(folds to bundle, descriptions of the missing ones)``: a fold needs best.pt and done.json. The folds
    expected are the run's (``folds.only``, less those ``train.min_fold_epochs`` left out: :func:`run_folds`)."""
    expected = run_folds(run.config(), run)
    n = len(expected)
    folds, missing = [], []
    for k in sorted(set(expected) | set(run.trained_folds())):
        done, best = run.done_json(k).is_file(), run.best_pt(k).is_file()
        if done and best:
            folds.append(k)
        else:
            missing.append(f"fold {k} ({'no done.json: unfinished' if best else 'no best.pt' if done else 'not trained'})")
    if not folds:
        raise BundleError(f"{run.dir}: no finished fold (fold_<k>/best.pt and done.json); train it first")
    if missing and not allow_missing:
        raise BundleError(f"{run.dir}: {len(missing)} of {n} folds missing: {', '.join(missing)}; finish them "
                          "(`seg-toolkit train CONFIG --resume`) or pass --allow-missing-folds to bundle the others")
    scored = (read_json(run.cv_json) or {}).get("folds")
    unscored = [k for k in scored if k not in folds] if isinstance(scored, list) else []
    if unscored:  # predict on the target refuses such a run (the CV described more folds than it submits): so here
        raise BundleError(f"{run.dir}: fold(s) {unscored} are scored in {run.cv_json.name} but not bundled; finish them, "
                          "or run `seg-toolkit cv CONFIG` (and `tune`) so the CV and its post-processing are of the "
                          "folds bundled")
    return folds, missing


#: data keys predict reads files by, relative to data.root (``--data-root`` on the target)
_DATA_FILE_KEYS = ("test_images", "sample_submission", "classes_csv", "test_lists")


def _refuse_absolute_data_paths(src: Run, data: dict[str, Any]) -> None:
    """An absolute ``data.test_images`` (or sample submission, classes CSV, test list) ignores ``--data-root`` and
    points at this machine's disk on the target: refused here, not there."""
    d = data.get("data") or {}
    for key in _DATA_FILE_KEYS:
        values = d.get(key) if isinstance(d.get(key), list) else [d.get(key)]
        for v in values:
            if isinstance(v, str) and v and Path(v).is_absolute():
                raise BundleError(f"{src.config_yaml}: data.{key} {v!r} is an absolute path, which --data-root on the "
                                  "target cannot move; write it relative to data.root")


def _copy_run(src: Run, dst: Run, folds: list[int], fp16: bool) -> dict[str, Any]:
    dst.dir.mkdir(parents=True)
    data = read_yaml(src.config_yaml)  # as load_config reads it (a duplicate key refused, YAML 1.2 numbers)
    _refuse_absolute_data_paths(src, data)
    encoder_weights = (data.get("model") or {}).get("encoder_weights")
    write_text(dst.config_yaml, yaml.safe_dump(offline_config(data), sort_keys=False))
    for prop in _COPIED:
        if getattr(src, prop, None) is not None and getattr(src, prop).is_file():
            shutil.copyfile(getattr(src, prop), getattr(dst, prop))
    info: dict[str, Any] = {"name": dst.dir.name, "source": str(src.dir.resolve()), "encoder_weights_at_training": encoder_weights}
    if src.is_ensemble:
        ens = read_json(src.ensemble_json) or {}
        ens["members"] = [{**m, "run": f"../{Path(os.path.normpath(src.dir / m['run'])).resolve().name}"} for m in ens["members"]]
        write_json(dst.ensemble_json, ens)
        info.update(kind="ensemble", members=ens["members"], space=ens.get("space", "prob"))
        return info
    use_ema = src.config().train.use_ema
    info.update(kind="trained", folds=folds, trained_with=_trained_with(src, folds), weights={})
    for k in folds:
        info["weights"][str(k)] = {"file": f"runs/{dst.dir.name}/fold_{k}/best.pt",
                                   **write_weights(src, k, dst.best_pt(k), use_ema, fp16)}
        shutil.copyfile(src.done_json(k), dst.done_json(k))
    return info


def _trained_with(run: Run, folds: list[int]) -> Any:
    """Versions a fold recorded when it was trained (``done.json`` ``versions``), if it did."""
    found = [v for k in folds if isinstance(v := (read_json(run.done_json(k)) or {}).get("versions"), dict)]
    return found[0] if found else "not recorded by the run"


# ----------------------------------------------------------------------------- the bundle


def needed_extras(runs: Sequence[Run]) -> list[str]:
    """The extras of seg_toolkit that predicting with ``runs`` needs: ``instances`` (scikit-image) when a run's
    post-processing cuts touching objects along the valley of p (``split_by: probability``), as it was tuned."""
    from .postprocess import load_params

    return ["instances"] if any(load_params(r.config(), r).split_by == "probability" for r in runs) else []


def build_bundle(runs: Sequence[Run], out: str | Path, fp16: bool = False, base_env: Sequence[str] = DEFAULT_BASE_ENV,
                 wheels: bool = True, allow_missing_folds: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Write the bundle of ``runs`` (trained or ensemble run folders) to ``out``; returns ``bundle.json``'s data.

    The folder is made beside ``out`` and renamed into place at the end: a failed build leaves
    nothing half-made. An existing ``out`` is replaced only with ``overwrite`` and only if it is a bundle.
    """
    from packaging.utils import canonicalize_name

    out = Path(out)
    if not runs:
        raise ConfigError("bundle: name at least one run (a run folder or its config)")
    top, by_name = _runs(runs)
    inside = [r for r in by_name.values() if r.dir.resolve() == out.resolve() or r.dir.resolve() in out.resolve().parents]
    if inside:
        raise BundleError(f"{out} is inside the run folder {inside[0].dir}, which the bundle copies from (a run's "
                          "--overwrite would delete it with the run); choose an --out outside the run folders")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not (out / "bundle.json").is_file():
            raise BundleError(f"{out} exists and is not a bundle (no bundle.json); choose another --out")
        if not overwrite:
            raise FileExistsError(f"{out} exists; pass --overwrite to replace the bundle, or another --out")
        foreign = _foreign_files(out) + _edited_texts(out)
        if foreign:  # `kaggle datasets init -p BUNDLE` writes dataset-metadata.json there, a predict its submission.csv
            raise BundleError(f"{out} holds {', '.join(foreign[:5])}{' and more' if len(foreign) > 5 else ''}, which the "
                              "bundle did not write (or that were edited since); --overwrite replaces only a bundle's own "
                              "files as it wrote them: move them out first (dataset-metadata.json can go back after)")
    for r in by_name.values():  # a bundle inside the images, masks or lists a run reads (data.root itself is fine)
        check_not_input(r.config(), out, "bundle --out")
    from .oof import check_oof_complete

    for r in by_name.values():  # an oof / tune --tta stopped half-way: predict refuses the run, so must the bundle
        check_oof_complete(r)
    warnings: list[str] = []
    folds: dict[str, list[int]] = {}
    for name, r in by_name.items():
        if not r.is_ensemble:
            folds[name], missing = _folds(r, allow_missing_folds)
            if missing:
                warnings.append(f"{name}: bundled without {', '.join(missing)} (--allow-missing-folds)")
    for r in by_name.values():
        if r.is_ensemble:
            check_ensemble(r, folds)
    for r in top:
        _check_predicts(r)
    for r in top:
        if not r.postprocess_json.is_file():
            warnings.append(f"{r.dir.name}: untuned post-processing (no postprocess.json): the config's postprocess.* "
                            "values are used; `seg-toolkit tune CONFIG` tunes them on OOF")
    for w in warnings:
        log.warning("bundle: %s", w)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = aside_folder(out, "partial")
    for left in stale_asides(out, "partial"):  # builds a kill or a crash cut short (this pid's too)
        log.info("removing %s: a bundle build cut short", left)
        delete_path(left, announce=False)
    tmp.mkdir()
    try:
        infos = [_copy_run(r, Run(tmp / "runs" / name), folds.get(name, []), fp16) for name, r in by_name.items()]
        if fp16:
            warnings.append(fp16_warning(infos))
            log.warning("bundle: %s", warnings[-1])
        for info in infos:
            if info["kind"] == "ensemble":
                refingerprint(Run(tmp / "runs" / info["name"]), info)
        base = {canonicalize_name(b) for b in base_env if b.strip()}
        extras = needed_extras(list(by_name.values()))
        gathered = gather_wheels(tmp / "wheels", base, extras) if wheels else None
        lead = Run(tmp / "runs" / top[0].dir.resolve().name).config()
        data = {"format": 2, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "default_run": top[0].dir.resolve().name,
                "named": [r.dir.resolve().name for r in top], "runs": infos, "fp16": fp16, "warnings": warnings,
                "versions": {"bundled_with": library_versions(), "seg_toolkit_code": code_sha256(),
                             "platform": platform.platform()},
                "base_env": sorted(base), "install": install_spec(extras), "wheels": gathered, "files": file_manifest(tmp)}
        data["texts"] = _texts(bool(gathered))
        _write_texts(tmp, data, lead)
        # as written: a text edited since (predict.py) is the user's, which --overwrite would drop
        data["text_sha256"] = {name: sha256_file(tmp / name) for name in data["texts"]}
        write_json(tmp / "bundle.json", data)
        if out.exists():  # checked above: a bundle (bundle.json), and --overwrite was given
            delete_path(out)
        os.replace(tmp, out)
    except BaseException:
        if tmp.exists():
            delete_path(tmp, announce=False)
        raise
    return data


def _texts(wheels: bool) -> list[str]:
    """The files :func:`_write_texts` writes beside ``bundle.json`` (``requirements.txt`` only with wheels)."""
    return ["predict.py", "predict.ipynb", "README.md"] + (["requirements.txt"] if wheels else [])


def _check_predicts(run: Run) -> None:
    """What ``seg-toolkit predict RUN`` checks before it predicts, checked here: a run it refuses (an ensemble whose
    member predicts otherwise since it was built, OOF files a stopped rewrite left mixed, a fold ``cv.json`` scored
    gone) would be refused by the bundle's predict.py, on the target."""
    from .inference import run_predictor

    cfg = dataclasses.replace(run.config(), runs_dir=str(run.dir.parent), experiment=run.dir.name)
    try:
        run_predictor(cfg)
    except (ConfigError, FileNotFoundError) as e:
        raise BundleError(f"{run.dir}: predict refuses this run, so the bundle's predict.py would: {e}") from None


def check_bundled_config(cfg, run: Run, source: str) -> None:
    """``bundle CONFIG.yaml`` bundles the run folder the YAML names, which predicts with its saved ``config.yaml``;
    ``predict CONFIG.yaml`` predicts with the YAML's own submission and post-processing keys. A YAML that differs from
    the saved config on a key prediction reads is refused, naming the keys, rather than bundled into another
    submission than ``predict`` writes with it."""
    from .config import anchored
    from .run_settings import diff_of_keys

    if not run.config_yaml.is_file():
        return
    keys = ("data.", "transforms.", "model.", "predict.", "postprocess.", "submission.", "metric.", "train.amp",
            "train.use_ema")
    diff = [d for d in diff_of_keys(run.config(), anchored(cfg), keys) if not d.startswith(("data.root:", "model.encoder_weights:"))]
    if diff:
        raise ConfigError(f"{source} differs from the saved config of the run it names, {run.config_yaml} "
                          f"({'; '.join(diff[:6])}); the bundle holds the run folder, which predicts with its saved "
                          f"config (`seg-toolkit predict {run.dir}`), so its submission would not be the one `seg-toolkit "
                          f"predict {source}` writes. Bundle {run.dir} as it is, or make a run with these settings")


def _foreign_files(out: Path) -> list[str]:
    """The files under the bundle ``out`` that its ``bundle.json`` does not list as its own (its runs' files, its
    wheels, its texts), as paths relative to ``out``: a user's notes in ``runs/<name>/``, their own wheel in
    ``wheels/``, a submission beside ``predict.py`` (the top level alone was checked: ``--overwrite`` deleted
    files inside)."""
    try:
        data = json.loads((out / "bundle.json").read_text())
        # bundles made before texts were recorded: every text a bundle may hold
        own = set(data["files"]) | {"bundle.json"} | set(data.get("texts") or _texts(True))
        wheels = data.get("wheels")
        own |= {f"wheels/{name}" for name in (wheels.get("files", []) if isinstance(wheels, dict) else [])}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise BundleError(f"{out / 'bundle.json'}: unreadable ({type(e).__name__}: {e}), so which files are the "
                          "bundle's own is not known; move the folder away or choose another --out") from None
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*")
                  if not p.is_dir() and p.relative_to(out).as_posix() not in own)


def _edited_texts(out: Path) -> list[str]:
    """The texts of the bundle ``out`` changed since it wrote them (``bundle.json`` ``text_sha256``; bundles made
    before 2026-12-05 record none)."""
    recorded = (read_json(out / "bundle.json") or {}).get("text_sha256") or {}
    return [name for name, sha in sorted(recorded.items()) if (out / name).is_file() and sha256_file(out / name) != sha]


def _write_texts(folder: Path, data: dict[str, Any], lead) -> None:
    """predict.py, predict.ipynb, README.md and requirements.txt."""
    title = f"seg_toolkit bundle: {', '.join(data['named'])}"
    write_text(folder / "predict.py", predict_py(data["default_run"], wheels=bool(data["wheels"])))
    write_text(folder / "predict.ipynb", notebook(title, lead.data.test_images or lead.data.sample_submission,
                                                  wheels=bool(data["wheels"])))
    write_text(folder / "README.md", readme(title, data, lead.data.test_images, lead.data.sample_submission))
    if data["wheels"]:
        write_text(folder / "requirements.txt", "".join(f"{n}=={v}\n" for n, v in data["wheels"]["requirements"].items()))


# ----------------------------------------------------------------------------- predicting from a bundle


def bundle_config(bundle: str | Path, data_root: str | Path, run: str | None = None, device: str | None = None,
                  batch_size: int | None = None, num_workers: int | None = None):
    """The config of a bundled run with ``data.root`` set and no file written into the bundle (it may be read-only)."""
    bundle = Path(bundle).resolve()
    info = read_json(bundle / "bundle.json")
    if info is None:
        raise BundleError(f"{bundle}: not a bundle (no bundle.json)")
    try:
        name = run or info["default_run"]
        names = [i["name"] for i in info["runs"]]
    except (KeyError, TypeError) as e:
        raise BundleError(f"{bundle / 'bundle.json'}: not a bundle's record ({type(e).__name__}: {e}); build the bundle "
                          "again") from None
    run_dir = bundle / "runs" / name
    if not (run_dir / "config.yaml").is_file():
        raise BundleError(f"{bundle}: no bundled run {name!r} (runs: {', '.join(names)})")
    if not Path(data_root).is_dir():
        raise BundleError(f"--data-root {data_root}: not a folder (the competition data)")
    cfg = Run(run_dir).config()  # a trained run's config (Run.config: the pretrained encoder file is not looked for)
    train = dataclasses.replace(cfg.train, device=device or cfg.train.device,
                                num_workers=cfg.train.num_workers if num_workers is None else num_workers)
    predict = dataclasses.replace(cfg.predict, save_probs="none", write_masks="none",
                                  batch_size=batch_size or cfg.predict.batch_size)
    if getattr(predict, "backend", "torch") != "torch":  # the bundle ships PyTorch weights, not ONNX exports
        predict = dataclasses.replace(predict, backend="torch")
    return dataclasses.replace(cfg, runs_dir=str(run_dir.parent), experiment=name, train=train, predict=predict,
                               data=dataclasses.replace(cfg.data, root=str(Path(data_root).resolve())))


def _check_code(bundle: Path, info: dict[str, Any]) -> None:
    """The seg_toolkit imported here must be the code the bundle was made with (``versions.seg_toolkit_code``): pip
    kept another seg_toolkit 0.1.0 already installed, and predict.py ran it silently (14 of 72 rows differed).
    Refused when the bundle has that code's wheel (one command installs it), said when it has none."""
    made = (info.get("versions") or {}).get("seg_toolkit_code")
    if not made or made == code_sha256():
        return
    import seg_toolkit

    where = Path(seg_toolkit.__file__).resolve().parent
    if not info.get("wheels"):
        log.warning("the seg_toolkit imported from %s is other code than this bundle (made with --no-wheels) was made "
                    "with (sha256 %s...); predictions may differ from what was tuned", where, made[:12])
        return
    wheel = next(iter(sorted((bundle / "wheels").glob("seg_toolkit-*.whl"))), None)
    raise BundleError(f"the seg_toolkit imported from {where} is other code than this bundle was made with (code sha256 "
                      f"{made[:12]}..., installed {code_sha256()[:12]}...), and its predictions may differ from what was "
                      f"tuned; install the bundled one: {sys.executable} -m pip install --no-index --no-deps "
                      f"--force-reinstall {wheel or bundle / 'wheels' / 'seg_toolkit-*.whl'}")


def _warn_other_versions(made: dict[str, Any]) -> None:
    """Name the libraries installed here at other versions than the bundle was made with: the image's own timm or
    albumentations, kept by pip when they fit seg_toolkit's ranges, can resize, normalise or build the model otherwise
    than where the run was tuned (torch: its version without the build tag, +cpu / +cu121)."""
    now = library_versions()
    base = lambda v: str(v).split("+")[0] if v else v  # noqa: E731
    other = [f"{name} {now.get(name)} (bundled with {v})" for name, v in made.items()
             if name in now and v and base(now.get(name)) != base(v)]
    if other:
        log.warning("installed at other versions than this bundle was made with: %s; predictions may differ a little "
                    "from what was tuned (`pip install --no-index --find-links BUNDLE/wheels -r BUNDLE/requirements.txt` "
                    "installs the bundled ones)", "; ".join(other))


def predict_bundle(bundle: str | Path, data_root: str | Path, out: str | Path, run: str | None = None,
                   device: str | None = None, batch_size: int | None = None, num_workers: int | None = None,
                   overwrite: bool = False) -> Path:
    """``predict.py``: the submission of a bundled run on ``data_root``, written to ``out`` (an existing file only
    with ``overwrite``, ``--overwrite``), once every bundled file is checked against its sha256 in ``bundle.json``."""
    from .inference import predict_test

    if Path(out).exists() and not Path(out).is_dir() and not overwrite:  # before hashing every bundled file
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it, or --out for another file")
    info = read_json(Path(bundle) / "bundle.json")
    if info is None:
        raise BundleError(f"{bundle}: not a bundle (no bundle.json)")
    verify_bundle(Path(bundle), info)
    _check_code(Path(bundle), info)
    _warn_other_versions((info.get("versions") or {}).get("bundled_with") or {})
    cfg = bundle_config(bundle, data_root, run, device, batch_size, num_workers)
    return predict_test(cfg, out=out, overwrite=overwrite)
