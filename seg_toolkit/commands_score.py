"""The ``seg-toolkit`` subcommands that score what a run made: ``evaluate`` (a held-out split or a labelled
folder, post-processed as predict does) and ``check-submission`` (a CSV against the sample submission, the
RLE convention and the test images' sizes; with ``--solution`` its score). The others are in
:mod:`seg_toolkit.commands`, the argument parser in :mod:`seg_toolkit.cli`.
"""

from __future__ import annotations

import argparse
import sys

from .commands import _config, _load
from .config import ConfigError

__all__ = ["cmd_check_submission", "cmd_evaluate"]


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .data.sources import class_names
    from .evaluate import evaluate_on, evaluate_split

    cfg = _config(args, trained=True)
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
    from .errors import SegToolkitError
    from .submission import row_pixels
    from .submission_check import check_submission, config_check_args

    n_pixels = None
    flags = [f for f, given in (("--order", args.order is not None), ("--index-base", args.index_base is not None),
                                ("--relative", args.relative), ("--instances", args.instances),
                                ("--class-column", args.class_column is not None),
                                ("--empty-token", bool(args.empty_token))) if given]
    if args.solution and not args.config:
        raise ConfigError("check-submission: --solution needs --config (its metric and RLE convention score the rows)")
    if args.config and flags:
        raise ConfigError(f"check-submission: {', '.join(flags)} with --config: the config's submission.* keys decide the "
                          "RLE convention; drop the flag(s), or drop --config to check with the flags")
    if args.config:
        cfg = _load(args.config, [], trained=True)
        kwargs = config_check_args(cfg)
        try:
            n_pixels = row_pixels(cfg)  # runs checked against each test image's size
        except SegToolkitError as e:
            print(f"note: run lengths not checked against the test images' sizes ({' '.join(str(e).split())})", file=sys.stderr)
    else:
        kwargs = {"class_column": args.class_column,
                  "spec": RLESpec(order=args.order or "F", index_base=1 if args.index_base is None else args.index_base,
                                  starts="relative" if args.relative else "absolute", empty=(args.empty_token or [""])[0],
                                  instances=args.instances)}
    problems = check_submission(args.csv, args.sample, empty_tokens=tuple(args.empty_token) if args.empty_token else None,
                                n_pixels=n_pixels, **kwargs)
    if problems:
        print(f"{args.csv}: {len(problems)} problem(s)")
        for p in problems:
            print(f"  - {p}")
        return 1
    extents = ""
    if n_pixels is None and args.config:
        extents = "; runs not checked against the images' sizes (the note above says why)"
    elif n_pixels is None:
        extents = "; runs not checked against the images' sizes: pass --config to check them"
    print(f"{args.csv}: OK (matches {args.sample}{extents})")
    if args.solution:
        from .evaluator import resolve_metric_name
        from .submission_score import score_submission

        metric = resolve_metric_name(cfg.metric.name, cfg.data.task)
        print(f"{metric}: {score_submission(args.csv, args.solution, cfg):.6f} against {args.solution}")
    return 0
