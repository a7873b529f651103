"""Overlays of OOF images: image | ground truth | prediction, classes in their colours.

Under an object-matching metric (``instance_map`` / ``instance_f2``) the panels show objects instead: each
truth object green when a predicted object matches it at IoU > 0.5, red when none does; each predicted
object (8-connected) green when matched, red when it matches no truth object; the lines between touching
objects drawn dark, so merged and split nuclei show.

Drawn once as a matplotlib figure; needs the training images and targets (``ReportData.samples``).
"""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np
from PIL import Image

from ..config import IGNORE_INDEX, Config
from ..data import DataError, load_objects
from ..data.scored import scored_target
from ..instance_metrics import INSTANCE_METRICS, component_hits, label_objects
from ..postprocess import area_floor
from ..data.sample import read_config_image
from ..data.io import is_array_image
from ..plots import literal, metric_label, new_figure
from ..files import read_oof
from .data import ReportData
from .summary import Example, predict_mask

__all__ = ["overlays_figure", "display_size", "class_legend_handles", "legend_layout", "draw_legend", "void_color"]

VOID_COLOR = (128, 128, 128)
#: void's colour when a class is drawn (nearly) in grey, as CamVid's Sky (128, 128, 128): the farthest of these
VOID_COLORS = (VOID_COLOR, (255, 255, 255), (255, 0, 255), (0, 255, 255), (40, 40, 40), (255, 255, 0))
MATCHED_COLOR, UNMATCHED_COLOR = (40, 200, 70), (230, 40, 40)  # object overlays: matched at IoU > 0.5, or not
FILL_ALPHA = 0.4
MIN_PANEL_HEIGHT = 200  # tiny images are upscaled (nearest neighbour) to at least this many pixels
MAX_PANEL_HEIGHT = 512
MAX_PANEL_WIDTH = 1600
MIN_FIGURE_WIDTH = 960  # pixels: room for the title and a legend of many classes beside narrow images


#: how every class legend is drawn (report overlays, audit pictures), above the panels, never over them
LEGEND_KW = dict(fontsize=9, frameon=False, handlelength=1.2, columnspacing=1.2, borderaxespad=0, borderpad=0.2)
LEGEND_TOP = 24  # pixels from the top of the figure to the legend (the title is above it)
LEGEND_GAP = 12  # pixels between the legend and the first panels


def void_color(colors: Any) -> tuple[int, int, int]:
    """How void is drawn beside the class ``colors`` (RGB rows): grey, unless a class's colour is within 60 of it
    (CamVid's Sky is that very grey: the overlays showed unscored pixels as sky), then the candidate of
    :data:`VOID_COLORS` farthest from every class's colour."""
    rgb = np.asarray(colors, np.float64).reshape(-1, 3)
    if not rgb.size:
        return VOID_COLOR
    gap = [float(np.linalg.norm(rgb - np.asarray(c, np.float64), axis=1).min()) for c in VOID_COLORS]
    return VOID_COLOR if gap[0] >= 60 else VOID_COLORS[int(np.argmax(gap))]


def class_legend_handles(names: list[str], colors: np.ndarray, painted: list[bool], task: str, void: bool) -> list[Any]:
    """One colour patch per drawn class, then the undrawn background (multiclass) and void when present."""
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=np.asarray(colors[c]) / 255, edgecolor="black", label=literal(n)) for c, n in enumerate(names) if painted[c]]
    if task == "multiclass" and not all(painted):
        handles.append(Patch(facecolor="none", edgecolor="black", label=f"{literal(names[0])} (not drawn)"))
    if void:
        handles.append(Patch(facecolor=np.asarray(void_color(colors)) / 255, edgecolor="black", label="void (not scored)"))
    return handles


def object_legend_handles(void: bool) -> list[Any]:
    """The object overlays' legend: matched and unmatched objects, the lines between touching ones, void."""
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=np.asarray(MATCHED_COLOR) / 255, edgecolor="black", label="matched (IoU > 0.5)"),
               Patch(facecolor=np.asarray(UNMATCHED_COLOR) / 255, edgecolor="black",
                     label="truth missed / predicted object unmatched"),
               Patch(facecolor="black", edgecolor="black", label="line between touching objects")]
    if void:
        handles.append(Patch(facecolor=np.asarray(VOID_COLOR) / 255, edgecolor="black", label="void (not scored)"))
    return handles


