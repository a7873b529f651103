"""Data audit: counts against hand counts, and every planted problem reported with its file / row."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from seg_toolkit.audit import audit
from seg_toolkit.audit_report import format_audit, write_audit
from seg_toolkit.config import config_from_dict
from seg_toolkit.data import load_train_samples
from seg_toolkit.report.html import CSS
from seg_toolkit.rle import rle_area, rle_encode

from .conftest import demo_dict


def _png(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def _binary_cfg(root: Path, **data):
    return config_from_dict({"data": {"root": str(root), "task": "binary", "num_classes": 1, **data},
                             "folds": {"n_splits": 2}})


def _multiclass_folder_cfg(root: Path, **data):
    return config_from_dict({
        "data": {"root": str(root), "task": "multiclass", "num_classes": 3, "layout": "folder", "ignore_index": 255,
                 "class_names": ["sky", "road", "car"], **data},
        "folds": {"n_splits": 2}, "loss": {"ce": 1.0}, "submission": {"per_class": True},
    })


def _kinds(res) -> dict[str, list]:
    out: dict[str, list] = {}
    for p in res.problems:
        out.setdefault(p.kind, []).append(p)
    return out


# ----------------------------------------------------------------------------- counts


def test_binary_csv_counts_equal_hand_count(tmp_path):
    masks = [np.zeros((4, 5), np.uint8) for _ in range(3)]
    masks[1][1:3, 1:4] = 1  # 6 pixels
    masks[2][0, 0:3] = 1  # 3 pixels
    rows = []
    for i, m in enumerate(masks):
        _png(tmp_path / "train/images" / f"im{i}.png", _rgb(4, 5, i))
        rows.append({"id": f"im{i}", "rle_mask": rle_encode(m)})
    _png(tmp_path / "train/images/gray.png", np.full((6, 5), 9, np.uint8))  # a grayscale image with a row
    rows.append({"id": "gray", "rle_mask": "1 2"})  # 2 pixels
    pd.DataFrame(rows).to_csv(tmp_path / "train.csv", index=False)

    res = audit(_binary_cfg(tmp_path))
    assert res.problems == []
    assert res.n_listed == res.n_read == 4
    assert res.class_pixels == [6 + 3 + 2]
    assert res.valid_pixels == [3 * 20 + 30]
    assert res.class_frequency == [pytest.approx(11 / 90)]
    assert res.images_with_class == [3] and res.empty_images == [1] and res.all_empty_images == 1
    assert res.image_sizes == {(4, 5): 3, (6, 5): 1}
    assert res.image_modes == {"RGB": 3, "L": 1}
    text = format_audit(res)
    assert "No problems found." in text and "4x5: 3" in text and "6x5: 1" in text and "12.22%" in text


def test_multiclass_folder_counts_with_void(tmp_path):
    a = np.array([[0, 1, 1, 2],
                  [0, 0, 255, 2],
                  [1, 1, 1, 0]], np.uint8)
    b = np.array([[255, 255, 0, 0],
                  [2, 2, 2, 2],
                  [0, 0, 0, 0]], np.uint8)
    for name, m in (("a", a), ("b", b)):
        _png(tmp_path / "train/images" / f"{name}.png", _rgb(3, 4))
        _png(tmp_path / "train/masks" / f"{name}.png", m)
    res = audit(_multiclass_folder_cfg(tmp_path))
    assert res.problems == []
    # by hand: class 0 -> a: 4, b: 6; class 1 -> a: 5; class 2 -> a: 2, b: 4; void -> a: 1, b: 2
    assert res.class_pixels == [10, 5, 6]
    assert res.void_pixels == 3
    assert res.valid_pixels == [21, 21, 21]
    assert res.images_with_class == [2, 1, 2]
    assert res.mask_values == {0: 10, 1: 5, 2: 6, 255: 3}
    text = format_audit(res)
    for name in ("sky", "road", "car"):
        assert name in text
    assert "void: 3 pixels" in text
    # median frequency balancing: freq = class pixels / non-void pixels of the images holding the class
    # = 10/21, 5/11 (a only), 6/21; median 5/11 -> weights 105/110, 1, 105/66
    assert res.present_pixels == [21, 11, 21]
    assert res.median_frequency_weights() == pytest.approx([105 / 110, 1.0, 105 / 66])
    assert res.median_frequency_weights(0.5) == pytest.approx([(105 / 110) ** 0.5, 1.0, (105 / 66) ** 0.5])
    assert "median frequency balancing (loss_params.ce.class_weights): [0.955, 1, 1.59]" in text


def test_multilabel_demo_counts_equal_rle_areas(demo_root):
    cfg = config_from_dict(demo_dict(demo_root, Path("unused")))
    res = audit(cfg)
    df = pd.read_csv(demo_root / "train.csv", dtype=str, keep_default_na=False)
    areas = df.assign(a=df.EncodedPixels.map(rle_area)).groupby("ClassId").a.sum()
    assert res.problems == [] and res.n_read == 12
    assert res.class_pixels == [int(areas[str(c)]) for c in (1, 2, 3)]
    assert res.valid_pixels == [12 * 48 * 64] * 3
    nonempty = df[df.EncodedPixels != ""]
    assert res.images_with_class == [int((nonempty.ClassId == str(c)).sum()) for c in (1, 2, 3)]
    assert res.all_empty_images == 12 - nonempty.ImageId.nunique()
    assert res.n_listed == len(load_train_samples(cfg))


@pytest.mark.parametrize("layout", ["csv_classes", "csv_binary", "folder", "lists"])
def test_audit_lists_the_samples_training_uses(layout, demo_root, tmp_path):
    from seg_toolkit.audit import AuditResult, _listed_samples

    if layout == "csv_classes":
        cfg = config_from_dict(demo_dict(demo_root, Path("unused")))
    elif layout == "csv_binary":
        _png(tmp_path / "train/images/x.png", _rgb(4, 4))
        _png(tmp_path / "train/images/y.png", _rgb(4, 4))
        pd.DataFrame({"id": ["y", "x"], "rle_mask": ["1 3", ""]}).to_csv(tmp_path / "train.csv", index=False)
        cfg = _binary_cfg(tmp_path)
    else:
        for name in ("b", "a"):
            _png(tmp_path / "train/images" / f"{name}.png", _rgb(4, 4))
            _png(tmp_path / "train/masks" / f"{name}.png", np.zeros((4, 4), np.uint8))
        (tmp_path / "l.txt").write_text("train/images/b.png train/masks/b.png\ntrain/images/a.png train/masks/a.png\n")
        cfg = _multiclass_folder_cfg(tmp_path, train_lists=["l.txt"] if layout == "lists" else [])
    res = AuditResult("", "", "", [])
    listed = [x.sample for x in _listed_samples(cfg, res)]
    assert res.problems == []
    assert [(s.id, s.image, s.mask, s.rles) for s in listed] == [
        (s.id, s.image, s.mask, s.rles) for s in load_train_samples(cfg)]


# ----------------------------------------------------------------------------- planted problems


@pytest.fixture
def broken_csv_comp(tmp_path) -> Path:
    """A binary csv-layout competition with one problem per image from im1 on."""
    hw = (20, 30)
    rows = []
    for i in range(8):
        _png(tmp_path / "train/images" / f"im{i}.png", _rgb(*hw, i))
        m = np.zeros(hw, np.uint8)
        m[2:6, 3:9] = 1
        rows.append({"id": f"im{i}", "rle_mask": rle_encode(m)})
    (tmp_path / "train/images/im1.png").write_bytes(b"")  # zero bytes
    data = (tmp_path / "train/images/im2.png").read_bytes()
    (tmp_path / "train/images/im2.png").write_bytes(data[: len(data) // 2])  # truncated
    rows[3]["rle_mask"] = "5 3 1 2"  # unsorted runs (train.csv line 5)
    rows[4]["rle_mask"] = "590 20"  # past the 600 pixels of a 20x30 image (line 6)
    (tmp_path / "train/images/im5.png").unlink()  # row without an image
    rows[6]["rle_mask"] = "1 x"  # not an integer (line 8)
    rows.append({"id": "im0", "rle_mask": ""})  # duplicate id (line 10)
    _png(tmp_path / "train/images/extra.png", _rgb(*hw))  # image without a row
    pd.DataFrame(rows).to_csv(tmp_path / "train.csv", index=False)
    return tmp_path


def test_csv_layout_problems_are_all_reported(broken_csv_comp):
    root = broken_csv_comp
    res = audit(_binary_cfg(root))
    kinds = _kinds(res)
    img = root / "train/images"
    csv = root / "train.csv"

    (p,) = kinds["empty_file"]
    assert p.where == str(img / "im1.png") and "file is empty (0 bytes)" in p.message
    (p,) = kinds["corrupt_image"]
    assert p.where == str(img / "im2.png") and "truncated or corrupt" in p.message
    rle = {p.where: p.message for p in kinds["malformed_rle"]}
    assert set(rle) == {f"{csv} line 5", f"{csv} line 6", f"{csv} line 8"}
    assert "RLE runs are unsorted" in rle[f"{csv} line 5"] and "(id 'im3')" in rle[f"{csv} line 5"]
    assert "past the image's 600 pixels" in rle[f"{csv} line 6"] and "(id 'im4')" in rle[f"{csv} line 6"]
    assert "RLE token 'x' is not an integer" in rle[f"{csv} line 8"]
    (p,) = kinds["missing_file"]
    assert p.where == str(img / "im5.png") and "file not found" in p.message
    (p,) = kinds["duplicate_row"]
    assert p.where == f"{csv} line 10" and "duplicate id 'im0'" in p.message and "line 2" in p.message
    (p,) = kinds["unlisted_image"]
    assert p.where == str(img / "extra.png")
    assert len(res.problems) == 8
    # only the good images are counted: im0 and im7, 4x6 foreground pixels each
    assert res.n_listed == 8 and res.n_read == 2 and res.class_pixels == [48]
    assert res.image_sizes == {(20, 30): 5}  # readable images: im0, im3, im4, im6 (rows bad, images fine), im7

    text = format_audit(res)
    for problem in res.problems:
        assert problem.message in text
    assert re.search(r"Problems \(8\): ", text)


def test_folder_layout_problems_are_all_reported(tmp_path):
    hw = (6, 8)
    good = np.zeros(hw, np.uint8)
    good[1:3, 2:5] = 1
    for name in ("ok", "small", "badval", "rgb", "nomask"):
        _png(tmp_path / "train/images" / f"{name}.png", _rgb(*hw))
    _png(tmp_path / "train/masks/ok.png", good)
    _png(tmp_path / "train/masks/small.png", good[:4])  # wrong size
    bad = good.copy()
    bad[0, 0] = 7  # outside the classes 0..2 and the void 255
    _png(tmp_path / "train/masks/badval.png", bad)
    _png(tmp_path / "train/masks/rgb.png", np.stack([good] * 3, -1))  # colours, not class ids
    _png(tmp_path / "train/masks/orphan.png", good)  # no image
    res = audit(_multiclass_folder_cfg(tmp_path))
    kinds = _kinds(res)
    masks = tmp_path / "train/masks"

    (p,) = kinds["size_mismatch"]
    assert p.where == str(masks / "small.png") and "mask is 4x8 (HxW) but its image small.png is 6x8" in p.message
    (p,) = kinds["mask_values"]
    assert p.where == str(masks / "badval.png") and "mask values [7] are outside the classes 0..2" in p.message
    (p,) = kinds["mask_format"]
    assert p.where == str(masks / "rgb.png") and "mask is RGB" in p.message
    (p,) = kinds["missing_mask"]
    assert p.where == str(masks / "nomask.png") and "mask for image nomask.png not found" in p.message
    (p,) = kinds["orphan_mask"]
    assert p.where == str(masks / "orphan.png")
    assert len(res.problems) == 5
    assert res.n_read == 1 and res.class_pixels == [48 - 6, 6, 0]


def test_binary_mask_with_many_foreground_values(tmp_path):
    m = np.zeros((5, 5), np.uint8)
    m[1:4, 1:4] = 255
    m[2, 2] = 250  # e.g. a JPEG-compressed mask
    _png(tmp_path / "train/images/a.png", _rgb(5, 5))
    _png(tmp_path / "train/masks/a.png", m)
    res = audit(_binary_cfg(tmp_path, layout="folder"))
    (p,) = res.problems  # reported once, as training would refuse it
    assert "250" in p.message and "255" in p.message and "a.png" in p.message
    assert res.class_pixels == [0]  # not read: a binary mask is 0 and one foreground value unless the config says more


def test_binary_masks_marking_foreground_with_different_values_are_named(tmp_path):
    # a, b, c: 0/1; d: 0/2 (a class-id map among binary masks); e: empty. Each file alone is a valid binary mask.
    for name, v in (("a", 1), ("b", 1), ("c", 1), ("d", 2), ("e", 0)):
        m = np.zeros((4, 4), np.uint8)
        m[1:3, 1:3] = v
        _png(tmp_path / "train/images" / f"{name}.png", _rgb(4, 4))
        _png(tmp_path / "train/masks" / f"{name}.png", m)
    res = audit(_binary_cfg(tmp_path, layout="folder"))
    (p,) = res.problems
    assert p.kind == "mixed_foreground" and p.where == str(tmp_path / "train/masks/d.png")
    assert "with 2, most masks with 1 (1 in 3 file(s), 2 in 1 file(s))" in p.message and "data.mask_values" in p.message
    assert res.n_read == 5 and res.class_pixels == [16]  # still read (as training reads it): 4 foreground pixels in each of 4
    # declared values: no problem (the declaration is the user's answer), and d's 2 is then background
    res = audit(_binary_cfg(tmp_path, layout="folder", mask_values={0: 0, 1: 1, 2: 0}))
    assert res.problems == [] and res.class_pixels == [12]
    # 0/255 everywhere: one foreground value, nothing to say
    for name in "abcd":
        m = np.zeros((4, 4), np.uint8)
        m[1:3, 1:3] = 255
        _png(tmp_path / "train/masks" / f"{name}.png", m)
    assert audit(_binary_cfg(tmp_path, layout="folder")).problems == []


def test_binary_masks_whose_whole_foreground_is_lost_are_named(tmp_path):
    """A 0/255 mask among 0/1 ones under data.ignore_index: 255 became all void, and a 0/1 JPEG mask among 0/255 ones
    under data.mask_threshold: 128 all background; the audit said nothing (each file alone reads as asked)."""
    for name, v in (("a", 1), ("b", 1), ("c", 255), ("d", 0)):
        m = np.zeros((8, 8), np.uint8)
        m[2:6, 2:6] = v
        _png(tmp_path / "train/images" / f"{name}.png", _rgb(8, 8))
        _png(tmp_path / "train/masks" / f"{name}.png", m)
    (p,) = audit(_binary_cfg(tmp_path, layout="folder", ignore_index=255)).problems
    assert p.kind == "void_foreground" and p.where == str(tmp_path / "train/masks/c.png")
    assert "every non-zero pixel is void (data.ignore_index: 255)" in p.message
    assert audit(_binary_cfg(tmp_path, layout="folder")).problems[0].kind == "mixed_foreground"  # as before
    # the review: 0/1 masks with a 255 border (void) where one image has no object: the border is a label of its own
    for name in "abcd":
        m = np.zeros((8, 8), np.uint8)
        m[0, :] = 255
        m[2:6, 2:6] = 0 if name == "d" else 1
        _png(tmp_path / "train/masks" / f"{name}.png", m)
    assert audit(_binary_cfg(tmp_path, layout="folder", ignore_index=255)).problems == []
    jpg = tmp_path / "jpg"
    for name, v in (("a", 255), ("b", 255), ("c", 1)):
        m = np.zeros((16, 16), np.uint8)
        m[4:12, 4:12] = v
        _png(jpg / "train/images" / f"{name}.png", _rgb(16, 16))
        (jpg / "train/masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(m).save(jpg / "train/masks" / f"{name}.jpg", quality=95)
    (p,) = audit(_binary_cfg(jpg, layout="folder", mask_ext=".jpg", mask_threshold=128)).problems
    assert p.kind == "faint_foreground" and p.where == str(jpg / "train/masks/c.jpg")
    assert "all below data.mask_threshold: 128, so read as empty" in p.message
    # every mask alike: nothing to compare with, nothing said
    for name in "ab":
        (jpg / "train/masks" / f"{name}.jpg").unlink()
        (jpg / "train/images" / f"{name}.png").unlink()
    assert audit(_binary_cfg(jpg, layout="folder", mask_ext=".jpg", mask_threshold=128)).problems == []


def test_list_file_problems(tmp_path):
    _png(tmp_path / "img/a.png", _rgb(4, 4))
    _png(tmp_path / "lbl/a.png", np.zeros((4, 4), np.uint8))
    (tmp_path / "train.txt").write_text("img/a.png lbl/a.png\nimg/b.png lbl/b.png\njust-one-path\nimg/a.png lbl/a.png\n")
    res = audit(_multiclass_folder_cfg(tmp_path, train_lists=["train.txt"]))
    lst = tmp_path / "train.txt"
    got = {(p.kind, p.where) for p in res.problems}
    assert got == {("missing_file", f"{lst} line 2"), ("bad_line", f"{lst} line 3"), ("duplicate_row", f"{lst} line 4")}
    assert sum("not found" in p.message for p in res.problems) == 2  # image and mask of line 2
    assert res.n_read == 1 and res.class_pixels == [16, 0, 0]


def test_structural_problems_are_reported_not_raised(tmp_path):
    res = audit(_binary_cfg(tmp_path))  # no train.csv at all
    (p,) = res.problems
    assert p.kind == "missing_file" and "train.csv: training CSV (data.train_csv) not found" in p.message
    assert res.n_listed == 0 and "Problems (1)" in format_audit(res)


def test_write_audit_html_and_csv(broken_csv_comp, tmp_path):
    out = write_audit(_binary_cfg(broken_csv_comp), tmp_path / "out")
    assert out == tmp_path / "out" / "audit.html"
    page = out.read_text()
    assert "<script" not in page and "http://" not in page and "https://" not in page  # small and self-contained
    assert CSS in page and "<h1>Data audit: " in page  # the toolkit's one HTML kit
    assert "<h2>Problems</h2>" in page and "<td class='msg'>" in page
    assert "foreground" in page and "malformed_rle" in page and "train.csv line 5" in page
    problems = pd.read_csv(tmp_path / "out" / "audit_problems.csv")
    assert len(problems) == 8 and list(problems.columns) == ["kind", "where", "message"]
    assert sorted(problems.kind) == sorted(["empty_file", "corrupt_image", "malformed_rle", "malformed_rle", "missing_file",
                                            "malformed_rle", "duplicate_row", "unlisted_image"])


def test_header_only_mode_skips_decoding(broken_csv_comp):
    res = audit(_binary_cfg(broken_csv_comp), decode_images=False)
    kinds = _kinds(res)
    assert "empty_file" in kinds and "corrupt_image" not in kinds  # a truncated file has a valid header


# ----------------------------------------------------------------------------- pictures (see it before training on it)


def test_spread_pick_takes_one_seeded_index_per_slice():
    from seg_toolkit.audit_pictures import spread_pick

    picks = spread_pick(100, 8, seed=3)
    assert len(picks) == 8 and picks == spread_pick(100, 8, seed=3) and picks != spread_pick(100, 8, seed=4)
    edges = [0, 12, 25, 38, 50, 62, 75, 88, 100]  # round(100 * k / 8)
    assert all(a <= p < b for p, a, b in zip(picks, edges[:-1], edges[1:]))
    assert spread_pick(5, 8, seed=0) == [0, 1, 2, 3, 4]


@pytest.fixture
def grey_comp(tmp_path) -> Path:
    """One 20x20 image of grey 100 whose mask has class 1 ("road") on rows/cols 5..14 and void on rows 18..19."""
    _png(tmp_path / "train/images/a.png", np.full((20, 20, 3), 100, np.uint8))
    mask = np.zeros((20, 20), np.uint8)
    mask[5:15, 5:15] = 1
    mask[18:20, :] = 255
    _png(tmp_path / "train/masks/a.png", mask)
    return tmp_path


def test_overlay_colour_is_the_class_colour_blend(grey_comp, tmp_path):
    """Worked by hand: a 20x20 image is shown 8x (160x160); class 1's default colour (60, 180, 75) blended at 40%
    over grey 100 gives (0.6*100 + 0.4*60, 0.6*100 + 0.4*180, 0.6*100 + 0.4*75) = (84, 132, 90) inside the block
    (display rows/cols 40..119), the colour itself on its 1-pixel outline, 0.25*100 = 25 on the dark ring
    outside; void blends grey 128: 0.6*100 + 0.4*128 = 111.2 -> 111."""
    from seg_toolkit.audit_pictures import overlay_panels
    from seg_toolkit.data import class_colors, load_target, read_image
    from seg_toolkit.report.overlays import painted_classes

    cfg = _multiclass_folder_cfg(grey_comp, class_names=["background", "road", "car"])
    colors = class_colors(cfg)
    assert colors[1].tolist() == [60, 180, 75]
    painted = painted_classes(cfg, ["background", "road", "car"], colors)
    assert painted == [False, True, True]  # the background is not painted over the image
    (s,) = load_train_samples(cfg)
    image = read_image(s.image, 3)
    shown, painted_img = overlay_panels(image, load_target(s, cfg, (20, 20)), cfg, colors, painted)
    assert shown.shape == painted_img.shape == (160, 160, 3) and (shown == 100).all()
    assert painted_img[80, 80].tolist() == [84, 132, 90]  # inside the block
    assert painted_img[40, 80].tolist() == [60, 180, 75]  # its outline
    assert painted_img[39, 80].tolist() == [25, 25, 25]  # the dark ring outside
    assert painted_img[150, 80].tolist() == [111, 111, 111]  # void
    assert painted_img[20, 20].tolist() == [100, 100, 100]  # background: the image itself

    write_audit(cfg, tmp_path / "out")
    png = np.asarray(Image.open(tmp_path / "out" / "audit_samples.png").convert("RGB"))
    inside = (png == [84, 132, 90]).all(-1).sum()
    assert inside >= 0.95 * 78 * 78  # the block's inside, pixel for pixel: the figure does not resample
    assert (png == [111, 111, 111]).all(-1).sum() >= 0.95 * 158 * 14


def test_audit_page_shows_samples_and_an_augmented_batch(demo_root, tmp_path):
    import base64

    cfg = config_from_dict(demo_dict(demo_root, tmp_path / "runs", train={"batch_size": 4, "seed": 7},
                                     transforms={"train": [{"HorizontalFlip": {"p": 1.0}}]}))
    page = write_audit(cfg, tmp_path / "out").read_text()
    for name in ("audit_samples.png", "audit_batch.png"):
        data = (tmp_path / "out" / name).read_bytes()
        assert base64.b64encode(data).decode() in page  # drawn once: the file is the picture in the page
        with Image.open(tmp_path / "out" / name) as im:
            im.load()
            assert im.size[0] >= 640 and im.mode in ("RGB", "RGBA")
    assert "<h2>Samples with their masks</h2>" in page and "<h2>One augmented training batch</h2>" in page
    assert "HorizontalFlip" in page and "train.seed 7" in page
    # the batch cannot be drawn this time (a crop larger than the images): the earlier audit's picture goes, it does
    # not stay beside a page that says it could not be drawn
    crop = config_from_dict(demo_dict(demo_root, tmp_path / "runs", train={"batch_size": 4, "seed": 7},
                                      transforms={"train": [{"RandomCrop": {"height": 512, "width": 512}}]}))
    page = write_audit(crop, tmp_path / "out").read_text()
    assert "could not be drawn" in page and not (tmp_path / "out" / "audit_batch.png").exists()
    assert (tmp_path / "out" / "audit_samples.png").is_file()


def test_augmented_batch_is_the_first_training_batch_with_its_masks(demo_root, tmp_path):
    """HorizontalFlip with p=1: each batch tile is the flipped image beside the flipped mask, in the training
    sampler's order (the image back from normalisation within one grey level)."""
    from seg_toolkit.audit_pictures import _batch_tiles, overlay_panels
    from seg_toolkit.data import EpochSampler, class_colors, load_target, read_image

    cfg = config_from_dict(demo_dict(demo_root, tmp_path / "runs", train={"batch_size": 3, "seed": 7},
                                     transforms={"train": [{"HorizontalFlip": {"p": 1.0}}]}))
    samples = load_train_samples(cfg)
    colors, painted = class_colors(cfg), [True, True, True]
    tiles, void = _batch_tiles(cfg, samples, colors, painted)
    keys = list(EpochSampler(len(samples), shuffle=True, seed=7))[:3]
    assert len(tiles) == 3 and not void  # a flip pads nothing
    # a rotation's padding is void (dataset.py's fill_mask): the batch figure's legend then has the void entry
    rotated = config_from_dict(demo_dict(demo_root, tmp_path / "runs", train={"batch_size": 3, "seed": 7}, transforms={
        "train": [{"Affine": {"rotate": [30, 30], "p": 1.0}}]}))
    assert _batch_tiles(rotated, samples, colors, painted)[1]
    for (label, (shown, over)), (index, seed) in zip(tiles, keys):
        s = samples[index]
        assert label.startswith(s.id) and f"seed {seed}" in label
        image = read_image(s.image, 3)
        want_shown, want_over = overlay_panels(image[:, ::-1], load_target(s, cfg, image.shape[:2])[:, ::-1], cfg, colors, painted)
        assert np.abs(shown.astype(int) - want_shown).max() <= 1
        assert np.abs(over.astype(int) - want_over).max() <= 1
        assert not np.array_equal(want_over, overlay_panels(image, load_target(s, cfg, image.shape[:2]), cfg, colors, painted)[1])


