"""Data: both Kaggle layouts, targets, folds, and the errors bad input gets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from seg_toolkit.config import IGNORE_INDEX, config_from_dict
from seg_toolkit.data import (
    DataError, SegDataset, load_or_make_folds, load_target, load_test_samples, load_train_samples, make_folds,
    read_image, read_mask,
)
from seg_toolkit.rle import rle_encode
from seg_toolkit.data.dataset import build_transforms

from .conftest import demo_dict


def _png(path: Path, arr: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode=mode).save(path) if mode else Image.fromarray(arr).save(path)
    return path


def _binary_csv_comp(tmp_path: Path, n: int = 10, hw=(20, 30)) -> Path:
    """A TGS-like binary competition: id,rle_mask with empty rows for empty masks."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        _png(tmp_path / "train/images" / f"im{i}.png", rng.integers(0, 255, (*hw, 3), dtype=np.uint8))
        mask = np.zeros(hw, np.uint8)
        if i % 2:
            mask[2 : 5 + i, 3:9] = 1
        rows.append({"id": f"im{i}", "rle_mask": rle_encode(mask)})
    pd.DataFrame(rows).to_csv(tmp_path / "train.csv", index=False)
    return tmp_path


def _binary_cfg(root: Path, **data):
    return config_from_dict({"data": {"root": str(root), "task": "binary", "num_classes": 1, **data},
                             "folds": {"n_splits": 2}})


def test_a_transform_that_fails_on_an_image_names_the_file_and_its_size(tmp_path):
    """A crop larger than the images failed in albumentations at the first batch without naming a file."""
    root = _binary_csv_comp(tmp_path, n=2)
    cfg = config_from_dict({"data": {"root": str(root), "task": "binary", "num_classes": 1}, "folds": {"n_splits": 2},
                            "transforms": {"train": [{"RandomCrop": {"height": 32, "width": 32}}]}})
    ds = SegDataset(load_train_samples(cfg), cfg, mode="train")
    with pytest.raises(DataError, match=r"im0\.png: transforms\.train failed on this 20x30 image \(CropSizeError: .*\(32, 32\) "
                                        r"vs \(20, 30\)\); a crop larger than some images needs PadIfNeeded \(border_mode: 4, reflect"):
        ds[0]
    assert SegDataset(load_train_samples(cfg), cfg, mode="valid")[0]["image"].shape == (3, 20, 30)  # no crop there


def test_a_crop_larger_than_the_smallest_images_is_refused_before_the_run_folder(demo_root, tmp_path):
    """RandomCrop 40x60 on the demo's 48x64 images but one of 36x64: it failed at that image's first batch, after
    config.yaml, folds.csv and folds.json were written (the corrected config then refused as another run's)."""
    import shutil

    from PIL import Image

    from seg_toolkit.cv import run_cv
    from seg_toolkit.data.dataset import check_train_transforms
    from seg_toolkit.run import Run

    from .conftest import demo_dict

    root = tmp_path / "data"
    shutil.copytree(demo_root, root)
    small = sorted((root / "train" / "images").iterdir())[5]
    Image.open(small).crop((0, 0, 64, 36)).save(small)  # its RLE rows (train.csv) end within the 36x64 pixels
    crop = [{"HorizontalFlip": {"p": 0.5}}, {"RandomCrop": {"height": 40, "width": 60}}]
    cfg = config_from_dict(demo_dict(root, tmp_path / "runs", transforms={"train": crop, "resize": [40, 60]}))
    with pytest.raises(DataError, match=rf"{small.name}: transforms\.train failed on this 36x64 image \(CropSizeError: .*"
                                        r"a crop larger than some images needs PadIfNeeded \(border_mode: 4, reflect"):
        run_cv(cfg)
    assert not Run.of(cfg).dir.exists()
    # padded first, every size passes; the 48x64 images alone pass the crop too
    padded = config_from_dict(demo_dict(root, tmp_path / "runs", transforms={
        "train": [{"PadIfNeeded": {"min_height": 40, "min_width": 60}}, *crop], "resize": [40, 60]}))
    samples = load_train_samples(padded)
    check_train_transforms(samples, padded)
    check_train_transforms([s for s in samples if s.image != small], cfg)


