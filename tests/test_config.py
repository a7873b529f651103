"""Config loading: typed sections, strict keys with suggestions, overrides, safe YAML."""

from __future__ import annotations

import pytest
import yaml

from seg_toolkit.config import ConfigError, apply_overrides, config_from_dict, load_config, save_config


def test_defaults_and_types():
    cfg = config_from_dict({"train": {"epochs": 3}, "optim": {"lr": "1e-3"}})
    assert cfg.train.epochs == 3
    assert cfg.optim.lr == pytest.approx(1e-3)  # YAML 1.1 reads 1e-3 as a string; accepted as a float
    for text in ("1_0", " 1e-3 ", "infinity", "0x10"):  # Python's float() took the first three (10.0, 0.001, inf)
        with pytest.raises(ConfigError, match=rf"optim.lr: expected float, got str {text!r}"):
            config_from_dict({"optim": {"lr": text}})
    assert config_from_dict({"optim": {"lr": "+.5E-2"}, "metric": {"threshold": "0.5"}}).optim.lr == 0.005
    assert cfg.run_dir.as_posix() == "runs/demo"


def test_unknown_key_names_path_and_closest():
    with pytest.raises(ConfigError) as err:
        config_from_dict({"train": {"epoch": 3}})
    msg = str(err.value)
    assert "'train.epoch'" in msg and "did you mean 'train.epochs'" in msg


def test_unknown_top_level_section():
    with pytest.raises(ConfigError, match="unknown config key 'trian'.*did you mean 'train'"):
        config_from_dict({"trian": {}})


def test_wrong_type_says_expected():
    with pytest.raises(ConfigError, match=r"train.epochs: expected int, got str 'ten'"):
        config_from_dict({"train": {"epochs": "ten"}})
    with pytest.raises(ConfigError, match=r"train.deterministic: expected bool"):
        config_from_dict({"train": {"deterministic": "yes please"}})


def test_choice_lists_options():
    with pytest.raises(ConfigError, match=r"data.task: 'multilable' is not one of .*did you mean 'multilabel'"):
        config_from_dict({"data": {"task": "multilable"}})


def test_cross_field_rules():
    with pytest.raises(ConfigError, match="binary task has 1 output channel"):
        config_from_dict({"data": {"task": "binary", "num_classes": 3}})
    with pytest.raises(ConfigError, match="group"):
        config_from_dict({"folds": {"method": "group"}})
    with pytest.raises(ConfigError, match="loss_params.dice: there is no loss"):
        config_from_dict({"loss": {"bce": 1.0}, "loss_params": {"dice": {}}})
    with pytest.raises(ConfigError, match="plain folder name"):
        config_from_dict({"experiment": "../escape"})


def test_overrides_parse_yaml_values():
    data = apply_overrides({}, ["train.epochs=3", "data.root=/x/y", "transforms.resize=[64, 96]", "train.deterministic=true"])
    cfg = config_from_dict(data)
    assert (cfg.train.epochs, cfg.data.root, cfg.transforms.resize, cfg.train.deterministic) == (3, "/x/y", [64, 96], True)
    with pytest.raises(ConfigError, match="expected key.path=value"):
        apply_overrides({}, ["train.epochs"])


def test_load_file_with_base_and_round_trip(tmp_path):
    (tmp_path / "base.yaml").write_text("train: {epochs: 5, batch_size: 4}\nloss: {ce: 1.0}\ndata: {task: multiclass, num_classes: 4, layout: folder}\n"
                                       "submission: {per_class: true}\n")
    (tmp_path / "exp.yaml").write_text("base: base.yaml\nexperiment: exp\ntrain: {epochs: 7}\n")
    cfg = load_config(tmp_path / "exp.yaml", ["optim.lr=0.01"])
    assert (cfg.experiment, cfg.train.epochs, cfg.train.batch_size, cfg.loss, cfg.optim.lr) == ("exp", 7, 4, {"ce": 1.0}, 0.01)
    save_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(tmp_path / "resolved.yaml") == cfg


