"""Torch dataset, albumentations transforms and a seeded sampler.

Augmentation randomness is seeded per (epoch, sample) by :class:`EpochSampler`, so a run
is reproducible whatever the number of workers and a resumed run replays the same
augmentations as an uninterrupted one.
"""

from __future__ import annotations

import difflib
import inspect
import logging
import math
from typing import Any, Iterator

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ..config import IGNORE_INDEX, Config, ConfigError
from .io import DataError, image_size
from .sample import read_config_image
from ..instance_metrics import INSTANCE_METRICS
from .instances import load_objects
from .weight_map import sample_weight_map
from .sources import Sample, load_target
from .scored import nearest_resize, score_hw, scored_target

log = logging.getLogger(__name__)

__all__ = ["SegDataset", "EpochSampler", "build_transforms", "check_train_transforms", "collate", "target_to_tensor"]


def inner_where(where: str, container: str, i: int) -> str:
    """Where the ``i``-th transform of a OneOf / SomeOf / Sequential at ``where`` is, as every message names it:
    ``transforms.train[0].OneOf.transforms[1]``."""
    return f"{where}.{container}.transforms[{i}]"


def _aug_from_spec(spec: Any, where: str) -> A.BasicTransform:
    if isinstance(spec, str):
        spec = {spec: {}}
    if not isinstance(spec, dict) or len(spec) != 1:
        raise ConfigError(f"{where}: expected {{TransformName: {{param: value}}}}, got {spec!r}")
    (name, params), = spec.items()
    if params is not None and not isinstance(params, dict):  # {HorizontalFlip: 0.5}: a TypeError deep in dict()
        compose = isinstance(getattr(A, name, None), type) and issubclass(getattr(A, name), A.BaseCompose)
        example = "{transforms: [{HorizontalFlip: {}}, ...], p: 0.5}" if compose else "{p: 0.5}"
        raise ConfigError(f"{where}: {name}: expected a mapping of its arguments, e.g. {{{name}: {example}}}, got {params!r}")
    params = dict(params or {})  # a copy: the config's spec must survive building (once per fold)
    if name in _NOT_AUGMENTATIONS:
        raise ConfigError(f"{where}: {name}: {_NOT_AUGMENTATIONS[name]}")
    cls = getattr(A, name, None)
    if cls is None or not isinstance(cls, type) or not issubclass(cls, (A.BasicTransform, A.BaseCompose)):
        names = [n for n in dir(A) if n[:1].isupper() and isinstance(getattr(A, n), type)
                 and issubclass(getattr(A, n), (A.BasicTransform, A.BaseCompose))]
        close = difflib.get_close_matches(name, names, n=3)
        what = "not an albumentations transform" if cls is not None else "unknown albumentations transform"
        raise ConfigError(f"{where}: {what} {name!r}" + (f"; did you mean {close}?" if close else ""))
    if issubclass(cls, A.BaseCompose):
        inner = params.pop("transforms", None)
        if not isinstance(inner, list) or not inner:
            raise ConfigError(f"{where}: {name}: expected {{{name}: {{transforms: [{{HorizontalFlip: {{}}}}, ...], p: 0.5}}}}, "
                              f"got {spec!r}")
        inner = [_aug_from_spec(s, inner_where(where, name, i)) for i, s in enumerate(inner)]
        try:
            return cls(inner, **params)
        except Exception as e:
            raise ConfigError(f"{where}: {name}({params}) failed: {e}") from None
    signature = inspect.signature(cls.__init__).parameters
    if params.get("mask_interpolation", 0) not in (cv2.INTER_NEAREST, MASK_NEAREST):
        also = f" (or {MASK_NEAREST}, the pixel-centred nearest, its default here)" if name in _RESIZING else ""
        raise ConfigError(f"{where}: {name}: mask_interpolation {params['mask_interpolation']!r} blends the target's class "
                          "ids and void (255) into values that are neither (a pixel of 76 trained as target 76); masks move "
                          f"by nearest neighbour: remove mask_interpolation{also}")
    if name in _RESIZING and "mask_interpolation" not in params:
        params["mask_interpolation"] = MASK_NEAREST
    fill = signature["fill_mask"].default if "fill_mask" in signature else None
    if "fill_mask" not in params and fill is not None and name not in _OWN_MASK_FILL:
        # pixels a pad, rotation or warp brings in are no data: void (never scored, never learned), not class 0
        # (albumentations' default, which taught CamVid padding as Sky); fill_mask in the spec still decides. Not
        # the dropouts whose default keeps the mask under the hole (None), nor _OWN_MASK_FILL's. Four values: OpenCV's
        # remap and warps fill a single number into a mask's first channel only (a multilabel target's others read 0,
        # trained as absent, under ElasticTransform, GridDistortion, Perspective, ...); four fill every channel
        params["fill_mask"] = (IGNORE_INDEX,) * 4
    if "ignore_values" in signature and "ignore_values" not in params:
        params["ignore_values"] = [IGNORE_INDEX]  # CropNonEmptyMaskIfExists: void is not the mask to crop around
    try:
        return cls(**params)
    except Exception as e:
        raise ConfigError(f"{where}: {name}({params}) failed: {e}") from None


