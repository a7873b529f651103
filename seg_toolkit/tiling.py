"""Sliding-window (tiled) inference with Gaussian blending (nnU-Net style).

An image larger than the model's input size is cut into overlapping tiles; tiles of all
images in the batch are run in chunks of ``max_batch``; each tile's output is multiplied
by an importance map (a Gaussian centred on the tile, so pixels near a tile's edge, where
the model sees little context, count less) and accumulated; the sum is divided by the
summed weights. Along each axis the tile starts are ``0, stride, 2*stride, ...`` with
``stride = int(tile * (1 - overlap))`` and the last tile aligned to the border. An axis
shorter than its tile is padded (symmetrically, ``pad_mode``) up to the tile and cropped
back afterwards.

By default the merged result is the weighted mean of the *model outputs*, i.e. logits;
pass ``task`` to get probabilities (the activation is applied after merging). To run TTA
on every tile, pass a ``predict_fn`` that returns probabilities and leave ``task=None``::

    fn = functools.partial(tta_predict, model, task="binary", transforms=["d4"])
    probs = sliding_window_predict(fn, image, (256, 256), overlap=0.25)

Everything runs under :func:`torch.no_grad` on the input's device (and inside a caller's
``inference_mode`` / ``autocast`` block).
"""

from __future__ import annotations

import itertools
import logging
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .tensors import activate

__all__ = ["tile_starts", "gaussian_importance_map", "sliding_window_predict"]

logger = logging.getLogger(__name__)

Predictor = Callable[[Tensor], Tensor]

#: floor of the importance map (relative to its maximum 1.0): weights are never 0
MIN_WEIGHT = 1e-6


def tile_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Start offsets of the tiles along one axis of ``length`` pixels.

    ``stride = max(1, int(tile * (1 - overlap)))``; the last tile ends at ``length``.
    An axis not longer than ``tile`` has a single tile at 0 (the caller pads it).
    """
    if tile < 1:
        raise ValueError(f"tile size must be >= 1, got {tile}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if length <= tile:
        return [0]
    stride = max(1, int(tile * (1.0 - overlap)))
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


def gaussian_importance_map(
    tile_size: Sequence[int],
    sigma_scale: float = 1.0 / 8,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Separable Gaussian weights ``(h, w)`` centred on the tile, maximum 1.0.

    ``sigma = sigma_scale * size`` per axis (nnU-Net uses 1/8); values are floored at
    :data:`MIN_WEIGHT` so every pixel of a tile has a positive weight. The map is
    symmetric under flips (and under transposition when ``h == w``).
    """
    h, w = (int(s) for s in tile_size)
    if sigma_scale <= 0:
        raise ValueError(f"sigma_scale must be > 0, got {sigma_scale}")

    def axis(n: int) -> Tensor:
        centre = (n - 1) / 2.0
        sigma = sigma_scale * n
        pos = torch.arange(n, dtype=torch.float64)
        return torch.exp(-((pos - centre) ** 2) / (2.0 * sigma * sigma))

    weights = torch.outer(axis(h), axis(w))
    weights = (weights / weights.max()).clamp_min(MIN_WEIGHT)
    return weights.to(device=device, dtype=dtype)


