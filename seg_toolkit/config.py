"""YAML -> typed, nested config objects.

Every section is a dataclass; its fields carry the type and the default, the comment
beside a field carries the meaning. Loading is strict: an unknown key fails with its
dotted path and the closest valid key, a wrong type fails with the expected type, and a
choice outside a ``Literal`` fails with the list of choices. Then everything else knowable
at load time is checked (:mod:`seg_toolkit.config_checks`: per-class lengths, ranges, submission settings vs the
task, TTA / augmentation / loss / architecture names), each failure one line naming the
dotted key. YAML is read with ``yaml.safe_load`` only.

This module is the schema (the data section in :mod:`seg_toolkit.config_data`) and the entry points; reading files (``base:`` chains, ``--set``) is
:mod:`seg_toolkit.config_yaml`, the strict typed conversion :mod:`seg_toolkit.config_types`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from .config_data import BandsConfig, DataConfig, Task  # noqa: F401  (the data section, re-exported)
from .config_types import build_dataclass
from .config_yaml import apply_overrides, read_with_bases, read_yaml
from .errors import ConfigError

__all__ = [
    "ConfigError",
    "Config",
    "load_config",
    "config_from_dict",
    "config_to_dict",
    "apply_overrides",
    "read_yaml",
    "save_config",
]


@dataclass
class FoldsConfig:
    n_splits: int = 5
    # kfold | stratified (binary: empty/non-empty; multilabel/multiclass: class presence) | group
    # (data.group_column / group_pattern) | stratified_group (groups kept whole, stratified by the
    # rarest class present); seg_toolkit/data/folds.py says exactly what each does
    method: Literal["kfold", "stratified", "group", "stratified_group"] = "stratified"
    seed: int = 42
    only: list[int] = field(default_factory=list)  # train these folds only (empty = all)


@dataclass
class TransformsConfig:
    resize: Optional[list[int]] = None  # [height, width] every image is resized to (None = native)
    train: list[dict[str, Any]] = field(default_factory=list)  # albumentations: [{HorizontalFlip: {p: 0.5}}]
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])


#: the architectures ``model.deep_supervision`` builds auxiliary heads for (models/deep_supervision.py for unet)
DEEP_SUPERVISION_ARCHS = ("scratch_unet", "unet")


def check_deep_supervision_arch(arch: str) -> None:
    """Refuse ``model.deep_supervision`` on an architecture without auxiliary heads (at config load
    and in ``build_model``, for models built without a config file)."""
    if arch not in DEEP_SUPERVISION_ARCHS:
        raise ConfigError(f"model.deep_supervision: auxiliary heads are built for "
                          f"{', '.join(DEEP_SUPERVISION_ARCHS)}; model.arch is {arch!r}")


@dataclass
class ModelConfig:
    arch: str = "scratch_unet"  # `seg-toolkit models` lists the names
    encoder: Optional[str] = None  # smp encoder name, or tu-<timm name>
    encoder_weights: Optional[str] = None  # null | imagenet | path/to/weights.(pth|safetensors) | pkg:<package>/<file>
    # how a weights file's tensors find the encoder's: by name (prefixes tried), or by position onto
    # the full timm model (tu- encoders; a checkpoint of the same network saved under other names)
    encoder_weights_map: Literal["names", "order"] = "names"
    depth: int = 4  # scratch U-Net: number of down-sampling steps
    base_width: int = 32  # scratch U-Net: channels of the first block
    norm: Literal["batch", "group", "none"] = "batch"
    upsample: Literal["transpose", "bilinear"] = "transpose"
    dropout: float = 0.0
    params: dict[str, Any] = field(default_factory=dict)  # extra keyword arguments for the smp class
    channels_last: bool = False
    freeze_encoder_epochs: int = 0
    # scratch U-Net and smp Unet (DEEP_SUPERVISION_ARCHS): > 0 adds a 1x1 head on each coarser decoder stage in
    # training; the loss becomes loss(main) + deep_supervision * mean(loss(aux)) (inference uses the main head only)
    deep_supervision: float = 0.0
    # binary / multilabel: > 0 adds the auxiliary empty-mask classifier (a per-class presence logit from
    # the encoder's deepest features); loss + classifier * BCE(presence); tune gates masks on it
    classifier: float = 0.0
    encoder_lr_mult: float = 1.0


@dataclass
class OptimConfig:
    name: Literal["adam", "adamw", "sgd"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9  # sgd only
    nesterov: bool = True  # sgd only: Nesterov momentum (needs momentum > 0)


@dataclass
class SchedulerConfig:
    name: Literal["none", "cosine", "onecycle", "poly", "plateau", "step"] = "cosine"
    warmup_epochs: float = 0.0  # onecycle always warms up: 0 is torch's 30% of train.epochs, else this many epochs
    min_lr: float = 1e-6
    power: float = 0.9  # poly
    step_size: int = 10  # step: epochs between decays
    gamma: float = 0.1  # step / plateau decay factor
    patience: int = 3  # plateau


@dataclass
class TrainConfig:
    epochs: int = 10  # the most each fold runs (fewer with time_budget or early stopping)
    # wall-clock budget for the epochs of all the run's folds, e.g. 24m or 1h30m (seconds as a number):
    # each fold gets an equal share and runs the epochs that fit it (seg_toolkit/budget.py); null = no limit
    time_budget: Optional[Union[str, float]] = None
    # with time_budget: the fewest epochs a fold is worth training. When the run's first epoch says the budget cannot
    # give each fold that many (or train.epochs, when fewer), the run trains fewer folds (the first ones), each with a
    # bigger share; 0 = all folds
    min_fold_epochs: int = 0
    batch_size: int = 8
    # binary / multilabel: each epoch trains on every image with foreground and a fresh seeded draw of images without
    # any (empty), as many as make this share of the epoch, rounded up (all when there are fewer): e.g. 0.2 when most
    # images are empty (Airbus ships, SIIM, Severstal). Validation, OOF and CV keep every image. null = every image
    empty_share: Optional[float] = None
    num_workers: int = 0
    pin_memory: bool = True
    persistent_workers: bool = True
    device: str = "auto"  # auto | cpu | cuda | cuda:1
    # auto: the fastest safe precision for the device and model (seg_toolkit/amp.py): on a CPU with native bf16,
    # fp32 and bf16 measured on the run's model and batch (bf16 if >= 1.1x faster); bf16 (or fp16 + scaler) on CUDA
    amp: Literal["auto", "none", "fp16", "bf16"] = "none"
    grad_accum: int = 1
    grad_clip: Optional[float] = None
    ema_decay: Optional[float] = None  # e.g. 0.999; null disables EMA
    use_ema: bool = False  # score and predict with the EMA weights
    early_stopping_patience: Optional[int] = None
    early_stopping_min_delta: float = 0.0
    keep_best_k: int = 1  # > 1: also keep the k best epochs as fold_<k>/best_e<epoch>.pt (best_e007.pt)
    # with keep_best_k >= 2: best.pt = the mean of those epochs' weights, BatchNorm recomputed (seg_toolkit/averaging.py)
    average_best: bool = False
    # multi-stage: fold k starts from fold k's best.pt of this earlier run (same folds.csv; seg_toolkit/stages.py)
    init_from: Optional[str] = None
    seed: int = 42
    deterministic: bool = False
    cudnn_benchmark: bool = True
    compile: bool = False
    nan_retries: int = 0  # on a NaN/inf loss: retry the fold this many times with lr * nan_lr_factor
    nan_lr_factor: float = 0.1
    log_every: int = 0  # 0 = no per-step log lines


@dataclass
class MetricConfig:
    # dice / iou / tgs_map: per image, then the mean; miou / global_dice: from the pixels of all images pooled;
    # instance_map (DSB 2018) / instance_f2 (Airbus): objects matched per image (seg_toolkit/instance_metrics.py)
    # tgs_map_mlebench: TGS's mAP as the mle-bench grader computes it (an empty prediction of a salt image is given
    # the salt's share of the image as its IoU; seg_toolkit/metrics.py)
    name: Literal["auto", "miou", "global_dice", "dice", "iou", "tgs_map", "tgs_map_mlebench", "pixel_accuracy",
                  "instance_map", "instance_f2"] = "auto"
    empty_score: Literal["one", "zero", "skip"] = "one"  # per-image score when truth and prediction are empty
    threshold: float = 0.5  # probability threshold for binary/multilabel during validation
    # the classes the score averages (multiclass ids 0..C-1, multilabel 1..C, as submission.classes numbers them);
    # empty = all. A competition that scores only its submitted classes lists them here
    classes: list[int] = field(default_factory=list)


@dataclass
class PredictConfig:
    batch_size: int = 16
    tta: list[str] = field(default_factory=lambda: ["identity"])  # identity hflip vflip transpose rot90 rot180 rot270 transverse | d4
    scales: list[float] = field(default_factory=lambda: [1.0])
    merge: Literal["mean_prob", "mean_logit", "geometric", "max"] = "mean_prob"
    ensemble_space: Literal["prob", "logit"] = "prob"
    tile_size: Optional[list[int]] = None  # [h, w]: sliding-window inference
    tile_overlap: float = 0.25
    # the merged test probabilities into the run's test_probs/: uint8 (p x 255, the grid post-processing decides on:
    # thresholding them gives the submitted masks exactly) or float16 (finer; ~1e-4 of pixels cut at 0.5 differ)
    save_probs: Literal["none", "float16", "uint8"] = "none"
    # also write each test image's decided mask (the submitted one) into the run's test_masks/:
    # png = label map (multiclass: class ids 0..C-1; binary: 0/255; multilabel: one 0/255 PNG per class,
    # <id>_<class>.png), color = RGB in the class colours
    write_masks: Literal["none", "png", "color"] = "none"
    # OOF files (what post-processing is tuned on) are predicted with predict's TTA ("predict"),
    # or without TTA ("identity": cheaper, but the thresholds then fit other probabilities)
    oof_tta: Literal["predict", "identity"] = "predict"
    # images x transforms per forward pass; null = auto: 64 on a GPU, the image batch on a CPU
    # (one pass per transform: on CPUs a bigger batch costs more per image, see bench/bench_tta.py)
    max_tta_batch: Optional[int] = None
    # torch, or onnx: each fold model replaced by an ONNX Runtime session (CPU) on the files of
    # `seg-toolkit export RUN --format onnx`; needs the onnx extra (pip install seg_toolkit[onnx])
    backend: Literal["torch", "onnx"] = "torch"


@dataclass
class PostprocessConfig:
    threshold: list[float] = field(default_factory=lambda: [0.5])  # one value, or one per class
    min_area: list[int] = field(default_factory=lambda: [0])  # components smaller are dropped
    empty_gate: Optional[float] = None  # binary: image empty unless max prob >= gate
    tune: bool = True  # search thresholds / min-area / gate on OOF predictions
    threshold_grid: list[float] = field(default_factory=lambda: [0.3, 0.4, 0.5, 0.6, 0.7])
    min_area_grid: list[int] = field(default_factory=lambda: [0, 10, 50, 100])
    cross_fit: bool = True  # also score the tuning cross-fitted (tune_crossfit.py): one more search per group (the folds, or 5 random groups) for each search tried, plus one per pair of groups when search: auto compares two; same tables
    # binary / multilabel: greedy (each step keeps the previous steps' values), joint (threshold searched again beside
    # min_area and gate: more candidates, fits big OOF sets better, over-fits small ones), auto (both; the better
    # cross-fitted score decides; joint when there is no cross-fitted score)
    search: Literal["auto", "greedy", "joint"] = "auto"
    class_weight_grid: list[float] = field(default_factory=list)  # multiclass: per-class argmax weights to search (empty: off)
    # binary / multilabel: cut objects holding two or more seeds (regions of p >= split_seed) apart (postprocess.split_objects:
    # touching nuclei merged at the threshold), each pixel to its nearest seed (distance) or along the valley of p
    # (probability: a watershed, scikit-image); tune searches split_seed_grid under an object metric (null: no split)
    split_seed: Optional[float] = None
    split_seed_grid: list[Optional[float]] = field(default_factory=list)
    split_by: Literal["distance", "probability"] = "distance"
    # multiclass: where the pixels of a component smaller than its class's min_area go: class 0 (background: right
    # where class 0 is a background), or each pixel's runner-up, the best of the other classes (runner_up: where
    # class 0 is a class like the others, CamVid's Sky, Cityscapes' road); class 0's own specks are then searched too
    min_area_to: Literal["background", "runner_up"] = "background"


@dataclass
class SubmissionConfig:
    path: Optional[str] = None  # default submissions/<experiment>.csv
    id_column: Optional[str] = None  # default: the sample submission's first column
    rle_column: Optional[str] = None  # default: the sample submission's second column
    rle_order: Optional[Literal["F", "C"]] = None  # default: data.rle_order
    # the three below default to the training CSV's style (data.rle_index_base, data.rle_starts, data.rle_empty_token),
    # as rle_order to data.rle_order: a competition writes its answers as its train.csv (SIIM: 0, relative, '-1')
    rle_index_base: Optional[int] = None  # starts number pixels from 1 (Kaggle) or 0
    rle_starts: Optional[Literal["absolute", "relative"]] = None  # relative: each start is the gap after the previous run's end (SIIM)
    # what an empty mask is written as: '' | '-' | '-1'; never a run-length string ('1 1' is the first pixel's mask)
    empty_token: Optional[str] = None
    per_class: bool = False  # one row per image and class
    id_format: str = "{id}_{cls}"  # per_class rows: how id and class combine
    classes: list[int] = field(default_factory=list)  # classes that get rows, in row order (default: all; multiclass 1.., 0 only if listed)
    # a column holding each row's class id (Severstal since its 2019 update: ImageId,EncodedPixels,ClassId): one row per
    # image and class, the image id repeated, the class written in this column (per_class writes it into the id instead)
    class_column: Optional[str] = None
    # class_column's values: "{cls}" the class number (Severstal's 1..4), "{name}" its name from data.class_names /
    # classes_csv (UW-Madison's id,class,predicted: large_bowel), as id_format's fields
    class_format: Literal["{cls}", "{name}"] = "{cls}"
    instances: bool = False  # one row per 8-connected object, the id repeated (Airbus, DSB 2018); no object: one empty_token row
    min_instance_area: int = 0  # instances: objects with fewer pixels get no row


@dataclass
class TrackConfig:
    # experiment tracker (seg_toolkit/track.py): auto = mlflow when it is installed, else none. A tracker that fails
    # only warns once; everything is in the run folder anyway. The env var SEG_TOOLKIT_TRACK (e.g. none) replaces auto
    backend: Literal["auto", "mlflow", "tensorboard", "none"] = "auto"
    # mlflow: tracking URI (default sqlite:///<runs_dir>/mlflow.db, beside the run folders);
    # tensorboard: log folder (default <run folder>/tensorboard)
    uri: Optional[str] = None
    experiment: Optional[str] = None  # MLflow experiment name (default: the config's experiment)


@dataclass
class PseudoConfig:
    # pseudo-labelling (seg_toolkit/pseudo.py): test images labelled by a trained run or ensemble (its
    # post-processed masks, what it would submit) join every fold's training set, never a validation set
    teacher: Optional[str] = None  # the labelling run folder; null = off
    per_fold: bool = True  # fold k's labels come from the teacher's fold k only (honest CV; needs the same folds)
    confidence: float = 0.9  # a pixel is confident when its probability is >= this or <= 1 - this (multiclass: max >= this)
    min_confident_fraction: float = 0.95  # an image is used when at least this fraction of its pixels is confident
    max_images: Optional[int] = None  # the most confident first; null = all that pass
    # binary / multilabel: train on the teacher's probabilities (soft targets, before post-processing)
    # instead of its submitted masks; Lovasz cuts them at 0.5
    soft: bool = False


@dataclass
class Config:
    experiment: str = "demo"
    runs_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    folds: FoldsConfig = field(default_factory=FoldsConfig)
    transforms: TransformsConfig = field(default_factory=TransformsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: dict[str, float] = field(default_factory=lambda: {"bce": 0.5, "dice": 0.5})
    loss_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    # the loss of model.deep_supervision's coarser heads (names to weights, loss_params shared); empty = loss. A
    # cheaper loss there (e.g. without lovasz, whose sort of every upsampled aux map cost CamVid 2.4x per epoch)
    loss_aux: dict[str, float] = field(default_factory=dict)
    optim: OptimConfig = field(default_factory=OptimConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    metric: MetricConfig = field(default_factory=MetricConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    submission: SubmissionConfig = field(default_factory=SubmissionConfig)
    track: TrackConfig = field(default_factory=TrackConfig)
    pseudo: PseudoConfig = field(default_factory=PseudoConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.experiment

    def tta_batch(self, device_type: str) -> int:
        """``predict.max_tta_batch`` resolved for a device type ("cuda" or "cpu")."""
        if self.predict.max_tta_batch is not None:
            return self.predict.max_tta_batch
        return 64 if device_type == "cuda" else self.predict.batch_size

    def data_path(self, rel: str) -> Path:
        """A path from the config, resolved against ``data.root``."""
        return Path(self.data.root) / rel


# ----------------------------------------------------------------------------- loading


def config_from_dict(data: dict | None, trained: bool = False) -> Config:
    """Build a validated :class:`Config` from plain YAML data (``trained``: a trained run's config, see
    :func:`~seg_toolkit.config_checks.check_config`)."""
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"a config file must be a mapping at the top level, got {type(data).__name__}")
    cfg = build_dataclass(Config, data)
    from .config_checks import check_config

    check_config(cfg, trained)
    return cfg


def config_to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def config_diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    """``dotted.key: old -> new`` for every leaf that differs between two config dicts (sections recursed)."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_diff(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