#: transforms whose mask fill is their point: MaskDropout makes the objects it drops background (0)
_OWN_MASK_FILL = {"MaskDropout"}

#: how the training list's resizing crops resize masks: OpenCV's pixel-centred nearest neighbour (at an exact tie, a
#: centre on a pixel edge, the earlier pixel, where the scored ground truth takes the later one). Its plain nearest (0)
#: takes each output pixel's top-left source pixel: a mask shrunk 4x sat 1.5 source pixels up and left of its image, a
#: shift the model learned and kept in every prediction (a perfect CamVid model at 176x240 read IoU 0.979, not 0.988)
MASK_NEAREST = cv2.INTER_NEAREST_EXACT

#: transforms that resize through OpenCV's resize, given MASK_NEAREST unless the entry sets mask_interpolation (the
#: warps, Affine, Rotate, ..., map pixel centres already and refuse it)
_RESIZING = {"RandomResizedCrop", "RandomSizedCrop", "RandomScale", "CropAndPad", "RandomSizedBBoxSafeCrop"}


class _ScoredResize(A.Resize):
    """``transforms.resize``: the image bilinearly, masks (and the weight map) by
    :func:`~seg_toolkit.data.scored.nearest_resize`, the pixel-centre rule the scored ground truth and the validation
    loss's target are resized by, ties included (OpenCV's takes the earlier pixel at 17 of 96 rows of 256 -> 96)."""

    def apply_to_mask(self, mask: np.ndarray, **params: Any) -> np.ndarray:
        return nearest_resize(mask, (self.height, self.width))

_RESIZES = "set transforms.resize: [height, width], which training, validation and prediction all apply"

#: albumentations names a training list must not hold: the toolkit does these steps itself, after the list
_NOT_AUGMENTATIONS = {
    "Resize": f"a fixed resize in transforms.train applies to training only (validation and prediction see the "
              f"images at another scale); {_RESIZES}",
    "LongestMaxSize": f"in transforms.train it rescales training images only; {_RESIZES}",
    "SmallestMaxSize": f"in transforms.train it rescales training images only; {_RESIZES}",
    "Normalize": "the toolkit normalises every image with transforms.mean / std after the augmentations (a second "
                 "Normalize here would apply to training only); set transforms.mean / std instead",
    "ToTensorV2": "the toolkit makes the tensors itself; remove it",
    "Compose": "transforms.train is the list of the Compose; list its transforms directly",
    "GridElasticDeform": "the pixels it brings in at the borders cannot be filled in the mask (it has no fill_mask): "
                         "they would be trained as class 0; use ElasticTransform or GridDistortion",
    "Lambda": "its arguments are Python functions, which a YAML config cannot hold (a string failed at the first "
              "batch); a custom augmentation needs code: subclass albumentations' transforms in your own package",
}


def _normalize(cfg: Config) -> A.Normalize:
    mean, std, c = list(cfg.transforms.mean), list(cfg.transforms.std), cfg.data.in_channels
    if len(mean) != c or len(std) != c:
        if len(mean) == 3 and c == 1:
            mean, std = [float(np.mean(mean))], [float(np.mean(std))]
        elif len(mean) == 3 and c == 4:
            mean, std = mean + [0.5], std + [0.5]
        else:
            raise ConfigError(f"transforms.mean/std: {len(mean)} values for data.in_channels={c}")
    return A.Normalize(mean=mean, std=std, max_pixel_value=255.0)


def build_transforms(cfg: Config, train: bool) -> A.Compose:
    """User augmentations (train only), then the resize, then normalisation."""
    steps: list[A.BasicTransform] = []
    if train:
        steps += [_aug_from_spec(s, f"transforms.train[{i}]") for i, s in enumerate(cfg.transforms.train)]
    if cfg.transforms.resize is not None:
        h, w = cfg.transforms.resize
        steps.append(_ScoredResize(h, w))
    steps.append(_normalize(cfg))
    # weight: the U-Net weight map (data.border_weight), moved as a mask is (nearest neighbour, the target's fill)
    return A.Compose(steps, additional_targets={"weight": "mask"})


