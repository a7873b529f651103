"""The audit's two pictures (:mod:`seg_toolkit.audit`), each drawn once; the PNG beside the page is the picture in it.

* ``audit_samples.png``: a seeded sample of images spread over the dataset (one per equal
  slice of the listing order), each as the model reads it beside the same image with its
  decoded mask painted in the class colours (the report's overlay painting);
* ``audit_batch.png``: the first augmented training batch of epoch 0, with the masks that went with them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from .config import IGNORE_INDEX, Config, ConfigError
from .data import DataError, EpochSampler, Sample, SegDataset, class_colors, class_names, load_target
from .data.sample import read_config_image

if TYPE_CHECKING:  # pragma: no cover
    from .audit import AuditResult

log = logging.getLogger(__name__)

__all__ = ["spread_pick", "overlay_panels", "audit_pictures"]

# ----------------------------------------------------------------------------- pictures

N_EXAMPLES = 8  # images in audit_samples.png
MAX_BATCH = 8  # at most this many items of the training batch in audit_batch.png
THUMB_MIN_HEIGHT, THUMB_MAX_SIDE = 160, 288  # panel size: small images upscaled by an integer factor, large ones shrunk
FIG_WIDTH = 1240  # pixels: the page's width, so the picture shows at its own size (two tiles a row up to 288-pixel panels)


def spread_pick(n: int, k: int, seed: int) -> list[int]:
    """``k`` indices of ``0..n-1`` spread over the range: one at random (seeded) in each of ``k`` equal slices."""
    if n <= k:
        return list(range(n))
    rng = np.random.default_rng(seed)
    edges = np.linspace(0, n, k + 1).round().astype(int)
    return [int(rng.integers(a, b)) for a, b in zip(edges[:-1], edges[1:])]


def _thumb_size(h: int, w: int) -> tuple[int, int]:
    s = float(-(-THUMB_MIN_HEIGHT // h)) if h < THUMB_MIN_HEIGHT else 1.0
    s = min(s, THUMB_MAX_SIDE / h, THUMB_MAX_SIDE / w) if max(h, w) * s > THUMB_MAX_SIDE else s
    return max(1, round(h * s)), max(1, round(w * s))


def _class_masks(target: np.ndarray, task: str, painted: list[bool]) -> tuple[list[Optional[np.ndarray]], np.ndarray]:
    """Boolean masks per class (None: not drawn) and the void mask of a target in the toolkit's convention
    (multiclass ``(H, W)`` label map; binary / multilabel ``(H, W, C)`` 0/1), void = 255."""
    if task == "multiclass":
        return [target == c if painted[c] else None for c in range(len(painted))], target == IGNORE_INDEX
    return [target[..., c] == 1 for c in range(target.shape[-1])], (target == IGNORE_INDEX).any(-1)


def overlay_panels(image: np.ndarray, target: np.ndarray, cfg: Config, colors: np.ndarray,
                   painted: list[bool]) -> tuple[np.ndarray, np.ndarray]:
    """``(image, image with its mask painted)`` at thumbnail size, RGB uint8: classes blended in their colours
    and outlined, void grey (:func:`seg_toolkit.report.overlays._paint`, the report's painting)."""
    from .report.overlays import _paint, _resize, as_rgb

    rgb = as_rgb(image)
    h, w = rgb.shape[:2]
    size = _thumb_size(h, w)
    shown = _resize(rgb, size, nearest=size[0] >= h)
    masks, void = _class_masks(target, cfg.data.task, painted)
    fit = lambda m: None if m is None else _resize(m, size, nearest=True)  # noqa: E731
    return shown, _paint(shown, [fit(m) for m in masks], colors, fit(void))


def _sample_tiles(cfg: Config, samples: list[Sample], colors: np.ndarray, painted: list[bool]) -> list[tuple[str, tuple]]:
    tiles = []
    for s in samples:
        try:
            image = read_config_image(s.image, cfg, s.pair)
            target = load_target(s, cfg, image.shape[:2])
        except (DataError, ConfigError) as e:  # a header-only audit did not decode it
            log.warning("audit picture: %s", e)
            continue
        h, w = image.shape[:2]
        tiles.append((f"{s.id}  ({h}x{w})", overlay_panels(image, target, cfg, colors, painted)))
    return tiles


def _batch_tiles(cfg: Config, samples: list[Sample], colors: np.ndarray, painted: list[bool],
                 ) -> tuple[list[tuple[str, tuple]], bool]:
    """The first training batch of epoch 0 (sampler order and augmentation seeds as training has them), and whether
    its masks hold void pixels (the padding of a rotation or shift is void, where the data may have none)."""
    from .data.dataset import _normalize

    ds = SegDataset(samples, cfg, "train")
    norm = _normalize(cfg)
    mean, std = np.asarray(norm.mean, np.float32), np.asarray(norm.std, np.float32)
    keys = list(EpochSampler(len(samples), shuffle=True, seed=cfg.train.seed))[: min(cfg.train.batch_size, MAX_BATCH)]
    tiles, void = [], False
    for key in keys:
        item = ds[key]
        x = item["image"].numpy().transpose(1, 2, 0)
        image = np.clip((x * std + mean) * float(norm.max_pixel_value) + 0.5, 0, 255).astype(np.uint8)
        t = item["target"].numpy()
        target = t.astype(np.uint8) if cfg.data.task == "multiclass" else t.transpose(1, 2, 0).astype(np.uint8)
        void = void or bool((t == IGNORE_INDEX).any())
        h, w = image.shape[:2]
        panels = overlay_panels(image, target, cfg, colors, painted)
        if "weight" in item:  # data.border_weight: the U-Net weight map that went with the crop, a third panel
            panels = (*panels, weight_panel(item["weight"][0].numpy(), target[..., 0] == IGNORE_INDEX,
                                            cfg.data.border_weight, panels[0].shape[:2]))
        tiles.append((f"{item['id']}  ({h}x{w}, seed {key[1]})", panels))
    return tiles, void


def weight_panel(weight: np.ndarray, void: np.ndarray, w0: float, size: tuple[int, int]) -> np.ndarray:
    """The U-Net weight map as an RGB uint8 thumbnail of ``size``: 1 black, ``1 + w0`` bright (matplotlib's
    ``inferno``), void grey."""
    from matplotlib import colormaps

    from .report.overlays import _resize

    level = np.clip((weight - 1.0) / max(w0, 1e-12), 0.0, 1.0)
    rgb = (colormaps["inferno"](level)[..., :3] * 255 + 0.5).astype(np.uint8)
    rgb[void] = 128
    return _resize(rgb, size, nearest=True)


def _tiles_figure(tiles: list[tuple[str, tuple]], title: str, names: list[str], colors: np.ndarray,
                  painted: list[bool], task: str, void: bool) -> Any:
    """Tiles of (image | overlay) pairs, as many per row as fit :data:`FIG_WIDTH`; a legend on top. Each panel is
    placed at its own pixel size (no resampling: the painted colours are the file's pixels)."""
    from .plots import literal, new_figure
    from .report.overlays import LEGEND_GAP, LEGEND_TOP, class_legend_handles, draw_legend, legend_layout

    handles = class_legend_handles(names, colors, painted, task, void)
    dpi, gap, head = 100, 12, 22
    pw = max(t[1][0].shape[1] for t in tiles)
    n_panels = max(len(t[1]) for t in tiles)
    tile_w = n_panels * pw + (n_panels - 1) * gap
    per_row = max(1, min(len(tiles), (FIG_WIDTH - gap) // (tile_w + 2 * gap)))
    row_h = [max(t[1][0].shape[0] for t in tiles[i : i + per_row]) + head + gap for i in range(0, len(tiles), per_row)]
    row_top = np.concatenate([[0], np.cumsum(row_h)])  # pixels below the legend
    content = per_row * (tile_w + 2 * gap) - gap
    W = max(FIG_WIDTH, content + 2 * gap)
    ncol, legend_h = legend_layout(handles, W, dpi)
    top = LEGEND_TOP + legend_h + LEGEND_GAP  # the title, then the legend's rows
    left = (W - content) // 2
    H = top + int(row_top[-1])
    fig = new_figure(W / dpi, H / dpi, dpi)
    for i, (label, panels) in enumerate(tiles):
        r, c = divmod(i, per_row)
        x0, y0 = left + c * (tile_w + 2 * gap), H - top - int(row_top[r])  # top-left corner, pixels from the bottom
        fig.text(x0 / W, (y0 - 10) / H, f"#{i + 1}  {literal(label)}", ha="left", va="center", fontsize=9)
        for j, img in enumerate(panels):
            h, w = img.shape[:2]
            ax = fig.add_axes(((x0 + j * (w + gap)) / W, (y0 - head - h) / H, w / W, h / H))
            ax.imshow(img, interpolation="nearest")
            ax.set_axis_off()
    fig.text(0.5, 1 - 14 / H, literal(title), ha="center", va="center", fontsize=11, fontweight="bold")
    draw_legend(fig, handles, ncol, H)
    return fig


def audit_pictures(cfg: Config, res: AuditResult, out_dir: Path) -> str:
    """Draw both pictures once, write their PNGs into ``out_dir`` and return the page's sections for them."""
    from .plots import write_figure
    from .report.html import esc, note, png_tag, section
    from .report.overlays import FILL_ALPHA, painted_classes
    from .run import Run

    run = Run(out_dir)
    for png in (run.audit_samples_png, run.audit_batch_png):  # an earlier audit's: drawn again below, or gone
        png.unlink(missing_ok=True)
    if not res.samples:
        return section("Samples with their masks", note("No sample could be read, so there is nothing to show."))
    names, colors = class_names(cfg), class_colors(cfg)
    painted = painted_classes(cfg, names, colors)
    void = res.void_pixels > 0
    seed = cfg.train.seed
    picks = [res.samples[i] for i in spread_pick(len(res.samples), N_EXAMPLES, seed)]
    tiles = _sample_tiles(cfg, picks, colors, painted)
    out = []
    if tiles:
        fig = _tiles_figure(tiles, f"{len(tiles)} of {len(res.samples)} images (one per equal slice of the listing, seed {seed}): "
                            "image as read | decoded mask in the class colours", names, colors, painted, cfg.data.task, void)
        png = write_figure(fig, run.audit_samples_png)
        out.append(section("Samples with their masks", png_tag(png, "samples with their masks") + note(
            f"Each image as the model reads it (data.in_channels {cfg.data.in_channels}"
            + ("; the first three shown as RGB" if cfg.data.in_channels > 4 else "") + ") beside the same image with its "
            f"decoded mask: classes filled at {round(100 * FILL_ALPHA)}% and outlined in their colour, void grey. The same picture is "
            f"{esc(run.audit_samples_png.name)} beside this page.")))
    try:
        batch, batch_void = _batch_tiles(cfg, res.samples, colors, painted)
    except Exception as e:  # the pictures must not hide the audit; training would stop at the same error
        log.warning("audit: the augmented batch could not be drawn: %s", e)
        out.append(section("One augmented training batch",
                           f"<div class='warn'>{esc(f'could not be drawn: {type(e).__name__}: {e}')}</div>"))
        return "\n".join(out)
    aug = ", ".join(next(iter(a)) if isinstance(a, dict) else str(a) for a in cfg.transforms.train) or "none"
    weighed = cfg.data.border_weight > 0
    fig = _tiles_figure(batch, f"first training batch of epoch 0 (sampler seed {seed}), after augmentation and resize: "
                        "image | mask" + (" | weight map" if weighed else ""), names, colors, painted, cfg.data.task,
                        void or batch_void)
    png = write_figure(fig, run.audit_batch_png)
    out.append(section("One augmented training batch", png_tag(png, "one augmented training batch") + note(
        f"The first {len(batch)} items of epoch 0 in the training sampler's order over all {len(res.samples)} samples read "
        f"(train.seed {seed}; training draws from one fold's share), after transforms.train ({esc(aug)}) and "
        f"transforms.resize ({esc(cfg.transforms.resize or 'native')}), de-normalised with transforms.mean/std, with the "
        f"mask each was given"
        + (" (void grey, not scored: the padding a rotation or shift adds is void)" if batch_void and not void else "")
        + (f" and the U-Net weight map the loss weighed it with (data.border_weight {cfg.data.border_weight:g}, "
           f"data.border_sigma {cfg.data.border_sigma:g}: black 1, bright {1 + cfg.data.border_weight:g}, void grey)"
           if weighed else "")
        + f"; tile titles carry the augmentation seed. The same picture is {esc(run.audit_batch_png.name)}.")))
    return "\n".join(out)