def load_config(path: str | Path, overrides: list[str] | None = None, trained: bool = False) -> Config:
    """Read a YAML file (safe loader), apply ``--set`` overrides and validate.

    A top-level ``base: other.yaml`` key names a file (relative to this one) whose values
    this file overrides, so experiments can share a base config; the base may have a base of
    its own (a chain of any length; a cycle is an error naming its files). ``trained``: the config of a
    trained run, whose pretrained encoder file is not looked for (:func:`~seg_toolkit.config_checks.check_config`).
    """
    path = Path(path)
    data = read_with_bases(path)
    data = apply_overrides(data, overrides)
    try:
        return config_from_dict(data, trained)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def anchored(cfg: Config) -> Config:
    """``cfg`` with the paths it reads outside its run, ``data.root``, ``train.init_from`` and ``pseudo.teacher``,
    made absolute against the working directory now: what a run folder saves, so the run reads the same data from
    any working directory (a relative ``data.root`` saved as written read another project's ``data/`` when the run
    was named from there). The paths inside ``data.root`` stay relative to it (``--set data.root=`` moves them all)."""
    import os

    def absolute(p: str | None) -> str | None:
        return os.path.abspath(os.path.expanduser(p)) if p else p

    return dataclasses.replace(
        cfg, data=dataclasses.replace(cfg.data, root=absolute(cfg.data.root)),
        train=dataclasses.replace(cfg.train, init_from=absolute(cfg.train.init_from)),
        pseudo=dataclasses.replace(cfg.pseudo, teacher=absolute(cfg.pseudo.teacher)))


def save_config(cfg: Config, path: str | Path) -> None:
    """``cfg`` as YAML, atomically (a full disk or a kill leaves the old file or none, never half of one: a run's
    ``config.yaml`` is what marks its folder and rebuilds its predictor)."""
    from .files import write_text

    write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


#: Void pixels in every target tensor the toolkit builds. Multiclass targets are int64
#: (N, H, W) label maps with classes 0..C-1 and IGNORE_INDEX for void; binary/multilabel
#: targets are float32 (N, C, H, W) with 0.0 / 1.0 and IGNORE_INDEX (255.0) for void.
IGNORE_INDEX = 255
