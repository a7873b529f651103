"""``seg-toolkit``: a thin command line over the package; each subcommand calls one function.

Only this module configures logging handlers; the library modules just log.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .config import Config, ConfigError, load_config

log = logging.getLogger("seg_toolkit")


def _load(path: str, overrides: list[str]) -> Config:
    """A YAML config, or a run folder (its saved config.yaml: trained runs and ensembles alike)."""
    p = Path(path)
    if p.is_dir() and not (p / "config.yaml").is_file():
        raise ConfigError(f"{p}: is a folder without config.yaml; expected a YAML config file or a run folder (runs/<experiment>)")
    if p.is_dir():  # the run is where it was named, whatever the working directory (its saved runs_dir may be relative)
        overrides = [f"runs_dir={p.parent}", f"experiment={p.name}", *overrides]
    return load_config(p / "config.yaml" if p.is_dir() else p, overrides)


def _config(args: argparse.Namespace) -> Config:
    return _load(args.config, args.set)


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config file, or a run folder (runs/<experiment>)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=3 (repeatable)")


def _add_submission_output(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", help="submission path (default submissions/<experiment>.csv of the first config)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing submission file")


# ----------------------------------------------------------------------------- commands


def cmd_make_demo(args: argparse.Namespace) -> int:
    from .data.demo import make_demo

    out = make_demo(args.dir, n_train=args.n_train, n_test=args.n_test, seed=args.seed, overwrite=args.overwrite)
    print(f"demo competition written to {out}")
    return 0


def _print_cv(cv: dict, run: Path) -> None:
    print(f"\nCV {cv['metric']}: {cv['score']:.4f} over {cv['n_images']} OOF images "
          f"(folds {cv['folds']}: {', '.join(f'{s:.4f}' for s in cv['fold_scores'])}; "
          f"all-empty baseline {cv['baseline_empty']:.4f})")
    print(f"CV report: {run / 'cv.json'}")


def cmd_train(args: argparse.Namespace) -> int:
    from .cv import run_cv

    from .distributed import init_distributed

    cfg = _config(args)
    folds = [args.fold] if args.fold is not None else None
    if args.fold is not None and not 0 <= args.fold < cfg.folds.n_splits:
        raise ConfigError(f"--fold {args.fold}: expected 0..{cfg.folds.n_splits - 1}")
    d = init_distributed(cfg.train.device)
    cv = run_cv(cfg, folds=folds, resume=args.resume, overwrite=args.overwrite)
    if d.is_main:
        _print_cv(cv, cfg.run_dir)
        if "postprocess" in cv:
            _print_tune(cv["postprocess"])
    return 0


def cmd_lr_find(args: argparse.Namespace) -> int:
    from .lr_find import lr_find

    cfg = _config(args)
    if not 0 <= args.fold < cfg.folds.n_splits:
        raise ConfigError(f"--fold {args.fold}: expected 0..{cfg.folds.n_splits - 1}")
    r = lr_find(cfg, fold=args.fold, start=args.start, end=args.end, steps=args.steps)
    print(f"lr-find over {len(r['lr'])} steps (fold {args.fold}, {r['optimizer']}, amp {r['amp']}): "
          f"steep {r['steep']:.3g}, valley {r['valley']:.3g}")
    print(f"plot: {cfg.run_dir / 'lr_find.png'}")
    print(f"suggested optim.lr: {r['suggested_lr']:.3g} (configured {r['configured_lr']:.3g})")
    return 0


def cmd_cv(args: argparse.Namespace) -> int:
    from .cv import compute_cv

    cfg = _config(args)
    _print_cv(compute_cv(cfg, cfg.run_dir), cfg.run_dir)
    return 0


def _print_tune(report: dict) -> None:
    print(f"OOF post-processing ({report['metric']}): {report['before']:.4f} -> {report['after']:.4f}")
    for step in report.get("steps", []):
        if isinstance(step, dict) and "score" in step:
            print(f"  after {step.get('step', '?'):<10} {step['score']:.4f}")
    print(f"  params {report['params']}")


def cmd_tune(args: argparse.Namespace) -> int:
    from .predictor import check_same_training
    from .run import Run
    from .tune import tune_postprocess

    cfg = _config(args)
    run = Run.of(cfg)
    check_same_training(cfg, run, also_predict=False)
    if args.tta:
        _tune_tta(cfg)
    else:
        _print_tune(tune_postprocess(cfg))
    print(f"written to {run.postprocess_json} (predict and evaluate read it)")
    _track_results(run.dir)
    return 0


def _track_results(run_dir: Path) -> None:
    """Add the run folder's new results to its tracked run (tracker.json), if it has one; never fails."""
    from .track import log_run_files

    log_run_files(run_dir)