def legend_layout(handles: list[Any], width_px: int, dpi: int = 100, max_cols: int = 8) -> tuple[int, int]:
    """``(columns, height in pixels)`` of the class legend: the most columns (at most ``max_cols``) whose
    legend, measured on a scratch figure, fits ``width_px`` less a margin. Any number of classes (19 for
    Cityscapes) then takes as many rows as it needs, and the caller reserves that height above the panels."""
    if not handles:
        return 1, 0
    fig = new_figure(width_px / dpi, 4, dpi)
    renderer = fig.canvas.get_renderer()
    for ncol in range(min(len(handles), max_cols), 0, -1):
        legend = fig.legend(handles=handles, ncol=ncol, **LEGEND_KW)
        box = legend.get_window_extent(renderer)
        legend.remove()
        if box.width <= width_px - 2 * LEGEND_GAP or ncol == 1:
            return ncol, int(math.ceil(box.height))
    raise AssertionError("unreachable")  # pragma: no cover


def draw_legend(fig: Any, handles: list[Any], ncol: int, height_px: int) -> None:
    """The legend ``legend_layout`` measured, centred ``LEGEND_TOP`` pixels below the top of ``fig``."""
    if handles:
        fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 1 - LEGEND_TOP / height_px), ncol=ncol,
                   **LEGEND_KW)


def display_size(h: int, w: int) -> tuple[int, int]:
    """Panel size: tiny images upscaled by an integer factor to >= MIN_PANEL_HEIGHT, big ones shrunk."""
    s = float(math.ceil(MIN_PANEL_HEIGHT / h)) if h < MIN_PANEL_HEIGHT else 1.0
    if h * s > MAX_PANEL_HEIGHT:
        s = MAX_PANEL_HEIGHT / h
    if w * s > MAX_PANEL_WIDTH:
        s = MAX_PANEL_WIDTH / w
    return max(1, round(h * s)), max(1, round(w * s))


def _resize(arr: np.ndarray, hw: tuple[int, int], nearest: bool) -> np.ndarray:
    if arr.shape[:2] == tuple(hw):
        return arr
    if arr.dtype == bool:
        return np.asarray(Image.fromarray(arr.astype(np.uint8) * 255).resize((hw[1], hw[0]), Image.NEAREST)) > 127
    method = Image.NEAREST if nearest else Image.BILINEAR
    return np.asarray(Image.fromarray(arr).resize((hw[1], hw[0]), method))


def _erode(mask: np.ndarray) -> np.ndarray:
    p = np.pad(mask, 1, constant_values=False)
    return mask & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]


def _dilate(mask: np.ndarray) -> np.ndarray:
    p = np.pad(mask, 1, constant_values=False)
    return mask | p[:-2, 1:-1] | p[2:, 1:-1] | p[1:-1, :-2] | p[1:-1, 2:]


def _outline(mask: np.ndarray, width: int) -> np.ndarray:
    """Pixels of ``mask`` within ``width`` pixels of its border (4-neighbour erosion)."""
    inner = mask
    for _ in range(width):
        inner = _erode(inner)
    return mask & ~inner


def _paint(image: np.ndarray, masks: list[Optional[np.ndarray]], colors: np.ndarray,
           void: Optional[np.ndarray] = None, edges: Optional[np.ndarray] = None) -> np.ndarray:
    """Alpha-blend class masks (bool, display size) over ``image``, outlined in full colour; void in
    :func:`void_color`; ``edges`` (the lines between touching objects) dark."""
    out = image.astype(np.float32)
    width = 2 if image.shape[0] >= 300 else 1
    layers = [(m, np.asarray(colors[c], np.float32)) for c, m in enumerate(masks) if m is not None and m.any()]
    if void is not None and void.any():
        layers.insert(0, (void, np.asarray(void_color(colors), np.float32)))
    for m, col in layers:
        out[m] = (1 - FILL_ALPHA) * out[m] + FILL_ALPHA * col
    for m, col in layers:  # a dark ring outside, the class colour inside: visible on any background
        out[_dilate(m) & ~m] = 0.25 * out[_dilate(m) & ~m]
        out[_outline(m, width)] = col
    if edges is not None:
        out[edges] = 0.15 * out[edges]
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def painted_classes(cfg: Config, names: list[str], colors: np.ndarray) -> list[bool]:
    """Which classes are drawn: all but an implied multiclass background (csv layout, or named so, or black)."""
    out = []
    for c, name in enumerate(names):
        skip = False
        if cfg.data.task == "multiclass" and c == 0:
            skip = (cfg.data.layout == "csv" or name.strip().lower().strip("_") in ("background", "bg", "backgrounds")
                    or tuple(int(v) for v in colors[0]) == (0, 0, 0))
        out.append(not skip)
    return out


