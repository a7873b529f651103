"""The training loss of ``configs/tgs_cpu.yaml`` with the toolkit's Lovasz hinge against the textbook one.

The config's loss is BCE + Lovasz hinge on the main logits and on three deep-supervision maps
(upsampled to the input) plus the empty-mask classifier's BCE (:func:`seg_toolkit.losses.model_loss`),
for a batch of 32 101x101 slices: four Lovasz rankings of 326,432 pixels per step. The textbook
hinge (Berman et al.'s reference code) sorts every pixel; the toolkit's sorts only the pixels whose
hinge error is positive (:func:`seg_toolkit.losses.lovasz.lovasz_hinge_flat`): the same value and
gradient (asserted here on every input), and a sort that shrinks as training fits pixels.

Logits are synthetic, with a chosen share of pixels still unfitted (margin below 1): 100% is a
randomly initialised model; a trained TGS fold 0 (``tgs_cpu.yaml`` after 8 epochs) leaves 7-10%.
Forward + backward of the whole loss, alternating rounds in this process; the ratio is textbook
seconds / toolkit seconds (above 1: the toolkit's is faster).

Then the multiclass Lovasz-softmax on CamVid's shapes (a batch of 4 x 11 classes x 176x240, 5% void): the
textbook one sorts each present class's errors in turn, the toolkit's ranks them in one batched sort
(:func:`seg_toolkit.losses.lovasz.lovasz_softmax_flat`), the same value and gradient (asserted).

    python bench/bench_lovasz.py [--rounds 5] [--batch 32] [--unfitted 1.0 0.3 0.1] [--softmax-shape 4 11 176 240]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from seg_toolkit.config import load_config  # noqa: E402
from seg_toolkit.losses import build_loss, lovasz, model_loss  # noqa: E402


def textbook_hinge_flat(logits: torch.Tensor, labels: torch.Tensor, symmetric: bool = False) -> torch.Tensor:
    """Berman et al.'s ``lovasz_hinge_flat``: every pixel sorted, relu after the sort (``symmetric``: the mean of
    the foreground's and the background's, each sorted on its own)."""
    if symmetric:
        return 0.5 * (textbook_hinge_flat(logits, labels) + textbook_hinge_flat(-logits, 1.0 - labels))
    errors = 1.0 - logits * (2.0 * labels - 1.0)
    errors_sorted, perm = torch.sort(errors, descending=True)
    gt = labels[perm]
    gts = gt.sum()
    jaccard = 1.0 - (gts - gt.cumsum(0)) / (gts + (1.0 - gt).cumsum(0))
    grad = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])
    return (F.relu(errors_sorted) * grad).sum()


def logits_with_unfitted(target: torch.Tensor, unfitted: float, gen: torch.Generator) -> torch.Tensor:
    """Logits whose hinge margin ``logit * sign`` is below 1 on about ``unfitted`` of the pixels."""
    sign = 2.0 * target - 1.0
    below = torch.rand(target.shape, generator=gen) < unfitted
    margin = torch.where(below, torch.rand(target.shape, generator=gen) * 2.0 - 1.0,  # in [-1, 1)
                         1.0 + torch.rand(target.shape, generator=gen) * 4.0)        # in [1, 5)
    return margin * sign


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds (after a warm-up call each)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--unfitted", type=float, nargs="+", default=[1.0, 0.3, 0.1],
                    help="shares of pixels with a positive hinge error")
    ap.add_argument("--softmax-shape", type=int, nargs=4, default=[4, 11, 176, 240],
                    help="batch, classes, height, width of the Lovasz-softmax comparison")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    cfg = load_config(ROOT / "configs" / "tgs_cpu.yaml", overrides=["data.root=."])
    loss_fn = build_loss(cfg)
    gen = torch.Generator().manual_seed(0)
    target = (torch.rand(args.batch, 1, 101, 101, generator=gen) > 0.6).float()
    n_aux = len(cfg.model.params["decoder_channels"]) - 1
    toolkit = lovasz.lovasz_hinge_flat

    def call(hinge, main_logits, aux) -> tuple[float, float, list[torch.Tensor]]:
        lovasz.lovasz_hinge_flat = hinge  # LovaszLoss looks the function up in its module at call time
        leaves = [main_logits.clone().requires_grad_(), *(a.clone().requires_grad_() for a in aux)]
        t0 = time.perf_counter()
        loss, _ = model_loss(loss_fn, (leaves[0], leaves[1:]), target, cfg.model.deep_supervision, cfg.model.classifier)
        loss.backward()
        seconds = time.perf_counter() - t0
        lovasz.lovasz_hinge_flat = toolkit
        return seconds, loss.item(), [leaf.grad for leaf in leaves]

    print(f"configs/tgs_cpu.yaml loss (BCE + Lovasz, {n_aux} deep-supervision maps, classifier), batch {args.batch}, "
          f"101x101, forward + backward, fastest of {args.rounds} rounds ({torch.get_num_threads()} threads)")
    print(f"{'unfitted pixels':>16s} {'textbook s':>11s} {'toolkit s':>10s}  ratio textbook / toolkit")
    for share in args.unfitted:
        # the classifier's channel rides on the main logits, as the model outputs it
        main_logits = torch.cat([logits_with_unfitted(target, share, gen), torch.randn(args.batch, 1, 101, 101, generator=gen)], 1)
        aux = [logits_with_unfitted(target, share, gen) for _ in range(n_aux)]
        ref, ours = call(textbook_hinge_flat, main_logits, aux), call(toolkit, main_logits, aux)
        if abs(ref[1] - ours[1]) > 1e-5 * max(1.0, abs(ref[1])) or not all(
                torch.allclose(a, b, rtol=1e-4, atol=1e-7) for a, b in zip(ref[2], ours[2])):
            raise SystemExit(f"the toolkit's Lovasz differs from the textbook one: loss {ours[1]} vs {ref[1]}")
        times = {"textbook": [], "toolkit": []}
        for r in range(args.rounds):
            order = [("textbook", textbook_hinge_flat), ("toolkit", toolkit)]
            for name, hinge in (order if r % 2 == 0 else order[::-1]):
                times[name].append(call(hinge, main_logits, aux)[0])
        t_ref, t_ours = min(times["textbook"]), min(times["toolkit"])
        print(f"{share:16.0%} {t_ref:11.3f} {t_ours:10.3f}  ratio textbook / toolkit: {t_ref / t_ours:.2f}x")
    softmax(args.softmax_shape, args.rounds)


def textbook_softmax_flat(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Berman et al.'s ``lovasz_softmax_flat``: one sort per class present."""
    losses = []
    for c in range(probs.shape[1]):
        fg = (labels == c).to(probs.dtype)
        if fg.sum() == 0:
            continue
        errors_sorted, perm = torch.sort((fg - probs[:, c]).abs(), descending=True)
        losses.append((errors_sorted * lovasz.lovasz_grad(fg[perm])).sum())
    return torch.stack(losses).mean()


