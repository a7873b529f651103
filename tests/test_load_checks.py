"""Everything knowable at load time fails at load time, in one line naming the dotted key."""

from __future__ import annotations

import copy
import warnings

import pytest
import yaml

from seg_toolkit.config import ConfigError, apply_overrides, config_from_dict, load_config
from seg_toolkit.errors import SegToolkitError

#: a valid 3-class multilabel config; each case below breaks it with --set style overrides
BASE = {"data": {"task": "multilabel", "num_classes": 3, "class_column": "ClassId"}, "submission": {"per_class": True}}
MULTICLASS = ["data.task=multiclass", "loss={ce: 1.0}"]


def load(*overrides: str):
    return config_from_dict(apply_overrides(copy.deepcopy(BASE), list(overrides)))


BAD = [
    # post-processing: one value or one per class, probabilities, areas, grids
    (["postprocess.threshold=[0.5, 0.5]"], "postprocess.threshold: 2 values for data.num_classes=3 (give one, or one per class)"),
    (["postprocess.threshold=1.5"], "postprocess.threshold: expected a probability in [0, 1], got 1.5"),
    (["postprocess.threshold=[0.5, 0.5, -0.1]"], "postprocess.threshold[2]: expected a probability in [0, 1]"),
    (["postprocess.min_area=[0, 10]"], "postprocess.min_area: 2 values for data.num_classes=3 (give one, or one per class)"),
    (["postprocess.min_area=-1"], "postprocess.min_area: expected >= 0, got -1"),
    (["postprocess.empty_gate=1.2"], "postprocess.empty_gate: expected a probability in [0, 1]"),
    (["postprocess.threshold_grid=[]"], "postprocess.threshold_grid: give at least one threshold"),
    (["postprocess.threshold_grid=[0.5, 2]"], "postprocess.threshold_grid[1]: expected a probability in [0, 1]"),
    (["postprocess.min_area_grid=[]"], "postprocess.min_area_grid: give at least one area"),
    (["postprocess.min_area_grid=[0, -5]"], "postprocess.min_area_grid[1]: expected >= 0, got -5"),
    (["metric.threshold=-0.1"], "metric.threshold: expected a probability in [0, 1]"),
    (["metric.threshold=.nan"], "metric.threshold: expected a probability in [0, 1], got nan"),
    # submission settings vs the task
    (["submission.per_class=false"], "submission.per_class: data.task=multilabel with data.num_classes=3 submits 3 classes"),
    ([*MULTICLASS, "submission.per_class=false"], "submission.per_class: data.task=multiclass with data.num_classes=3 submits 2 classes"),
    (["submission.id_format='{cls}'"], "submission.id_format: '{cls}' must contain {id}"),
    (["submission.id_format='{id}'"], "submission.id_format: '{id}' must contain {cls}"),
    (["submission.id_format='{id}_{class}'"], "submission.id_format: '{id}_{class}': unknown field {class}"),
    (["submission.id_format='{id}_{cls'"], "submission.id_format: '{id}_{cls' is not a valid format string"),
    (["submission.id_format='{id}_{cls:02d}'"], "submission.id_format: '{id}_{cls:02d}': write the field as {cls}"),
    (["submission.per_class=false", "data.task=binary", "data.class_column=null", "data.num_classes=1", "submission.id_format=x"],
     "submission.id_format: 'x' must contain {id}"),
    # prediction
    (["predict.tta=[identity, hflp]"], "predict.tta: unknown TTA transform 'hflp' (did you mean 'hflip'?)"),
    (["predict.scales=[]"], "predict.scales: give at least one scale"),
    (["predict.scales=[1.0, 0]"], "predict.scales[1]: expected a number > 0"),
    (["predict.batch_size=0"], "predict.batch_size: expected >= 1, got 0"),
    (["predict.tile_size=[64]"], "predict.tile_size: expected null or [height, width] of positive ints"),
    (["predict.tile_size=[64, 0]"], "predict.tile_size: expected null or [height, width] of positive ints"),
    (["predict.tile_overlap=1.0"], "predict.tile_overlap: expected 0 <= overlap < 1, got 1.0"),
    (["predict.max_tta_batch=0"], "predict.max_tta_batch: expected null or >= 1, got 0"),
    # transforms: normalisation as data.dataset._normalize reads it, augmentations built
    (["transforms.mean=[0.5, 0.5]"], "transforms.mean: 2 values for data.in_channels=3 (give 3)"),
    (["data.in_channels=4", "transforms.mean=[0.5, 0.5]"], "transforms.mean: 2 values for data.in_channels=4 (give 4 or 3)"),
    (["transforms.std=[0.2, 0.2]"], "transforms.std: 2 values, transforms.mean has 3"),
    (["transforms.std=[0.2, 0.0, 0.2]"], "transforms.std[1]: expected a number > 0"),
    (["transforms.resize=[0, 64]"], "transforms.resize: expected [height, width] of positive ints"),
    # statistics of 0..255 pixels (an audit's): Normalize divides by 255 first, so every image became about -2
    (["transforms.mean=[123.7, 116.3, 103.5]", "transforms.std=[58.4, 57.1, 57.4]"],
     "transforms.mean[0]: 123.7 is not on the 0..1 scale"),
    (["transforms.std=[0.2, 64, 0.2]"], "transforms.std[1]: 64.0 is not on the 0..1 scale"),
    # albumentations checks p of the leaves only: a OneOf of p 2 was always applied
    (["transforms.train=[{OneOf: {transforms: [{HorizontalFlip: {}}, {VerticalFlip: {}}], p: 2}}]"],
     "transforms.train[0]: OneOf: p 2 is not a probability (expected 0 <= p <= 1)"),
    # the step schedule's warmup rises from min_lr: epoch 1 ran at 100x optim.lr
    (["scheduler={name: step, warmup_epochs: 1, min_lr: 0.1}", "optim.lr=0.001"],
     "scheduler.min_lr: 0.1 is not below optim.lr (0.001); the step schedule's warmup"),
    (["optim.nesterov=false"], "optim.nesterov: False is read only with optim.name: sgd"),
    # an empty path or column was read as null, the default: submission.path "" wrote submissions/<experiment>.csv
    (["submission.path=''"], "submission.path: an empty string; expected a non-empty string, or null for the default"),
    (["track.uri=''"], "track.uri: an empty string"),
    (["data.root=''"], "data.root: an empty string; expected a folder ('.' for the working directory)"),
    (["runs_dir=' '"], "runs_dir: an empty string; expected a folder"),
    (["train.early_stopping_patience=2", "train.early_stopping_min_delta=5"],
     "train.early_stopping_min_delta: expected 0 <= delta < 1 (every metric scores in [0, 1]"),
    (["transforms.train=[{HorizontalFlipp: {p: 0.5}}]"], "transforms.train[0]: unknown albumentations transform 'HorizontalFlipp'"),
    (["transforms.train=[{HorizontalFlip: {}}, {VerticalFlip: {q: 1}}]"], "transforms.train[1]: VerticalFlip: Argument(s) 'q' are not valid"),
    (["transforms.train=[{HorizontalFlip: {p: 2}}]"], "transforms.train[0]: HorizontalFlip({'p': 2}) failed"),
    # a value albumentations changes, with only a UserWarning: blur_limit [2, 2] trained with 3x3 kernels
    (["transforms.train=[{HorizontalFlip: {}}, {Blur: {blur_limit: [2, 2]}}]"],
     "transforms.train[1]: Blur: blur_limit: Invalid kernel size range (2, 2). Values less than 3 are not allowed. "
     "Range automatically adjusted to (3, 3)."),
    (["transforms.train=[{OneOf: {transforms: [{MedianBlur: {blur_limit: [4, 4]}}]}}]"],
     "transforms.train[0].OneOf.transforms[0]: MedianBlur: blur_limit: Non-zero kernel sizes must be odd. Range (4, 4) "
     "automatically adjusted to (5, 5)"),  # the inner transform named (it said "transforms.train[0]: OneOf")
    (["transforms.train=[{OneOf: {transforms: [{HorizontalFlip: {}}, {VerticalFlip: {q: 1}}]}}]"],
     "transforms.train[0].OneOf.transforms[1]: VerticalFlip: Argument(s) 'q' are not valid"),
    # losses (as seg_toolkit.losses.build_loss checks them) and the architecture name
    (["loss={dcie: 1.0}"], "loss.dcie: unknown loss 'dcie'; did you mean 'dice'?"),
    (["loss={ce: 1.0}"], "loss.ce: 'ce' supports task multiclass only"),
    (["loss={bce: -1.0}"], "loss.bce: the weight must be a finite number >= 0"),
    (["loss_params={bce: {pos_wieght: 2}}"], "loss_params.bce.pos_wieght: unknown parameter; did you mean 'pos_weight'?"),
    (["loss_params={dice: {smooth: -1}}"], "loss_params.dice.smooth: expected >= 0.0"),
    (["model.arch=unett"], "model.arch: unknown architecture 'unett'; did you mean 'unet'?"),
    # one decoder width per encoder stage, smp's defaults (5 stages; 256, 128, 64, 32, 16) filling in
    (["model.arch=unet", "model.params={encoder_depth: 4, decoder_channels: [64, 32, 16, 8, 8]}"],
     "model.params.decoder_channels: unet with encoder_depth 4 needs 4 decoder widths, one per stage; got [64, 32, 16, 8, 8] (given)"),
    (["model.arch=unetplusplus", "model.params={encoder_depth: 3}"],
     "model.params.decoder_channels: unetplusplus with encoder_depth 3 needs 3 decoder widths, one per stage; "
     "got [256, 128, 64, 32, 16] (smp's default for unetplusplus)"),
    (["model.arch=unet", "model.params={decoder_channels: [32, 16]}"],
     "model.params.decoder_channels: unet with encoder_depth 5 needs 5 decoder widths, one per stage; got [32, 16] (given)"),
    (["model.arch=unet", "model.params={encoder_depth: four}"], "model.params.encoder_depth: expected a number of encoder stages"),
    (["model.arch=fpn", "model.params={encoder_depth: 4}"],
     "model.params.upsampling: fpn with encoder_depth 4 needs upsampling 2 to return logits of the input's size; got 4 "
     "(smp's default for fpn): set model.params.upsampling: 2"),
]