def test_pixels_a_pad_brings_in_are_void_unless_the_spec_says_otherwise(tmp_path):
    """albumentations fills a padded mask with 0: CamVid's class 0 is Sky, a binary task's background. Padding is no
    data, so it is void (255, never learned or scored) unless the spec gives fill_mask."""
    root = _binary_csv_comp(tmp_path, n=2)

    def target(spec):
        cfg = config_from_dict({"data": {"root": str(root), "task": "binary", "num_classes": 1}, "folds": {"n_splits": 2},
                                "transforms": {"train": [{"PadIfNeeded": spec}]}})
        return SegDataset(load_train_samples(cfg), cfg, mode="train")[0]["target"][0]

    padded = target({"min_height": 24, "min_width": 30, "border_mode": 0})  # 20x30 -> 24x30: 2 rows above, 2 below
    assert padded.shape == (24, 30)
    assert (padded[:2] == IGNORE_INDEX).all() and (padded[-2:] == IGNORE_INDEX).all()
    assert not (padded[2:-2] == IGNORE_INDEX).any()
    assert (target({"min_height": 24, "min_width": 30, "border_mode": 0, "fill_mask": 0})[:2] == 0).all()


def test_a_dropouts_hole_keeps_the_mask_and_mask_dropout_makes_background(tmp_path):
    """The void fill is for pixels a pad or warp brings in; a dropout's hole is image data hidden, and its mask
    stays (albumentations' default for CoarseDropout and the like: fill_mask None); MaskDropout makes the objects it
    drops background, its point. Both had become void (up to a fifth of the pixels never learned)."""
    root = _binary_csv_comp(tmp_path, n=2)
    image = np.full((20, 30, 3), 100, np.uint8)
    mask = np.zeros((20, 30), np.uint8)
    mask[4:12, 5:20] = 1

    def run(spec):
        cfg = config_from_dict({"data": {"root": str(root), "task": "binary", "num_classes": 1}, "folds": {"n_splits": 2},
                                "transforms": {"train": [spec]}})
        return build_transforms(cfg, train=True)(image=image, mask=mask)

    holes = run({"CoarseDropout": {"num_holes_range": [4, 4], "hole_height_range": [6, 6], "hole_width_range": [6, 6],
                                   "p": 1.0}})
    assert (holes["image"] != holes["image"].max()).any()  # holes were cut in the image
    assert np.array_equal(holes["mask"], mask)  # and the mask is as it was
    dropped = run({"MaskDropout": {"max_objects": 1, "p": 1.0}})["mask"]
    assert dropped.max() == 0 and IGNORE_INDEX not in dropped  # the one object became background


def test_transforms_that_change_what_a_target_pixel_means_are_refused_at_load(tmp_path):
    from seg_toolkit.config import ConfigError

    def load(train, resize=None):
        return config_from_dict({"data": {"task": "binary", "num_classes": 1},
                                 "transforms": {"train": train, "resize": resize}})

    # a linear mask interpolation blends class ids and void into values that are neither
    with pytest.raises(ConfigError, match=r"transforms.train\[0\]: Affine: mask_interpolation 1 blends"):
        load([{"Affine": {"rotate": [-20, 20], "mask_interpolation": 1}}])
    # a fixed resize in the training list trains at another scale than validation and prediction see
    for name, args in (("Resize", {"height": 24, "width": 32}), ("LongestMaxSize", {"max_size": 32})):
        with pytest.raises(ConfigError, match=rf"transforms.train\[0\]: {name}: .*set transforms.resize"):
            load([{name: args}])
    # a quarter turn before a non-square resize is stretched back: a 20x20 square trained as 15x27
    with pytest.raises(ConfigError, match=r"transforms.train\[0\].OneOf.transforms\[1\]: RandomRotate90 swaps height and "
                                          r"width, and transforms.resize \[48, 64\] then stretches"):
        load([{"OneOf": {"transforms": [{"HorizontalFlip": {}}, {"RandomRotate90": {}}], "p": 0.5}}], [48, 64])
    load([{"RandomRotate90": {}}], [64, 64])  # square: the shape is kept
    load([{"RandomRotate90": {}}])  # no resize: each image keeps its turned shape