def target_to_tensor(target: np.ndarray, task: str) -> torch.Tensor:
    """Multiclass ``(H, W)`` -> int64 ``(H, W)``; binary/multilabel ``(H, W, C)`` -> float32 ``(C, H, W)``."""
    if task == "multiclass":
        return torch.from_numpy(np.ascontiguousarray(target, dtype=np.int64))
    return torch.from_numpy(np.ascontiguousarray(target.transpose(2, 0, 1), dtype=np.float32))


class SegDataset(Dataset):
    """Images (and targets) of ``samples``.

    ``mode``: ``train`` applies augmentations and resizes the target with the image;
    ``valid`` resizes only the image and returns the target at its original size (scores
    are computed at the competition's resolution), and under an object-matching metric
    (``instance_map`` / ``instance_f2``) the truth objects too (``objects``: a label map, :func:`load_objects`);
    ``test`` returns no target.
    Items are dicts: ``image`` float32 ``(C, H, W)``, ``target``, ``id``, ``index``, ``size``; training items
    under ``data.border_weight`` also ``weight``, the U-Net weight map ``float32 (1, H, W)`` (:mod:`.weight_map`).
    """

    def __init__(self, samples: list[Sample], cfg: Config, mode: str = "train") -> None:
        if mode not in ("train", "valid", "test"):
            raise ValueError(f"mode must be train, valid or test, got {mode!r}")
        self.samples, self.cfg, self.mode = samples, cfg, mode
        self.aug = build_transforms(cfg, train=mode == "train")
        self.objects = mode == "valid" and cfg.metric.name in INSTANCE_METRICS

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        sample = self.samples[index]
        cfg = self.cfg
        image = read_config_image(sample.image, cfg, sample.pair)
        hw = image.shape[:2]
        item: dict[str, Any] = {"id": sample.id, "index": index, "size": torch.tensor(hw)}
        if seed is not None:
            self.aug.set_random_seed(seed)
        if self.mode == "train":
            target = load_target(sample, cfg, hw)
            if cfg.data.border_weight:  # the U-Net weight map: augmented as a second mask, in step with the target
                weight = sample_weight_map(sample, cfg, target)
                out = self._augment(sample, hw, image=image, mask=target, weight=weight)
                item["weight"] = torch.from_numpy(np.ascontiguousarray(out["weight"], dtype=np.float32)[None])
            else:
                out = self._augment(sample, hw, image=image, mask=target)
            target = out["mask"]
            item["image"] = torch.from_numpy(out["image"].transpose(2, 0, 1).copy())
            item["target"] = target_to_tensor(target, cfg.data.task)
            return item
        item["image"] = torch.from_numpy(self._augment(sample, hw, image=image)["image"].transpose(2, 0, 1).copy())
        if self.mode == "valid":
            # scored as OOF files are: at data.score_size when set
            item["target"] = target_to_tensor(scored_target(sample, cfg, score_hw(cfg, hw), hw), cfg.data.task)
            if self.objects:  # an object-matching metric scores each epoch on the truth objects
                item["objects"] = load_objects(sample, cfg, hw)
        return item


    def _augment(self, sample: Sample, hw: tuple[int, int], **arrays: np.ndarray) -> dict[str, Any]:
        """The transforms on one image; a transform that fails on it (a crop larger than the image) is a
        :class:`DataError` naming the file, its size and the transforms, the transform's own message kept."""
        try:
            return self.aug(**arrays)
        except Exception as e:  # noqa: BLE001 - albumentations raises its own types (CropSizeError, ValueError, ...)
            which = "transforms.train" if self.mode == "train" else "transforms.resize / normalisation"
            # reflect: prediction pads by reflection (to the model's multiple), never with a black border
            hint = ("; a crop larger than some images needs PadIfNeeded (border_mode: 4, reflect; or transforms.resize) "
                    "before it"
                    if "crop" in str(e).lower() else "")
            raise DataError(f"{sample.image}: {which} failed on this {hw[0]}x{hw[1]} image ({type(e).__name__}: "
                            f"{e}){hint}") from e