@pytest.mark.parametrize("overrides,message", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_value_fails_at_load_naming_the_key(overrides, message):
    with pytest.raises(ConfigError) as err:
        load(*overrides)
    text = str(err.value)
    assert text.startswith(message.split(":")[0] + ":") and message in text
    assert "\n" not in text  # the CLI prints it as one line
    assert isinstance(err.value, SegToolkitError)


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["postprocess.threshold=[0.3, 0.5, 0.7]", "postprocess.min_area=[0, 10, 20]", "postprocess.empty_gate=0.9"],
        ["data.in_channels=1"],  # RGB statistics are averaged for grayscale
        ["data.in_channels=4"],  # ... and extended for the alpha channel
        ["data.in_channels=1", "transforms.mean=[0.5]", "transforms.std=[0.25]"],
        [*MULTICLASS, "data.num_classes=2", "submission.per_class=false"],  # one submitted class
        ["data.task=binary", "data.class_column=null", "data.num_classes=1", "submission.per_class=false"],
        ["submission.id_format='{id}:{cls}'"],
        ["predict.tta=[identity, d4]", "predict.scales=[0.75, 1.0]", "predict.tile_size=[64, 96]", "predict.tile_overlap=0"],
        ["model.arch=unet"],
        ["model.arch=unet", "model.params={encoder_depth: 4, decoder_channels: [64, 32, 16, 8]}"],
        ["model.arch=fpn", "model.params={encoder_depth: 4, upsampling: 2}"],  # no per-stage widths; stride 2 out
        ["model.arch=deeplabv3plus", "model.params={decoder_channels: 16}"],  # one width, not one per stage
        ["train.device=cuda:7"],  # the CLI checks the device; a saved run config loads anywhere
        ["transforms.mean=[0, 0, 0]", "transforms.std=[1, 1, 1]"],  # no normalisation: the 0..1 pixels as they are
        ["optim.name=sgd", "optim.nesterov=false"],
        ["submission.empty_token=''"],  # the empty RLE token: "" is a value of its own
    ],
)
def test_valid_values_load(overrides):
    load(*overrides)