def test_masks_are_resized_by_the_pixel_centre_as_their_images():
    """An audit measured transforms.resize's mask 1.5 source pixels up and left of its image at 200 -> 50 (OpenCV's
    plain nearest takes each output pixel's top-left source pixel): the model learned the shift and kept it in every
    prediction. Masks are resized by the nearest pixel centre, as the scored ground truth is, in transforms.resize and
    in the training list's resizing crops; a coordinate image shows where each mask pixel came from."""
    from seg_toolkit.data.scored import nearest_resize

    H = W = 200
    rows, cols = np.mgrid[0:H, 0:W]
    image = np.stack([rows, cols, np.ones_like(rows)], -1).astype(np.float32)  # float: resized, never rescaled
    mask = rows.astype(np.uint8)  # each pixel's own row (< 256)

    def offsets(train, resize, seeds=3):
        cfg = config_from_dict({"data": {"task": "binary", "num_classes": 1},
                                "transforms": {"train": train, "resize": resize, "mean": [0] * 3, "std": [1] * 3}})
        t = build_transforms(cfg, train=True)
        out = []
        for seed in range(seeds):
            t.set_random_seed(seed)
            o = t(image=image, mask=mask)  # Normalize with mean 0, std 1 divides by 255
            got_rows, inside = o["image"][..., 0] * 255.0, o["image"][..., 2] * 255.0 > 0.999
            inside[:2], inside[-2:], inside[:, :2], inside[:, -2:] = False, False, False, False
            out.append(float((o["mask"].astype(float) - got_rows)[inside].mean()))
        return out

    # 200 -> 40: the centre of output row i is source row 5i + 2; its image row is the mean of 5i .. 5i + 4 = 5i + 2
    assert offsets([], [40, 40], seeds=1) == [pytest.approx(0.0, abs=1e-3)]  # was -2.0
    # the scored ground truth's rule exactly, ties included: 256 -> 96 puts every third centre on a pixel edge, where
    # OpenCV's pixel-centred nearest takes the earlier pixel (17 of 96 rows), the scored truth the later
    cfg = config_from_dict({"data": {"task": "binary", "num_classes": 1}, "transforms": {"resize": [96, 50]}})
    ties = (np.arange(256)[:, None] + np.zeros((1, 200), int)).astype(np.uint8)
    resized = build_transforms(cfg, train=False)(image=np.zeros((256, 200, 3), np.uint8), mask=ties)["mask"]
    assert np.array_equal(resized, nearest_resize(ties, (96, 50)))
    assert resized[:4, 0].tolist() == [1, 4, 6, 9]  # centres 1.33, 4.0, 6.67, 9.33 of 256 / 96: row 4 at the tie
    for spec in ({"RandomResizedCrop": {"size": [64, 64], "scale": [0.3, 0.6]}},
                 {"RandomSizedCrop": {"min_max_height": [90, 150], "size": [64, 64]}},
                 {"RandomScale": {"scale_limit": [-0.6, -0.6], "p": 1.0}}):  # 0.4: 200 -> 80, at 2.5
        assert max(map(abs, offsets([spec], None))) < 0.05, spec  # was about -1.0, -0.7, -0.75
    # the pixel-centred nearest may be named; a blending one is refused (above)
    config_from_dict({"data": {"task": "binary", "num_classes": 1},
                      "transforms": {"train": [{"RandomScale": {"scale_limit": 0.2, "mask_interpolation": 6}}]}})


