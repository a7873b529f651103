"""One predictor for every consumer: OOF files, ``tune --tta``, ``evaluate``, ``predict`` and ensembles.

A :class:`Predictor` runs members (trained runs) x folds x TTA x scales (x tiles). Each
member reads every image with the preprocessing saved in ITS OWN run folder (channels,
resize, normalisation) and predicts with its own TTA choice (``tta.json``, else its saved
``predict.tta`` / ``predict.merge``); probabilities are resized to each image's own size
(``data.score_size`` when set: :mod:`seg_toolkit.data.scored`) and merged with the members' weights in probability or logit space. So the OOF files that
post-processing is tuned on and the test probabilities that are submitted come out of the
same code with the same settings.

Memory stays bounded whatever the number of images: one batch of images and probabilities
is alive at a time.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .checkpoint import load_model
from .models.presence import has_presence, split_presence
from .config import Config, ConfigError
from .errors import SegToolkitError
from .data import DataError, Sample, build_transforms, read_image
from .data.bands import bands_of
from .data.dataset import target_to_tensor
from .data.scored import score_hw, scored_target
from .amp import oof_precision, resolve_amp
from .device import autocast, resolve_device
from .files import read_json
from .run import Run
from .tensors import add_weighted, from_merge_space, on_grid, resize_to, to_merge_space
from .run_settings import check_fold_trained_as, check_same_training, tta_settings
from .tiling import TiledModel
from .tta import expand_tta, iter_variant_logits, merge_variant_logits, tta_predict
from .tta import _variants

log = logging.getLogger(__name__)

__all__ = ["Member", "Predictor", "NonFiniteError"]


class NonFiniteError(SegToolkitError, ValueError):
    """A model gave NaN probabilities: they were quantised to 0 (background) and scored, tuned and submitted so."""


def _finite(probs: torch.Tensor, image_id: str, runs: list, fold: int | None) -> torch.Tensor:
    if not bool(torch.isfinite(probs).all()):
        which = f"fold {fold} of " if fold is not None else ""
        raise NonFiniteError(f"image {image_id!r}: {which}{', '.join(str(r) for r in runs)} gave NaN probabilities (weights "
                             "that diverged, or an input the model cannot take); nothing is scored or written from them: "
                             "check the folds' metrics.csv for a NaN loss and train that fold again")
    return probs


@dataclass
class Member:
    """One trained run in a prediction: its saved config (preprocessing, TTA), folds and weight."""

    run: Run
    cfg: Config
    folds: list[int]
    weight: float = 1.0
    tta: list[str] = field(default_factory=lambda: ["identity"])
    merge: str = "mean_prob"
    _models: dict[int, nn.Module] = field(default_factory=dict, repr=False)
    backend: str = "torch"  # onnx: each fold model is an ONNX Runtime session on the run's export (seg_toolkit.export)
    _amp: dict[tuple, Any] = field(default_factory=dict, repr=False)
    _warned: set[tuple[str, str]] = field(default_factory=set, repr=False)  # (OOF precision, this one) pairs named

    @classmethod
    def load(cls, run: Run, weight: float = 1.0, cfg: Config | None = None, tta: list[str] | None = None,
             merge: str | None = None, folds: list[int] | None = None) -> "Member":
        """A trained run as a member. ``cfg`` (default: the run's saved config) must agree with the saved
        one on every key that training fixed; ``tta`` / ``merge`` default to :func:`tta_settings`;
        ``folds`` to the finished ones (a fold being finished names itself, to predict its OOF)."""
        if run.is_ensemble:
            raise ConfigError(f"{run.dir} is an ensemble; its members are runs of their own (see {run.ensemble_json})")
        if cfg is None:
            cfg = run.config()
        else:
            check_same_training(cfg, run, also_predict=False)
        folds = run.trained_folds() if folds is None else list(folds)
        if not folds:
            raise FileNotFoundError(f"{run.dir}: no completed fold with best.pt; run `seg-toolkit train` first")
        chosen_tta, chosen_merge = tta_settings(cfg, run)
        return cls(run, cfg, folds, weight, list(tta) if tta is not None else chosen_tta, merge or chosen_merge)

    @property
    def preprocess(self) -> tuple:
        """What decides the model's input: equal keys share one decoded, transformed image."""
        t = self.cfg.transforms
        d = self.cfg.data
        return (d.in_channels, tuple(d.image_range or ()), bands_of(self.cfg), d.exif_orientation, tuple(t.resize or ()),
                tuple(t.mean), tuple(t.std))

    def model(self, fold: int, device: torch.device) -> nn.Module:
        if fold not in self._models:
            if fold not in self.folds:
                raise FileNotFoundError(f"{self.run.dir}: fold {fold} is not trained (trained: {self.folds})")
            if self.backend == "onnx":
                from .export import OnnxModel

                entry = ((read_json(self.run.export_json) or {}).get("folds") or {}).get(str(fold)) or {}
                model = OnnxModel(self.run.onnx_path(fold), expect={"fold": fold, "best_pt_sha256": entry.get("best_pt_sha256")})
            else:
                model, trained = load_model(self.run.best_pt(fold), map_location=device, use_ema=self.cfg.train.use_ema)
                check_fold_trained_as(trained, self.cfg, self.run, fold)
            if self.cfg.model.channels_last and self.backend != "onnx":
                model = model.to(memory_format=torch.channels_last)
            p = self.cfg.predict
            if p.tile_size:
                model = TiledModel(model, p.tile_size, p.tile_overlap, self.cfg.tta_batch(device.type))
            self._models[fold] = model.eval()
        return self._models[fold]

    def amp(self, fold: int, device: torch.device):
        """The precision of this member on ``device``: ``train.amp`` resolved as training resolves it."""
        if (fold, device) not in self._amp:
            if self.backend == "onnx":  # the fp32 graph; check_onnx_backend refused a member that predicts in bf16/fp16
                self._amp[(fold, device)] = resolve_amp("none", device)
            else:
                self._amp[(fold, device)] = resolve_amp(self.cfg.train.amp, device, read_json(self.run.amp_json))
                self._warn_other_precision(fold, self._amp[(fold, device)])
        return self._amp[(fold, device)]

    def _warn_other_precision(self, fold: int, choice) -> None:
        """Name a prediction in another precision than the fold's OOF files (``done.json``'s ``amp``), which the
        post-processing was tuned on: ``--set train.amp=none`` on a bf16 run, fp16 OOF on a GPU and a CPU kernel
        now. Not refused (a CPU cannot run fp16), but the probabilities differ a little from what was scored."""
        done = self.run.done_json(fold)
        made = oof_precision(read_json(done) or {}) if done.is_file() else None
        if made and made != choice.mode and (made, choice.mode) not in self._warned:
            self._warned.add((made, choice.mode))  # once per member and pair of precisions
            log.warning("%s fold %d: its OOF files (and the post-processing tuned on them) were predicted in %s, this "
                        "prediction runs in %s (%s): the probabilities differ a little from what was scored",
                        self.run.dir, fold, made, choice.mode, choice.reason)

    def made(self) -> dict[str, Any]:
        """How this member predicts, as the OOF files record it (``done.json`` / ``cv.json``'s ``oof``)."""
        p = self.cfg.predict
        return {"tta": list(self.tta), "merge": self.merge, "scales": self.scales(), "tile_size": p.tile_size,
                **({"tile_overlap": p.tile_overlap} if p.tile_size is not None else {})}

    def scales(self) -> list[float]:
        """``predict.scales`` without repeats (a repeated scale is the same prediction again), as ``tune --tta`` records them."""
        return list(dict.fromkeys(float(s) for s in self.cfg.predict.scales))

    def passes(self, n_folds: int) -> int:
        return n_folds * len(expand_tta(self.tta)) * len(self.scales())


class _Inputs(Dataset):
    """Each image decoded once per (channel count, value range) and transformed once per distinct member preprocessing."""

    def __init__(self, samples: list[Sample], members: list[Member], target_cfg: Config | None, max_pixels: int,
                 lead: Config) -> None:
        self.samples, self.target_cfg, self.max_pixels, self.lead = samples, target_cfg, max_pixels, lead
        self.keys = list(dict.fromkeys(m.preprocess for m in members))
        cfg_of = {m.preprocess: m.cfg for m in members}
        self.transforms = {k: build_transforms(cfg_of[k], train=False) for k in self.keys}

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        s = self.samples[index]
        decoded: dict[tuple, np.ndarray] = {}
        images = {}
        for key in self.keys:
            how = key[:4]  # in_channels, image_range, bands, exif_orientation
            if how not in decoded:
                decoded[how] = read_image(s.image, how[0], self.max_pixels, pair=s.pair, value_range=how[1] or None,
                                          bands=how[2], exif=how[3])
            out = self.transforms[key](image=decoded[how])["image"]
            images[key] = torch.from_numpy(out.transpose(2, 0, 1).copy())
        own = next(iter(decoded.values())).shape[:2]
        hw = score_hw(self.lead, own)  # the size the probabilities come out at (data.score_size, else the image's)
        item = {"id": s.id, "size": hw, "images": images}
        if self.target_cfg is not None:
            item["target"] = target_to_tensor(scored_target(s, self.target_cfg, hw, own), self.target_cfg.data.task)
        return item


def _collate(items: list[dict[str, Any]], readers: dict[Any, list[str]] | None = None) -> dict[str, Any]:
    """One batch; ``readers``: the run folders that read each preprocessing key's images (named in an error)."""
    images = {}
    for key in items[0]["images"]:
        shapes = {tuple(it["images"][key].shape) for it in items}
        if len(shapes) > 1:
            who = f" as {', '.join(readers[key])} read them" if readers and readers.get(key) else ""
            raise DataError(
                f"images in one batch differ in size {sorted(shapes)}{who} (ids {[it['id'] for it in items][:4]}...); "
                "train with transforms.resize: [height, width], or predict with predict.batch_size: 1"
            )
        images[key] = torch.stack([it["images"][key] for it in items])
    out = {"id": [it["id"] for it in items], "size": [it["size"] for it in items], "images": images}
    if "target" in items[0]:
        out["target"] = [it["target"] for it in items]
    return out


class Predictor:
    """Members x folds x TTA x scales, merged with weights in ``space`` (``prob`` or ``logit``)."""

    def __init__(self, members: list[Member], space: str = "prob", device: torch.device | str | None = None,
                 batch_size: int | None = None, num_workers: int | None = None, backend: str | None = None) -> None:
        if not members:
            raise ConfigError("a predictor needs at least one member (trained run)")
        if backend is not None:  # predict.backend of the predicting config, for every member
            for m in members:
                m.backend = backend
        lead = members[0].cfg
        for m in members[1:]:
            for key in ("task", "num_classes", "score_size"):
                if getattr(m.cfg.data, key) != getattr(lead.data, key):
                    raise ConfigError(f"ensemble members disagree on data.{key}: {members[0].run.dir} has "
                                      f"{getattr(lead.data, key)!r}, {m.run.dir} has {getattr(m.cfg.data, key)!r}")
        if space not in ("prob", "logit"):
            raise ConfigError(f"predict.ensemble_space: {space!r} is not one of 'prob', 'logit'")
        total = float(sum(m.weight for m in members))
        if not all(math.isfinite(m.weight) and m.weight >= 0 for m in members) or not math.isfinite(total) or total <= 0:
            raise ConfigError(f"ensemble weights: expected finite non-negative weights with a positive sum, got {[m.weight for m in members]}")
        self.members = members
        self.weights = [m.weight / total for m in members]
        # members with weight 0 are loaded (they are the ensemble's) but never run: they change nothing
        self.active = [(m, w) for m, w in zip(members, self.weights) if w > 0]
        self.task, self.num_classes = lead.data.task, lead.data.num_classes
        self.space = space
        self.device = device if isinstance(device, torch.device) else resolve_device(device or lead.train.device)
        running = [m for m, _ in self.active]
        if self.device.type != "cpu" and all(m.backend == "onnx" for m in running):
            # ONNX Runtime runs on the CPU here: batches sized for the GPU, and copies to it and back, gain nothing
            log.info("predict.backend onnx runs on the CPU: predicting on the CPU, not %s", self.device)
            self.device = torch.device("cpu")
        if any(m.backend == "onnx" for m in running):  # exports current, config.yaml = best.pt's, fp32 as the OOF files
            from .export import check_onnx_backend

            check_onnx_backend(running, self.device)  # a weight-0 member never runs: it needs no export
        self.batch_size = batch_size or lead.predict.batch_size
        self.num_workers = lead.train.num_workers if num_workers is None else num_workers

    @classmethod
    def from_run(cls, run: Run, cfg: Config | None = None, **kwargs: Any) -> "Predictor":
        """The predictor of a trained run (its folds) or of an ensemble run (its members and weights)."""
        data = read_json(run.ensemble_json)
        if data is None:
            member = Member.load(run, cfg=cfg)
            return cls([member], space="prob", **kwargs)
        # the folds the ensemble was built, weighted and tuned on (a member may have trained more since, or had more)
        folds = [int(k) for k in data["folds"]] if data.get("folds") else None
        members = [Member.load(member, weight=weight, folds=folds) for member, weight in run.members()]
        return cls(members, space=data.get("space", "prob"), **kwargs)

    # ------------------------------------------------------------------ description
    def passes_per_image(self, fold: int | None = None) -> int:
        return sum(m.passes(1 if fold is not None else len(m.folds)) for m, _ in self.active)

    def describe(self, fold: int | None = None) -> str:
        return " + ".join(
            f"{m.run.dir.name}: {1 if fold is not None else len(m.folds)} fold(s) x {len(expand_tta(m.tta))} TTA "
            f"({' '.join(m.tta)}, {m.merge}) x {len(m.scales())} scale(s)"
            + (f" x weight {w:.3f}" if len(self.members) > 1 else "") for m, w in zip(self.members, self.weights))

    def settings(self) -> list[dict[str, Any]]:
        """How each member predicts, for the JSON files that record where probabilities came from."""
        return [{"run": str(m.run.dir), "weight": w, "folds": m.folds, **m.made()} for m, w in zip(self.members, self.weights)]

    # ------------------------------------------------------------------ prediction
    def loader(self, samples: list[Sample], target_cfg: Config | None = None) -> DataLoader:
        lead, running = self.members[0].cfg, [m for m, _ in self.active]
        # the largest image any running member accepts (data.max_image_pixels is each member's own)
        limit = max(m.cfg.data.max_image_pixels for m in running)
        dataset = _Inputs(samples, running, target_cfg, limit, lead)
        readers: dict[Any, list[str]] = {}
        for m in running:
            readers.setdefault(m.preprocess, []).append(str(m.run.dir))
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers,
                          collate_fn=functools.partial(_collate, readers=readers), pin_memory=self.device.type == "cuda")

    def _member_probs(self, m: Member, images: torch.Tensor, fold: int, tta: list[str], merge: str) -> torch.Tensor:
        if m.cfg.model.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        model = m.model(fold, self.device)
        with torch.inference_mode(), autocast(m.amp(fold, self.device), self.device):
            return tta_predict(model, images, self.task, expand_tta(tta), m.scales(), merge,
                               m.cfg.tta_batch(self.device.type)).float()

    def iter_probs(self, samples: list[Sample], fold: int | None = None, target_cfg: Config | None = None,
                   ) -> Iterator[tuple[str, torch.Tensor, torch.Tensor | None]]:
        """Yield ``(id, probabilities (C, H, W) float32 on the CPU at the scored size (data.scored.score_hw), target or
        None)``; :meth:`iter_predictions` without the classifier's presence probabilities."""
        for image_id, probs, _, target in self.iter_predictions(samples, fold, target_cfg):
            yield image_id, probs, target

    def iter_predictions(self, samples: list[Sample], fold: int | None = None, target_cfg: Config | None = None,
                         ) -> Iterator[tuple[str, torch.Tensor, torch.Tensor | None, torch.Tensor | None]]:
        """Yield ``(id, probabilities (C, H, W), presence (C,) or None, target or None)``, float32 on the CPU,
        probabilities at the scored size.

        ``presence``: the empty-mask classifier's probability per class (``model.classifier``),
        merged over TTA, folds and the members that have one (their weights renormalised), in
        probability space; None when no member has a classifier.
        ``fold``: predict with that fold's model of every member only (out-of-fold prediction);
        None: every trained fold. ``target_cfg``: also read each image's target with this config.
        """
        c = self.num_classes
        present_weight = sum(w for m, w in self.active if has_presence(m.cfg))
        # one member: its probabilities as they are (a run predicting alone; the merge space's 1/255 grid is for
        # merging members as their OOF files do, and an ensemble of one tunes on that member's own files)
        merging = len(self.active) > 1
        for batch in self.loader(samples, target_cfg):
            sizes = batch["size"]
            acc: list[torch.Tensor | None] = [None] * len(sizes)
            acc_presence: torch.Tensor | None = None
            for m, w in self.active:
                images = batch["images"][m.preprocess].to(self.device, non_blocking=True)
                folds = [fold] if fold is not None else m.folds
                same = len(set(sizes)) == 1  # one resize for the whole batch, else one per image
                # the member's folds averaged in probability space, as the run predicts alone; then the member's
                # prediction goes into the ensemble's merge space once (a logit-space ensemble averaged the folds'
                # logits: sharper test probabilities than the member's own)
                own: list[torch.Tensor | None] = [None] * len(sizes)
                own_presence: torch.Tensor | None = None
                for k in folds:
                    probs, presence = split_presence(self._member_probs(m, images, k, m.tta, m.merge), c, has_presence(m.cfg))
                    if presence is not None:  # present_weight > 0: this member has a classifier and a weight
                        own_presence = presence / len(folds) if own_presence is None else own_presence.add_(presence, alpha=1 / len(folds))
                    resized = resize_to(probs, sizes[0]) if same else None
                    for j, hw in enumerate(sizes):
                        p = resized[j] if same else resize_to(probs[j : j + 1], hw)[0]
                        own[j] = p / len(folds) if own[j] is None else own[j].add_(p, alpha=1 / len(folds))
                if own_presence is not None:  # on the grid of the OOF presence files, as the ensemble merges them
                    acc_presence = add_weighted(acc_presence, w / present_weight,
                                                on_grid(own_presence) if merging else own_presence)
                for j in range(len(sizes)):
                    p, own[j] = (to_merge_space(own[j], self.space, self.task) if merging else own[j]), None
                    acc[j] = add_weighted(acc[j], w, p)
            targets = batch.get("target")
            presence_cpu = acc_presence.cpu() if acc_presence is not None else None
            for j, image_id in enumerate(batch["id"]):
                merged = from_merge_space(acc[j], self.space, self.task) if merging else acc[j]
                probs, acc[j] = merged.cpu(), None  # hand over: the batch does not keep it
                runs = [m.run.dir for m, _ in self.active]
                yield (image_id, _finite(probs, image_id, runs, fold),
                       _finite(presence_cpu[j], image_id, runs, fold) if presence_cpu is not None else None,
                       targets[j] if targets is not None else None)

    def iter_candidate_probs(self, samples: list[Sample], fold: int, candidates: list[tuple[list[str], str]],
                             target_cfg: Config | None = None,
                             ) -> Iterator[tuple[str, list[torch.Tensor], list[torch.Tensor | None], torch.Tensor | None]]:
        """Out-of-fold ``(id, [probabilities], [presence or None], target)`` of one member under several
        ``(tta, merge)`` candidates at once (one entry per candidate; see :meth:`iter_predictions`).

        Each distinct (transform, scale) variant runs through the model once per batch; each
        candidate merges its own variants, so ``identity`` is not recomputed per candidate.
        """
        if len(self.members) != 1:
            raise ConfigError("choosing TTA needs one trained run, not an ensemble")
        m = self.members[0]
        scales = m.scales()
        expanded = [expand_tta(t) for t, _ in candidates]
        union = _variants(list(dict.fromkeys(t for names in expanded for t in names)), scales)
        model = m.model(fold, self.device)
        for batch in self.loader(samples, target_cfg):
            images = batch["images"][m.preprocess].to(self.device, non_blocking=True)
            if m.cfg.model.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            n = images.shape[0]
            logits: dict[Any, torch.Tensor] = {}
            with torch.inference_mode(), autocast(m.amp(fold, self.device), self.device):
                for v, rows, out in iter_variant_logits(model, images, union, m.cfg.tta_batch(self.device.type)):
                    if v not in logits:
                        logits[v] = torch.empty((n, *out.shape[1:]), dtype=torch.float32, device=out.device)
                    logits[v][rows] = out.float()
            size, max_batch = (int(images.shape[-2]), int(images.shape[-1])), m.cfg.tta_batch(self.device.type)
            merged = [split_presence(merge_variant_logits(logits, _variants(names, scales), size, self.task, merge,
                                                          max_batch), self.num_classes, has_presence(m.cfg))
                      for names, (_, merge) in zip(expanded, candidates)]
            targets = batch.get("target")
            for j, image_id in enumerate(batch["id"]):
                hw = batch["size"][j]
                yield (image_id, [_finite(resize_to(p[j : j + 1], hw)[0].cpu(), image_id, [m.run.dir], fold) for p, _ in merged],
                       [pr[j].cpu() if pr is not None else None for _, pr in merged], (targets[j] if targets is not None else None))
