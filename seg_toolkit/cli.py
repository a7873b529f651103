"""``seg-toolkit``: a thin command line over the package; each subcommand calls one function.

The arguments and ``main`` are here, what each subcommand does is in :mod:`seg_toolkit.commands`
(``evaluate`` and ``check-submission``: :mod:`seg_toolkit.commands_score`).
Only this module configures logging handlers; the library modules just log.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

# albumentations asks the package index for a newer version when imported, waiting up to 2 s where the network drops
# packets (an offline kernel, a firewalled cluster) on every command; the bundle's predict.py says the same
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from . import commands as c  # noqa: E402
from . import commands_score as cs

log = logging.getLogger("seg_toolkit")


def _non_negative(text: str) -> int:
    """An argparse type: a whole number >= 0 (``report --examples -3`` read as 0 and deleted the overlay pictures)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {value}")
    return value


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config file, or a run folder (runs/<experiment>)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=3 (repeatable)")


def _add_submission_output(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", help="submission file (default submission.path, else submissions/<experiment>.csv)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing submission file")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seg-toolkit", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("make-demo", help="write the built-in synthetic demo competition")
    p.add_argument("dir", help="a new or empty folder (or, with --overwrite, one make-demo wrote)")
    p.add_argument("--n-train", type=int, default=64)
    p.add_argument("--n-test", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace the demo competition in DIR (refused when DIR "
                   "holds anything make-demo does not write; its old images are removed first)")
    p.set_defaults(func=c.cmd_make_demo)

    p = sub.add_parser("demo", help="make the demo data, train, predict and check the submission",
                       description="Make the demo competition in data.root when that folder is missing or empty (only for "
                       "a config that reads it as configs/demo.yaml does; a folder holding files is used as it is), train "
                       "every fold (finished folds are kept), predict the submission (submission.path, else "
                       "submissions/<experiment>.csv) and check it. An existing submission file is replaced only when it "
                       "is, unchanged, the one an earlier demo of the same run wrote (recorded in "
                       "runs/<experiment>/demo_submission.json), or with --overwrite.")
    _add_config(p)
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing submission file that an earlier demo of this run did not write")
    p.set_defaults(func=c.cmd_demo)

    p = sub.add_parser("train", help="K-fold training with out-of-fold predictions and cv.json")
    _add_config(p)
    p.add_argument("--fold", type=int, help="train this fold only (e.g. one job of a job array)")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue from the last checkpoint; finished folds are kept")
    again.add_argument("--overwrite", action="store_true",
                       help="start again: delete the run folder first (only a run's own files; refused when it holds "
                       "others). With --fold K: delete fold_K/ only, and postprocess.json (tuned on every fold's OOF "
                       "files), keeping the other folds, folds.csv and config.yaml, so one job of a job array restarts "
                       "its fold without touching the others'; cv.json is remade when the fold ends (until then predict "
                       "refuses the run), and a changed config is refused while other folds have files")
    p.set_defaults(func=c.cmd_train)

    p = sub.add_parser("lr-find", help="learning-rate range test on one fold's training split: a plot and a suggested optim.lr")
    _add_config(p)
    p.add_argument("--fold", type=int, default=0, help="whose training split to use (default 0)")
    p.add_argument("--start", type=float, default=1e-7, help="first learning rate (default 1e-7)")
    p.add_argument("--end", type=float, default=1.0, help="last learning rate (default 1)")
    p.add_argument("--steps", type=int, default=100, help="optimiser steps (default 100; batches cycle)")
    p.set_defaults(func=c.cmd_lr_find)

    p = sub.add_parser("cv", help="recompute cv.json from the OOF files of finished folds")
    _add_config(p)
    p.set_defaults(func=c.cmd_cv)

    p = sub.add_parser("tune", help="tune thresholds / min-area / empty gate on the OOF predictions (never on test)")
    _add_config(p)
    p.add_argument("--tta", action="store_true",
                   help="also choose the TTA transforms and merge mode by OOF score (re-predicts the folds' validation images)")
    p.set_defaults(func=c.cmd_tune)

    p = sub.add_parser("oof", help="predict the OOF files again with the config's predict settings (e.g. --set predict.tta=[identity,hflip]), rescore, re-tune")
    _add_config(p)
    p.set_defaults(func=c.cmd_oof)

    p = sub.add_parser("predict", help="predict the test images and write the submission CSV")
    _add_config(p)
    _add_submission_output(p)
    p.add_argument("--estimate", action="store_true", help="time a few test images with the full predictor and "
                   "project the whole prediction instead (writes estimate.json only; exit 1 when over --budget)")
    p.add_argument("--budget", metavar="TIME", help="with --estimate: the time allowed, e.g. 9h, 30m, 3600s")
    p.add_argument("--n-images", type=int, metavar="N", help="with --estimate: project for N images (e.g. the hidden test set)")
    p.set_defaults(func=c.cmd_predict)

    p = sub.add_parser("export", help="export every fold model of a trained run to ONNX (export/ in the run), checked against PyTorch")
    _add_config(p)
    p.add_argument("--format", choices=["onnx"], default="onnx", help="onnx (opset 17, dynamic batch and size)")
    p.set_defaults(func=c.cmd_export)

    p = sub.add_parser("ensemble", help="an ensemble run of trained experiments: OOF merge, weights and post-processing chosen on OOF, submission")
    p.add_argument("configs", nargs="+", help="configs or run folders of trained experiments (they must share folds.csv)")
    p.add_argument("--name", help="the ensemble's experiment name (default ens_<a>_<b>...)")
    p.add_argument("--weights", type=float, nargs="+", help="fixed weights (default: chosen on OOF, with a cross-half check)")
    p.add_argument("--space", choices=["prob", "logit"], help="merge space (default predict.ensemble_space of the first)")
    p.add_argument("--no-predict", action="store_true", help="make the ensemble run only, no submission")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a value in every config")
    p.add_argument("--out", help="submission file (default submissions/<ensemble name>.csv, in the working directory); "
                   "checked before the ensemble run is made")
    p.add_argument("--overwrite", action="store_true", help="make the ensemble run runs/<name>/ again when it exists "
                   "(an ensemble run only; deleted first); the submission file is not replaced by it")
    p.add_argument("--overwrite-submission", action="store_true", help="replace an existing submission file")
    p.set_defaults(func=c.cmd_ensemble)

    p = sub.add_parser("evaluate", help="score the run's predictor and post-processing on labelled images: "
                                        "the held-out split (data.test_lists) or any folder laid out like the training data")
    _add_config(p)
    where = p.add_mutually_exclusive_group()
    where.add_argument("--split", choices=["test"], default="test", help="the labelled held-out lists (data.test_lists)")
    where.add_argument("--on", metavar="DIR", help="a labelled folder laid out like data.root (same data.* keys)")
    p.set_defaults(func=cs.cmd_evaluate)

    p = sub.add_parser("check-submission", help="validate a submission CSV against the sample submission")
    p.add_argument("csv")
    p.add_argument("--sample", required=True)
    p.add_argument("--config", help="read the RLE convention from this config's submission.* keys (instead of the flags "
                   "below, which are refused with it)")
    p.add_argument("--empty-token", action="append", help="how an empty mask is written (repeatable; default: the empty string)")
    p.add_argument("--order", choices=["F", "C"], help="pixel order: F column-major (Kaggle, the default), C row-major")
    p.add_argument("--index-base", type=int, choices=[0, 1], help="starts count from 0 or 1 (default 1)")
    p.add_argument("--relative", action="store_true", help="starts are relative to the previous run's end (SIIM)")
    p.add_argument("--instances", action="store_true", help="one row per object: repeated ids are expected (Airbus, DSB 2018)")
    p.add_argument("--class-column", metavar="NAME", help="the column holding each row's class, one row per image and class "
                   "(Severstal since 2019: ClassId)")
    p.add_argument("--solution", metavar="CSV", help="with --config: also score the submission against this answer file "
                   "(same format) with the config's metric, each instance row one object (instance_map / instance_f2)")
    p.set_defaults(func=cs.cmd_check_submission)

    p = sub.add_parser("bundle", help="a self-contained folder for a Kaggle code competition: weights, configs, wheels, predict.py")
    p.add_argument("configs", nargs="+", help="trained or ensemble runs (run folders or their configs); the first predicts by default")
    p.add_argument("--out", required=True, help="the bundle folder to write")
    p.add_argument("--fp16", action="store_true", help="store the weights as float16 (half the size; loaded back to float32)")
    p.add_argument("--base-env", metavar="PKG,PKG", help="packages the target image provides, left out of wheels/ "
                   "with what only they need (default: torch,torchvision)")
    p.add_argument("--no-wheels", action="store_true", help="bundle no wheels (install seg_toolkit yourself)")
    p.add_argument("--allow-missing-folds", action="store_true", help="bundle the finished folds of a run that lacks some")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle")
    p.set_defaults(func=c.cmd_bundle)

    p = sub.add_parser("report", help="one self-contained HTML page of a run: CV, per-class table, confusion, curves, overlays")
    p.add_argument("run_dir", help="a run folder (runs/<experiment>), or the YAML config of a trained run")
    p.add_argument("--examples", type=_non_negative, default=4, help="best and worst OOF images to show")
    p.set_defaults(func=c.cmd_report)

    p = sub.add_parser("audit", help="check a competition folder: class frequencies, empty masks, sizes, every problem")
    _add_config(p)
    p.add_argument("--out", help="folder for audit.html (default: the run folder)")
    p.add_argument("--headers-only", action="store_true", help="read image headers only (faster; misses truncated files)")
    p.set_defaults(func=c.cmd_audit)

    p = sub.add_parser("compare", help="a leaderboard of runs from their folders: CV, folds, tuned CV, TTA, model, "
                                       "epochs, time, which runs share folds.csv")
    p.add_argument("runs", nargs="*", default=["runs"], help="a runs folder and/or run folders (default: runs)")
    p.add_argument("--html", metavar="OUT", help="also write a standalone HTML page with a bar chart (plotly.js inline)")
    p.add_argument("--curves", action="store_true", help="add every run's validation score per epoch and fold to the page")
    p.set_defaults(func=c.cmd_compare)

    p = sub.add_parser("models", help="list architectures and encoders")
    p.add_argument("--encoders", nargs="?", const="", metavar="FILTER", help="list encoders (optionally filtered)")
    p.set_defaults(func=c.cmd_models)
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
    # torchrun's other ranks log warnings only: each message once, from rank 0
    level = logging.WARNING if int(os.environ.get("RANK", "0") or 0) > 0 else logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(level=level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    from .errors import SegToolkitError

    import contextlib

    from tqdm.contrib.logging import logging_redirect_tqdm

    root = logging.getLogger()
    # log lines printed above the progress bars, not into the middle of one ("0/24 [00:00<?]19:08:42 INFO ..."); only
    # where they go to the console (a caller's file-only logging gains no console handler)
    console = any(type(h) is logging.StreamHandler and getattr(h, "stream", None) in (sys.stdout, sys.stderr)
                  for h in root.handlers)
    try:
        with logging_redirect_tqdm(loggers=[root]) if console else contextlib.nullcontext():
            return args.func(args)
    except (SegToolkitError, OSError) as e:  # OSError: a file that exists or not, a full disk, a permission
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        after = {"train": "finished epochs are checkpointed: add --resume to continue",
                 "demo": "finished epochs are checkpointed: run it again to continue",
                 "ensemble": "what it had not finished is not used; run it again with --overwrite",
                 }.get(args.command, "what it had not finished is not used; run the command again")  # predict, tune, ...
        print(f"\ninterrupted: {e}" if str(e) else f"\ninterrupted; {after}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
