"""``seg-toolkit predict CONFIG --estimate``: how long ``predict`` will take, before it runs.

The run's predictor is built exactly as ``predict`` builds it (:func:`~seg_toolkit.inference.run_predictor`:
members x folds x TTA x scales x tiles, the same batch size, device and backend). Every fold
model is loaded (timed: a fixed cost), one batch warms up, then test images are put through the
whole per-image path of ``predict`` (reading, preprocessing, forward passes, merging, resizing,
post-processing, RLE rows and, when configured, the encoding of probability / mask files) until
at least ``min_batches`` batches and ``min_seconds`` seconds have gone. Each fold model is
wrapped in a timer, so the forward time of every member is known apart from the rest.

The projection for ``n`` images is ``fixed + n x seconds per image``, assuming the hidden images
are like the measured ones (size!). With a budget it says whether that fits and, if not, which
setting to drop first: the TTA transform or scale with the largest share of the time, then the
next, until it fits. A scale costs the pixels its passes put through the network: ``s^2`` of a pass
at 1.0 for a whole image, and for a tiled member (``predict.tile_size``) its tiles at that scale
(counted for the measured images as the sliding window lays them out, step-wise, not ``s^2``). Nothing is written except
``estimate.json`` in the run folder.
"""

from __future__ import annotations

import csv
import io
import logging
import time
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from .budget import format_duration
from .config import Config, ConfigError
from .data import DataError, load_test_samples
from .data.io import image_size
from .postprocess import apply_postprocess, load_params
from .files import write_json
from .submission import mask_rows
from .tensors import probs_to_uint8
from .tta import expand_tta

log = logging.getLogger(__name__)

__all__ = ["estimate_predict", "project", "format_estimate"]


class _Timed(nn.Module):
    """A fold model that adds its wall time and the images it saw to ``stats[key]``."""

    def __init__(self, model: nn.Module, stats: dict, key: Any, clock: Callable[[], float], sync: bool) -> None:
        super().__init__()
        self.model, self.stats, self.key, self.clock, self.sync = model, stats, key, clock, sync

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.clock()
        y = self.model(x)
        if self.sync:
            torch.cuda.synchronize()
        seconds, images = self.stats.get(self.key, (0.0, 0))
        self.stats[self.key] = (seconds + self.clock() - t, images + x.shape[0])
        return y


def _timed_models(predictor, stats: dict, clock: Callable[[], float]) -> float:
    """Load every fold model (returns the seconds it took) and wrap it in :class:`_Timed`; a tiled
    model's inner model is wrapped too, to count the tiles."""
    from .tiling import TiledModel

    sync = predictor.device.type == "cuda"
    t0 = clock()
    for i, m in enumerate(predictor.members):
        for k in m.folds:
            model = m.model(k, predictor.device)
            if isinstance(model, TiledModel):
                model.model = _Timed(model.model, stats, ("tiles", i), clock, sync)
            m._models[k] = _Timed(model, stats, i, clock, sync).eval()
    return clock() - t0


def scale_costs(member, sizes: list[tuple[int, int]]) -> list[float]:
    """The pixels one pass of each of ``member``'s scales puts through the network, averaged over images of ``sizes``
    (each image's size as predicted): the scaled input (``transforms.resize``, else the image's own size), or for a
    tiled member the tiles the sliding window lays over it (:func:`~seg_toolkit.tiling.tile_starts`), each no larger
    than the input, as :class:`~seg_toolkit.tiling.TiledModel` cuts them."""
    from .tiling import tile_starts
    from .tta import _scaled_size

    resize, p = member.cfg.transforms.resize, member.cfg.predict
    out = []
    for scale in member.scales():
        total = 0
        for hw in sizes:
            h, w = _scaled_size(tuple(resize) if resize else hw, scale)
            if p.tile_size:
                th, tw = min(p.tile_size[0], h), min(p.tile_size[1], w)
                total += len(tile_starts(h, th, p.tile_overlap)) * len(tile_starts(w, tw, p.tile_overlap)) * th * tw
            else:
                total += h * w
        out.append(total / max(len(sizes), 1))
    return out