@pytest.mark.parametrize("spec", [{"ElasticTransform": {"alpha": 30, "sigma": 5, "p": 1.0}},
                                  {"GridDistortion": {"distort_limit": 0.5, "p": 1.0}},
                                  {"Perspective": {"scale": [0.2, 0.2], "fit_output": True, "p": 1.0}},
                                  {"Rotate": {"limit": [30, 30], "p": 1.0}}])
def test_pixels_a_warp_brings_in_are_void_in_every_class_channel(spec):
    """OpenCV's remap and warps fill a single number into a mask's first channel only: a multilabel target's other
    classes read 0 (trained as absent) where the image was filled. Every channel is void there."""
    cfg = config_from_dict({"data": {"task": "multilabel", "num_classes": 5, "class_column": "c"},
                            "submission": {"per_class": True}, "transforms": {"train": [spec]}})
    t = build_transforms(cfg, train=True)
    t.set_random_seed(0)
    out = t(image=np.full((64, 64, 3), 200, np.uint8), mask=np.ones((64, 64, 5), np.uint8))
    filled = (out["mask"] != 1).any(-1)
    assert filled.any()  # the warp brought pixels in
    assert (out["mask"][filled] == IGNORE_INDEX).all()


def test_a_warp_that_cannot_fill_the_mask_is_refused():
    from seg_toolkit.config import ConfigError

    with pytest.raises(ConfigError, match=r"transforms.train\[0\]: GridElasticDeform: .* no fill_mask"):
        config_from_dict({"data": {"task": "binary", "num_classes": 1},
                          "transforms": {"train": [{"GridElasticDeform": {"num_grid_xy": [4, 4], "magnitude": 10}}]}})


def test_a_crop_around_the_mask_is_not_drawn_to_void(tmp_path):
    """CropNonEmptyMaskIfExists crops around non-zero mask pixels: the void a pad before it adds (the TGS 101 -> 128
    pattern) drew every crop of an empty image to the border; void is now one of its ignore_values."""
    root = _binary_csv_comp(tmp_path, n=2)
    cfg = config_from_dict({"data": {"root": str(root), "task": "binary", "num_classes": 1}, "folds": {"n_splits": 2},
                            "transforms": {"train": [{"CropNonEmptyMaskIfExists": {"height": 8, "width": 8}}]}})
    crop = build_transforms(cfg, train=True).transforms[0]
    crop.set_random_seed(0)
    assert list(crop.ignore_values) == [IGNORE_INDEX]
    mask = np.zeros((40, 40), np.uint8)
    mask[:, :2] = IGNORE_INDEX  # void, no foreground
    touching = sum(IGNORE_INDEX in crop(image=np.zeros((40, 40, 3), np.uint8), mask=mask)["mask"] for _ in range(200))
    assert touching < 100  # uniform crops: 8 of 33 columns of origin reach the strip (~24%); it was 200 of 200


# ----------------------------------------------------------------------------- csv layout


def test_per_class_csv_targets_match_rle(demo_root):
    cfg = config_from_dict(demo_dict(demo_root, Path("unused")))
    samples = load_train_samples(cfg)
    assert len(samples) == 12 and all(len(s.rles) == 3 for s in samples)
    df = pd.read_csv(demo_root / "train.csv", dtype=str, keep_default_na=False)
    s = samples[3]
    target = load_target(s, cfg, (48, 64))
    assert target.shape == (48, 64, 3) and target.dtype == np.uint8
    for c in range(3):
        rle = df[(df.ImageId == s.id) & (df.ClassId == str(c + 1))].EncodedPixels.item()
        assert rle_encode(target[:, :, c], "F") == rle


def test_binary_csv_with_empty_rows(tmp_path):
    root = _binary_csv_comp(tmp_path)
    cfg = _binary_cfg(root)
    samples = load_train_samples(cfg)
    assert [len(s.rles) for s in samples] == [1] * 10
    assert load_target(samples[0], cfg, (20, 30)).sum() == 0
    t = load_target(samples[1], cfg, (20, 30))
    assert t.shape == (20, 30, 1) and t.sum() == 4 * 6  # rows 2..5, cols 3..8