#: how a table or bar shows a class the pictures leave undrawn (a multiclass background): not in a class colour
UNDRAWN_GREY = (190, 190, 190)


def legend_colors(cfg: Config, names: list[str], colors: np.ndarray, undrawn: tuple[int, int, int] = UNDRAWN_GREY
                  ) -> np.ndarray:
    """``colors`` with the classes :func:`painted_classes` leaves undrawn in ``undrawn``: a table's swatch of a colour
    the pictures never show read as a class drawn there (a multiclass background in red); colour mask files paint it
    black."""
    out = np.array(colors, np.uint8, copy=True)
    for c, painted in enumerate(painted_classes(cfg, names, colors)):
        if not painted:
            out[c] = undrawn
    return out


def as_rgb(image: np.ndarray) -> np.ndarray:
    """``(H, W, C)`` uint8 as RGB for display: one channel (or two: the first) as grey, else the first three
    (RGBA's alpha dropped; the first three bands of a multispectral ``.npy`` image)."""
    return np.repeat(image[..., :1], 3, axis=-1) if image.shape[-1] < 3 else image[..., :3]


def display_image(path, cfg: Config, pair=None) -> np.ndarray:
    """An image file as RGB for display, its values read as the model reads them (``data.image_range``): PIL files
    converted to RGB (a grey model input still shows an RGB file in colour), ``.npy`` arrays by :func:`as_rgb`."""
    if is_array_image(path):
        return as_rgb(read_config_image(path, cfg, pair))
    return read_config_image(path, cfg, pair, in_channels=3)