def softmax(shape: list[int], rounds: int) -> None:
    from seg_toolkit.config import IGNORE_INDEX

    b, c, h, w = shape
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(b, c, h, w, generator=gen)
    target = torch.randint(0, c, (b, h, w), generator=gen)
    target[torch.rand(b, h, w, generator=gen) < 0.05] = IGNORE_INDEX
    loss_fn = lovasz.LovaszLoss("multiclass")
    toolkit = lovasz.lovasz_softmax_flat

    def call(flat) -> tuple[float, float, torch.Tensor]:
        lovasz.lovasz_softmax_flat = flat
        leaf = logits.clone().requires_grad_()
        t0 = time.perf_counter()
        loss = loss_fn(leaf, target)
        loss.backward()
        seconds = time.perf_counter() - t0
        lovasz.lovasz_softmax_flat = toolkit
        return seconds, loss.item(), leaf.grad

    ref, ours = call(textbook_softmax_flat), call(toolkit)
    if abs(ref[1] - ours[1]) > 1e-5 * max(1.0, abs(ref[1])) or not torch.allclose(ref[2], ours[2], rtol=1e-4, atol=1e-8):
        raise SystemExit(f"the toolkit's Lovasz-softmax differs from the textbook one: loss {ours[1]} vs {ref[1]}")
    times = {"textbook": [], "toolkit": []}
    for r in range(rounds):
        order = [("textbook", textbook_softmax_flat), ("toolkit", toolkit)]
        for name, flat in (order if r % 2 == 0 else order[::-1]):
            times[name].append(call(flat)[0])
    t_ref, t_ours = min(times["textbook"]), min(times["toolkit"])
    print(f"Lovasz-softmax, {b} x {c} classes x {h}x{w}, forward + backward: textbook {t_ref:.3f} s, toolkit "
          f"{t_ours:.3f} s  ratio textbook / toolkit: {t_ref / t_ours:.2f}x")


if __name__ == "__main__":
    main()
