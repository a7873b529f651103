"""The toolkit's dice / jaccard / tversky against smp's, and the training loss of ``configs/camvid_cpu.yaml``.

The toolkit computes each region loss from three sums per channel
(:mod:`seg_toolkit.losses.region`); smp's ``DiceLoss`` builds a one-hot target and reduces permuted,
reshaped copies of the probabilities. Both give the same value and gradient (asserted here on every
input). Timed, forward + backward, alternating rounds in this process: one term of each kind on a
CamVid-sized batch (4 x 11 classes x 176 x 240, 5% of the pixels void), channels-last logits as the
model outputs them, and a binary dice of the same size; then the whole CamVid loss as
training computes it (CE with class weights + dice on the main logits and 4 deep-supervision maps,
:func:`seg_toolkit.losses.model_loss`), once with smp's dice swapped in. The ratio is smp seconds /
toolkit seconds (above 1: the toolkit's is faster).

    python bench/bench_region.py [--rounds 5] [--batch 4] [--size 176 240]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from seg_toolkit.config import IGNORE_INDEX, load_config  # noqa: E402
from seg_toolkit.losses import build_loss, build_loss_term, model_loss  # noqa: E402


def smp_term(name: str, mode: str):
    import segmentation_models_pytorch.losses as smp_losses

    cls = {"dice": smp_losses.DiceLoss, "jaccard": smp_losses.JaccardLoss, "tversky": smp_losses.TverskyLoss}[name]
    return cls(mode, from_logits=True, ignore_index=IGNORE_INDEX)


def timed(fn, leaves: list[torch.Tensor]) -> tuple[float, float, list[torch.Tensor]]:
    xs = [x.clone().requires_grad_() for x in leaves]
    t0 = time.perf_counter()
    loss = fn(*xs)
    loss.backward()
    return time.perf_counter() - t0, loss.item(), [x.grad for x in xs]


def compare(label: str, ours, theirs, leaves: list[torch.Tensor], rounds: int,
            tol: tuple[float, float, float] = (1e-9, 1e-6, 1e-12)) -> None:
    """``tol``: relative tolerance of the value, relative and absolute of the gradients."""
    # checked in float64 (where the loss keeps it): in float32 smp's intersection, (P + T - |p - t|_1) / 2,
    # loses digits to cancellation on large batches (0.90916 against 0.90920 for a CamVid batch; ours gives float64's)
    wide = [x.double() for x in leaves]
    a, b = timed(theirs, wide), timed(ours, wide)
    if abs(a[1] - b[1]) > tol[0] * max(1.0, abs(a[1])) or not all(
            torch.allclose(x, y, rtol=tol[1], atol=tol[2]) for x, y in zip(a[2], b[2])):
        raise SystemExit(f"{label}: the toolkit's loss differs from smp's: {b[1]} vs {a[1]}")
    times: dict[str, list[float]] = {"smp": [], "toolkit": []}
    for r in range(rounds):
        order = [("smp", theirs), ("toolkit", ours)]
        for name, fn in (order if r % 2 == 0 else order[::-1]):
            times[name].append(timed(fn, leaves)[0])
    t_smp, t_ours = min(times["smp"]), min(times["toolkit"])
    print(f"{label:44s} {t_smp * 1e3:9.1f} {t_ours * 1e3:12.1f}  ratio smp / toolkit: {t_smp / t_ours:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds (after a checked call each)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--size", type=int, nargs=2, default=[176, 240], metavar=("H", "W"))
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    cfg = load_config(ROOT / "configs" / "camvid_cpu.yaml", overrides=["data.root=."])
    c, (h, w), n = cfg.data.num_classes, args.size, args.batch
    gen = torch.Generator().manual_seed(0)
    target = torch.randint(0, c, (n, h, w), generator=gen)
    target[torch.rand(n, h, w, generator=gen) < 0.05] = IGNORE_INDEX
    logits = (torch.randn(n, c, h, w, generator=gen) * 2).contiguous(memory_format=torch.channels_last)
    print(f"forward + backward, {n} x {c} x {h} x {w} channels-last logits, fastest of {args.rounds} rounds "
          f"({torch.get_num_threads()} threads)")
    print(f"{'loss':44s} {'smp ms':>9s} {'toolkit ms':>12s}")
    for name in ("dice", "jaccard", "tversky"):
        ours = build_loss_term(name, "multiclass", c, None)
        theirs = smp_term(name, "multiclass")
        compare(f"{name}, multiclass", lambda x, f=ours: f(x, target), lambda x, f=theirs: f(x, target), [logits], args.rounds)
    binary_t = (torch.rand(n, 1, h, w, generator=gen) > 0.6).float()
    binary_x = torch.randn(n, 1, h, w, generator=gen).contiguous(memory_format=torch.channels_last)
    ours, theirs = build_loss_term("dice", "binary", 1, None), smp_term("dice", "binary")
    compare("dice, binary", lambda x: ours(x, binary_t), lambda x: theirs(x, binary_t), [binary_x], args.rounds)

    loss_fn = build_loss(cfg)
    smp_fn = build_loss(cfg)
    smp_fn.terms["dice"] = smp_term("dice", "multiclass")
    n_aux = len(cfg.model.params["decoder_channels"]) - 1
    aux = [(torch.randn(n, c, h, w, generator=gen) * 2).contiguous(memory_format=torch.channels_last) for _ in range(n_aux)]

    def whole(fn):
        return lambda x, *a: model_loss(fn, (x, list(a)), target, cfg.model.deep_supervision)[0]

    # LossCombo computes in float32 whatever it is given: checked at float32's precision
    compare(f"camvid_cpu.yaml loss (ce + dice, {n_aux} aux maps)", whole(loss_fn), whole(smp_fn), [logits, *aux], args.rounds,
            tol=(1e-5, 1e-3, 1e-8))


if __name__ == "__main__":
    main()
