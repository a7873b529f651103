"""Mask formats: one channel of an RGBA file, colour tables (exact and nearest with a cut-off),
value remapping with void, image|label pairs in one file, unknown values refused, DSB-style
object folders read as their union, CSV images without a row; then real files of each shared
dataset (skipped, saying why, without ../shared/data).

Every expected target below is worked out by hand from the pixels written."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from seg_toolkit.config import IGNORE_INDEX, ConfigError, config_from_dict, load_config
from seg_toolkit.data import DataError, SegDataset, load_list_samples, load_target, load_train_samples, read_image
from seg_toolkit.data.io import image_size
from seg_toolkit.data.colors import colors_to_ids
from seg_toolkit.data.sources import check_train_samples
from seg_toolkit.rle import RLESpec, rle_encode

from .conftest import shared_dataset

V = IGNORE_INDEX
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _save(path: Path, arr: np.ndarray, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **kw)
    return path


def _cfg(root: Path, **data):
    d = {"root": str(root), "layout": "folder", "train_images": "img", "train_masks": "lbl", **data}
    many = d.get("task") == "multiclass" and d.get("num_classes", 1) > 2 or d.get("task") == "multilabel" and d.get("num_classes", 1) > 1
    extra = {"submission": {"per_class": True}} if many else {}
    return config_from_dict({"data": d, "folds": {"n_splits": 2}, "loss": {"ce": 1.0} if d.get("task") == "multiclass"
                             else {"bce": 1.0}, **extra})


def _one(cfg) -> np.ndarray:
    (s,) = load_train_samples(cfg)
    return load_target(s, cfg, image_size(s.image, s.pair))


def _image(root: Path, h: int, w: int, name: str = "a") -> None:
    _save(root / "img" / f"{name}.png", np.full((h, w, 3), 7, np.uint8))


# ----------------------------------------------------------------------------- one channel


def test_class_id_from_the_red_channel_of_an_rgba_mask(tmp_path):
    red = np.array([[1, 2, 3], [0, 3, 1]], np.uint8)
    rgba = np.stack([red, np.full_like(red, 9), np.zeros_like(red), np.full_like(red, 255)], -1)  # G, B, A ignored
    _image(tmp_path, 2, 3)
    _save(tmp_path / "lbl/a.png", rgba)
    cfg = _cfg(tmp_path, task="multiclass", num_classes=4, mask_channel=0)
    assert _one(cfg).tolist() == [[1, 2, 3], [0, 3, 1]]
    with pytest.raises(DataError, match=r"a\.png: mask is RGBA \(4 channels\)"):  # not declared: refused
        _one(_cfg(tmp_path, task="multiclass", num_classes=4))
    with pytest.raises(DataError, match=r"a\.png: mask values \[3\] are outside the classes 0\.\.2"):
        _one(_cfg(tmp_path, task="multiclass", num_classes=3, mask_channel=0))


def test_mask_channel_on_a_single_channel_file_is_refused(tmp_path):
    _image(tmp_path, 2, 2)
    _save(tmp_path / "lbl/a.png", np.zeros((2, 2), np.uint8))
    with pytest.raises(DataError, match=r"a\.png: mask is L \(one channel\) but data\.mask_channel"):
        _one(_cfg(tmp_path, task="multiclass", num_classes=2, mask_channel=0))
    _save(tmp_path / "lbl/a.png", np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(DataError, match=r"a\.png: mask has 3 channels; data\.mask_channel 3 is outside 0\.\.2"):
        _one(_cfg(tmp_path, task="multiclass", num_classes=2, mask_channel=3))


# ----------------------------------------------------------------------------- colours

RED, GREEN, BLUE, BLACK, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (0, 0, 0), (255, 255, 255)
TABLE = {"mask_colors": [list(BLACK), list(RED), list(GREEN)], "mask_void_colors": [list(WHITE)]}


def test_exact_colours_map_through_the_config_table(tmp_path):
    _image(tmp_path, 2, 3)
    _save(tmp_path / "lbl/a.png", np.array([[RED, GREEN, BLACK], [WHITE, RED, RED]], np.uint8))
    cfg = _cfg(tmp_path, task="multiclass", num_classes=3, mask_format="colors", **TABLE)
    assert _one(cfg).tolist() == [[1, 2, 0], [V, 1, 1]]


def test_exact_colours_from_classes_csv_with_its_ignore_column(tmp_path):
    _image(tmp_path, 1, 4)
    _save(tmp_path / "lbl/a.png", np.array([[BLUE, RED, BLACK, BLUE]], np.uint8))
    (tmp_path / "classes.csv").write_text("id,name,r,g,b,ignore\n0,sky,0,0,255,0\n1,car,255,0,0,0\n2,void,0,0,0,1\n")
    cfg = _cfg(tmp_path, task="multiclass", num_classes=2, mask_format="colors", classes_csv="classes.csv")
    assert _one(cfg).tolist() == [[0, 1, V, 0]]


def test_the_ignore_column_is_a_flag_and_anything_else_is_refused_with_its_line(tmp_path):
    _image(tmp_path, 1, 4)
    _save(tmp_path / "lbl/a.png", np.array([[BLUE, RED, BLACK, BLUE]], np.uint8))
    # pandas writes a bool column as False/True: read as flags (before, any text but "" and "0" was void, so
    # "False" made every class void)
    (tmp_path / "classes.csv").write_text("id,name,r,g,b,ignore\n0,sky,0,0,255,False\n1,car,255,0,0,FALSE\n2,void,0,0,0,True\n")
    cfg = _cfg(tmp_path, task="multiclass", num_classes=2, mask_format="colors", classes_csv="classes.csv")
    assert _one(cfg).tolist() == [[0, 1, V, 0]]
    (tmp_path / "classes.csv").write_text("id,name,r,g,b,ignore\n0,sky,0,0,255,0\n1,car,255,0,0,0.5\n")
    cfg = _cfg(tmp_path, task="multiclass", num_classes=2, mask_format="colors", classes_csv="classes.csv")
    with pytest.raises(DataError, match=r"classes\.csv line 3: ignore '0\.5' is not a flag"):
        _one(cfg)


def test_binary_and_multilabel_classes_csv_ids_are_1_to_k_with_0_the_background(tmp_path):
    from seg_toolkit.data.colors import class_colors, class_names

    (tmp_path / "img").mkdir()
    (tmp_path / "classes.csv").write_text("id,name,r,g,b\n0,background,0,0,0\n1,salt,255,0,0\n")
    cfg = _cfg(tmp_path, task="binary", classes_csv="classes.csv")
    assert class_names(cfg) == ["salt"]  # was "background": id 0 listed made channel 0 read id 0
    assert class_colors(cfg).tolist() == [[255, 0, 0]]
    (tmp_path / "classes.csv").write_text("id,name\n0,crack\n1,dent\n")  # numbered from 0: each name one class off
    cfg = _cfg(tmp_path, task="multilabel", num_classes=2, classes_csv="classes.csv", mask_per_class="{id}_{cls}")
    with pytest.raises(DataError, match=r"multilabel classes are numbered 1\.\.2 \(0 is the background\), but this "
                                        r"classes CSV lists ids \[0, 1\] without 2"):
        class_names(cfg)
    (tmp_path / "classes.csv").write_text("id,name\n1,crack\n2,dent/scratch\n")
    cfg = _cfg(tmp_path, task="multilabel", num_classes=2, classes_csv="classes.csv", mask_per_class="{name}/{id}")
    with pytest.raises(DataError, match=r"classes\.csv line 3: name 'dent/scratch' names a folder or file"):
        class_names(cfg)


def test_unknown_colour_is_an_error_naming_file_and_colour(tmp_path):
    _image(tmp_path, 1, 3)
    _save(tmp_path / "lbl/a.png", np.array([[RED, (1, 2, 3), (1, 2, 3)]], np.uint8))
    cfg = _cfg(tmp_path, task="multiclass", num_classes=3, mask_format="colors", **TABLE)
    with pytest.raises(DataError, match=r"a\.png: 2 of 3 pixels have colours not in .*e\.g\. \[1, 2, 3\] x2"):
        _one(cfg)


def test_lossy_colours_nearest_within_the_cut_off_else_void(tmp_path):
    # (250,3,2): 6.2 from red -> 1; (3,3,3): 5.2 from black -> 0; (128,0,128): 180 from red and
    # black -> void; (2,250,1): 5.5 from green -> 2; (250,250,250): 8.7 from white (void) -> void
    pixels = [[(250, 3, 2), (3, 3, 3), (128, 0, 128)], [(2, 250, 1), (250, 250, 250), (250, 3, 2)]]
    _image(tmp_path, 2, 3)
    _save(tmp_path / "lbl/a.png", np.array(pixels, np.uint8))
    cfg = _cfg(tmp_path, task="multiclass", num_classes=3, mask_format="colors", mask_color_tolerance=10, **TABLE)
    assert _one(cfg).tolist() == [[1, 0, V], [2, V, 1]]
    with pytest.raises(DataError, match=r"a\.png: 6 of 6 pixels have colours not in .* \(5 distinct, e\.g\. \[250, 3, 2\] x2"):
        _one(_cfg(tmp_path, task="multiclass", num_classes=3, mask_format="colors", **TABLE))
    # mostly far from every colour: not a colour mask of this table (e.g. the photo half)
    rgb = np.array([[(128, 0, 128)] * 3, [(128, 0, 128), RED, RED]], np.uint8)
    with pytest.raises(DataError, match=r"4 of 6 pixels \(67%\) are farther than data\.mask_color_tolerance=10"):
        colors_to_ids(rgb, np.array([BLACK, RED], np.uint8), np.array([0, 1]), 10, "x.png")


def test_jpeg_colour_mask_needs_the_tolerance(tmp_path):
    _image(tmp_path, 8, 8)
    _save(tmp_path / "lbl/a.png", np.full((8, 8, 3), RED, np.uint8), format="JPEG")  # a JPEG named .png
    with pytest.raises(DataError, match=r"a\.png: mask is a JPEG file .*data\.mask_color_tolerance"):
        _one(_cfg(tmp_path, task="multiclass", num_classes=3, mask_format="colors", **TABLE))
    t = _one(_cfg(tmp_path, task="multiclass", num_classes=3, mask_format="colors", mask_color_tolerance=40, **TABLE))
    assert (t == 1).all()


# ----------------------------------------------------------------------------- value remapping


def test_trimap_remapped_with_void_and_unknown_values_refused(tmp_path):
    _image(tmp_path, 2, 3)
    _save(tmp_path / "lbl/a.png", np.array([[1, 2, 3], [2, 2, 1]], np.uint8))
    cfg = _cfg(tmp_path, task="binary", mask_values={1: 1, 2: 0, 3: "void"})
    assert _one(cfg)[..., 0].tolist() == [[1, 0, V], [0, 0, 1]]
    with pytest.raises(DataError, match=r"a\.png: binary mask holds values \[1, 2, 3\] besides 0.*data\.mask_values"):
        _one(_cfg(tmp_path, task="binary"))  # the old silent all-foreground reading
    _save(tmp_path / "lbl/a.png", np.array([[1, 2, 3], [4, 7, 1]], np.uint8))
    with pytest.raises(DataError, match=r"a\.png: mask values \[4, 7\] are not in data\.mask_values \(declared: \[1, 2, 3\]\)"):
        _one(cfg)


def test_multiclass_remap_of_16_bit_values(tmp_path):
    _image(tmp_path, 1, 4)
    _save(tmp_path / "lbl/a.png", np.array([[0, 1000, 65535, 1000]], np.uint16))
    cfg = _cfg(tmp_path, task="multiclass", num_classes=2, mask_values={0: 0, 1000: 1, 65535: "void"})
    assert _one(cfg).tolist() == [[0, 1, V, 1]]


# ----------------------------------------------------------------------------- image | label in one file


def _pair_file(path: Path, image_left: bool = True) -> tuple[np.ndarray, np.ndarray]:
    photo = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10
    label = np.array([[RED, GREEN, BLACK], [BLACK, BLACK, RED]], np.uint8)
    _save(path, np.concatenate([photo, label] if image_left else [label, photo], axis=1))
    return photo, label


@pytest.mark.parametrize("side", ["image_left", "image_right"])
def test_pair_file_image_and_label_halves_read_consistently(tmp_path, side):
    photo, _ = _pair_file(tmp_path / "img/a.png", image_left=side == "image_left")
    cfg = _cfg(tmp_path, task="multiclass", num_classes=3, mask_format="colors", pair_split=side, **TABLE)
    (s,) = load_train_samples(cfg)
    assert s.mask == s.image and image_size(s.image, s.pair) == (2, 3)
    assert (read_image(s.image, 3, pair=s.pair) == photo).all()
    assert load_target(s, cfg, (2, 3)).tolist() == [[1, 2, 0], [0, 0, 1]]
    for mode in ("train", "valid"):  # the dataset crops both halves the same way
        item = SegDataset([s], cfg, mode)[0]
        assert tuple(item["image"].shape) == (3, 2, 3) and item["target"].tolist() == [[1, 2, 0], [0, 0, 1]]
    # a list file may name an image|label file once
    (tmp_path / "list.txt").write_text("img/a.png\n")
    (s2,) = load_list_samples(cfg, ["list.txt"])
    assert s2.pair == s.pair and load_target(s2, cfg, (2, 3)).tolist() == [[1, 2, 0], [0, 0, 1]]


def test_pair_split_top_bottom_at_and_odd_width(tmp_path):
    photo = np.full((2, 3, 3), 50, np.uint8)
    label = np.array([[2, 2, 0], [1, 0, 0]], np.uint8)
    _save(tmp_path / "img/a.png", np.concatenate([np.stack([label] * 3, -1), photo], axis=0))  # label on top
    cfg = _cfg(tmp_path, task="multiclass", num_classes=3, pair_split="image_bottom", mask_channel=1)
    (s,) = load_train_samples(cfg)
    assert (read_image(s.image, 3, pair=s.pair) == 50).all() and load_target(s, cfg, (2, 3)).tolist() == label.tolist()
    _save(tmp_path / "img/a.png", np.zeros((2, 5, 3), np.uint8))
    cfg = _cfg(tmp_path, task="multiclass", num_classes=3, pair_split="image_left", mask_channel=0)
    with pytest.raises(DataError, match=r"a\.png: width 5 is odd.*data\.pair_split_at"):
        read_image(tmp_path / "img/a.png", 3, pair=load_train_samples(cfg)[0].pair)
    cfg = _cfg(tmp_path, task="multiclass", num_classes=3, pair_split="image_left", pair_split_at=3, mask_channel=0)
    (s,) = load_train_samples(cfg)
    assert read_image(s.image, 3, pair=s.pair).shape == (2, 3, 3)
    with pytest.raises(DataError, match=r"a\.png: mask is 2x2 \(HxW\) but the image part of the same file is 2x3"):
        load_target(s, cfg, (2, 3))


# ----------------------------------------------------------------------------- DSB-style object folders


def test_instance_folders_read_as_the_union_of_their_object_masks(tmp_path):
    _save(tmp_path / "train/a/images/a.png", np.zeros((2, 3, 3), np.uint8))
    _save(tmp_path / "train/a/masks/a_0.png", np.array([[255, 0, 0], [0, 0, 0]], np.uint8))
    _save(tmp_path / "train/a/masks/a_1.png", np.array([[0, 0, 0], [0, 255, 255]], np.uint8))
    _save(tmp_path / "train/b/images/b.png", np.zeros((2, 3, 3), np.uint8))
    (tmp_path / "train/b/masks").mkdir()  # no object: an empty mask
    cfg = _cfg(tmp_path, task="binary", train_images="train", instance_folders=True)
    a, b = load_train_samples(cfg)
    assert (a.id, b.id) == ("a", "b") and a.mask == tmp_path / "train/a/masks"
    assert load_target(a, cfg, (2, 3))[..., 0].tolist() == [[1, 0, 0], [0, 1, 1]]
    assert load_target(b, cfg, (2, 3)).sum() == 0
    _save(tmp_path / "train/a/masks/a_1.png", np.array([[0, 0, 0], [0, 255, 7]], np.uint8))
    with pytest.raises(DataError, match=r"a_1\.png: object mask holds values \[7, 255\] besides 0"):
        load_target(a, cfg, (2, 3))
    with pytest.raises(ConfigError, match="data.instance_folders: the union of object masks is a binary mask"):
        _cfg(tmp_path, task="multiclass", num_classes=2, instance_folders=True)


def test_instance_folders_with_a_threshold_read_each_object_file_once(tmp_path):
    """``mask_threshold`` applies to each lossy object file; the union (0/1) is not thresholded again (it was, and
    every DSB target read with ``mask_threshold: 128`` came out empty)."""
    from seg_toolkit.data.folds import class_presence

    _save(tmp_path / "train/a/images/a.png", np.zeros((2, 3, 3), np.uint8))
    _save(tmp_path / "train/a/masks/a_0.png", np.array([[250, 3, 0], [0, 0, 0]], np.uint8))  # JPEG-like noise
    _save(tmp_path / "train/a/masks/a_1.png", np.array([[0, 0, 0], [0, 200, 140]], np.uint8))
    _save(tmp_path / "train/b/images/b.png", np.zeros((2, 3, 3), np.uint8))
    _save(tmp_path / "train/b/masks/b_0.png", np.array([[9, 0, 0], [0, 0, 100]], np.uint8))  # all below 128
    cfg = _cfg(tmp_path, task="binary", train_images="train", instance_folders=True, mask_threshold=128)
    a, b = load_train_samples(cfg)
    assert load_target(a, cfg, (2, 3))[..., 0].tolist() == [[1, 0, 0], [0, 1, 1]]
    assert load_target(b, cfg, (2, 3)).sum() == 0
    assert class_presence(a, cfg).tolist() == [True] and class_presence(b, cfg).tolist() == [False]


# ----------------------------------------------------------------------------- CSV images without a row


def _csv_comp(root: Path) -> Path:
    for i in range(3):
        _save(root / "train/images" / f"im{i}.png", np.zeros((4, 5, 3), np.uint8))
    mask = np.zeros((4, 5), np.uint8)
    mask[1:3, 1:4] = 1
    pd.DataFrame({"id": ["im0", "im2"], "rle_mask": [rle_encode(mask), ""]}).to_csv(root / "train.csv", index=False)
    return root


def _csv_cfg(root: Path, **data):
    return config_from_dict({"data": {"root": str(root), "task": "binary", "layout": "csv", **data}, "folds": {"n_splits": 2}})


def test_unlisted_csv_images_each_choice(tmp_path, caplog):
    root = _csv_comp(tmp_path)
    with caplog.at_level(logging.WARNING, logger="seg_toolkit.data.csv_rows"):
        assert [s.id for s in load_train_samples(_csv_cfg(root))] == ["im0", "im2"]  # default: ignore
    assert "1 image(s) in" in caplog.text and "'im1.png'" in caplog.text and "not used for training" in caplog.text
    cfg = _csv_cfg(root, unlisted_images="empty")
    samples = load_train_samples(cfg)
    assert [s.id for s in samples] == ["im0", "im2", "im1"] and samples[2].rles == ("",)
    assert load_target(samples[2], cfg, (4, 5)).sum() == 0 and load_target(samples[0], cfg, (4, 5)).sum() == 6
    with pytest.raises(DataError, match=r"train\.csv: 1 image\(s\) in .* have no row .*\['im1\.png'\].*unlisted_images: error"):
        load_train_samples(_csv_cfg(root, unlisted_images="error"))


def test_unlisted_images_in_a_per_class_csv_get_one_empty_string_per_class(tmp_path):
    for i in range(2):
        _save(tmp_path / "train/images" / f"im{i}.jpg", np.zeros((4, 5, 3), np.uint8))
    pd.DataFrame({"ImageId": ["im0.jpg"], "ClassId": ["2"], "EncodedPixels": ["1 3"]}).to_csv(tmp_path / "train.csv", index=False)
    cfg = config_from_dict({"data": {"root": str(tmp_path), "task": "multilabel", "num_classes": 3, "layout": "csv",
                                     "id_column": "ImageId", "class_column": "ClassId", "rle_column": "EncodedPixels",
                                     "image_ext": ".jpg", "unlisted_images": "empty"},
                            "submission": {"per_class": True}})
    samples = load_train_samples(cfg)
    assert [(s.id, s.rles) for s in samples] == [("im0.jpg", ("", "1 3", "")), ("im1.jpg", ("", "", ""))]


# ----------------------------------------------------------------------------- load-time checks


@pytest.mark.parametrize("data, message", [
    ({"layout": "csv", "mask_channel": 0}, "data.mask_channel: describes mask files (data.layout: folder)"),
    ({"unlisted_images": "empty"}, "data.unlisted_images: applies to the csv layout"),
    ({"mask_channel": 5}, "data.mask_channel: expected 0..3"),
    ({"mask_colors": [[0, 0, 0]]}, "data.mask_colors: only used with data.mask_format: colors"),
    ({"mask_format": "colors"}, "data.mask_format: colors needs a colour table"),
    ({"mask_format": "colors", "mask_colors": [[0, 0, 0], [1, 2]]}, "data.mask_colors[1]: expected [r, g, b]"),
    ({"mask_format": "colors", "mask_colors": [[0, 0, 0], [9, 9, 9]], "mask_void_colors": [[9, 9, 9]]},
     "data.mask_void_colors[0]: colour [9, 9, 9] is listed twice (also data.mask_colors[1])"),
    ({"mask_format": "colors", "mask_colors": [[0, 0, 0], [9, 9, 9], [8, 8, 8]]}, "data.mask_colors: 3 colours for a binary task"),
    ({"mask_format": "colors", "mask_colors": [[0, 0, 0], [9, 9, 9]], "mask_color_tolerance": 0},
     "data.mask_color_tolerance: expected a distance > 0"),
    ({"mask_values": {1: 2}}, "data.mask_values.1: class 2 is outside 0..1"),
    ({"mask_values": {1: "border"}}, "data.mask_values.1: 'border' is not a class id or 'void'"),
    ({"mask_values": {1: 1}, "ignore_index": 255}, "data.ignore_index: with data.mask_values, declare the void value there"),
    ({"mask_values": {1: 1}, "mask_threshold": 128}, "data.mask_values: declares every value exactly"),
    ({"pair_split_at": 4}, "data.pair_split_at: only used with data.pair_split"),
    ({"pair_split": "image_left", "image_ext": ".jpg", "mask_format": "colors", "mask_colors": [[0, 0, 0], [9, 9, 9]]},
     "data.pair_split: the labels are in the '.jpg' images, a lossy format; set data.mask_color_tolerance"),
])
def test_mask_keys_are_checked_when_the_config_loads(data, message):
    base = {"task": "binary", "layout": "folder"}
    with pytest.raises(ConfigError) as e:
        config_from_dict({"data": {**base, **data}})
    assert message in str(e.value) and "\n" not in str(e.value)


# ----------------------------------------------------------------------------- the shared datasets


def _with_root(name: str, root: Path):
    return load_config(CONFIGS / f"{name}_cpu.yaml", [f"data.root={root}"])


def test_carla_red_channel_ids(tmp_path):
    root = shared_dataset("carla_unet") / "data"
    cfg = _with_root("carla", root)
    samples = load_train_samples(cfg)
    assert len(samples) == 10
    seen: set[int] = set()
    for s in samples:
        t = load_target(s, cfg, read_image(s.image, 3, pair=s.pair).shape[:2])
        raw = np.asarray(Image.open(s.mask))
        assert t.shape == (480, 640) and (t == raw[..., 0]).all() and not raw[..., 1:3].any()
        seen |= set(np.unique(t).tolist())
    # PROVENANCE: red-channel ids 1..14 and 17..22 here, never 0 (15, 16 absent)
    assert seen == set(range(1, 15)) | set(range(17, 23))
    check_train_samples(samples, cfg)


def test_cityscapes_pair_decodes_to_known_classes():
    root = shared_dataset("cityscapes_pairs") / "cityscapes"
    cfg = _with_root("cityscapes", root)
    samples = load_train_samples(cfg)
    assert len(samples) == 372
    s = next(x for x in samples if x.id == "1")
    image = read_image(s.image, 3, pair=s.pair)
    t = load_target(s, cfg, image.shape[:2])
    assert image.shape == (256, 256, 3) and t.shape == (256, 256)
    assert (t != V).mean() > 0.7  # mostly known classes (void: black regions and JPEG edges)
    bottom = np.bincount(t[128:][t[128:] != V], minlength=19)
    assert bottom.argmax() == 0  # road
    # the photo half is not a colour label image: reading it as one is refused, not guessed
    wrong = load_config(CONFIGS / "cityscapes_cpu.yaml", [f"data.root={root}", "data.pair_split=image_right"])
    with pytest.raises(DataError, match=r"\d\.jpg: .*%.* farther than data\.mask_color_tolerance=40"):
        check_train_samples(load_train_samples(wrong), wrong)
    check_train_samples(samples, cfg)


def test_pets_trimap_and_quirk_files():
    root = shared_dataset("oxford_pets")
    # the config leaves out Abyssinian_34 (data.exclude_ids: its trimap has no pet); read here with it
    assert len(load_train_samples(_with_root("pets", root))) == 135
    cfg = load_config(CONFIGS / "pets_cpu.yaml", [f"data.root={root}", "data.exclude_ids=[]"])
    by_id = {s.id: s for s in load_train_samples(cfg)}
    assert len(by_id) == 136
    s = by_id["Abyssinian_1"] if "Abyssinian_1" in by_id else next(iter(by_id.values()))
    raw = np.asarray(Image.open(s.mask))
    t = load_target(s, cfg, raw.shape)[..., 0]
    assert set(np.unique(raw)) <= {1, 2, 3}
    assert ((raw == 1) == (t == 1)).all() and ((raw == 2) == (t == 0)).all() and ((raw == 3) == (t == V)).all()
    gif, png = by_id["Abyssinian_34"], by_id["Abyssinian_5"]  # a GIF and an RGBA PNG named .jpg
    assert read_image(gif.image, 3).shape == (202, 250, 3) and read_image(png.image, 3).shape == (150, 200, 3)
    assert (load_target(gif, cfg, (202, 250)) == 0).all()  # its trimap is all background
    assert load_target(png, cfg, (150, 200)).shape == (150, 200, 1)
    item = SegDataset([gif, png], cfg, "train")[1]
    assert tuple(item["image"].shape) == (3, 160, 160)


def test_dsb_object_folders_union_equals_the_official_rle_rows():
    root = shared_dataset("dsb2018_stage1_test")
    cfg = config_from_dict({"data": {"root": str(root), "task": "binary", "layout": "folder",
                                     "train_images": "stage1_test", "instance_folders": True}})
    samples = load_train_samples(cfg)
    assert len(samples) == 11
    solution = pd.read_csv(root / "stage1_solution.csv", dtype=str, keep_default_na=False)
    for s in samples[:2]:
        hw = image_size(s.image)
        union = np.zeros(hw, bool)
        for rle in solution[solution.ImageId == s.id].EncodedPixels:
            union |= RLESpec(order="F").decode(rle, hw).astype(bool)
        assert (load_target(s, cfg, hw)[..., 0] == union).all()


def test_masks_the_threshold_reads_as_empty_are_named_when_folds_are_made(tmp_path, caplog):
    """A set of 0/255 and 0/1 masks under mask_threshold: 128 read every 0/1 mask as empty, without a word."""
    from seg_toolkit.data.folds import presence_matrix

    for name, fg in (("a", 255), ("b", 1), ("c", 0), ("d", 1)):
        _image(tmp_path, 2, 3, name)
        _save(tmp_path / f"lbl/{name}.png", np.array([[fg, 0, 0], [0, 0, 0]], np.uint8))
    cfg = _cfg(tmp_path, task="binary", mask_threshold=128)
    samples = load_train_samples(cfg)
    with caplog.at_level(logging.WARNING):
        presence = presence_matrix(samples, cfg)
    assert presence[:, 0].tolist() == [True, False, False, False]
    assert "2 of 4 masks hold non-zero values but none >= data.mask_threshold=128" in caplog.text
    assert "b.png, largest value 1; " in caplog.text and "d.png: 1" in caplog.text


def test_display_colours_stay_distinct_past_twelve_classes(tmp_path):
    """The palette was cycled every 12 classes: Cityscapes' 19 classes without a colour table had c and c + 12 alike."""
    from seg_toolkit.data.colors import class_colors

    (tmp_path / "img").mkdir()
    cfg = _cfg(tmp_path, task="multiclass", num_classes=40)
    colors = class_colors(cfg)
    assert colors.shape == (40, 3) and len({tuple(c) for c in colors.tolist()}) == 40
    assert colors[0].tolist() == [230, 25, 75] and colors[12].tolist() == [170, 110, 40]  # was [230, 25, 75] again
    assert not any(c.tolist() in ([128, 128, 128], [0, 0, 0], [255, 255, 255]) for c in colors)  # void grey, black, white