def test_csv_errors_name_file_and_row(tmp_path):
    root = _binary_csv_comp(tmp_path)
    df = pd.read_csv(root / "train.csv", dtype=str, keep_default_na=False)
    df.loc[4, "rle_mask"] = "5 3 1 2"
    df.to_csv(root / "train.csv", index=False)
    with pytest.raises(DataError, match=r"train.csv line 6 \(id 'im4'\): RLE runs are unsorted"):
        load_train_samples(_binary_cfg(root))
    df.loc[4, "rle_mask"] = "590 20"  # past 20*30=600 pixels: found when the target is built
    df.to_csv(root / "train.csv", index=False)
    s = load_train_samples(_binary_cfg(root))[4]
    with pytest.raises(DataError, match=r"line 6 \(id 'im4'\).*past the image's 600 pixels"):
        load_target(s, _binary_cfg(root), (20, 30))


def test_csv_missing_columns_and_duplicates(tmp_path):
    root = _binary_csv_comp(tmp_path)
    with pytest.raises(DataError, match=r"missing column\(s\) 'EncodedPixels'; it has 'id', 'rle_mask'"):
        load_train_samples(_binary_cfg(root, rle_column="EncodedPixels"))
    df = pd.read_csv(root / "train.csv", dtype=str, keep_default_na=False)
    pd.concat([df, df.iloc[[2]]]).to_csv(root / "train.csv", index=False)
    with pytest.raises(DataError, match=r"train\.csv line 12: duplicate id 'im2' \(first at line 4\).*data\.rle_instances"):
        load_train_samples(_binary_cfg(root))


@pytest.mark.parametrize("bad_id", ["../x", "a/b", "..", "c\\d"])
def test_ids_with_path_separators_are_refused(tmp_path, bad_id):
    root = _binary_csv_comp(tmp_path)
    df = pd.read_csv(root / "train.csv", dtype=str, keep_default_na=False)
    df.loc[0, "id"] = bad_id
    df.to_csv(root / "train.csv", index=False)
    with pytest.raises(DataError, match="path separator or is a relative path"):
        load_train_samples(_binary_cfg(root))


def test_test_samples_follow_sample_submission_order(demo_root):
    cfg = config_from_dict(demo_dict(demo_root, Path("unused")))
    samples = load_test_samples(cfg)
    sample = pd.read_csv(demo_root / "sample_submission.csv")
    assert [s.id for s in samples] == list(dict.fromkeys(x.rsplit("_", 1)[0] for x in sample.iloc[:, 0]))


def test_sample_submission_ids_without_images(tmp_path, demo_root):
    import shutil

    root = tmp_path / "comp"
    shutil.copytree(demo_root, root)
    first = sorted((root / "test/images").iterdir())[0]
    first.unlink()
    cfg = config_from_dict(demo_dict(root, Path("unused")))
    with pytest.raises(DataError, match=r"1 of 4 ids have no image in .*test/images"):
        load_test_samples(cfg)


def test_empty_test_folder(tmp_path):
    (tmp_path / "test/images").mkdir(parents=True)
    cfg = _binary_cfg(tmp_path)
    with pytest.raises(DataError, match="no \\*.png test images"):
        load_test_samples(cfg)


# ----------------------------------------------------------------------------- folder layout


def _label_map_comp(tmp_path: Path, dtype=np.uint8, void: int = 11) -> Path:
    rng = np.random.default_rng(1)
    for i in range(6):
        _png(tmp_path / "imgs" / f"f{i}.png", rng.integers(0, 255, (16, 24, 3), dtype=np.uint8))
        label = rng.integers(0, 4, (16, 24)).astype(dtype)
        label[0, :] = void
        _png(tmp_path / "labels" / f"f{i}.png", label)
    return tmp_path