def _pad_amounts(size: tuple[int, int], tile: tuple[int, int]) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) padding that brings ``size`` up to ``tile``."""
    dh, dw = max(0, tile[0] - size[0]), max(0, tile[1] - size[1])
    return dw // 2, dw - dw // 2, dh // 2, dh - dh // 2


def _chunked(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _check_args(image: Tensor, tile_size: Sequence[int], max_batch: int) -> tuple[int, int]:
    if not isinstance(image, Tensor) or image.dim() != 4:
        shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise ValueError(f"sliding_window_predict expects an image batch (N, C, H, W), got {shape}")
    if image.shape[0] == 0:
        raise ValueError("sliding_window_predict: empty batch")
    if len(tile_size) != 2 or any(int(t) < 1 for t in tile_size):
        raise ValueError(f"tile_size must be [height, width] >= 1, got {list(tile_size)}")
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
        raise ValueError(f"max_batch: expected an int >= 1, got {max_batch!r}")
    return int(tile_size[0]), int(tile_size[1])


def sliding_window_predict(
    model: nn.Module | Predictor,
    image: Tensor,
    tile_size: Sequence[int],
    overlap: float = 0.25,
    task: str | None = None,
    max_batch: int = 16,
    gaussian: bool = True,
    sigma_scale: float = 1.0 / 8,
    pad_mode: str = "constant",
) -> Tensor:
    """Tiled prediction of ``image`` ``(N, C_in, H, W)`` -> float32 ``(N, C, H, W)``.

    Args:
        model: module or ``predict_fn`` mapping tiles ``(n, C_in, th, tw)`` to maps
            ``(n, C, th, tw)`` (logits from a model; probabilities from e.g.
            :func:`seg_toolkit.tta.tta_predict`). Used as is: call ``model.eval()`` first.
        image: batch of images on the model's device.
        tile_size: ``(th, tw)`` the model is run on.
        overlap: fraction of a tile shared with its neighbour, in ``[0, 1)``.
        task: ``None`` returns the blended outputs as they are (logits for a model);
            ``binary`` / ``multilabel`` / ``multiclass`` applies the activation after
            blending. Leave it ``None`` when ``model`` already returns probabilities.
        max_batch: most tiles per call of ``model``.
        gaussian: Gaussian importance map (``False``: plain average of overlaps).
        sigma_scale: Gaussian sigma as a fraction of the tile size.
        pad_mode: :func:`torch.nn.functional.pad` mode for images smaller than a tile
            (``constant`` pads with 0, ``replicate``, ``reflect``; ``reflect`` needs each pad
            shorter than the side it mirrors, so a side under half the tile is padded with
            ``replicate`` instead).
    """
    th, tw = _check_args(image, tile_size, max_batch)
    if isinstance(model, nn.Module) and model.training:
        logger.warning("sliding_window_predict: the model is in training mode; call model.eval() first")
    n, _, h, w = (int(s) for s in image.shape)
    with torch.no_grad():
        left, right, top, bottom = _pad_amounts((h, w), (th, tw))
        if left or right or top or bottom:
            mode = "replicate" if pad_mode == "reflect" and (max(top, bottom) >= h or max(left, right) >= w) else pad_mode
            image = F.pad(image, (left, right, top, bottom), mode=mode)
        ph, pw = int(image.shape[-2]), int(image.shape[-1])
        ys, xs = tile_starts(ph, th, overlap), tile_starts(pw, tw, overlap)
        if gaussian:
            weight = gaussian_importance_map((th, tw), sigma_scale, device=image.device)
        else:
            weight = torch.ones((th, tw), dtype=torch.float32, device=image.device)

        weight_sum = torch.zeros((ph, pw), dtype=torch.float32, device=image.device)
        for y, x in itertools.product(ys, xs):
            weight_sum[y:y + th, x:x + tw] += weight

        out: Tensor | None = None
        jobs = list(itertools.product(range(n), ys, xs))
        for chunk in _chunked(jobs, max_batch):
            tiles = torch.stack([image[i, :, y:y + th, x:x + tw] for i, y, x in chunk])
            pred = model(tiles)
            if not isinstance(pred, Tensor) or pred.dim() != 4 or tuple(pred.shape[-2:]) != (th, tw) \
                    or pred.shape[0] != len(chunk):
                got = tuple(pred.shape) if isinstance(pred, Tensor) else type(pred).__name__
                raise ValueError(
                    f"model output for tiles {tuple(tiles.shape)} must be (n, C, {th}, {tw}), got {got}"
                )
            pred = pred.float() * weight
            if out is None:
                out = torch.zeros((n, pred.shape[1], ph, pw), dtype=torch.float32, device=image.device)
            for k, (i, y, x) in enumerate(chunk):
                out[i, :, y:y + th, x:x + tw] += pred[k]

        assert out is not None  # n >= 1 and at least one tile per axis
        out = out / weight_sum
        out = out[:, :, top:top + h, left:left + w]
        logger.debug("sliding_window_predict: %d tiles of %dx%d per image", len(ys) * len(xs), th, tw)
        return activate(out, task) if task is not None else out


class TiledModel(nn.Module):
    """A model run by sliding window: tiles of ``tile_size`` with Gaussian-weighted overlap."""

    def __init__(self, model: nn.Module, tile_size: list[int], overlap: float, max_batch: int) -> None:
        super().__init__()
        self.model, self.tile_size, self.overlap, self.max_batch = model, tuple(tile_size), overlap, max_batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """One image at a time (the blended map of a large image is the memory; a TTA chunk holds many), each
        with tiles no larger than the image: padding a small image with zeros to a tile changed its edges (the
        models pad to their own multiple as they do for whole images)."""
        tile = (min(self.tile_size[0], int(x.shape[-2])), min(self.tile_size[1], int(x.shape[-1])))
        return torch.cat([sliding_window_predict(self.model, x[i:i + 1], tile, self.overlap, max_batch=self.max_batch)
                          for i in range(x.shape[0])])