def check_train_transforms(samples: list[Sample], cfg: Config, limit: int = 20_000) -> None:
    """``transforms.train`` once on a blank image of each smallest size among the training images (headers of the first
    ``limit``; a size smaller than another in both sides stands for it), before anything is written: a crop larger than
    some images was found at the first batch, after the run folder, folds.csv and config.yaml (which then refused the
    corrected config). The blank has the first image's channels and type, and the target its shape. A transform that
    is skipped at random (a OneOf, ``p`` < 1) may pass here and fail in training, named as then."""
    if not cfg.transforms.train or not samples:
        return
    first = samples[0]
    image = read_config_image(first.image, cfg, first.pair)
    target = load_target(first, cfg, image.shape[:2])
    by_size: dict[tuple[int, int], Sample] = {}
    for s in samples[:limit]:
        by_size.setdefault(image_size(s.image, s.pair, exif=cfg.data.exif_orientation), s)
    smallest = [hw for hw in by_size if not any(o != hw and o[0] <= hw[0] and o[1] <= hw[1] for o in by_size)]
    check = SegDataset([], cfg, "train")
    for hw in sorted(smallest):
        arrays = {"image": np.zeros(hw + image.shape[2:], image.dtype), "mask": np.zeros(hw + target.shape[2:], target.dtype)}
        if cfg.data.border_weight:
            arrays["weight"] = np.zeros(hw, np.float32)
        check._augment(by_size[hw], hw, **arrays)


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack a batch; images of different sizes get a clear error instead of a stack failure."""
    shapes = {tuple(it["image"].shape) for it in items}
    if len(shapes) > 1:
        raise DataError(
            f"images in one batch differ in size {sorted(shapes)} (ids {[it['id'] for it in items][:4]}...); "
            "set transforms.resize: [height, width], or crop training images to one size in transforms.train and "
            "validate with predict.batch_size: 1 (validation and OOF batches are predict.batch_size)"
        )
    out: dict[str, Any] = {
        "image": torch.stack([it["image"] for it in items]),
        "id": [it["id"] for it in items],
        "index": torch.tensor([it["index"] for it in items]),
        "size": torch.stack([it["size"] for it in items]),
    }
    if "target" in items[0]:
        tshapes = {tuple(it["target"].shape) for it in items}
        if len(tshapes) == 1:
            out["target"] = torch.stack([it["target"] for it in items])
        else:  # validation targets keep their original sizes
            out["target"] = [it["target"] for it in items]
    if "weight" in items[0]:  # the U-Net weight maps of training items, (N, 1, H, W) as their targets
        out["weight"] = torch.stack([it["weight"] for it in items])
    if "objects" in items[0]:  # label maps (NumPy, original sizes), one per image
        out["objects"] = [it["objects"] for it in items]
    return out


class EpochSampler(Sampler):
    """Yields ``(index, augmentation seed)``; the order and seeds depend only on (seed, epoch).

    With ``world_size > 1`` each rank gets an equal, disjoint share (padded by repeating the
    first indices, as ``DistributedSampler`` does).

    ``empty`` (``bool (n,)``, images without foreground) with ``empty_share`` (``train.empty_share``): each epoch
    holds every other image and a fresh draw of empty ones, as many as make that share of the epoch (all of them when
    there are fewer), so every epoch has the same length.
    """

    def __init__(self, n: int, shuffle: bool, seed: int, rank: int = 0, world_size: int = 1, drop_last: bool = False,
                 empty: np.ndarray | None = None, empty_share: float | None = None) -> None:
        self.n, self.shuffle, self.seed = n, shuffle, seed
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.epoch, self.start = 0, 0
        self.kept = self.empties = None
        n_epoch = n
        if empty is not None and empty_share is not None:
            self.kept, self.empties = np.flatnonzero(~empty), np.flatnonzero(empty)
            # at least one empty image for any share > 0 (round() drew none for 0.1 of 4 images with foreground)
            wanted = math.ceil(empty_share / (1.0 - empty_share) * len(self.kept)) if len(self.kept) else len(self.empties)
            self.n_empty, self.wanted = min(len(self.empties), wanted), wanted
            n_epoch = len(self.kept) + self.n_empty
        self.n_epoch = n_epoch
        self.per_rank = n_epoch // world_size if drop_last else -(-n_epoch // world_size)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch's order; ``start`` skips this rank's first items (resuming mid-epoch)."""
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return self.per_rank - self.start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        if self.kept is None:
            order = torch.randperm(self.n, generator=g) if self.shuffle else torch.arange(self.n)
        else:  # every kept image and this epoch's draw of empty ones
            drawn = torch.from_numpy(self.empties)[torch.randperm(len(self.empties), generator=g)[: self.n_empty]]
            chosen = torch.cat([torch.from_numpy(self.kept), drawn.sort().values])
            order = chosen[torch.randperm(len(chosen), generator=g)] if self.shuffle else chosen
        total = self.per_rank * self.world_size
        if total > len(order):
            order = torch.cat([order, order[: total - len(order)]])
        order = order[:total][self.rank :: self.world_size]
        seeds = torch.randint(0, 2**31 - 1, (self.n,), generator=g)
        for i in order[self.start :].tolist():
            yield i, int(seeds[i])