def _per_image(cfg: Config, params, predictor, samples: list, stats: dict, clock, min_batches: int,
               min_seconds: float, sizes: list | None = None) -> tuple[int, float, float]:
    """Put ``samples`` through predict's per-image path until ``min_batches`` and ``min_seconds`` are
    reached (at a batch boundary); returns ``(images, seconds, seconds of post-processing and writing)``;
    each image's own size is appended to ``sizes`` (from its header: the probabilities are at ``data.score_size``
    when it is set, not the size the network saw)."""
    from .inference import mask_pngs

    rows = csv.writer(io.StringIO())
    save, masks, bs = cfg.predict.save_probs, cfg.predict.write_masks, predictor.batch_size
    colors = np.zeros((max(cfg.data.num_classes, 2), 3), np.uint8)
    stats.clear()
    n, post, start = 0, 0.0, clock()
    gen = predictor.iter_predictions(samples)
    for k, (image_id, probs, presence, _) in enumerate(gen):
        t = clock()
        p = probs.numpy()
        if sizes is not None:  # the predictor yields in the samples' order
            sizes.append(image_size(samples[k].image, samples[k].pair, exif=cfg.data.exif_orientation))
        if save != "none":
            np.save(io.BytesIO(), p.astype(np.float16) if save == "float16" else probs_to_uint8(p))
        mask = apply_postprocess(p, cfg.data.task, params, presence)
        rows.writerows(mask_rows(image_id, mask, cfg))
        if masks != "none":
            mask_pngs(mask, cfg.data.task, masks, colors)
        post += clock() - t
        n += 1
        if n % bs == 0 and n >= min_batches * bs and clock() - start >= min_seconds:
            break
    gen.close()
    return n, clock() - start, post


def estimate_predict(cfg: Config, n_images: int | None = None, budget: float | None = None, min_batches: int = 2,
                     min_seconds: float = 5.0, max_batches: int = 50, clock: Callable[[], float] = time.perf_counter,
                     write: bool = True) -> dict[str, Any]:
    """Measure the run's predictor on the test images and project ``predict``'s time; see the module doc.

    ``n_images``: project for this many images (e.g. a code competition's hidden test set; default:
    the test images). ``budget``: seconds allowed. Returns the measurement and :func:`project`'s result.
    """
    from .inference import _one, run_predictor

    cfg = _one(cfg)
    if n_images is not None and n_images < 1:
        raise ConfigError(f"--n-images {n_images}: expected a positive number of images")
    run, predictor = run_predictor(cfg)
    samples = load_test_samples(cfg)
    if not samples:
        raise DataError(f"{cfg.data_path(cfg.data.test_images)}: no test image to time")
    params = load_params(cfg, run)
    stats: dict = {}
    load_s = _timed_models(predictor, stats, clock)
    bs = predictor.batch_size
    cycled = [samples[i % len(samples)] for i in range(bs + max(min_batches, max_batches) * bs)]
    _, warm_s, _ = _per_image(cfg, params, predictor, cycled[:bs], stats, clock, 1, 0.0)
    sizes: list[tuple[int, int]] = []
    n, seconds, post = _per_image(cfg, params, predictor, cycled[bs:], stats, clock, min_batches, min_seconds, sizes)
    members = []
    for i, m in enumerate(predictor.members):
        fwd, images = stats.get(i, (0.0, 0))
        tiles = stats[("tiles", i)][1] / images if ("tiles", i) in stats and images else 1.0
        members.append({"run": str(m.run.dir), "folds": len(m.folds), "tta": expand_tta(m.tta),
                        "scales": m.scales(), "scale_cost": scale_costs(m, sizes), "tiles": tiles, "forward_s": fwd / n})
    per_image = seconds / n
    measured = {"images_timed": n, "seconds_timed": seconds, "batch_size": bs, "device": str(predictor.device),
                "backend": cfg.predict.backend, "load_models_s": load_s,
                "warmup_extra_s": max(0.0, warm_s - min(bs, len(cycled)) * per_image),
                "per_image_s": per_image, "post_s": post / n, "members": members}
    result = {**measured, **project(measured, n_images or len(samples), budget)}
    if write:
        try:
            write_json(run.estimate_json, result)
        except OSError as e:  # a read-only run folder (a bundle under /kaggle/input): the estimate is printed all the same
            log.warning("estimate not saved to %s (%s)", run.estimate_json, e)
    return result


def _passes(member: dict[str, Any]) -> float:
    return member["folds"] * len(member["tta"]) * len(member["scales"]) * member["tiles"]


def _drop_candidates(members: list[dict[str, Any]]) -> list[tuple[float, int, str, str, Any]]:
    """``(seconds saved per image, member, what, key, value)`` for dropping one TTA transform or scale."""
    out = []
    for i, m in enumerate(members):
        tta, scales = m["tta"], m["scales"]
        if len(tta) > 1:  # every transform costs the same; keep identity
            name = next(t for t in reversed(tta) if t != "identity") if set(tta) != {"identity"} else tta[-1]
            out.append((m["forward_s"] / len(tta), i, f"TTA {name}", "tta", name))
        if len(scales) > 1:
            cost = m.get("scale_cost") or [s * s for s in scales]  # an estimate.json of before scale_cost: s^2
            j = max((j for j, s in enumerate(scales) if s != 1.0), key=lambda j: cost[j], default=len(scales) - 1)
            out.append((m["forward_s"] * cost[j] / sum(cost), i, f"scale {scales[j]:g}", "scales", scales[j]))
    return out