def test_unsafe_yaml_tag_is_refused(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("experiment: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid \\(safe\\) YAML"):
        load_config(path)


def test_missing_file():
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("/no/such/config.yaml")


def test_error_names_the_file(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump({"modle": {"arch": "unet"}}))
    with pytest.raises(ConfigError, match=r"typo.yaml: unknown config key 'modle'.*did you mean 'model'"):
        load_config(path)


def test_a_key_given_twice_is_refused_naming_both_lines(tmp_path):
    """PyYAML keeps the last of two equal keys: a second `train:` section replaced the first whole, and the epochs the
    first set fell back to the default (10) without a word."""
    p = tmp_path / "c.yaml"
    p.write_text("experiment: x\ntrain: {epochs: 1, batch_size: 4}\nmodel: {arch: scratch_unet}\ntrain: {batch_size: 2}\n")
    with pytest.raises(ConfigError, match=r"c.yaml: line 4: key 'train' is given twice in one mapping \(first on line 2\)"):
        load_config(p)
    p.write_text("train: {epochs: 1, epochs: 2}\n")  # the same line, a nested mapping
    with pytest.raises(ConfigError, match=r"line 1: key 'epochs' is given twice"):
        load_config(p)
    p.write_text("x: &t {epochs: 3, batch_size: 2}\ny:\n  <<: *t\n  epochs: 4\n")  # a merge key, then one it overrides: allowed
    from seg_toolkit.config_yaml import read_yaml

    assert read_yaml(p) == {"x": {"epochs": 3, "batch_size": 2}, "y": {"epochs": 4, "batch_size": 2}}


def test_set_errors_are_one_line_and_yaml_1_2_floats_are_floats(tmp_path):
    """--set's YAML errors spanned four lines; a duplicate key in --set was told to quote the section as text; 1e-1
    (a YAML 1.2 float, a string to YAML 1.1) reached smp / timm as text in model.params."""
    from seg_toolkit.config_yaml import apply_overrides, read_yaml

    with pytest.raises(ConfigError) as e:
        apply_overrides({}, ["submission.id_format={id}_{cls}"])
    assert "\n" not in str(e.value) and "<unicode string>" not in str(e.value)
    assert str(e.value).endswith("""for text, quote it: --set 'submission.id_format="{id}_{cls}"'""")
    with pytest.raises(ConfigError) as e:
        apply_overrides({}, ["loss={bce: 1, bce: 2}"])
    assert str(e.value) == ("--set loss: key 'bce' is given twice in one mapping (first on line 1); YAML would keep "
                            "only the last: merge them into one")
    with pytest.raises(ConfigError, match=r"octal.*to keep the text"):
        apply_overrides({}, ["train.seed=0042"])
    with pytest.raises(ConfigError, match=r"--set base: a config file's base: is merged when the file is read"):
        apply_overrides({}, ["base=other.yaml"])
    p = tmp_path / "c.yaml"
    p.write_text("a: 1e-1\nb: -2E4\nc: 42\nd: 1.5e-3\ne: 1e\nf: 0x10\n")
    assert read_yaml(p) == {"a": 0.1, "b": -20000.0, "c": 42, "d": 0.0015, "e": "1e", "f": 16}
    assert apply_overrides({}, ["model.params.drop_path_rate=1e-1"]) == {"model": {"params": {"drop_path_rate": 0.1}}}
    assert yaml.safe_load("a: 1e-1") == {"a": "1e-1"}  # PyYAML's own loader is left as it is


def test_lambda_augmentation_is_refused_at_load():
    with pytest.raises(ConfigError, match=r"transforms\.train\[0\]: Lambda: its arguments are Python functions"):
        config_from_dict({"transforms": {"train": [{"Lambda": {"image": "x"}}]}})


@pytest.mark.parametrize("key, value, expected", [
    ("optim.lr", -0.001, "optim.lr: expected a learning rate > 0, got -0.001"),
    ("optim.lr", float("nan"), "optim.lr: expected a learning rate > 0, got nan"),
    ("optim.lr", 0, "optim.lr: expected a learning rate > 0, got 0"),
    ("optim.weight_decay", -1, "optim.weight_decay: expected >= 0, got -1"),
    ("optim.momentum", -5, "optim.momentum: expected a momentum in [0, 1), got -5"),
    ("scheduler.min_lr", -1, "scheduler.min_lr: expected a learning rate >= 0"),
    ("scheduler.step_size", 0, "scheduler.step_size: expected a number of epochs >= 1, got 0"),
    ("scheduler.warmup_epochs", -2, "scheduler.warmup_epochs: expected a number of epochs >= 0"),
    ("train.num_workers", -1, "train.num_workers: expected a number of loader processes >= 0, got -1"),
    ("train.grad_clip", -1, "train.grad_clip: expected a gradient norm > 0, or null"),  # flipped the gradients' sign
    ("train.grad_clip", 0, "train.grad_clip: expected a gradient norm > 0"),  # zeroed them
    ("train.ema_decay", 1.5, "train.ema_decay: expected a decay in (0, 1)"),
    ("train.early_stopping_patience", -1, "train.early_stopping_patience: expected a number of epochs >= 1"),
    ("train.nan_retries", -1, "train.nan_retries: expected a number of retries >= 0"),
    ("model.depth", 0, "model.depth: expected a number of down-sampling steps >= 1"),
    ("model.base_width", 0, "model.base_width: expected a number of channels >= 1"),
    ("model.dropout", 1.5, "model.dropout: expected a probability in [0, 1)"),
])
def test_numbers_out_of_range_are_refused_when_the_config_loads(key, value, expected):
    section, name = key.split(".")
    with pytest.raises(ConfigError) as e:
        config_from_dict({section: {name: value}})
    assert str(e.value).startswith(expected)


def test_ema_and_onecycle_settings_that_could_not_work_are_refused():
    with pytest.raises(ConfigError, match="train.use_ema .* set train.ema_decay"):  # was silently no EMA
        config_from_dict({"train": {"use_ema": True}})
    with pytest.raises(ConfigError, match=r"scheduler.warmup_epochs: onecycle .* train.epochs \(1\); expected fewer than that, got 2"):
        config_from_dict({"train": {"epochs": 1}, "scheduler": {"name": "onecycle", "warmup_epochs": 2}})
    cfg = config_from_dict({"train": {"epochs": 3, "grad_clip": 1.0, "ema_decay": 0.999, "use_ema": True},
                            "scheduler": {"name": "onecycle", "warmup_epochs": 1}})  # in range: accepted
    assert (cfg.train.grad_clip, cfg.train.ema_decay) == (1.0, 0.999)


@pytest.mark.parametrize("name", ["exp #2", "2024", "0012", "yes", "null", "[x]"])
def test_a_run_folder_name_is_a_name_not_yaml(tmp_path, name):
    """``predict "runs/exp #2"`` read the name as YAML ('exp', a comment) and used the run 'exp'; '2024' was an int."""
    from seg_toolkit.commands import _load

    parent = tmp_path / "2025"  # a parent folder named like a number too
    (parent / name).mkdir(parents=True)
    (parent / name / "config.yaml").write_text(f"experiment: {name!r}\n".replace("'", '"'), encoding="utf-8")
    cfg = _load(str(parent / name), ["train.epochs=2"])
    assert cfg.experiment == name and cfg.runs_dir == str(parent) and cfg.train.epochs == 2


@pytest.mark.parametrize("data, message", [
    ({"data": {"group_pattern": "^(im\\d)"}, "folds": {"method": "kfold"}},
     r"data.group_pattern: groups are kept whole only by folds.method: group .*folds.method is kfold"),
    ({"data": {"group_column": "patient"}}, r"data.group_column: .*folds.method is stratified"),
    ({"folds": {"only": [0, 0]}}, r"folds.only: fold\(s\) \[0\] listed more than once"),
    ({"folds": {"seed": -1}}, r"folds.seed: expected 0..4294967295"),
    ({"train": {"seed": 2**32}}, r"train.seed: expected 0..4294967295"),
    ({"data": {"task": "multiclass", "num_classes": 3, "layout": "folder", "ignore_index": 1}, "loss": {"ce": 1.0}, "submission": {"per_class": True}},
     r"data.ignore_index: 1 is a class id \(0..2 with data.num_classes=3\)"),
    ({"data": {"task": "multiclass", "num_classes": 3, "layout": "folder", "ignore_index": -3}, "loss": {"ce": 1.0}, "submission": {"per_class": True}},
     r"data.ignore_index: expected the mask value that marks void \(>= 0\), got -3"),
    ({"data": {"ignore_index": 255}}, r"data.ignore_index: .*the csv layout's masks are RLE rows"),
    ({"data": {"task": "multiclass", "num_classes": 3, "class_names": ["a", "a", "b"], "class_column": "c"}, "loss": {"ce": 1.0}, "submission": {"per_class": True}},
     r"data.class_names: \['a'\] named more than once"),
    ({"scheduler": {"min_lr": 0.1}, "optim": {"lr": 0.003}}, r"scheduler.min_lr: 0.1 is not below optim.lr \(0.003\)"),
    ({"data": {"task": "multilabel", "num_classes": 2, "class_column": "c"}, "metric": {"name": "tgs_map"}, "submission": {"per_class": True}}, r"metric.name: 'tgs_map' .* binary tasks only"),
])
def test_keys_that_contradict_each_other_are_refused_at_load(data, message):
    """Each was accepted and then ignored (group keys, ignore_index on a class, warmup past the run) or failed after
    the run folder was written (tgs_map on multilabel, a negative seed)."""
    with pytest.raises(ConfigError, match=message):
        config_from_dict(data)


@pytest.mark.parametrize("train, message", [
    ([{"HorizontalFlip": 0.5}], r"HorizontalFlip: expected a mapping of its arguments, e.g. \{HorizontalFlip: \{p: 0.5\}\}, got 0.5"),
    ([{"OneOf": [{"HorizontalFlip": {}}]}], r"OneOf: expected a mapping of its arguments, e.g. \{OneOf: \{transforms: "),
    ([{"OneOf": {"transform": [{"HorizontalFlip": {}}]}}], r"OneOf: expected \{OneOf: \{transforms: "),
    ([{"Normalize": {}}], r"Normalize: the toolkit normalises every image with transforms.mean / std"),
    ([{"ToTensorV2": {}}], r"ToTensorV2: the toolkit makes the tensors itself"),
    ([{"BboxParams": {"format": "coco"}}], r"not an albumentations transform 'BboxParams'"),
])
def test_augmentation_lists_that_were_tracebacks_are_named(train, message):
    with pytest.raises(ConfigError, match=r"transforms.train\[0\]: .*" + message):
        config_from_dict({"transforms": {"train": train}})
    ok = config_from_dict({"transforms": {"train": [{"OneOf": {"transforms": [{"HorizontalFlip": {}}, {"VerticalFlip": {}}], "p": 0.5}}]}})
    assert ok.transforms.train[0]["OneOf"]["p"] == 0.5


def test_sgd_without_momentum_is_plain_sgd():
    """momentum 0 passed the load check, then torch refused Nesterov without momentum at the first fold."""

    from seg_toolkit.optim import build_optimizer

    from seg_toolkit.models import build_model

    cfg = config_from_dict({"optim": {"name": "sgd", "momentum": 0.0}, "model": {"arch": "scratch_unet", "depth": 1, "base_width": 2}})
    opt = build_optimizer(cfg, build_model(cfg.model, 1))
    assert opt.defaults["momentum"] == 0.0 and opt.defaults["nesterov"] is False
    cfg = config_from_dict({"optim": {"name": "sgd"}, "model": {"arch": "scratch_unet", "depth": 1, "base_width": 2}})
    opt = build_optimizer(cfg, build_model(cfg.model, 1))
    assert opt.defaults["momentum"] == 0.9 and opt.defaults["nesterov"] is True


def test_durations_and_base_60_numbers_are_not_misread(tmp_path):
    """'1h30' was 1 h 30 s; YAML read `time_budget: 1:30` as 90 seconds."""
    from seg_toolkit.budget import parse_duration

    assert parse_duration("1h30m") == 5400 and parse_duration("1m30s") == 90 and parse_duration("90") == 90
    with pytest.raises(ConfigError, match=r"'1h30': the number after the last unit has none; write 1h30m \(or 1h30s\)"):
        parse_duration("1h30")
    with pytest.raises(ConfigError, match=r"'1:30' is a base-60 number to YAML \(1:30 -> 90\)"):
        apply_overrides({}, ["train.time_budget=1:30"])
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  time_budget: 23:00\n")
    with pytest.raises(ConfigError, match=r"c.yaml: line 2: '23:00' is a base-60 number to YAML"):
        load_config(path)
    path.write_text("train:\n  time_budget: '1h30m'\n  epochs: 3\noptim: {lr: 1.0e-3}\n")
    assert load_config(path).train.time_budget == "1h30m"


@pytest.mark.parametrize("model, message", [
    ({"arch": "unet", "encoder": "resnet35"}, r"model.encoder: unknown encoder 'resnet35'; did you mean 'resnet34'"),
    ({"arch": "unet", "encoder": "resnet18", "encoder_weights": "imagnet"}, r"model.encoder_weights: 'imagnet' is not a weight set of encoder 'resnet18'; did you mean 'imagenet'"),
    ({"arch": "unet", "encoder": "tu-resnet18", "encoder_weights": "imagnet"}, r"model.encoder_weights: 'imagnet': for a tu- \(timm\) encoder use 'imagenet'"),
    ({"arch": "scratch_unet", "encoder": "resnet18"}, r"model.encoder: 'resnet18': scratch_unet has its own encoder"),
    ({"arch": "scratch_unet", "params": {"foo": 1}}, r"model.params.foo: scratch_unet takes no params"),
    ({"arch": "scratch_unet", "encoder_weights": "imagenet"}, r"model.encoder_weights: 'imagenet': scratch_unet has no pretrained weights"),
])
def test_model_keys_are_checked_at_load_not_at_the_first_fold(model, message):
    """Each was found when fold 0 built its model, after folds.csv and fold_0/ were written."""
    with pytest.raises(ConfigError, match=message):
        config_from_dict({"model": model})


@pytest.mark.parametrize("data, message", [
    ({"optim": {"name": "adamw", "momentum": 0.8}}, r"optim.momentum: 0.8 is read only with optim.name: sgd"),
    ({"scheduler": {"name": "cosine", "patience": 5}}, r"scheduler.patience: 5 is read only with scheduler.name: plateau"),
    ({"scheduler": {"name": "onecycle", "min_lr": 1e-5}}, r"scheduler.min_lr: 1e-05 is read only with the cosine"),
    ({"data": {"task": "multiclass", "num_classes": 3, "layout": "folder"}, "loss": {"ce": 1.0}, "submission": {"per_class": True},
      "postprocess": {"threshold": [0.3]}}, r"postprocess.threshold: \[0.3\] is read only with binary and multilabel"),
    ({"pseudo": {"confidence": 0.8}}, r"pseudo.confidence: 0.8 is read only with pseudo.teacher"),
    ({"data": {"layout": "folder", "class_column": "ClassId"}}, r"data.class_column: 'ClassId' is read only with the csv layout"),
])
def test_keys_nothing_reads_are_refused(data, message):
    """Each was accepted and ignored: the user who set it expected it to act."""
    with pytest.raises(ConfigError, match=message):
        config_from_dict(data)


def test_loss_params_take_yaml_1_1_exponents(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("loss: {bce: 0.5, dice: 0.5}\nloss_params: {dice: {smooth: 1e-5}}\n")  # a string to YAML 1.1
    assert load_config(path).loss_params["dice"]["smooth"] == 1e-5  # read as YAML 1.2 does
    path.write_text("loss: {bce: 0.5, dice: 0.5}\nloss_params: {dice: {smooth: '1e-5'}}\n")  # a config saved before
    assert load_config(path).loss_params["dice"]["smooth"] == "1e-5"  # kept as written; the loss reads 1e-05


@pytest.mark.parametrize("metric, message", [
    ({"classes": [0, 3]}, r"metric.classes\[1\]: class 3 is outside 0..2 \(0 = background, in a row only if listed\) for data.task=multiclass"),
    ({"classes": [1, 1]}, r"metric.classes\[1\]: class 1 is listed twice"),
    ({"name": "pixel_accuracy", "classes": [1]}, r"metric.classes: pixel_accuracy counts every pixel"),
])
def test_metric_classes_are_checked_at_load(tmp_path, metric, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict({"data": {"root": str(tmp_path), "task": "multiclass", "num_classes": 3, "layout": "folder"}, "loss": {"ce": 1.0},
                          "submission": {"per_class": True}, "metric": metric})


def test_scored_classes_other_than_the_submitted_are_named_at_load(tmp_path, caplog):
    base = {"data": {"root": str(tmp_path), "task": "multiclass", "num_classes": 3, "layout": "folder"}, "loss": {"ce": 1.0},
            "submission": {"per_class": True}}
    with caplog.at_level("WARNING"):
        config_from_dict(base)  # scores 0, 1, 2; submits 1, 2 (class 0 gets rows only when listed)
    assert "the score averages classes [0, 1, 2] but the submission has rows for [1, 2]" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        config_from_dict({**base, "metric": {"classes": [1, 2]}})
        config_from_dict({**base, "submission": {"per_class": True, "classes": [0, 1, 2]}})
    assert "the score averages" not in caplog.text
    # multilabel (Severstal: classes 1..4): submitting classes 1 and 2 while the dice averages all four
    multilabel = {"data": {"root": str(tmp_path), "task": "multilabel", "num_classes": 4, "class_column": "ClassId"}, "loss": {"bce": 1.0}}
    with caplog.at_level("WARNING"):
        config_from_dict({**multilabel, "submission": {"per_class": True, "classes": [1, 2]}})
    assert "the score averages classes [1, 2, 3, 4] but the submission has rows for [1, 2]: CV" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        config_from_dict({**multilabel, "submission": {"per_class": True}})
        config_from_dict({**multilabel, "submission": {"per_class": True, "classes": [1, 2]}, "metric": {"classes": [1, 2]}})
    assert "the score averages" not in caplog.text


def test_instance_submissions_say_their_cv_is_a_pixel_score(tmp_path, caplog):
    base = {"data": {"root": str(tmp_path), "task": "binary"}, "loss": {"bce": 1.0}}
    with caplog.at_level("WARNING"):
        config_from_dict(base)
    assert "scores objects" not in caplog.text
    with caplog.at_level("WARNING"):
        config_from_dict({**base, "submission": {"instances": True}})
    assert "submission.instances: the competition scores objects" in caplog.text and "metric.name 'dice' scores pixels" in caplog.text


@pytest.mark.parametrize("sections, message", [
    ({"data": {"task": "binary", "layout": "folder", "ignore_index": 0}}, r"data.ignore_index: 0 is the background of a binary mask"),
    ({"metric": {"name": "tgs_map", "empty_score": "zero"}}, r"metric.empty_score: 'zero' is read only with the per-image dice"),
    ({"predict": {"tile_overlap": 0.5}}, r"predict.tile_overlap: 0.5 is read only with predict.tile_size"),
    ({"train": {"early_stopping_min_delta": 0.01}}, r"train.early_stopping_min_delta: 0.01 is read only with train.early_stopping_patience"),
    ({"train": {"nan_lr_factor": 0.5}}, r"train.nan_lr_factor: 0.5 is read only with train.nan_retries > 0"),
])
def test_settings_that_would_do_nothing_or_void_the_background_are_refused(tmp_path, sections, message):
    base = {"data": {"root": str(tmp_path), "task": "binary"}, "folds": {"n_splits": 2}}
    cfg = {**base, **{k: ({**base.get(k, {}), **v} if k in base else v) for k, v in sections.items()}}
    with pytest.raises(ConfigError, match=message):
        config_from_dict(cfg)


def test_yaml_octal_integers_and_whole_mappings_of_a_base(tmp_path):
    """``seed: 0042`` was 34 to YAML 1.1; a child's ``model.params: {}`` was merged into the base's and kept its keys."""
    (tmp_path / "c.yaml").write_text(f"data: {{root: {tmp_path}}}\ntrain: {{seed: 0042}}\n")
    with pytest.raises(ConfigError, match=r"c.yaml: line 2: '0042' is an octal number to YAML 1.1 \(0042 -> 34\)"):
        load_config(tmp_path / "c.yaml")
    (tmp_path / "base.yaml").write_text(
        f"data: {{root: {tmp_path}}}\nmodel: {{arch: unet, encoder: tu-test_resnet, encoder_weights: null, "
        "params: {encoder_depth: 4, decoder_channels: [64, 32, 16, 8]}}\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\nmodel: {params: {}}\n")
    assert load_config(tmp_path / "child.yaml").model.params == {}
    (tmp_path / "child2.yaml").write_text("base: base.yaml\nmodel: {params: {encoder_depth: 3, decoder_channels: [32, 16, 8]}}\n")
    assert load_config(tmp_path / "child2.yaml").model.params == {"encoder_depth": 3, "decoder_channels": [32, 16, 8]}


def test_the_classifier_on_dpt_is_refused_at_load(tmp_path):
    """smp's ViT encoder returns (features, prefix tokens): the presence head got a list and failed at the first step."""
    with pytest.raises(ConfigError, match=r"model.classifier with model.arch dpt"):
        config_from_dict({"data": {"root": str(tmp_path), "task": "binary"}, "folds": {"n_splits": 2},
                          "model": {"arch": "dpt", "encoder": "tu-vit_tiny_patch16_224", "encoder_weights": None,
                                    "classifier": 0.2}})


def test_min_lr_with_a_step_schedule_is_refused_unless_a_warmup_reads_it(tmp_path):
    """timm's step schedule has no floor: lr 1e-3, gamma 0.1 every 10 of 50 epochs ended at 1e-7 below min_lr 1e-6."""
    base = {"data": {"root": str(tmp_path), "task": "binary"}, "folds": {"n_splits": 2}}
    with pytest.raises(ConfigError, match=r"scheduler.min_lr: 1e-05 is read only with the cosine, poly and plateau"):
        config_from_dict({**base, "scheduler": {"name": "step", "min_lr": 1.0e-5, "warmup_epochs": 0}})
    config_from_dict({**base, "scheduler": {"name": "step", "min_lr": 1.0e-5, "warmup_epochs": 1}})  # the warmup's start


def test_a_step_schedule_that_never_decays_is_warned_about(tmp_path, caplog):
    """scheduler.step_size at or past train.epochs: the learning rate never decayed, without a word."""
    import logging

    base = {"data": {"root": str(tmp_path), "task": "binary"}, "folds": {"n_splits": 2}}
    with caplog.at_level(logging.WARNING, logger="seg_toolkit.config_consistency"):
        config_from_dict({**base, "scheduler": {"name": "step", "step_size": 10}, "train": {"epochs": 10}})
    assert "scheduler.step_size: 10 epochs between decays, but train.epochs is 10: the step schedule never decays" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="seg_toolkit.config_consistency"):
        config_from_dict({**base, "scheduler": {"name": "step", "step_size": 10}, "train": {"epochs": 11}})
    assert "step_size" not in caplog.text


def test_scratch_unet_keys_on_an_smp_architecture_are_refused_at_load(tmp_path):
    """`model: {arch: unet, encoder: resnet34, dropout: 0.3}` trained without dropout: a log line when the model was built."""
    with pytest.raises(ConfigError, match=r"model.dropout: 0.3 applies to the scratch U-Net only; arch 'unet' would ignore"):
        config_from_dict({"data": {"root": str(tmp_path), "task": "binary"}, "folds": {"n_splits": 2},
                          "model": {"arch": "unet", "encoder": "tu-test_resnet", "encoder_weights": None, "dropout": 0.3}})


def test_set_values_yaml_would_misread_name_their_key():
    from seg_toolkit.config_yaml import apply_overrides

    with pytest.raises(ConfigError, match=r"--set train.time_budget: '1:30' is a base-60 number"):
        apply_overrides({}, ["train.time_budget=1:30"])
    with pytest.raises(ConfigError, match=r"--set data.root: '/data/run #2' holds ' #', which YAML reads as the start of a comment"):
        apply_overrides({}, ["data.root=/data/run #2"])
    assert apply_overrides({}, ['data.root="/data/run #2"']) == {"data": {"root": "/data/run #2"}}


def test_an_optional_choice_keeps_its_did_you_mean(tmp_path):
    """The Optional wrapper swallowed the Literal's message: `pair_split: image_lft` listed the choices, suggested none."""
    with pytest.raises(ConfigError, match=r"data.pair_split: 'image_lft' is not one of .*\(did you mean 'image_left'\?\); or null"):
        config_from_dict({"data": {"root": str(tmp_path), "pair_split": "image_lft"}, "folds": {"n_splits": 2}})


def test_a_load_time_warning_is_said_once_per_process(tmp_path, caplog):
    """A run's config is loaded again by every step of a command (members, folds, the resume check): one warning
    filled a train log 16 times."""
    base = {"data": {"root": str(tmp_path), "task": "multiclass", "num_classes": 3, "layout": "folder"}, "loss": {"ce": 1.0},
            "submission": {"per_class": True}}
    with caplog.at_level("WARNING"):
        for _ in range(3):
            config_from_dict(base)
    assert caplog.text.count("the score averages classes [0, 1, 2] but the submission has rows for [1, 2]") == 1


def test_a_scratch_unet_config_loads_and_scores_without_importing_smp_or_timm() -> None:
    """Loading a scratch_unet config and the modules of `cv`, `tune` and `report` imported smp, timm and torchvision
    (about 2 s per command, 4 s on a busy machine): none of them builds an smp model."""
    import subprocess
    import sys
    from pathlib import Path

    config = Path(__file__).resolve().parents[1] / "configs" / "tgs_scratch_cpu.yaml"
    code = ("import sys\nfrom seg_toolkit.config import load_config\nimport seg_toolkit.cv, seg_toolkit.tune, seg_toolkit.report\n"
            f"load_config({str(config)!r})\n"
            "print(sorted(m for m in ('segmentation_models_pytorch', 'timm', 'torchvision') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    # the names and submodules stay reachable as attributes, and listed (review)
    import seg_toolkit.models as models

    assert models.registry.build_model is models.build_model and "build_model" in dir(models)
    with pytest.raises(AttributeError, match="has no attribute 'nothing_here'"):
        models.nothing_here  # noqa: B018
