"""The training step of ``configs/camvid_cpu.yaml`` with the Lovasz-softmax added: on every output, or on the main
logits only (``loss_aux``: the deep-supervision heads keep the committed loss).

The config's model (Unet on ``tu-tf_efficientnet_lite0``, half-width decoder, 4 deep-supervision heads, channels-last)
takes a batch of 4 176x240 frames under bf16 autocast (where the CPU has native bf16; else fp32), then the loss of each
variant through :func:`seg_toolkit.losses.model_loss`, backward and an AdamW step, alternating rounds in this process.
Ratios are variant seconds / committed seconds (above 1: slower). Random weights and labels: the sort's cost does not
depend on them (every pixel of every present class is ranked).

    python bench/bench_camvid_step.py [--rounds 8] [--batch 4] [--size 176 240]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from seg_toolkit.amp import cpu_has_fast_bf16  # noqa: E402
from seg_toolkit.config import config_from_dict  # noqa: E402
from seg_toolkit.losses import build_loss, model_loss  # noqa: E402
from seg_toolkit.models import build_model  # noqa: E402

VARIANTS = {
    "committed": {},
    "lovasz on every output": {"loss": {"ce": 1.0, "dice": 0.5, "lovasz": 0.5}},
    "lovasz on the main logits (loss_aux)": {"loss": {"ce": 1.0, "dice": 0.5, "lovasz": 0.5},
                                             "loss_aux": {"ce": 1.0, "dice": 0.5}},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=8, help="alternating rounds, one step of each variant")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--size", type=int, nargs=2, default=[176, 240], metavar=("H", "W"))
    ap.add_argument("--encoder", default=None, help="another encoder (default: the config's)")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    d = yaml.safe_load((ROOT / "configs" / "camvid_cpu.yaml").read_text())
    d["model"]["encoder_weights"] = None  # random weights: the step's cost is the same
    d["model"].pop("encoder_weights_map", None)
    if args.encoder:
        d["model"]["encoder"] = args.encoder
    cfg = config_from_dict(d)
    torch.manual_seed(0)
    model = build_model(cfg.model, num_classes=cfg.data.num_classes, announce=False).train()
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(args.batch, 3, *args.size).contiguous(memory_format=torch.channels_last)
    t = torch.randint(0, cfg.data.num_classes, (args.batch, *args.size))
    fns = {name: build_loss(config_from_dict({**d, **v})) for name, v in VARIANTS.items()}
    bf16 = cpu_has_fast_bf16()

    def step(fn) -> float:
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(x)
        loss, _ = model_loss(fn, out, t, cfg.model.deep_supervision)
        loss.backward()
        opt.step()
        return time.perf_counter() - t0

    for fn in fns.values():
        step(fn)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(args.rounds):
        for name, fn in fns.items():
            times[name].append(step(fn))
    base = statistics.median(times["committed"])
    print(f"CamVid training step, batch {args.batch} x {args.size[0]}x{args.size[1]}, "
          f"{'bf16' if bf16 else 'fp32'}, {torch.get_num_threads()} threads, medians of {args.rounds} alternating rounds")
    for name, ts in times.items():
        print(f"  {name}: {statistics.median(ts):.3f} s per step, ratio {name} / committed: {statistics.median(ts) / base:.2f}")


if __name__ == "__main__":
    main()