def _tune_tta(cfg: Config) -> None:
    """``tune --tta``: choose the TTA set and merge mode by OOF score after tuning each one's post-processing."""
    from .device import resolve_device
    from .run import Run, read_json
    from .tta_search import choose_tta

    resolve_device(cfg.train.device)
    r = choose_tta(cfg)
    print(f"\nOOF TTA choice ({r['metric']}, {r['n_images']} OOF images, folds {r['folds']}; post-processing tuned per candidate):")
    print(f"  {'tta':<34} {'merge':<11} {'transforms':>10} {'untuned':>8} {'tuned':>8}")
    for s in r["scores"]:
        mark = "  <- chosen" if (s["tta"], s["merge"]) == (r["tta"], r["merge"]) else ""
        print(f"  {' '.join(s['tta']):<34} {s['merge']:<11} {s['n_transforms']:>10} {s['untuned']:>8.4f} {s['score']:>8.4f}{mark}")
    run = Run.of(cfg)
    print(f"written to {run.tta_json}; the run's OOF files, cv.json and postprocess.json are now the chosen TTA's")
    _print_tune(read_json(run.postprocess_json))


def cmd_oof(args: argparse.Namespace) -> int:
    from .oof import remake_oof

    cfg = _config(args)
    cv = remake_oof(cfg)
    _print_cv(cv, cfg.run_dir)
    _print_tune(cv["postprocess"])
    _track_results(cfg.run_dir)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .inference import predict_test

    if args.estimate or args.budget or args.n_images:
        from .estimate import estimate_predict, format_estimate, parse_duration

        if not args.estimate:
            raise ConfigError("--budget and --n-images go with --estimate")
        budget = parse_duration(args.budget) if args.budget else None
        r = estimate_predict(_config(args), n_images=args.n_images, budget=budget)
        print(format_estimate(r))
        return 0 if r.get("fits", True) else 1
    out = predict_test(_config(args), out=args.out, overwrite=args.overwrite)
    print(f"submission: {out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export_run

    for run_dir, folds in export_run(_config(args), fmt=args.format).items():
        for f in folds:
            diffs = ", ".join(f"{p['max_abs_diff']:.2g} at {'x'.join(map(str, p['shape']))}" for p in f["parity"])
            print(f"{run_dir} fold {f['fold']}: {f['path']} ({f['bytes'] / 1e6:.1f} MB); max |onnx - torch| logits {diffs} "
                  f"(bound {f['parity'][0]['bound']:.2g}; inputs: {f['parity_inputs']})")
    print("predict with them: --set predict.backend=onnx (ONNX Runtime, CPU)")
    return 0


def cmd_ensemble(args: argparse.Namespace) -> int:
    from .ensemble import build_ensemble
    from .inference import predict_test
    from .run import Run

    cfgs = [_load(c, args.set) for c in args.configs]
    cv = build_ensemble(cfgs, name=args.name, weights=args.weights, space=args.space, overwrite=args.overwrite)
    run = Run(Path(cfgs[0].runs_dir) / (args.name or "ens_" + "_".join(c.experiment for c in cfgs)))
    ens = cv["ensemble"]
    print(f"\nensemble {run.dir} ({ens['space']} space), OOF {cv['metric']} over {cv['n_images']} images:")
    for m in ens["members"]:
        print(f"  {m['run']:<40} weight {m['weight']:.3f}  OOF {m['score']:.4f}")
    print(f"  {'ensemble':<40} {'':>12}  OOF {cv['score']:.4f}")
    search = ens["weights_search"]
    if "decision" in search:
        print(f"weights: {search['decision']}" + (f" (cross-half: searched {search['cross_half_score']:.4f}, equal "
                                                  f"{search['cross_half_equal_score']:.4f})" if "cross_half_score" in search else ""))
    if "postprocess" in cv:
        _print_tune(cv["postprocess"])
    if not args.no_predict:
        out = predict_test(run.config(), out=args.out, overwrite=args.overwrite)
        print(f"submission: {out}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .data.sources import class_names
    from .inference import evaluate_on, evaluate_split

    cfg = _config(args)
    if args.on is not None:
        r = evaluate_on(cfg, args.on)
        what = f"{args.on} ({r['n_images']} labelled images"
        what += f"; {r['training_ids_left_out']} training ids of the run left out)" if r["training_ids_left_out"] else ")"
    else:
        r = evaluate_split(cfg)
        what = f"held-out {args.split} ({r['n_images']} images)"
    print(f"evaluated on {what}, post-processing as predict: {r['metric']} {r['score']:.4f} "
          f"(before post-processing {r['score_before_postprocess']:.4f})")
    if r.get("pixel_accuracy") is not None:
        print(f"  pixel accuracy {r['pixel_accuracy']:.4f}")
    for name, iou in zip(class_names(cfg), r.get("per_class_iou") or []):
        print(f"  {name:<16} IoU {iou:.4f}")
    print(f"written to {r['written_to']}")
    print(f"{r['metric']}: {r['score']:.4f}")
    return 0


def cmd_check_submission(args: argparse.Namespace) -> int:
    from .rle import RLESpec
    from .submission import check_submission, submission_spec

    if args.config:
        spec = submission_spec(_load(args.config, []))
    else:
        spec = RLESpec(order=args.order, index_base=args.index_base, starts="relative" if args.relative else "absolute",
                       empty=(args.empty_token or [""])[0], instances=args.instances)
    problems = check_submission(args.csv, args.sample, empty_tokens=tuple(args.empty_token) if args.empty_token else None, spec=spec)
    if problems:
        print(f"{args.csv}: {len(problems)} problem(s)")
        for p in problems:
            print(f"  - {p}")
        return 1
    print(f"{args.csv}: OK (matches {args.sample})")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from .models import list_architectures, list_encoders

    if args.encoders is not None:
        names = list_encoders(args.encoders)
        print("\n".join(names) if names else f"no encoder matches {args.encoders!r}")
        print(f"({len(names)} encoders)", file=sys.stderr)
        return 0
    print("architectures:", ", ".join(list_architectures()))
    print("encoders: smp names and any timm model as tu-<name>; list them with: seg-toolkit models --encoders FILTER")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Make the demo competition (if absent), train all folds, predict, and check the submission."""
    from .cv import run_cv
    from .data.demo import make_demo
    from .inference import predict_test
    from .submission import check_submission

    cfg = _config(args)
    root = Path(cfg.data.root)
    if not (root / "train.csv").is_file():
        make_demo(root)
    cv = run_cv(cfg, resume=True)
    _print_cv(cv, cfg.run_dir)
    if "postprocess" in cv:
        _print_tune(cv["postprocess"])
    out = predict_test(cfg, overwrite=True)  # the demo's own output, remade on every run
    from .submission import submission_spec

    problems = check_submission(out, cfg.data_path(cfg.data.sample_submission), spec=submission_spec(cfg))
    from .report import build_report

    print(f"report: {build_report(cfg.run_dir)} (open in a browser; PNG copies beside it)")
    _track_results(cfg.run_dir)
    print(f"submission: {out} ({'valid' if not problems else 'INVALID: ' + '; '.join(problems)})")
    solution = root / "test_solution.csv"
    if solution.is_file():
        from .submission import score_submission

        score = score_submission(out, solution, cfg)
        print(f"hidden test score ({cv['metric']}): {score:.4f}  (the demo ships its answers in {solution})")
    return 0 if not problems else 1


def cmd_bundle(args: argparse.Namespace) -> int:
    from .bundle import DEFAULT_BASE_ENV, build_bundle
    from .run import Run

    runs = [Run.of(_load(c, [])) for c in args.configs]
    base = args.base_env.split(",") if args.base_env is not None else list(DEFAULT_BASE_ENV)
    info = build_bundle(runs, args.out, fp16=args.fp16, base_env=base, wheels=not args.no_wheels,
                        allow_missing_folds=args.allow_missing_folds, overwrite=args.overwrite)
    n = sum(len(r.get("weights", {})) for r in info["runs"])
    w = info["wheels"]
    print(f"bundle {args.out}: {len(info['runs'])} run(s), {n} weights file(s) ({'float16' if args.fp16 else 'float32'}), "
          + (f"{w['count']} wheels ({w['bytes'] / 2**20:.0f} MiB; base env {','.join(info['base_env'])} not bundled)" if w else "no wheels"))
    for warning in info["warnings"]:
        print(f"warning: {warning}")
    print(f"run it: python {Path(args.out) / 'predict.py'} --data-root DATA --out submission.csv  (see {Path(args.out) / 'README.md'})")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import build_report

    print(f"report: {build_report(Path(args.run_dir), n_examples=args.examples)}")
    _track_results(Path(args.run_dir))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .compare import collect, format_table, write_html

    if args.curves and not args.html:
        raise ConfigError("compare --curves draws into the HTML page: add --html OUT")
    rows = collect(args.runs)
    print(format_table(rows))
    if args.html:
        print(f"page: {write_html(rows, args.html, curves=args.curves)}")
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from .audit import audit, format_audit, write_audit

    cfg = _config(args)
    result = audit(cfg, decode_images=not args.headers_only)
    print(format_audit(result))
    out = write_audit(cfg, Path(args.out) if args.out else cfg.run_dir, result)
    print(f"audit page: {out}")
    return 1 if result.problems else 0


# ----------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seg-toolkit", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("make-demo", help="write the built-in synthetic demo competition")
    p.add_argument("dir")
    p.add_argument("--n-train", type=int, default=64)
    p.add_argument("--n-test", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_make_demo)

    p = sub.add_parser("demo", help="make the demo data, train, predict and check the submission")
    _add_config(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("train", help="K-fold training with out-of-fold predictions and cv.json")
    _add_config(p)
    p.add_argument("--fold", type=int, help="train this fold only (e.g. one job of a job array)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint; finished folds are kept")
    p.add_argument("--overwrite", action="store_true", help="delete the existing run folder first")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("lr-find", help="learning-rate range test on one fold's training split: a plot and a suggested optim.lr")
    _add_config(p)
    p.add_argument("--fold", type=int, default=0, help="whose training split to use (default 0)")
    p.add_argument("--start", type=float, default=1e-7, help="first learning rate (default 1e-7)")
    p.add_argument("--end", type=float, default=1.0, help="last learning rate (default 1)")
    p.add_argument("--steps", type=int, default=100, help="optimiser steps (default 100; batches cycle)")
    p.set_defaults(func=cmd_lr_find)

    p = sub.add_parser("cv", help="recompute cv.json from the OOF files of finished folds")
    _add_config(p)
    p.set_defaults(func=cmd_cv)

    p = sub.add_parser("tune", help="tune thresholds / min-area / empty gate on the OOF predictions (never on test)")
    _add_config(p)
    p.add_argument("--tta", action="store_true",
                   help="also choose the TTA transforms and merge mode by OOF score (re-predicts the folds' validation images)")
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("oof", help="predict the OOF files again with the config's predict settings (e.g. --set predict.tta=[identity,hflip]), rescore, re-tune")
    _add_config(p)
    p.set_defaults(func=cmd_oof)

    p = sub.add_parser("predict", help="predict the test images and write the submission CSV")
    _add_config(p)
    _add_submission_output(p)
    p.add_argument("--estimate", action="store_true", help="time a few test images with the full predictor and "
                   "project the whole prediction instead (writes estimate.json only; exit 1 when over --budget)")
    p.add_argument("--budget", metavar="TIME", help="with --estimate: the time allowed, e.g. 9h, 30m, 3600s")
    p.add_argument("--n-images", type=int, metavar="N", help="with --estimate: project for N images (e.g. the hidden test set)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("export", help="export every fold model of a trained run to ONNX (export/ in the run), checked against PyTorch")
    _add_config(p)
    p.add_argument("--format", choices=["onnx"], default="onnx", help="onnx (opset 17, dynamic batch and size)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("ensemble", help="an ensemble run of trained experiments: OOF merge, weights and post-processing chosen on OOF, submission")
    p.add_argument("configs", nargs="+", help="configs or run folders of trained experiments (they must share folds.csv)")
    p.add_argument("--name", help="the ensemble's experiment name (default ens_<a>_<b>...)")
    p.add_argument("--weights", type=float, nargs="+", help="fixed weights (default: chosen on OOF, with a cross-half check)")
    p.add_argument("--space", choices=["prob", "logit"], help="merge space (default predict.ensemble_space of the first)")
    p.add_argument("--no-predict", action="store_true", help="make the ensemble run only, no submission")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a value in every config")
    _add_submission_output(p)
    p.set_defaults(func=cmd_ensemble)

    p = sub.add_parser("evaluate", help="score the run's predictor and post-processing on labelled images: "
                                        "the held-out split (data.test_lists) or any folder laid out like the training data")
    _add_config(p)
    where = p.add_mutually_exclusive_group()
    where.add_argument("--split", choices=["test"], default="test", help="the labelled held-out lists (data.test_lists)")
    where.add_argument("--on", metavar="DIR", help="a labelled folder laid out like data.root (same data.* keys)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("check-submission", help="validate a submission CSV against the sample submission")
    p.add_argument("csv")
    p.add_argument("--sample", required=True)
    p.add_argument("--empty-token", action="append", help="how an empty mask is written (repeatable; default: the empty string)")
    p.add_argument("--config", help="read the RLE convention from this config's submission.* keys (instead of the flags below)")
    p.add_argument("--order", choices=["F", "C"], default="F", help="pixel order: F column-major (Kaggle default), C row-major")
    p.add_argument("--index-base", type=int, choices=[0, 1], default=1, help="starts count from 0 or 1 (default 1)")
    p.add_argument("--relative", action="store_true", help="starts are relative to the previous run's end (SIIM)")
    p.add_argument("--instances", action="store_true", help="one row per object: repeated ids are expected (Airbus, DSB 2018)")
    p.set_defaults(func=cmd_check_submission)

    p = sub.add_parser("bundle", help="a self-contained folder for a Kaggle code competition: weights, configs, wheels, predict.py")
    p.add_argument("configs", nargs="+", help="trained or ensemble runs (run folders or their configs); the first predicts by default")
    p.add_argument("--out", required=True, help="the bundle folder to write")
    p.add_argument("--fp16", action="store_true", help="store the weights as float16 (half the size; loaded back to float32)")
    p.add_argument("--base-env", metavar="PKG,PKG", help="packages the target image provides, left out of wheels/ "
                   "with what only they need (default: torch,torchvision)")
    p.add_argument("--no-wheels", action="store_true", help="bundle no wheels (install seg_toolkit yourself)")
    p.add_argument("--allow-missing-folds", action="store_true", help="bundle the finished folds of a run that lacks some")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle")
    p.set_defaults(func=cmd_bundle)

    p = sub.add_parser("report", help="one self-contained HTML page of a run: CV, per-class table, confusion, curves, overlays")
    p.add_argument("run_dir")
    p.add_argument("--examples", type=int, default=4, help="best and worst OOF images to show")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("audit", help="check a competition folder: class frequencies, empty masks, sizes, every problem")
    _add_config(p)
    p.add_argument("--out", help="folder for audit.html (default: the run folder)")
    p.add_argument("--headers-only", action="store_true", help="read image headers only (faster; misses truncated files)")
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("compare", help="a leaderboard of runs from their folders: CV, folds, tuned CV, TTA, model, "
                                       "epochs, time, which runs share folds.csv")
    p.add_argument("runs", nargs="*", default=["runs"], help="a runs folder and/or run folders (default: runs)")
    p.add_argument("--html", metavar="OUT", help="also write a standalone HTML page with a bar chart (plotly.js inline)")
    p.add_argument("--curves", action="store_true", help="add every run's validation score per epoch and fold to the page")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("models", help="list architectures and encoders")
    p.add_argument("--encoders", nargs="?", const="", metavar="FILTER", help="list encoders (optionally filtered)")
    p.set_defaults(func=cmd_models)
    return parser


def _one_line(e: BaseException) -> str:
    """The message of ``e``; an error re-raised from a DataLoader worker carries the worker's whole
    traceback in its message, whose last line is the original ``module.Error: message``."""
    text = str(e)
    if text.startswith("Caught ") and "DataLoader worker" in text.splitlines()[0]:
        last = text.strip().splitlines()[-1]
        prefix = f"{type(e).__module__}.{type(e).__name__}: "
        return last[len(prefix):] if last.startswith(prefix) else last
    return text


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    from .errors import SegToolkitError

    try:
        return args.func(args)
    except (SegToolkitError, FileExistsError, FileNotFoundError) as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print(f"\ninterrupted: {e}" if str(e) else "\ninterrupted; finished epochs are checkpointed: add --resume to continue",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