def _mc_cfg(root: Path, **data):
    return config_from_dict({"data": {"root": str(root), "task": "multiclass", "num_classes": 4, "ignore_index": 11,
                                      "layout": "folder", "train_images": "imgs", "train_masks": "labels", **data},
                             "loss": {"ce": 1.0}, "folds": {"n_splits": 2}, "submission": {"per_class": True}})


def test_folder_label_maps_with_void(tmp_path):
    root = _label_map_comp(tmp_path)
    cfg = _mc_cfg(root)
    samples = load_train_samples(cfg)
    t = load_target(samples[0], cfg, (16, 24))
    raw = np.asarray(Image.open(root / "labels/f0.png"))
    assert (t[0] == IGNORE_INDEX).all() and np.array_equal(t[1:], raw[1:])


def test_sixteen_bit_masks(tmp_path):
    # 16-bit binary masks (TGS stores non-empty masks as I;16 with 65535)
    rng = np.random.default_rng(2)
    for i in range(4):
        _png(tmp_path / "train/images" / f"m{i}.png", rng.integers(0, 255, (10, 12), dtype=np.uint8))
        mask = np.zeros((10, 12), np.uint16)
        mask[2:6, 3:7] = 65535
        (tmp_path / "train/masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask).save(tmp_path / f"train/masks/m{i}.png")
    cfg = _binary_cfg(tmp_path, layout="folder")
    assert read_mask(tmp_path / "train/masks/m0.png").max() == 65535
    t = load_target(load_train_samples(cfg)[0], cfg, (10, 12))
    assert t.sum() == 16 and t.max() == 1


def test_mask_values_outside_classes(tmp_path):
    root = _label_map_comp(tmp_path)
    bad = np.full((16, 24), 2, np.uint8)
    bad[3, 3], bad[4, 4] = 7, 9
    _png(root / "labels/f2.png", bad)
    cfg = _mc_cfg(root)
    with pytest.raises(DataError, match=r"f2.png: mask values \[7, 9\] are outside the classes 0..3 and the void id 11"):
        load_target(load_train_samples(cfg)[2], cfg, (16, 24))


def test_image_and_mask_of_different_sizes(tmp_path):
    root = _label_map_comp(tmp_path)
    _png(root / "labels/f1.png", np.zeros((16, 20), np.uint8))
    cfg = _mc_cfg(root)
    with pytest.raises(DataError, match=r"f1.png: mask is 16x20 \(HxW\) but its image f1.png is 16x24"):
        SegDataset(load_train_samples(cfg), cfg, "train")[1]


def test_rgb_mask_refused(tmp_path):
    root = _label_map_comp(tmp_path)
    _png(root / "labels/f3.png", np.zeros((16, 24, 3), np.uint8))
    with pytest.raises(DataError, match=r"mask is RGB \(3 channels\); expected a single-channel label map"):
        read_mask(root / "labels/f3.png")


def test_missing_mask_and_missing_image(tmp_path):
    root = _label_map_comp(tmp_path)
    (root / "labels/f5.png").unlink()
    with pytest.raises(DataError, match=r"f5.png: mask for image f5.png not found"):
        load_train_samples(_mc_cfg(root))
    with pytest.raises(DataError, match="nope.png: file not found"):
        read_image(root / "nope.png")


def test_unreadable_truncated_and_empty_images(tmp_path):
    good = _png(tmp_path / "good.png", np.zeros((40, 40, 3), np.uint8))
    (tmp_path / "zero.png").write_bytes(b"")
    (tmp_path / "trunc.png").write_bytes(good.read_bytes()[:60])
    (tmp_path / "junk.png").write_bytes(b"not an image at all")
    with pytest.raises(DataError, match=r"zero.png: file is empty \(0 bytes\)"):
        read_image(tmp_path / "zero.png")
    with pytest.raises(DataError, match="trunc.png: (image data is truncated|not a readable image)"):
        read_image(tmp_path / "trunc.png")
    with pytest.raises(DataError, match="junk.png: not a readable image"):
        read_image(tmp_path / "junk.png")


def test_image_too_large_is_refused_before_decoding(tmp_path):
    path = _png(tmp_path / "big.png", np.zeros((300, 400), np.uint8))
    with pytest.raises(DataError, match=r"refused before decoding, 400x300 = 120000 pixels"):
        read_image(path, max_pixels=100_000)


def test_channel_conversions(tmp_path):
    gray = _png(tmp_path / "g.png", np.full((5, 6), 7, np.uint8))
    rgba = _png(tmp_path / "a.png", np.full((5, 6, 4), 9, np.uint8))
    assert read_image(gray, 3).shape == (5, 6, 3) and read_image(gray, 1).shape == (5, 6, 1)
    assert read_image(rgba, 3).shape == (5, 6, 3) and read_image(rgba, 4)[..., 3].max() == 9


def test_list_files_layout(tmp_path):
    root = _label_map_comp(tmp_path)
    (root / "train.txt").write_text("".join(f"imgs/f{i}.png labels/f{i}.png\n" for i in range(4)))
    cfg = _mc_cfg(root, train_lists=["train.txt"])
    assert [s.id for s in load_train_samples(cfg)] == ["f0", "f1", "f2", "f3"]
    (root / "bad.txt").write_text("imgs/f0.png\n")
    with pytest.raises(DataError, match=r"bad.txt line 1: expected 'image mask'"):
        load_train_samples(_mc_cfg(root, train_lists=["bad.txt"]))


# ----------------------------------------------------------------------------- folds


def test_folds_reproducible_disjoint_and_stratified(demo_root, tmp_path):
    cfg = config_from_dict(demo_dict(demo_root, tmp_path, folds={"n_splits": 3, "method": "stratified", "seed": 5}))
    samples = load_train_samples(cfg)
    a, b = make_folds(samples, cfg), make_folds(samples, cfg)
    pd.testing.assert_frame_equal(a, b)
    assert sorted(a["id"]) == sorted(s.id for s in samples)  # each id in exactly one validation fold
    assert set(a["fold"]) == {0, 1, 2}
    other = make_folds(samples, config_from_dict(demo_dict(demo_root, tmp_path, folds={"n_splits": 3, "seed": 6})))
    assert not a["fold"].equals(other["fold"])


def test_binary_strata_balance(tmp_path):
    root = _binary_csv_comp(tmp_path, n=10)
    cfg = _binary_cfg(root)
    df = make_folds(load_train_samples(cfg), cfg)
    # 5 empty + 5 non-empty over 2 folds: stratification puts 2 or 3 of each kind in each fold
    counts = df.groupby(["fold", "stratum"]).size().unstack()
    assert counts.to_numpy().min() >= 2 and set(counts.columns) == {"empty", "nonempty"}


def test_group_folds_keep_groups_together(tmp_path):
    root = _binary_csv_comp(tmp_path, n=10)
    df = pd.read_csv(root / "train.csv", dtype=str, keep_default_na=False)
    df["patient"] = [f"p{i // 2}" for i in range(10)]
    df.to_csv(root / "train.csv", index=False)
    cfg = config_from_dict({"data": {"root": str(root), "group_column": "patient"}, "folds": {"n_splits": 5, "method": "group"}})
    folds = make_folds(load_train_samples(cfg), cfg)
    assert folds.groupby("stratum")["fold"].nunique().max() == 1


def test_folds_written_once_and_reused(demo_root, tmp_path):
    cfg = config_from_dict(demo_dict(demo_root, tmp_path))
    samples = load_train_samples(cfg)
    path = tmp_path / "folds.csv"
    first = load_or_make_folds(samples, cfg, path)
    edited = first.copy()
    edited.loc[0, "fold"] = 1 - edited.loc[0, "fold"]  # a hand edit: the file wins, it is not remade
    edited.to_csv(path, index=False)
    assert load_or_make_folds(samples, cfg, path)["fold"].tolist() == edited["fold"].tolist()
    with pytest.raises(DataError, match="was made for other data"):
        load_or_make_folds(samples[:-1], cfg, path)


# ----------------------------------------------------------------------------- dataset


def test_dataset_items_and_seeded_augmentation(demo_root):
    cfg = config_from_dict(demo_dict(demo_root, Path("x"), transforms={"train": [{"HorizontalFlip": {"p": 0.5}}], "resize": [32, 48]}))
    samples = load_train_samples(cfg)
    train = SegDataset(samples, cfg, "train")
    a, b = train[(2, 123)], train[(2, 123)]
    assert torch.equal(a["image"], b["image"]) and a["image"].shape == (3, 32, 48)
    assert a["target"].shape == (3, 32, 48) and a["target"].dtype == torch.float32
    valid = SegDataset(samples, cfg, "valid")[2]
    assert valid["image"].shape == (3, 32, 48) and valid["target"].shape == (3, 48, 64)  # scored at native size
    assert "target" not in SegDataset(samples, cfg, "test")[0]


def test_unknown_augmentation_name(demo_root):
    from seg_toolkit.config import ConfigError

    # caught when the config loads, before any data is read
    with pytest.raises(ConfigError, match=r"transforms.train\[0\]: unknown albumentations transform 'HorizontalFlipp'; did you mean \['HorizontalFlip'"):
        config_from_dict(demo_dict(demo_root, Path("x"), transforms={"train": [{"HorizontalFlipp": {}}]}))


def test_group_pattern_from_ids(tmp_path):
    root = _label_map_comp(tmp_path)
    for i in range(6):  # rename into three "video sequences" seqA_*, seqB_*, seqC_* of two frames each
        seq = "ABC"[i // 2]
        (root / f"imgs/f{i}.png").rename(root / f"imgs/seq{seq}_{i:03d}.png")
        (root / f"labels/f{i}.png").rename(root / f"labels/seq{seq}_{i:03d}.png")
    (root / "train.txt").write_text("".join(f"imgs/seq{'ABC'[i // 2]}_{i:03d}.png labels/seq{'ABC'[i // 2]}_{i:03d}.png\n" for i in range(6)))
    cfg = _mc_cfg(root, train_lists=["train.txt"])
    cfg.data.group_pattern, cfg.folds.method, cfg.folds.n_splits = "^(seq[A-Z])_", "group", 3
    folds = make_folds(load_train_samples(cfg), cfg)
    assert folds.groupby("stratum")["fold"].nunique().max() == 1 and folds["stratum"].nunique() == 3


@pytest.mark.parametrize("task, names, expected", [
    ("multilabel", ["scratch", "dent", "rust"], "class 2 (dent) has no pixel"),  # said "class 1 (dent)"
    ("multiclass", ["bg", "scratch", "dent", "rust"], "class 2 (dent) has no pixel"),
])
def test_a_class_without_pixels_is_named_by_its_own_number(tmp_path, caplog, task, names, expected):
    from seg_toolkit.data.masks import check_train_samples

    rows = []
    for i in range(4):
        _png(tmp_path / "train/images" / f"im{i}.png", np.zeros((6, 8, 3), np.uint8))
        for c in (1, 3):  # classes 1 and 3 have pixels, class 2 none
            mask = np.zeros((6, 8), np.uint8)
            mask[c : c + 2, 1:3] = 1
            rows.append({"id": f"im{i}", "cls": c, "rle": rle_encode(mask)})
    pd.DataFrame(rows).to_csv(tmp_path / "train.csv", index=False)
    cfg = config_from_dict({"data": {"root": str(tmp_path), "task": task, "num_classes": len(names), "class_names": names,
                                     "id_column": "id", "class_column": "cls", "rle_column": "rle"},
                            "folds": {"n_splits": 2}, "submission": {"per_class": True},
                            **({"loss": {"ce": 1.0}} if task == "multiclass" else {})})
    with caplog.at_level("WARNING"):
        check_train_samples(load_train_samples(cfg), cfg)
    assert expected in caplog.text and "class 1 (" not in caplog.text and "class 3 (" not in caplog.text