def test_train_after_audit_into_the_same_run_folder(demo_root, tmp_path):
    """The README's order, `audit CONFIG` then `train CONFIG`: the folder then held only audit's files and train refused
    it as 'not a run folder', even with --overwrite. compare still lists only trained runs."""
    from seg_toolkit.compare import CompareError, find_runs
    from seg_toolkit.cv import run_cv
    from seg_toolkit.run import Run

    cfg = config_from_dict(demo_dict(demo_root, tmp_path / "runs"))
    write_audit(cfg, cfg.run_dir)
    run = Run.of(cfg)
    assert run.audit_problems_csv.read_text().splitlines()[0] == "kind,where,message"
    with pytest.raises(CompareError, match="no run folder"):
        find_runs([tmp_path / "runs"])
    (run.dir / "notes.txt").write_text("mine")  # a user's file beside audit's: never deleted by --overwrite
    with pytest.raises(Exception, match="notes.txt"):
        run_cv(cfg, overwrite=True)
    (run.dir / "notes.txt").unlink()
    run_cv(cfg)
    assert run.audit_html.is_file() and run.trained_folds() == [0, 1]
    assert find_runs([tmp_path / "runs"]) == [run]


def test_audit_out_never_replaces_a_users_file_nor_writes_into_the_data(demo_cfg, tmp_path):
    """`audit --out myreports` replaced the user's audit.html; `--out data/demo` wrote four files among the data."""
    from seg_toolkit.cli import main
    from seg_toolkit.config import ConfigError, save_config

    mine = tmp_path / "myreports"
    mine.mkdir()
    (mine / "audit.html").write_text("MY OWN NOTES")
    with pytest.raises(ConfigError, match=r"audit.html exists and is not an audit page"):
        write_audit(demo_cfg, mine)
    assert (mine / "audit.html").read_text() == "MY OWN NOTES"
    with pytest.raises(ConfigError, match=r"is data.root; write the audit elsewhere"):
        write_audit(demo_cfg, Path(demo_cfg.data.root))
    images = Path(demo_cfg.data.root) / demo_cfg.data.train_images
    with pytest.raises(ConfigError, match=r"audit.html lies inside data.train_images"):
        write_audit(demo_cfg, images)
    assert not (Path(demo_cfg.data.root) / "audit.html").exists() and not (images / "audit.html").exists()
    config = tmp_path / "c.yaml"
    save_config(demo_cfg, config)
    assert main(["audit", str(config), "--out", str(mine)]) == 2  # refused before the pass over the data
    ours = tmp_path / "ours"
    write_audit(demo_cfg, ours)
    write_audit(demo_cfg, ours)  # its own page, pictures and list are replaced
    # a folder of the user's own files: the audit wrote among them (and its problem list then marked it as a run's)
    papers = tmp_path / "papers"
    papers.mkdir()
    (papers / "thesis.tex").write_text("mine")
    with pytest.raises(ConfigError, match=r"papers holds files that neither a run nor an audit wrote \(thesis\.tex\)"):
        write_audit(demo_cfg, papers)
    assert sorted(p.name for p in papers.iterdir()) == ["thesis.tex"]
    assert (ours / "audit.html").read_text().startswith("<!DOCTYPE html>")