def _example_panels(d: ReportData, ex: Example, colors: np.ndarray,
                    painted: list[bool]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The image, truth overlay and prediction overlay of one example, at display size."""
    cfg = d.cfg
    assert d.samples is not None
    s = d.samples.get(ex.id)
    if s is None:  # in the summary but no longer in the data (a row removed since): the page says the data changed
        raise DataError(f"{ex.id}: an OOF image of {d.run.oof_summary_json.name} is not in the training data any more")
    q = read_oof(d.run.oof_path(ex.id))
    hw = tuple(q.shape[-2:])
    image = display_image(s.image, cfg, s.pair)
    if image.shape[:2] != hw:  # OOF files at data.score_size: the image shown at that size
        image = _resize(image, hw, nearest=False)
    target = scored_target(s, cfg, hw)
    pred = predict_mask(q, cfg.data.task, cfg.metric.threshold, area_floor(cfg))[0].numpy()
    size = display_size(*hw)
    up = size[0] >= hw[0]
    image = _resize(image, size, nearest=up)
    n = cfg.data.num_classes
    if cfg.data.task == "multiclass":
        void = target == IGNORE_INDEX
        truth = [target == c if painted[c] else None for c in range(n)]
        predm = [pred == c if painted[c] else None for c in range(n)]
    else:
        void = (target == IGNORE_INDEX).any(-1)
        truth = [target[..., c] == 1 for c in range(n)]
        predm = [pred[c] for c in range(n)]
    fit = lambda m: None if m is None else _resize(m, size, nearest=True)  # noqa: E731
    if d.metric in INSTANCE_METRICS:
        status = np.asarray([MATCHED_COLOR, UNMATCHED_COLOR], np.uint8)
        truth_labels = load_objects(s, cfg, hw)
        pred_labels, _ = label_objects(predm[0])
        scored_void = void if void.any() else None
        truth_img = _paint(image, [fit(m) for m in _object_status(truth_labels, pred_labels, scored_void)], status,
                           fit(void), edges=fit(_object_edges(truth_labels)))
        pred_img = _paint(image, [fit(m) for m in _object_status(pred_labels, truth_labels, scored_void)], status,
                          edges=fit(_object_edges(pred_labels)))
        return image, truth_img, pred_img
    truth_img = _paint(image, [fit(m) for m in truth], colors, fit(void))
    pred_img = _paint(image, [fit(m) for m in predm], colors)
    return image, truth_img, pred_img


def _object_status(own: np.ndarray, other: np.ndarray, void: Optional[np.ndarray]) -> list[np.ndarray]:
    """``[matched, unmatched]`` pixels of the objects of label map ``own``: matched when an object of ``other``
    has IoU > 0.5 with it (IoU is symmetric: the truth's and the prediction's matches come from one function)."""
    hits, _, _ = component_hits(other, own, void)
    matched = np.concatenate([[False], hits[:, 0]])[own]
    return [matched, (own > 0) & ~matched]


def _object_edges(labels: np.ndarray) -> np.ndarray:
    """Object pixels with a 4-neighbour of another object: the line between touching objects."""
    p = np.pad(labels, 1)
    edge = np.zeros(labels.shape, bool)
    for nb in (p[:-2, 1:-1], p[2:, 1:-1], p[1:-1, :-2], p[1:-1, 2:]):
        edge |= (nb > 0) & (nb != labels)
    return edge & (labels > 0)


def prediction_rule(cfg) -> str:
    """How the prediction panel's masks are made of the OOF probabilities: as the CV scores them (argmax, or at
    ``metric.threshold``; the submission's object floor applied), before the tuned post-processing."""
    return "argmax" if cfg.data.task == "multiclass" else f"p \u2265 {cfg.metric.threshold:g}"


def overlays_figure(d: ReportData, examples: list[Example], title: str) -> Any:
    """A figure of ``examples``: one row per image (image | ground truth | prediction), legend on top.

    Wide images (width > 2.5 x height) are stacked in three rows per example instead. Needs
    the training data (``d.samples``); an image or target that cannot be read is a DataError.
    """
    if d.samples is None:
        raise ValueError(f"overlays need the training data: {d.data_problem}")
    colors = d.class_colors
    painted = painted_classes(d.cfg, d.class_names, colors)
    panels = [_example_panels(d, ex, colors, painted) for ex in examples]
    label = metric_label(d.metric)
    dpi, gap, head = 100, 12, 40
    if not panels:
        fig = new_figure(6, 1.2, dpi)
        fig.text(0.5, 0.5, f"{literal(title)}: no scored images", ha="center", va="center")
        return fig
    ph = max(p[0].shape[0] for p in panels)
    pw = max(p[0].shape[1] for p in panels)
    wide = pw > 2.5 * ph
    per_row = 1 if wide else 3
    # each block as tall as its own panels: a landscape photo among portrait ones leaves no blank band
    heights = [(3 * (p[0].shape[0] + 20) + head) if wide else (p[0].shape[0] + head) for p in panels]
    content = per_row * pw + (per_row + 1) * gap
    W = max(content, MIN_FIGURE_WIDTH)
    x0 = (W - content) // 2  # narrow panels are centred
    handles = (object_legend_handles(bool(d.void_pixels)) if d.metric in INSTANCE_METRICS
               else class_legend_handles(d.class_names, colors, painted, d.task, bool(d.void_pixels)))
    ncol, legend_h = legend_layout(handles, W, dpi)
    top = LEGEND_TOP + legend_h + LEGEND_GAP
    H = top + sum(heights) + len(panels) * gap
    fig = new_figure(W / dpi, H / dpi, dpi)
    names = ("image", "ground truth", f"prediction, {prediction_rule(d.cfg)}")  # the page says: before post-processing
    y0 = H - top  # top edge of the next block, in pixels from the bottom
    for i, (ex, imgs, block_h) in enumerate(zip(examples, panels, heights)):
        fig.text((x0 + gap) / W, (y0 - 14) / H, f"#{i + 1}  {literal(ex.id)}   fold {ex.fold}   {label} {ex.score:.3f}",
                 ha="left", va="center", fontsize=11, fontweight="bold")
        for j, (img, name) in enumerate(zip(imgs, names)):
            h, w = img.shape[:2]
            if wide:
                left, bottom = x0 + gap, y0 - head - j * (h + 20) - h
            else:
                left, bottom = x0 + gap + j * (w + gap), y0 - head - h  # packed: a narrow example leaves no gaps
            ax = fig.add_axes((left / W, bottom / H, w / W, h / H))
            ax.imshow(img, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(name, fontsize=9, pad=3)
        y0 -= block_h + gap
    fig.text(0.5, 1 - 14 / H, literal(title), ha="center", va="center", fontsize=12, fontweight="bold")
    draw_legend(fig, handles, ncol, H)
    return fig