def test_nested_augmentations_are_checked_and_left_intact():
    spec = "[{OneOf: {transforms: [{HorizontalFlip: {}}, {VerticalFlip: {}}], p: 0.5}}]"
    cfg = load(f"transforms.train={spec}")
    assert cfg.transforms.train == [{"OneOf": {"transforms": [{"HorizontalFlip": {}}, {"VerticalFlip": {}}], "p": 0.5}}]
    with pytest.raises(ConfigError, match=r"transforms.train\[0\].OneOf.transforms\[0\]: unknown albumentations transform 'Flipp'"):
        load("transforms.train=[{OneOf: {transforms: [{Flipp: {}}]}}]")


def test_valid_augmentations_load_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load("transforms.train=[{HorizontalFlip: {p: 0.5}}, {RandomBrightnessContrast: {p: 0.3}}]")


def test_a_yaml_boolean_key_is_named_as_such(tmp_path):
    """`on:` is read as the key True: the error said only "unknown config key 'train.True'"."""
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  on: 3\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'train.True'; YAML reads an unquoted yes/no/on/off/true/false "
                                          r"key as True: quote it \(valid keys here: epochs"):
        load_config(path)


def test_multiclass_without_per_class_fails_when_the_file_loads(tmp_path):
    path = tmp_path / "mc.yaml"
    path.write_text(yaml.safe_dump({"data": {"task": "multiclass", "num_classes": 3, "layout": "folder"}, "loss": {"ce": 1.0}}))
    with pytest.raises(ConfigError, match=r"mc.yaml: submission.per_class: .*needs submission.per_class: true"):
        load_config(path)
    assert load_config(path, ["submission.per_class=true"]).submission.per_class
