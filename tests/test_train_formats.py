"""Training data in the users' other formats (issue 12): train CSVs in every RLE style (SIIM, 0-based,
Airbus/DSB instance rows unioned, custom empty token), one mask file per class (multilabel),
DSB object folders with the touching borders made background, and the audit listing the same
samples as training for image|label files and object folders.

Every expected mask below is worked out by hand from the strings and pixels written."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from seg_toolkit.audit import audit
from seg_toolkit.config import ConfigError, config_from_dict
from seg_toolkit.data import DataError, SegDataset, load_target, load_train_samples
from seg_toolkit.data.folds import class_presence
from seg_toolkit.data.instances import touching_borders
from seg_toolkit.data.io import RLERowError, image_size
from seg_toolkit.data.masks import train_rle_spec
from seg_toolkit.data.sources import check_train_samples
from seg_toolkit.rle import RLEError, RLESpec

from .conftest import shared_dataset


def _save(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def _images(root: Path, ids: list[str], hw=(3, 4)) -> None:
    for i in ids:
        _save(root / "train/images" / (i if "." in i else f"{i}.png"), np.full((*hw, 3), 9, np.uint8))


def _csv_cfg(root: Path, **data):
    d = {"root": str(root), "task": "binary", "layout": "csv", **data}
    extra = {"submission": {"per_class": True}} if d.get("num_classes", 1) > 1 else {}
    if d["task"] == "multiclass":
        extra["loss"] = {"ce": 1.0}
    return config_from_dict({"data": d, "folds": {"n_splits": 2}, **extra})


def _target(cfg, s) -> list:
    t = load_target(s, cfg, image_size(s.image))
    return t[..., 0].tolist() if t.ndim == 3 and t.shape[-1] == 1 else t.tolist()


# ----------------------------------------------------------------------------- train CSVs in every RLE style

SIIM = {"id_column": "ImageId", "rle_column": " EncodedPixels", "rle_index_base": 0, "rle_starts": "relative",
        "rle_empty_token": "-1", "rle_instances": True}


def _siim(root: Path, rows: list[tuple[str, str]]) -> None:
    _images(root, sorted({i for i, _ in rows}))
    pd.DataFrame(rows, columns=["ImageId", " EncodedPixels"]).to_csv(root / "train.csv", index=False)


def test_siim_rows_relative_zero_based_minus_one_and_instances(tmp_path):
    # 3x4 image, column-major pixels p = col * 3 + row. "0 2 3 2 4 1": gap 0 -> p 0,1; gap 3 after p 1 -> p 5,6;
    # gap 4 after p 6 -> p 11. c: " 1 1" -> p 1; "4 2" -> p 4,5 (its own count from 0: gap 4); "-1": empty.
    _siim(tmp_path, [("a", "0 2 3 2 4 1"), ("b", "-1"), ("c", " 1 1"), ("c", "-1"), ("c", "4 2")])
    cfg = _csv_cfg(tmp_path, **SIIM)
    a, b, c = load_train_samples(cfg)
    assert _target(cfg, a) == [[1, 0, 1, 0], [1, 0, 0, 0], [0, 1, 0, 1]]
    assert _target(cfg, b) == [[0] * 4] * 3
    assert _target(cfg, c) == [[0, 0, 0, 0], [1, 1, 0, 0], [0, 1, 0, 0]]
    # the rows of c are one string of the same spec: runs p 1 and p 4..5, the second a gap of 2 after p 1
    assert c.rles == ("1 1 2 2",) and a.rles == ("0 2 3 2 4 1",) and b.rles == ("",)
    assert train_rle_spec(cfg) == RLESpec(order="F", index_base=0, starts="relative", empty="-1")
    assert train_rle_spec(cfg).encode(np.array(_target(cfg, a))) == "0 2 3 2 4 1"  # the submission's writer agrees
    check_train_samples([a, b, c], cfg)


def test_zero_based_absolute_starts(tmp_path):
    _images(tmp_path, ["a"])
    pd.DataFrame({"id": ["a"], "rle_mask": ["0 2 11 1"]}).to_csv(tmp_path / "train.csv", index=False)
    cfg = _csv_cfg(tmp_path, rle_index_base=0)
    assert _target(cfg, load_train_samples(cfg)[0]) == [[1, 0, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]]
    with pytest.raises(RLERowError, match=r"ends at pixel 12 \(numbered from 0\), past the image's 12 pixels"):
        pd.DataFrame({"id": ["a"], "rle_mask": ["0 2 11 2"]}).to_csv(tmp_path / "train.csv", index=False)
        load_target(load_train_samples(cfg)[0], cfg, (3, 4))


def test_instance_rows_row_major_one_per_object_unioned(tmp_path):
    # row-major pixels p = row * 4 + col, 1-based (Sartorius; Airbus is column-major, the default); one row per
    # object, an image without objects one empty row
    _images(tmp_path, ["x.jpg", "y.jpg", "z.jpg"])
    rows = [("x.jpg", "2 2"), ("y.jpg", ""), ("x.jpg", "9 2"), ("z.jpg", "5 4"), ("z.jpg", "9 1")]
    pd.DataFrame(rows, columns=["ImageId", "EncodedPixels"]).to_csv(tmp_path / "train.csv", index=False)
    cfg = _csv_cfg(tmp_path, id_column="ImageId", rle_column="EncodedPixels", rle_order="C", rle_instances=True,
                   image_ext=".jpg")
    x, y, z = load_train_samples(cfg)
    assert (x.id, y.id, z.id) == ("x.jpg", "y.jpg", "z.jpg") and x.where.endswith("train.csv line 2")
    assert _target(cfg, x) == [[0, 1, 1, 0], [0, 0, 0, 0], [1, 1, 0, 0]]
    assert _target(cfg, y) == [[0] * 4] * 3
    assert _target(cfg, z) == [[0, 0, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert z.rles == ("5 5",)  # p 5..8 and p 9: adjacent runs merge
    # the submission's instance writer gives the two ships of x back as its two rows
    assert RLESpec(order="C", instances=True).encode_rows(np.array(_target(cfg, x))) == ["2 2", "9 2"]
    # without rle_instances a repeated id is refused, saying which key reads it
    with pytest.raises(DataError, match=r"train\.csv line 4: duplicate id 'x\.jpg' \(first at line 2\).*rle_instances: true"):
        load_train_samples(_csv_cfg(tmp_path, id_column="ImageId", rle_column="EncodedPixels", rle_order="C",
                                    image_ext=".jpg"))


def test_per_class_instance_rows_are_unioned_per_class(tmp_path):
    _images(tmp_path, ["im"])
    rows = [("im", "1", "1 2"), ("im", "2", "5 1"), ("im", "2", "7 1")]
    pd.DataFrame(rows, columns=["ImageId", "ClassId", "EncodedPixels"]).to_csv(tmp_path / "train.csv", index=False)
    common = {"id_column": "ImageId", "class_column": "ClassId", "rle_column": "EncodedPixels", "num_classes": 2}
    cfg = _csv_cfg(tmp_path, task="multilabel", rle_instances=True, **common)
    (s,) = load_train_samples(cfg)
    t = load_target(s, cfg, (3, 4))
    assert t[..., 0].tolist() == [[1, 0, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    assert t[..., 1].tolist() == [[0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0]]
    cfg = _csv_cfg(tmp_path, task="multiclass", num_classes=3, rle_instances=True,
                   **{k: v for k, v in common.items() if k != "num_classes"})
    assert load_target(load_train_samples(cfg)[0], cfg, (3, 4)).tolist() == [[1, 0, 2, 0], [1, 2, 0, 0], [0, 0, 0, 0]]
    with pytest.raises(DataError, match=r"line 4: second non-empty row for image 'im' class 2 \(first at line 3\)"):
        load_train_samples(_csv_cfg(tmp_path, task="multilabel", **common))


def test_malformed_training_row_names_file_line_and_id(tmp_path):
    _siim(tmp_path, [("a", "0 2"), ("b", "3 x")])
    with pytest.raises(RLERowError) as e:
        load_train_samples(_csv_cfg(tmp_path, **SIIM))
    assert isinstance(e.value, RLEError) and isinstance(e.value, DataError)
    assert f"{tmp_path / 'train.csv'} line 3 (id 'b'): RLE token 'x' is not an integer" in str(e.value)
    # SIIM's -1 read without its empty token: the error says which key
    _siim(tmp_path, [("a", "0 2"), ("b", "-1")])
    with pytest.raises(RLERowError, match=r"line 3 \(id 'b'\): RLE has an odd number of tokens.*rle_empty_token: '-1'"):
        load_train_samples(_csv_cfg(tmp_path, **{**SIIM, "rle_empty_token": ""}))
    # relative starts below the base, past the image: found when the target is read, naming the row and id
    _siim(tmp_path, [("a", "0 2 8 3")])
    cfg = _csv_cfg(tmp_path, **SIIM)
    with pytest.raises(RLERowError, match=r"train\.csv line 2 \(id 'a'\): RLE run 8 3 ends at pixel 12 \(numbered from 0\)"):
        load_target(load_train_samples(cfg)[0], cfg, (3, 4))


def test_a_row_past_its_image_is_named_by_its_own_line_before_training(tmp_path):
    """An image's rows are one unioned string once read, so a run past the image's 12 pixels in its second row was
    reported against its first row (line 2) with runs the union made ("run 9 5" of Airbus' "9 1" + "10 4"), and only
    when the mask was first decoded, after a fold's first epoch; check_train_samples (before anything is written)
    now names the row itself."""
    _images(tmp_path, ["a", "b"])
    rows = [("a", "9 1"), ("b", "1 1"), ("a", "10 4")]  # line 4: pixels 10..13 of a 3x4 image (1..12)
    pd.DataFrame(rows, columns=["ImageId", "EncodedPixels"]).to_csv(tmp_path / "train.csv", index=False)
    cfg = _csv_cfg(tmp_path, id_column="ImageId", rle_column="EncodedPixels", rle_instances=True)
    samples = load_train_samples(cfg)
    assert samples[0].rles == ("9 5",) and samples[0].row_ends == (((2, 9), (4, 13)),)  # 0-based ends: 9 and 13
    want = rf"{tmp_path / 'train.csv'} line 4 \(id 'a'\): its RLE runs reach pixel 13, past the image's 3x4 = 12 pixels"
    with pytest.raises(RLERowError, match=want):
        check_train_samples(samples, cfg)
    with pytest.raises(RLERowError, match=want):  # and when read
        load_target(samples[0], cfg, (3, 4))
    assert load_target(samples[0], cfg, (4, 4))[..., 0].sum() == 5  # the same rows fit a 16-pixel image
    # Severstal: one row per image and class; class 2's row (line 3) is past the image, class 1's fine
    pd.DataFrame([("a", 1, "1 2"), ("a", 2, "12 2"), ("b", 1, "3 1")],
                 columns=["ImageId", "ClassId", "EncodedPixels"]).to_csv(tmp_path / "train.csv", index=False)
    cfg = _csv_cfg(tmp_path, id_column="ImageId", rle_column="EncodedPixels", class_column="ClassId", task="multilabel",
                   num_classes=2)
    with pytest.raises(RLERowError, match=r"line 3 \(id 'a', class 2\): RLE run 12 2 ends at pixel 13, past the image's 12"):
        check_train_samples(load_train_samples(cfg), cfg)


def test_a_train_csv_field_longer_than_the_csv_modules_limit_is_read(tmp_path):
    """One RLE field of a large image runs to megabytes (HuBMAP's kidney masks); Python's csv module refuses fields
    over 131,072 characters with a bare _csv.Error, which read_csv_strict's line count raised before training."""
    import csv

    _images(tmp_path, ["a", "b"], hw=(400, 500))  # 200,000 pixels: every other one, 100,000 runs
    long = " ".join(f"{p} 1" for p in range(1, 200_001, 2))
    assert len(long) > 131_072
    pd.DataFrame({"id": ["a", "b"], "rle_mask": [long, "1 5"]}).to_csv(tmp_path / "train.csv", index=False)
    cfg = _csv_cfg(tmp_path)
    a, b = load_train_samples(cfg)
    assert a.rles == (long,) and load_target(a, cfg, (400, 500))[..., 0].sum() == 100_000
    assert a.where.endswith("train.csv line 2") and b.where.endswith("train.csv line 3")
    assert csv.field_size_limit() == 131_072  # the process's own limit is left as it was


def test_custom_empty_token_and_audit_agree_with_training(tmp_path):
    _images(tmp_path, ["a", "b"])
    pd.DataFrame({"id": ["a", "b"], "rle_mask": ["1 1", "-"]}).to_csv(tmp_path / "train.csv", index=False)
    cfg = _csv_cfg(tmp_path, rle_empty_token="-")
    a, b = load_train_samples(cfg)
    assert _target(cfg, b) == [[0] * 4] * 3 and _target(cfg, a)[0] == [1, 0, 0, 0]
    res = audit(cfg)
    assert res.problems == [] and res.n_read == 2 and res.class_pixels == [1]


def test_siim_csv_audit_reads_instances_as_training(tmp_path):
    _siim(tmp_path, [("a", "0 2 3 2 4 1"), ("b", "-1"), ("c", " 1 1"), ("c", "-1"), ("c", "4 2")])
    res = audit(_csv_cfg(tmp_path, **SIIM))
    assert res.problems == [] and res.n_listed == 3 and res.class_pixels == [5 + 3]


@pytest.mark.parametrize("data, message", [
    ({"layout": "folder", "rle_index_base": 0}, "data.rle_index_base: describes the RLE rows of data.train_csv"),
    ({"rle_index_base": 2}, "data.rle_index_base: expected 0 or 1"),
    ({"rle_starts": "gaps"}, "data.rle_starts: 'gaps' is not one of 'absolute', 'relative'"),
    ({"layout": "folder", "instance_target": "borders"}, "data.instance_target: only used with data.instance_folders: true"),
    ({"layout": "folder", "instance_folders": True, "instance_border_px": 0}, "data.instance_border_px: expected >= 1"),
    # read only for borders: with union it was ignored (a config audit)
    ({"layout": "folder", "instance_folders": True, "instance_border_px": 3},
     "data.instance_border_px: only used with data.instance_target: borders"),
    ({"task": "multilabel", "num_classes": 2, "layout": "folder"}, "data.mask_per_class: a multilabel task in the folder"),
    ({"mask_per_class": "{id}_{cls}"}, "data.mask_per_class: describes mask files (data.layout: folder)"),
    ({"task": "multiclass", "num_classes": 2, "layout": "folder", "mask_per_class": "{id}_{cls}"},
     "data.mask_per_class: '{id}_{cls}': one binary file per class is a multilabel task's masks"),
    ({"task": "multilabel", "num_classes": 2, "layout": "folder", "mask_per_class": "{id}"},
     "needs {id} once and one of {cls} / {name}"),
    ({"task": "multilabel", "num_classes": 2, "layout": "folder", "mask_per_class": "{id}_{k}"}, "unknown field {k}"),
    ({"task": "multilabel", "num_classes": 2, "layout": "folder", "mask_per_class": "../{id}_{cls}"}, "without '..'"),
    ({"task": "multilabel", "num_classes": 2, "layout": "folder", "mask_per_class": "{name}/{id}"},
     "{name} needs the class names"),
    ({"task": "multilabel", "num_classes": 2, "layout": "folder", "mask_per_class": "{name}/{id}",
      "class_names": ["a/b", "c"]}, "data.class_names[0]: 'a/b' names a folder or file"),
    ({"task": "multilabel", "num_classes": 2, "layout": "folder", "mask_per_class": "{id}_{cls}", "ignore_index": 255},
     "data.ignore_index: per-class mask files are binary"),
    ({"layout": "folder", "missing_class_masks": "empty"}, "data.missing_class_masks: only used with data.mask_per_class"),
    # keys nothing reads in that layout were accepted silently (found by an audit)
    ({"train_masks": "no_such"}, "data.train_masks: describes mask files (data.layout: folder)"),
    ({"mask_ext": ".jpg"}, "data.mask_ext: describes mask files (data.layout: folder)"),
    ({"train_lists": ["a.txt"]}, "data.train_lists: describes mask files (data.layout: folder)"),
    ({"mask_threshold": 128}, "data.mask_threshold: describes mask files (data.layout: folder)"),
    ({"layout": "folder", "train_csv": "labels.csv"}, "data.train_csv: describes the RLE rows of data.train_csv (data.layout: csv)"),
    ({"layout": "folder", "id_column": "ImageId"}, "data.id_column: describes the RLE rows"),
    ({"layout": "folder", "rle_column": "EncodedPixels"}, "data.rle_column: describes the RLE rows"),
])
def test_new_data_keys_are_checked_when_the_config_loads(data, message):
    extra = {"submission": {"per_class": True}} if data.get("num_classes", 1) > 1 else {}
    with pytest.raises(ConfigError) as e:
        config_from_dict({"data": {"task": "binary", **data}, **extra})
    assert message in str(e.value) and "\n" not in str(e.value)


# ----------------------------------------------------------------------------- one mask file per class


def _per_class_cfg(root: Path, **data):
    return config_from_dict({"data": {"root": str(root), "task": "multilabel", "num_classes": 2, "layout": "folder",
                                      "train_images": "train/images", "train_masks": "train/masks", **data},
                             "folds": {"n_splits": 2}, "submission": {"per_class": True}})


M1 = np.array([[255, 255, 0, 0], [0, 0, 0, 0], [0, 0, 0, 255]], np.uint8)  # 0/255
M2 = np.array([[0, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0]], np.uint8)  # 0/1


def test_one_file_per_class_id_and_class_number(tmp_path):
    _images(tmp_path, ["a", "b"])
    _save(tmp_path / "train/masks/a_1.png", M1)
    _save(tmp_path / "train/masks/a_2.png", M2)
    _save(tmp_path / "train/masks/b_2.png", M2)  # b has no file for class 1
    with pytest.raises(DataError, match=r"b_1\.png: mask of class 1 \(class_1\) for image b\.png not found.*missing_class_masks: empty"):
        load_train_samples(_per_class_cfg(tmp_path, mask_per_class="{id}_{cls}"))
    cfg = _per_class_cfg(tmp_path, mask_per_class="{id}_{cls}", missing_class_masks="empty")
    a, b = load_train_samples(cfg)
    assert a.class_masks == (tmp_path / "train/masks/a_1.png", tmp_path / "train/masks/a_2.png") and b.class_masks[0] is None
    t = load_target(a, cfg, (3, 4))
    assert t.dtype == np.uint8 and t[..., 0].tolist() == (M1 > 0).astype(int).tolist() and t[..., 1].tolist() == M2.tolist()
    assert load_target(b, cfg, None)[..., 0].sum() == 0 and load_target(b, cfg, None)[..., 1].tolist() == M2.tolist()
    assert class_presence(a, cfg).tolist() == [True, True] and class_presence(b, cfg).tolist() == [False, True]
    check_train_samples([a, b], cfg)
    item = SegDataset([a], cfg, "valid")[0]
    assert tuple(item["target"].shape) == (2, 3, 4) and item["target"][0].tolist() == (M1 > 0).astype(float).tolist()
    res = audit(cfg)
    assert res.problems == [] and res.class_pixels == [3, 4] and res.images_with_class == [1, 2]


def test_one_folder_per_class_name_and_values_refused(tmp_path):
    _images(tmp_path, ["a"])
    _save(tmp_path / "train/masks/scratch/a.png", M1)
    _save(tmp_path / "train/masks/dent/a.png", M2)
    cfg = _per_class_cfg(tmp_path, mask_per_class="{name}/{id}", class_names=["scratch", "dent"])
    (a,) = load_train_samples(cfg)
    assert load_target(a, cfg, (3, 4))[..., 1].tolist() == M2.tolist()
    soft = M1.copy()
    soft[0, 2] = 128  # an anti-aliased edge
    _save(tmp_path / "train/masks/scratch/a.png", soft)
    with pytest.raises(DataError, match=r"scratch/a\.png: class mask holds values \[0, 128, 255\]; a class mask is binary"):
        load_target(a, cfg, (3, 4))
    cfg = _per_class_cfg(tmp_path, mask_per_class="{name}/{id}", class_names=["scratch", "dent"], mask_threshold=128)
    assert load_target(a, cfg, (3, 4))[0, :, 0].tolist() == [1, 1, 1, 0]  # 128 >= the threshold
    _save(tmp_path / "train/masks/dent/a.png", M2[:2])
    with pytest.raises(DataError, match=r"dent/a\.png: mask is 2x4 \(HxW\) but its image a\.png is 3x4"):
        load_target(a, cfg, (3, 4))


def test_one_rgb_file_per_class_reads_the_channel_data_mask_channel_names(tmp_path):
    """Per-class masks saved as RGB 0/255 (common on Kaggle): the error's hint, data.mask_channel, was refused with
    data.mask_per_class; now it reads that channel of each class file."""
    _images(tmp_path, ["a"])
    _save(tmp_path / "train/masks/a_1.png", np.stack([M1] * 3, -1))
    rgb2 = np.zeros((3, 4, 3), np.uint8)
    rgb2[..., 1] = M2 * 255  # class 2 in the green channel only
    _save(tmp_path / "train/masks/a_2.png", rgb2)
    plain = _per_class_cfg(tmp_path, mask_per_class="{id}_{cls}")
    with pytest.raises(DataError, match=r"a_1\.png: mask is RGB \(3 channels\).*set data\.mask_channel: 0"):
        load_target(load_train_samples(plain)[0], plain, (3, 4))
    cfg = _per_class_cfg(tmp_path, mask_per_class="{id}_{cls}", mask_channel=1)
    (a,) = load_train_samples(cfg)
    t = load_target(a, cfg, (3, 4))
    assert t[..., 0].tolist() == (M1 > 0).astype(int).tolist() and t[..., 1].tolist() == M2.tolist()
    cfg = _per_class_cfg(tmp_path, mask_per_class="{id}_{cls}", mask_channel=0)  # class 2's red channel is empty
    assert load_target(a, cfg, (3, 4))[..., 1].sum() == 0
    cfg = _per_class_cfg(tmp_path, mask_per_class="{id}_{cls}", mask_channel=3)
    with pytest.raises(DataError, match=r"a_1\.png: mask has 3 channels; data\.mask_channel 3 is outside 0\.\.2"):
        load_target(a, cfg, (3, 4))


# ----------------------------------------------------------------------------- object folders: touching borders


def _squares(root: Path, gap: int = 0) -> None:
    """Two 3x3 squares side by side in a 5x8 image: A in columns 1..3, B from column 4 + gap."""
    _save(root / "train/s/images/s.png", np.zeros((5, 8, 3), np.uint8))
    a = np.zeros((5, 8), np.uint8)
    a[1:4, 1:4] = 255
    b = np.zeros((5, 8), np.uint8)
    b[1:4, 4 + gap : 7 + gap] = 255
    _save(root / "train/s/masks/s_0.png", a)
    _save(root / "train/s/masks/s_1.png", b)


def _folder_cfg(root: Path, **data):
    return config_from_dict({"data": {"root": str(root), "task": "binary", "layout": "folder", "train_images": "train",
                                      "instance_folders": True, **data}, "folds": {"n_splits": 2}})


def test_touching_squares_are_separated_by_a_background_border(tmp_path):
    _squares(tmp_path)
    union = _folder_cfg(tmp_path)
    (s,) = load_train_samples(union)
    row = [0, 1, 1, 1, 1, 1, 1, 0]
    assert _target(union, s) == [[0] * 8, row, row, row, [0] * 8]
    # r = 1: column 3 of A is next to column 4 of B (and the other way round): both become background
    cfg = _folder_cfg(tmp_path, instance_target="borders")
    row = [0, 1, 1, 0, 0, 1, 1, 0]
    assert _target(cfg, s) == [[0] * 8, row, row, row, [0] * 8]
    # r = 2: columns 2..5 are within 2 pixels of both squares
    row = [0, 1, 0, 0, 0, 0, 1, 0]
    assert _target(_folder_cfg(tmp_path, instance_target="borders", instance_border_px=2), s) == [[0] * 8, row, row, row, [0] * 8]
    # the submission's instance writer (8-connected objects) finds two objects only in the bordered target
    dsb = RLESpec(order="F", instances=True)
    assert len(dsb.encode_rows(np.array(_target(union, s)))) == 1
    assert dsb.encode_rows(np.array(_target(cfg, s))) == ["7 3 12 3", "27 3 32 3"]


def test_objects_one_pixel_apart_are_left_as_they_are(tmp_path):
    _squares(tmp_path, gap=1)
    (s,) = load_train_samples(_folder_cfg(tmp_path))
    assert _target(_folder_cfg(tmp_path, instance_target="borders"), s) == _target(_folder_cfg(tmp_path), s)


def test_touching_borders_of_diagonal_and_overlapping_objects():
    a = np.zeros((3, 3), bool)
    a[0, 0] = True
    b = np.zeros((3, 3), bool)
    b[1, 1] = True  # diagonal neighbour of a: within 1 pixel
    assert touching_borders([a, b], 1)[[0, 1], [0, 1]].all()
    c = np.zeros((3, 3), bool)
    c[2, 2] = c[1, 1] = True  # overlaps b
    border = touching_borders([b, c], 1)
    assert border[1, 1] and border[2, 2]


def test_dsb_object_folders_with_borders_keep_every_component_inside_one_object():
    from scipy import ndimage

    root = shared_dataset("dsb2018_stage1_test")
    cfg = _folder_cfg(root, train_images="stage1_test", instance_target="borders")
    samples = load_train_samples(cfg)
    assert len(samples) == 11
    split = objects = components = 0
    for s in samples:
        files = sorted(s.mask.iterdir())
        owner = np.zeros(image_size(s.image), np.int32)
        for k, f in enumerate(files, start=1):
            owner[np.asarray(Image.open(f)) > 0] = k
        target = load_target(s, cfg, owner.shape)[..., 0]
        assert (target <= (owner > 0)).all()  # only ever removes object pixels
        labels, n = ndimage.label(target, structure=np.ones((3, 3)))
        for comp in range(1, n + 1):  # no component of the target spans two objects
            assert len(np.unique(owner[labels == comp])) == 1
        union_n = ndimage.label(owner > 0, structure=np.ones((3, 3)))[1]
        split += n - union_n
        objects, components = objects + len(files), components + n
        assert n >= union_n
    # the union merges the 1020 nuclei into 550 blobs; with the borders each nucleus is one component
    assert split == 1020 - 550 and objects == components == 1020


def test_dsb_official_instance_rows_read_as_a_csv_equal_the_object_files(tmp_path):
    root = shared_dataset("dsb2018_stage1_test")
    solution = pd.read_csv(root / "stage1_solution.csv", dtype=str, keep_default_na=False)
    ids = sorted(p.name for p in (root / "stage1_test").iterdir())[:3]
    (tmp_path / "images").mkdir()
    for i in ids:
        os.symlink(root / "stage1_test" / i / "images" / f"{i}.png", tmp_path / "images" / f"{i}.png")
    solution[solution.ImageId.isin(ids)].to_csv(tmp_path / "train.csv", index=False)
    cfg = _csv_cfg(tmp_path, id_column="ImageId", rle_column="EncodedPixels", train_images="images", rle_instances=True)
    samples = load_train_samples(cfg)
    assert [s.id for s in samples] == sorted(ids, key=lambda i: solution.index[solution.ImageId == i][0])
    for s in samples:
        hw = image_size(s.image)
        union = np.zeros(hw, bool)
        for f in (root / "stage1_test" / s.id / "masks").iterdir():
            union |= np.asarray(Image.open(f)) > 0
        assert (load_target(s, cfg, hw)[..., 0] == union).all()


# ----------------------------------------------------------------------------- the audit lists what training lists


def test_audit_of_image_label_pair_files(tmp_path):
    label = np.array([[1, 0, 2], [0, 0, 1]], np.uint8)
    for name in ("a", "b"):
        pair = np.concatenate([np.full((2, 3, 3), 40, np.uint8), np.stack([label] * 3, -1)], axis=1)
        _save(tmp_path / "img" / f"{name}.png", pair)
    cfg = config_from_dict({"data": {"root": str(tmp_path), "task": "multiclass", "num_classes": 3, "layout": "folder",
                                     "train_images": "img", "pair_split": "image_left", "mask_channel": 0},
                            "loss": {"ce": 1.0}, "submission": {"per_class": True}})
    res = audit(cfg)
    assert res.problems == [] and res.n_listed == res.n_read == 2
    assert res.class_pixels == [6, 4, 2] and res.image_sizes == {(2, 3): 2}
    assert [s.id for s in res.samples] == [s.id for s in load_train_samples(cfg)]


def test_audit_of_object_folders_with_a_problem_each(tmp_path):
    _squares(tmp_path)
    _save(tmp_path / "train/t/images/t.png", np.zeros((5, 8, 3), np.uint8))  # no masks folder
    _save(tmp_path / "train/u/masks/u_0.png", np.zeros((5, 8), np.uint8))  # no image
    cfg = _folder_cfg(tmp_path, instance_target="borders")
    res = audit(cfg)
    got = {(p.kind, Path(p.where).relative_to(tmp_path).as_posix()) for p in res.problems}
    assert got == {("missing_mask", "train/t/masks"), ("missing_file", "train/u/images/u.png")}
    assert res.n_read == 1 and res.class_pixels == [12]  # the two squares less their border columns
    with pytest.raises(DataError, match=r"train/t/masks: folder of object masks not found"):
        load_train_samples(cfg)


def test_an_empty_and_a_non_empty_row_for_one_image_and_class_are_refused(tmp_path):
    """Severstal style: `im,2,` and `im,2,5 1` said both 'no defect' and 'a defect'; the RLE won silently."""
    _images(tmp_path, ["im"])
    common = {"id_column": "ImageId", "class_column": "ClassId", "rle_column": "EncodedPixels", "num_classes": 2}
    for rows, lines in (([("im", "1", "1 2"), ("im", "2", ""), ("im", "2", "5 1")], (4, 3)),
                        ([("im", "1", "1 2"), ("im", "2", "5 1"), ("im", "2", "")], (4, 3))):
        pd.DataFrame(rows, columns=["ImageId", "ClassId", "EncodedPixels"]).to_csv(tmp_path / "train.csv", index=False)
        with pytest.raises(DataError, match=rf"line {lines[0]}: an empty and a non-empty row for image 'im' class 2 "
                                            rf"\(first at line {lines[1]}\)"):
            load_train_samples(_csv_cfg(tmp_path, task="multilabel", **common))
    rows = [("im", "1", "1 2"), ("im", "2", ""), ("im", "2", "")]  # two empty rows agree: one empty mask
    pd.DataFrame(rows, columns=["ImageId", "ClassId", "EncodedPixels"]).to_csv(tmp_path / "train.csv", index=False)
    (s,) = load_train_samples(_csv_cfg(tmp_path, task="multilabel", **common))
    assert load_target(s, _csv_cfg(tmp_path, task="multilabel", **common), (3, 4))[..., 1].sum() == 0