def project(measured: dict[str, Any], n_images: int, budget: float | None = None) -> dict[str, Any]:
    """The projected total for ``n_images`` and, with ``budget`` (seconds), the settings to drop until it fits.

    Pure arithmetic on a measurement (see :func:`estimate_predict`'s keys): total = load + warm-up
    extra + ``n_images`` x per image; dropping a TTA transform of a member saves ``forward / n_tta``
    of its per-image forward time, a scale ``forward x cost(s) / sum(cost)`` (``scale_cost``: the pixels of its
    passes, :func:`scale_costs`).
    """
    fixed = measured["load_models_s"] + measured["warmup_extra_s"]
    members = [dict(m, tta=list(m["tta"]), scales=list(m["scales"]),
                    **({"scale_cost": list(m["scale_cost"])} if m.get("scale_cost") else {})) for m in measured["members"]]
    per_image = measured["per_image_s"]
    total = fixed + n_images * per_image
    out: dict[str, Any] = {"n_images": n_images, "fixed_s": fixed, "total_s": total,
                           "passes_per_image": sum(_passes(m) for m in members)}
    if budget is None:
        return out
    out.update(budget_s=budget, fits=total <= budget, drops=[])
    while total > budget:
        candidates = _drop_candidates(members)
        if not candidates:
            break
        saved, i, what, key, value = max(candidates, key=lambda c: c[0])
        m = members[i]
        before = _passes(m)
        if key == "scales" and m.get("scale_cost"):
            del m["scale_cost"][m["scales"].index(value)]
        m[key].remove(value)
        m["forward_s"] -= saved
        per_image -= saved
        total = fixed + n_images * per_image
        out["drops"].append({"drop": what, "run": m["run"], "passes_factor": _passes(m) / before,
                             key: list(m[key]), "per_image_s": per_image, "total_s": total, "fits": total <= budget})
    return out


def format_estimate(r: dict[str, Any]) -> str:
    """The printed breakdown of :func:`estimate_predict`'s result."""
    n, per = r["n_images"], r["per_image_s"]
    fwd = sum(m["forward_s"] for m in r["members"])
    lines = [f"predict estimate ({r['device']}, backend {r['backend']}, batch {r['batch_size']}; measured on "
             f"{r['images_timed']} test images in {r['seconds_timed']:.1f}s after a warm-up batch):"]
    for m in r["members"]:
        tiles = f" x {m['tiles']:.3g} tiles" if m["tiles"] != 1 else ""
        lines.append(f"  {m['run']}: {m['folds']} fold(s) x {len(m['tta'])} TTA ({' '.join(m['tta'])}) x "
                     f"{len(m['scales'])} scale(s){tiles} = {_passes(m):.4g} forward passes/image, {m['forward_s']:.4f}s/image")
    lines += [f"  forward passes per image: {r['passes_per_image']:.4g}",
              f"  seconds per image: {per:.4f} = forward {fwd:.4f} + post-processing/RLE {r['post_s']:.4f} "
              f"+ reading/preprocessing/merging {max(0.0, per - fwd - r['post_s']):.4f}",
              f"  fixed: loading the models {r['load_models_s']:.1f}s + first-batch extra {r['warmup_extra_s']:.1f}s",
              f"projected for {n} images: {format_duration(r['total_s'])}"
              + (f" ({r['total_s']:.0f}s)" if r["total_s"] >= 60 else "")]
    if "budget_s" in r:
        b = r["budget_s"]
        if r["fits"]:
            lines.append(f"fits the budget of {format_duration(b)} ({100 * r['total_s'] / b:.0f}% of it)")
        else:
            lines.append(f"does NOT fit the budget of {format_duration(b)} ({r['total_s'] / b:.2f}x it)")
            for d in r["drops"]:
                lines.append(f"  drop {d['drop']} ({d['run']}): forward passes x{d['passes_factor']:.2g} -> projected "
                             f"{format_duration(d['total_s'])}{' (fits)' if d['fits'] else ''}; predict.{'tta' if 'tta' in d else 'scales'}: "
                             f"{d.get('tta', d.get('scales'))}")
            if not r["drops"] or not r["drops"][-1]["fits"]:
                lines.append("  no TTA transform or scale left to drop: fewer folds, a smaller model or a smaller "
                             "predict resolution would be next")
            else:
                lines.append("  (change predict keys of a trained run with `seg-toolkit oof RUN --set ...`, which "
                             "remakes its OOF files and post-processing with them)")
    return "\n".join(lines)
