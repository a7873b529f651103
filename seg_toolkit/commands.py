"""The ``seg-toolkit`` subcommands: each reads its parsed arguments, calls one library function
and prints what it did. The argument parser and ``main`` are in :mod:`seg_toolkit.cli`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .config import Config, ConfigError, load_config


def _load(path: str, overrides: list[str], trained: bool = False) -> Config:
    """A YAML config, or a run folder (its saved config.yaml: trained runs and ensembles alike). ``trained``: a
    command that uses trained runs only (its pretrained encoder file is not looked for: the checkpoints hold it)."""
    p = Path(path)
    if p.is_dir() and p.name in ("", ".."):  # `.` or `..`: the folder's own name is the experiment
        p = Path(os.path.abspath(p))
    if p.is_dir() and not (p / "config.yaml").is_file():
        raise ConfigError(f"{p}: is a folder without config.yaml; expected a YAML config file or a run folder (runs/<experiment>)")
    if p.is_dir():  # the run is where it was named, whatever the working directory (its saved runs_dir may be relative)
        overrides = [("runs_dir", str(p.parent)), ("experiment", p.name), *overrides]  # names, not YAML
    return load_config(p / "config.yaml" if p.is_dir() else p, overrides, trained)


def _config(args: argparse.Namespace, trained: bool = False) -> Config:
    return _load(args.config, args.set, trained)


def _check_out_file(out: str | None, configs: list[str] = (), option: str = "--out", example: str = "submission.csv") -> None:
    """``--out newdir/`` names a folder (Path drops the slash: a file ``newdir`` was written); an existing folder is
    refused by :func:`~seg_toolkit.inference.check_out`, also before any work. Nor may ``--out`` be one of the YAML
    files the command reads its ``configs`` from (or their ``base:`` files): ``--overwrite`` replaced the config."""
    if out and out.endswith(("/", os.sep)):
        raise ConfigError(f"{option} {out} ends with a slash: a folder; name a file, e.g. {Path(out) / example}")
    if out:
        from .config_yaml import config_files

        here = Path(out).resolve()
        for c in configs:
            if here in config_files(Path(c)):
                raise ConfigError(f"--out {out} is the config {c} reads from; write the submission elsewhere "
                                  "(--overwrite never replaces a config)")


def cmd_make_demo(args: argparse.Namespace) -> int:
    from .data.demo import make_demo

    out = make_demo(args.dir, n_train=args.n_train, n_test=args.n_test, seed=args.seed, overwrite=args.overwrite)
    print(f"demo competition written to {out}")
    return 0


def _print_cv(cv: dict, run: Path) -> None:
    print(f"\nCV {cv['metric']}: {cv['score']:.4f} over {cv['n_images']} OOF images "
          f"(folds {cv['folds']}: {', '.join(f'{s:.4f}' for s in cv['fold_scores'])}; "
          f"{cv.get('baseline', 'all-empty baseline')} {cv['baseline_empty']:.4f})")
    base = cv.get("baseline_empty")
    if isinstance(base, (int, float)) and cv["score"] < base:  # worse than predicting nothing: not yet a model
        print(f"note: the CV is below the {cv.get('baseline', 'all-empty baseline')}: the model does worse than predicting "
              "it; train longer, or check the data and the loss (`seg-toolkit audit CONFIG`)")
    left_out = (cv.get("time_budget") or {}).get("left_out")
    if left_out:
        print(f"fold(s) {left_out} left out: train.time_budget {cv['time_budget']['budget']} fits train.min_fold_epochs="
              f"{cv['time_budget']['min_fold_epochs']} epochs for {len(cv['time_budget']['folds'])} fold(s) on this machine")
    print(f"CV report: {run / 'cv.json'}")


def cmd_train(args: argparse.Namespace) -> int:
    from .cv import run_cv
    from .distributed import close_distributed, init_distributed

    cfg = _config(args)
    folds = [args.fold] if args.fold is not None else None
    if args.fold is not None and not 0 <= args.fold < cfg.folds.n_splits:
        raise ConfigError(f"--fold {args.fold}: expected 0..{cfg.folds.n_splits - 1}")
    if args.fold is not None and cfg.folds.only and args.fold not in cfg.folds.only:
        # trained, it joined predict's folds while bundle and the run's completeness counted folds.only's
        raise ConfigError(f"--fold {args.fold}: the config trains folds.only {list(cfg.folds.only)}; name one of them, "
                          f"or add --set 'folds.only=[...]' with {args.fold} in it")
    d = init_distributed(cfg.train.device)
    cv = run_cv(cfg, folds=folds, resume=args.resume, overwrite=args.overwrite)
    close_distributed()  # every rank, after run_cv's last collective (a no-op for one process)
    if d.is_main:
        _print_cv(cv, cfg.run_dir)
        if "postprocess" in cv:
            _print_tune(cv["postprocess"])
    return 0


def cmd_lr_find(args: argparse.Namespace) -> int:
    from .lr_find import lr_find
    from .run import Run

    cfg = _config(args)
    Run.of(cfg).refuse_ensemble("lr-find")  # it would sweep a model an ensemble never trains, and write into it
    if not 0 <= args.fold < cfg.folds.n_splits:
        raise ConfigError(f"--fold {args.fold}: expected 0..{cfg.folds.n_splits - 1}")
    r = lr_find(cfg, fold=args.fold, start=args.start, end=args.end, steps=args.steps)
    print(f"lr-find over {len(r['lr'])} steps (fold {args.fold}, {r['optimizer']}, amp {r['amp']}"
          + (", encoder frozen as in the first epochs" if r.get("frozen_encoder") else "")
          + f"): steep {r['steep']:.3g}, valley {r['valley']:.3g}; stopped: {r.get('stopped', 'end')} at step {r.get('stop_step')}"
          + ("; no clear descent: the suggestion is weak" if r.get("no_descent") else ""))
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
    cf = report.get("cross_fitted")
    if cf:
        which = " and the search" if cf.get("searches") else ""  # several searches: the choice among them nested too
        print(f"  cross-fitted {cf['score']:.4f}: each image scored with what tuning on the others chose ({cf['groups']}"
              f"{which}); the tuned score's optimism {report['after'] - cf['score']:+.4f}")
    compared = (report.get("search") or {}).get("compared") or {}
    if len(compared) > 1:
        per_group = f" (without each group: {', '.join(cf['searches'])})" if cf and cf.get("searches") else ""
        print(f"  search kept: {report['search']['chosen']}{per_group}; cross-fitted / tuned: " + "; ".join(
            f"{m} {v['cross_fitted']:.4f} / {v['after']:.4f}" for m, v in compared.items()))
    from .postprocess import params_in_use

    steps = [x for x in report.get("steps", []) if isinstance(x, dict) and "score" in x and not x.get("skipped")]
    chosen = (report.get("search") or {}).get("chosen")
    if steps and chosen and len(compared) > 1:  # whose steps these are: the joint search's greedy start is not its end
        print(f"  the {chosen} search's steps:")
    for step in steps:  # a multiclass argmax has no threshold step
        print(f"  after {step.get('step', '?'):<10} {step['score']:.4f}")
    print(f"  params {params_in_use(report['params'], report['task']) if 'task' in report else report['params']}")


def cmd_tune(args: argparse.Namespace) -> int:
    from .run_settings import check_same_training
    from .run import Run
    from .tune import tune_postprocess

    cfg = _config(args, trained=True)
    run = Run.of(cfg)
    if args.tta:
        _tune_tta(cfg)  # choose_tta checks the training keys and the predict keys it does not set itself
    else:
        check_same_training(cfg, run, also_predict=False)
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
    from .files import read_json
    from .run import Run
    from .tta_search import choose_tta

    resolve_device(cfg.train.device)
    r = choose_tta(cfg)
    print(f"\nOOF TTA choice ({r['metric']}, {r['n_images']} OOF images, folds {r['folds']}; post-processing tuned per candidate, "
          "chosen by the tuned score; cross-fitted: how much of it holds on images the tuning did not see):")
    print(f"  {'tta':<34} {'merge':<11} {'transforms':>10} {'untuned':>8} {'tuned':>8} {'cross-fitted':>12}")
    for s in r["scores"]:
        mark = "  <- chosen" if (s["tta"], s["merge"]) == (r["tta"], r["merge"]) else ""
        cf = f"{s['cross_fitted']:>12.4f}" if s["cross_fitted"] is not None else f"{'-':>12}"
        print(f"  {' '.join(s['tta']):<34} {s['merge']:<11} {s['n_transforms']:>10} {s['untuned']:>8.4f} {s['score']:>8.4f} {cf}{mark}")
    run = Run.of(cfg)
    print(f"written to {run.tta_json}; the run's OOF files, cv.json and postprocess.json are now the chosen TTA's")
    _print_tune(read_json(run.postprocess_json))


def cmd_oof(args: argparse.Namespace) -> int:
    from .oof import remake_oof

    cfg = _config(args, trained=True)
    cv = remake_oof(cfg)
    _print_cv(cv, cfg.run_dir)
    _print_tune(cv["postprocess"])
    _track_results(cfg.run_dir)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .inference import predict_test

    if args.estimate or args.budget or args.n_images:
        from .budget import parse_duration
        from .estimate import estimate_predict, format_estimate

        if not args.estimate:
            raise ConfigError("--budget and --n-images go with --estimate")
        if args.out or args.overwrite:  # an estimate writes no submission
            raise ConfigError("--estimate writes no submission: drop --out / --overwrite, or drop --estimate to predict")
        budget = parse_duration(args.budget) if args.budget else None
        if budget is not None and budget <= 0:
            raise ConfigError(f"--budget {args.budget!r}: expected a positive duration, e.g. 9h")
        r = estimate_predict(_config(args, trained=True), n_images=args.n_images, budget=budget)
        print(format_estimate(r))
        return 0 if r.get("fits", True) else 1
    _check_out_file(args.out, [args.config])
    out = predict_test(_config(args, trained=True), out=args.out, overwrite=args.overwrite)
    print(f"submission: {out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export_run

    for run_dir, folds in export_run(_config(args, trained=True), fmt=args.format).items():
        for f in folds:
            diffs = ", ".join(f"{p['max_abs_diff']:.2g} at {'x'.join(map(str, p['shape']))}" for p in f["parity"])
            print(f"{run_dir} fold {f['fold']}: {f['path']} ({f['bytes'] / 1e6:.1f} MB); max |onnx - torch| logits {diffs} "
                  f"(bound {f['parity'][0]['bound']:.2g}; inputs: {f['parity_inputs']})")
            gaps = [p for p in f["parity"] if "max_abs_prob_diff_vs_predictor" in p]
            if gaps:
                print(f"  the predictor runs this fold in {f['predictor_amp']}: onnx differs from it by up to "
                      f"{max(p['max_abs_prob_diff_vs_predictor'] for p in gaps):.2g} in probability, and "
                      "predict.backend: onnx refuses the run (train.amp: none in its config.yaml, then seg-toolkit oof)")
    print("predict with them: --set predict.backend=onnx (ONNX Runtime, CPU)")
    return 0


def cmd_ensemble(args: argparse.Namespace) -> int:
    import dataclasses

    from .config_checks import check_run_name
    from .ensemble import build_ensemble
    from .inference import check_out, predict_test
    from .run import Run
    from .submission import submission_path

    cfgs = [_load(c, args.set, trained=True) for c in args.configs]
    if args.name is not None:
        check_run_name(args.name, "--name")
    name = args.name or "ens_" + "_".join(c.experiment for c in cfgs)
    run = Run(Path(cfgs[0].runs_dir) / name)
    out = None
    if args.no_predict and (args.out or args.overwrite_submission):
        raise ConfigError("--out and --overwrite-submission name the submission, which --no-predict does not write")
    if not args.no_predict:  # before the ensemble run is made (or replaced): a refused submission would leave it behind
        lead = cfgs[0]
        ens_cfg = dataclasses.replace(lead, experiment=name, submission=dataclasses.replace(lead.submission, path=None))
        _check_out_file(args.out, args.configs)
        out = Path(args.out) if args.out else submission_path(ens_cfg)  # submissions/<ensemble name>.csv
        check_out(ens_cfg, out, True, [run.dir] + [Run.of(c).dir for c in cfgs])
        if out.exists() and not args.overwrite_submission:
            raise FileExistsError(f"{out} exists; pass --overwrite-submission to replace it, --out for another file, or "
                                  f"--no-predict (nothing was built: {run.dir} is as it was)")
    cv = build_ensemble(cfgs, name=args.name, weights=args.weights, space=args.space, overwrite=args.overwrite)
    ens = cv["ensemble"]
    print(f"\nensemble {run.dir} ({ens['space']} space), OOF {cv['metric']} over {cv['n_images']} images:")
    for m in ens["members"]:
        print(f"  {m['run']:<40} weight {m['weight']:.3f}  OOF {m['score']:.4f}")
    search = ens["weights_search"]
    held = (f"; chosen on one half of the folds, the other half scores {search['cross_half_score']:.4f}"
            if "cross_half_score" in search else "")
    print(f"  {'ensemble':<40} {'':>12}  OOF {cv['score']:.4f}" + (
        f" (in-sample: weights chosen on these OOF images among {search['searched']}{held})" if search.get("in_sample") else ""))
    if "decision" in search:
        print(f"weights: {search['decision']}" + (f" (cross-half: searched {search['cross_half_score']:.4f}, equal "
                                                  f"{search['cross_half_equal_score']:.4f})" if "cross_half_score" in search else ""))
    if "postprocess" in cv:
        _print_tune(cv["postprocess"])
    if out is not None:
        out = predict_test(run.config(), out=out, overwrite=args.overwrite_submission)
        print(f"submission: {out}")
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
    """Make the demo competition (only into a missing or empty data.root, for a config that reads it as the demo
    writes it), train all folds (finished ones kept), predict, and check the submission."""
    from .cv import run_cv
    from .data.demo import check_demo_submission, demo_data_needed, make_demo, record_demo_submission
    from .inference import predict_test
    from .submission import submission_path
    from .submission_check import check_submission, config_check_args

    cfg = _config(args)
    root = Path(cfg.data.root)
    make = demo_data_needed(cfg)  # refuses a missing or empty data.root of a config not laid out like the demo
    out = submission_path(cfg)
    check_demo_submission(cfg, out, args.overwrite)  # before the data is made or anything trains
    if make:
        make_demo(root)
    cv = run_cv(cfg, resume=True)
    _print_cv(cv, cfg.run_dir)
    if "postprocess" in cv:
        _print_tune(cv["postprocess"])
    out = predict_test(cfg, out=out, overwrite=True)  # checked above: absent, the demo's own, or --overwrite
    record_demo_submission(cfg, out)
    problems = check_submission(out, cfg.data_path(cfg.data.sample_submission), **config_check_args(cfg))
    from .report import build_report

    print(f"report: {build_report(cfg.run_dir)} (open in a browser; PNG copies beside it)")
    _track_results(cfg.run_dir)
    print(f"submission: {out} ({'valid' if not problems else 'INVALID: ' + '; '.join(problems)})")
    solution = root / "test_solution.csv"
    if solution.is_file():
        from .submission_score import score_submission

        score = score_submission(out, solution, cfg)
        print(f"hidden test score ({cv['metric']}): {score:.4f}  (the demo ships its answers in {solution})")
    return 0 if not problems else 1


def cmd_bundle(args: argparse.Namespace) -> int:
    import shlex

    from .bundle import DEFAULT_BASE_ENV, build_bundle
    from .run import Run

    from .bundle import check_bundled_config

    runs = []
    for c in args.configs:
        cfg = _load(c, [], trained=True)
        runs.append(Run.of(cfg))
        if not Path(c).is_dir():  # a YAML: bundled as its run folder predicts
            check_bundled_config(cfg, runs[-1], c)
    base = args.base_env.split(",") if args.base_env is not None else list(DEFAULT_BASE_ENV)
    info = build_bundle(runs, args.out, fp16=args.fp16, base_env=base, wheels=not args.no_wheels,
                        allow_missing_folds=args.allow_missing_folds, overwrite=args.overwrite)
    n = sum(len(r.get("weights", {})) for r in info["runs"])
    w = info["wheels"]
    print(f"bundle {args.out}: {len(info['runs'])} run(s), {n} weights file(s) ({'float16' if args.fp16 else 'float32'}), "
          + (f"{w['count']} wheels ({w['bytes'] / 2**20:.0f} MiB; base env {','.join(info['base_env'])} not bundled)" if w else "no wheels"))
    for warning in info["warnings"]:
        print(f"warning: {warning}")
    print(f"run it: python {shlex.quote(str(Path(args.out) / 'predict.py'))} --data-root DATA --out submission.csv  "
          f"(see {shlex.quote(str(Path(args.out) / 'README.md'))})")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import build_report

    given = Path(args.run_dir)
    run_dir = _load(args.run_dir, [], trained=True).run_dir if given.is_file() else Path(os.path.abspath(given))
    print(f"report: {build_report(run_dir, n_examples=args.examples)}")
    _track_results(run_dir)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .compare import collect, format_table, write_html

    if args.curves and not args.html:
        raise ConfigError("compare --curves draws into the HTML page: add --html OUT")
    _check_out_file(args.html, option="--html", example="compare.html")  # `--html newdir/` wrote a file named newdir
    rows = collect(args.runs)
    print(format_table(rows))
    if args.html:
        print(f"page: {write_html(rows, args.html, curves=args.curves)}")
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from .audit import audit
    from .audit_report import check_audit_out, format_audit, write_audit

    cfg = _config(args)
    check_audit_out(cfg, Path(args.out) if args.out else cfg.run_dir)  # before the pass over the data
    result = audit(cfg, decode_images=not args.headers_only)
    print(format_audit(result))
    out = write_audit(cfg, Path(args.out) if args.out else cfg.run_dir, result)
    print(f"audit page: {out}")
    return 1 if result.problems else 0
