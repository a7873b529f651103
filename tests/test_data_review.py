"""The data-reading review's defects, each read back from files written here with known pixels and rows:
data.limit with unlisted (empty) images, float / signed masks, 16-bit-per-channel RGB PNGs, EXIF orientation
(data.exif_orientation), lossy WebP masks, overlapping multiclass rows, rows disagreeing on their group, a
trailing comma in a CSV, keys that cannot apply (group_column in the folder layout, class_column on a binary
task), one mask file listed for two images, and the hint of an RGB mask error."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from seg_toolkit.config import IGNORE_INDEX, ConfigError, config_from_dict
from seg_toolkit.data import DataError, load_list_samples, load_target, load_test_samples, load_train_samples, read_image
from seg_toolkit.data import image_file, masks
from seg_toolkit.data.image_file import lossy_webp, color16, turn_array
from seg_toolkit.data.io import image_size, read_csv_strict, wide_values
from seg_toolkit.data.mask_io import read_mask, read_mask_array
from seg_toolkit.data.sample import read_config_image
from seg_toolkit.data.sources import iter_list_samples, list_train_samples


def _save(path: Path, arr: np.ndarray, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **kw)
    return path


def _cfg(root: Path, folds: dict | None = None, **data):
    d = {"root": str(root), "layout": "folder", "train_images": "img", "train_masks": "lbl", **data}
    if d["layout"] == "csv":  # the csv layout reads no mask folder (the key is refused there)
        del d["train_masks"]
    multiclass = d.get("task") == "multiclass"
    several = (multiclass and d.get("num_classes", 1) > 2) or d.get("task") == "multilabel"
    extra = {"submission": {"per_class": True}} if several else {}
    return config_from_dict({"data": d, "folds": {"n_splits": 2, **(folds or {})}, "loss": {"ce": 1.0} if multiclass else {"bce": 1.0},
                             **extra})


def _csv_cfg(root: Path, folds: dict | None = None, **data):
    return _cfg(root, folds, layout="csv", train_images="img", train_csv="train.csv", id_column="id", rle_column="rle",
                **data)


def _image(root: Path, h: int, w: int, name: str = "a", folder: str = "img") -> Path:
    return _save(root / folder / f"{name}.png", np.full((h, w, 3), 7, np.uint8))


# ----------------------------------------------------------------------------- 1. data.limit + unlisted_images: empty


def test_limit_keeps_unlisted_empty_images_in_file_name_order(tmp_path, caplog):
    rows = ["id,cls,rle"]
    for i in range(12):
        _image(tmp_path, 4, 4, f"im{i:02d}")
        if i % 2 == 0:  # half the images have a row (a defect); the other half none (an empty mask)
            rows.append(f"im{i:02d},1,1 3")
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    cfg = _csv_cfg(tmp_path, task="multilabel", num_classes=2, class_column="cls", unlisted_images="empty", limit=4)
    with caplog.at_level(logging.INFO, logger="seg_toolkit.data.sources"):
        samples, _ = list_train_samples(cfg)
    assert [s.id for s in samples] == ["im00", "im01", "im02", "im03"]
    assert [s.rles for s in samples] == [("1 3", ""), ("", ""), ("1 3", ""), ("", "")]
    assert "kept 2 image(s) with a row" in caplog.text and "and 2 without one" in caplog.text
    # without a limit the order is unchanged: the listed rows first, then the unlisted images
    full, _ = list_train_samples(_csv_cfg(tmp_path, task="multilabel", num_classes=2, class_column="cls",
                                          unlisted_images="empty"))
    assert [s.id for s in full[:7]] == ["im00", "im02", "im04", "im06", "im08", "im10", "im01"]


# ----------------------------------------------------------------------------- 2. float and signed masks


def test_float_mask_of_whole_ids_is_read_and_fractions_are_refused(tmp_path):
    _image(tmp_path, 2, 3)
    _save(tmp_path / "lbl/a.tif", np.array([[0, 1, 2], [2, 1, 0]], np.float32), format="TIFF")
    cfg = _cfg(tmp_path, task="multiclass", num_classes=3, mask_ext=".tif")
    (s,) = load_train_samples(cfg)
    assert load_target(s, cfg, (2, 3)).tolist() == [[0, 1, 2], [2, 1, 0]]
    _save(tmp_path / "lbl/a.tif", np.array([[0, 0.99, 2], [2.7, 1, 0]], np.float32), format="TIFF")
    with pytest.raises(DataError, match=r"a\.tif: float mask \(PIL mode F\) holds 2 value\(s\) that are not whole "
                                        r"numbers, e\.g\. \[0\.99\d*, 2\.7\d*\]"):
        load_target(s, cfg, (2, 3))


def test_signed_mask_with_negative_values_is_refused(tmp_path):
    _image(tmp_path, 2, 3)
    _save(tmp_path / "lbl/a.tif", np.array([[0, 1, -1], [-3, 1, 0]], np.int32), format="TIFF")
    assert Image.open(tmp_path / "lbl/a.tif").mode == "I"
    cfg = _cfg(tmp_path, task="multiclass", num_classes=3, mask_ext=".tif")
    (s,) = load_train_samples(cfg)
    with pytest.raises(DataError, match=r"a\.tif: mask \(PIL mode I\) holds negative values \(min -3, 2 pixel\(s\)\)"):
        load_target(s, cfg, (2, 3))
    # a negative float is refused the same way, and a whole non-negative signed mask is read exactly
    _save(tmp_path / "lbl/a.tif", np.array([[0, 1, -2], [2, 1, 0]], np.float32), format="TIFF")
    with pytest.raises(DataError, match=r"mode F\) holds negative values \(min -2, 1 pixel"):
        read_mask(tmp_path / "lbl/a.tif")
    _save(tmp_path / "lbl/a.tif", np.array([[0, 1, 2], [2, 1, 0]], np.int32), format="TIFF")
    assert read_mask(tmp_path / "lbl/a.tif").tolist() == [[0, 1, 2], [2, 1, 0]]


def test_ids_in_one_channel_of_an_npy_mask_are_checked_as_one_channel_ids_are(tmp_path):
    """data.mask_channel on a multi-channel .npy: -1 became void (255 after the cast) and 2**32 + 2 class 2."""
    _image(tmp_path, 1, 4)
    cfg = _cfg(tmp_path, task="multiclass", num_classes=3, mask_ext=".npy", mask_channel=0)
    (tmp_path / "lbl").mkdir()
    m = np.zeros((1, 4, 2), np.int16)
    m[0, :, 0] = [0, 1, -1, 2]
    np.save(tmp_path / "lbl/a.npy", m)
    (s,) = load_train_samples(cfg)
    with pytest.raises(DataError, match=r"a\.npy: channel 0 \(data\.mask_channel\) holds values -1\.\.2; expected class ids >= 0"):
        load_target(s, cfg, (1, 4))
    m = np.zeros((1, 4, 2), np.uint64)
    m[0, :, 0] = [0, 1, 2, 2**32 + 2]
    np.save(tmp_path / "lbl/a.npy", m)
    with pytest.raises(DataError, match=r"holds values 0\.\.4294967298"):
        load_target(s, cfg, (1, 4))
    m[0, :, 0] = [0, 1, 2, 1]
    np.save(tmp_path / "lbl/a.npy", m)
    assert load_target(s, cfg, (1, 4)).tolist() == [[0, 1, 2, 1]]


def test_class_range_check_names_negative_ids(tmp_path, monkeypatch):
    """The multiclass range check catches ids below 0 that are not void, not only ids >= num_classes."""
    _image(tmp_path, 1, 3)
    _save(tmp_path / "lbl/a.png", np.zeros((1, 3), np.uint8))
    cfg = _cfg(tmp_path, task="multiclass", num_classes=3)
    (s,) = load_train_samples(cfg)
    monkeypatch.setattr(masks, "read_mask_array", lambda *a, **k: np.array([[0, -3, 1]], np.int32))
    with pytest.raises(DataError, match=r"mask values \[-3\] are outside the classes 0\.\.2"):
        load_target(s, cfg, (1, 3))


# ----------------------------------------------------------------------------- 3. 16-bit-per-channel colour PNGs


def _png16(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    order = [2, 1, 0, 3][: rgb.shape[2]]  # cv2 writes BGR(A)
    assert cv2.imwrite(str(path), np.ascontiguousarray(rgb[:, :, order]))
    return path


def test_48_bit_rgb_png_is_read_exactly_over_the_image_range(tmp_path):
    r = np.array([[0, 4095], [1000, 2048]], np.uint16)
    rgb = np.stack([r, r // 2, np.full_like(r, 4095)], -1)
    path = _png16(tmp_path / "a.png", rgb)
    assert color16(path) and Image.open(path).mode == "RGB"  # what Pillow alone would read as 8-bit
    got = read_image(path, 3, value_range=[0, 4095])
    want = np.floor(np.clip(rgb / 4095 * 255, 0, 255) + 0.5).astype(np.uint8)
    assert got.tolist() == want.tolist()
    assert got[0, 1].tolist() == [255, 127, 255] and got[1, 0].tolist() == [62, 31, 255]  # 2047 / 4095 * 255 = 127.5-
    # no image_range: over 0..65535, as a 16-bit grey image
    assert read_image(path, 3)[0, 1].tolist() == [16, 8, 16]
    assert wide_values(path) == ("RGB;16", 0.0, 4095.0)
    # one channel: the 8-bit values made grey as any RGB image
    grey = read_image(path, 1, value_range=[0, 4095])
    assert grey[:, :, 0].tolist() == np.asarray(Image.fromarray(want).convert("L")).tolist()


def test_64_bit_rgba_png_keeps_alpha_for_four_channels(tmp_path):
    v = np.array([[0, 65535]], np.uint16)
    path = _png16(tmp_path / "a.png", np.stack([v, v, v, np.full_like(v, 65535)], -1))
    assert read_image(path, 4).tolist() == [[[0, 0, 0, 255], [255, 255, 255, 255]]]
    assert wide_values(path)[0] == "RGBA;16"


def test_16_bit_rgb_mask_ids_from_one_channel_are_exact_and_colours_refused(tmp_path):
    red = np.array([[0, 1, 2]], np.uint16)
    _png16(tmp_path / "lbl/a.png", np.stack([red, np.full_like(red, 300), np.zeros_like(red)], -1))
    _image(tmp_path, 1, 3)
    cfg = _cfg(tmp_path, task="multiclass", num_classes=3, mask_channel=0)
    (s,) = load_train_samples(cfg)
    assert load_target(s, cfg, (1, 3)).tolist() == [[0, 1, 2]]  # Pillow's 8-bit read gives the high byte: all 0
    with pytest.raises(DataError, match=r"a\.png: colour mask of 16 bits per channel; data\.mask_colors"):
        read_mask_array(tmp_path / "lbl/a.png", kind="colors")
    with pytest.raises(DataError, match=r"mask is RGB \(3 channels, 16 bits per channel\)"):
        read_mask(tmp_path / "lbl/a.png")


def test_48_bit_tiff_and_16_bit_grey_alpha_png_are_read_exactly(tmp_path):
    """Pillow opens a 48-bit RGB TIFF as 8-bit RGB and a 16-bit grey + alpha PNG as 8-bit: only the high byte of each
    value (12-bit microscopy read almost black, class ids 0..255 read as 0, and the audit saw nothing wide)."""
    import struct
    import zlib

    r = np.array([[0, 1000, 2000, 4095]], np.uint16)
    rgb = np.stack([r, np.full_like(r, 2048), np.full_like(r, 4095)], -1)
    tif = _png16(tmp_path / "img/a.tif", rgb)  # cv2 writes a 16-bit RGB TIFF
    assert color16(tif) and Image.open(tif).mode == "RGB"
    want = np.floor(rgb / 4095 * 255 + 0.5).astype(np.uint8)
    assert read_image(tif, 3, value_range=[0, 4095]).tolist() == want.tolist()  # [0, 62, 125, 255] in red
    assert wide_values(tif) == ("RGB;16", 0.0, 4095.0)
    # class ids in channel 0 of a 48-bit TIFF mask
    _png16(tmp_path / "lbl/a.tif", np.stack([np.array([[0, 1, 2, 1]], np.uint16), np.full((1, 4), 300, np.uint16),
                                             np.zeros((1, 4), np.uint16)], -1))
    cfg = _cfg(tmp_path, task="multiclass", num_classes=3, mask_channel=0, image_ext=".tif", mask_ext=".tif")
    (s,) = load_train_samples(cfg)
    assert load_target(s, cfg, (1, 4)).tolist() == [[0, 1, 2, 1]]

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\x00" + b"".join(struct.pack(">HH", v, 65535) for v in (0, 1000, 2000, 4095))  # grey, alpha: big-endian
    la = tmp_path / "la.png"
    la.write_bytes(_PNG_HEAD + chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 1, 16, 4, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(row))
                   + chunk(b"IEND", b""))
    assert color16(la)
    assert read_image(la, 1, value_range=[0, 4095]).ravel().tolist() == [0, 62, 125, 255]
    assert read_image(la, 4, value_range=[0, 4095])[0, :, 3].tolist() == [255] * 4  # alpha 65535 over the range: 255
    # the range to suggest: the grey values read_image keeps, the opaque alpha only when 4 channels are read
    assert wide_values(la) == wide_values(la, in_channels=1) == ("RGBA;16", 0.0, 4095.0)
    assert wide_values(la, in_channels=4) == ("RGBA;16", 0.0, 65535.0)
    # 8-bit TIFFs and PNGs are Pillow's as before
    plain = tmp_path / "p.tif"
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(plain)
    assert not color16(plain) and not color16(_save(tmp_path / "p.png", np.zeros((2, 2, 3), np.uint8)))


_PNG_HEAD = b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- 4. EXIF orientation


def test_the_audit_names_8_and_16_bit_images_mixed_and_counts_48_bit_ones_as_such(tmp_path):
    """One folder of 8-bit and 16-bit files: the same values differ 256x in what the model sees."""
    from seg_toolkit.audit import audit

    v = np.array([[0, 200], [100, 50]], np.uint16)
    _save(tmp_path / "img/a.png", v.astype(np.uint8))  # L
    _save(tmp_path / "img/b.png", v.astype(np.uint16))  # I;16
    _png16(tmp_path / "img/c.png", np.stack([v] * 3, -1))  # 48-bit: Pillow says RGB
    for name in "abc":
        _save(tmp_path / f"lbl/{name}.png", np.array([[0, 1], [1, 0]], np.uint8))
    res = audit(_cfg(tmp_path, in_channels=1))
    assert dict(res.image_modes) == {"L": 1, "I;16": 1, "RGB;16": 1}
    mixed = [p for p in res.problems if p.kind == "mixed_bit_depth"]
    assert len(mixed) == 1 and mixed[0].message.startswith(
        "1 8-bit image(s) and 2 16-bit one(s) (I;16, RGB;16): the 8-bit ones are read as they are (0..255) and the "
        "16-bit ones over 0..65535")
    (tmp_path / "img/b.png").unlink()
    (tmp_path / "img/c.png").unlink()
    for name in "bc":
        (tmp_path / f"lbl/{name}.png").unlink()
    assert not [p for p in audit(_cfg(tmp_path, in_channels=1)).problems if p.kind == "mixed_bit_depth"]


def _tagged(path: Path, arr: np.ndarray, tag: int = 6) -> Path:
    """A PNG whose eXIf chunk holds the orientation ``tag`` (lossless, so pixels compare exactly)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(arr)
    ex = im.getexif()
    ex[0x0112] = tag
    im.save(path, exif=ex)
    return path


def _exif_world(root: Path) -> np.ndarray:
    stored = np.zeros((2, 3), np.uint8)
    stored[0] = [1, 0, 1]  # the stored top row; tag 6 shows it as the right column
    _tagged(root / "img/a.png", np.stack([stored * 200] * 3, -1))
    _tagged(root / "lbl/a.png", stored)
    return stored


def test_exif_orientation_error_names_the_file_tag_and_choices(tmp_path):
    _exif_world(tmp_path)
    cfg = _cfg(tmp_path)
    (s,) = load_train_samples(cfg)
    msg = r"a\.png: EXIF orientation tag 6 \(rotated 90 degrees clockwise.*data\.exif_orientation: apply.*or ignore"
    with pytest.raises(DataError, match=msg):
        read_config_image(s.image, cfg)
    with pytest.raises(DataError, match=msg):
        image_size(s.image, exif="error")
    with pytest.raises(DataError, match=r"lbl/a\.png: EXIF orientation tag 6"):
        load_target(s, cfg, (2, 3))


def test_exif_orientation_apply_turns_images_masks_and_sizes_alike(tmp_path):
    stored = _exif_world(tmp_path)
    cfg = _cfg(tmp_path, exif_orientation="apply")
    (s,) = load_train_samples(cfg)
    shown = np.rot90(stored, -1)  # tag 6: 90 degrees clockwise
    assert shown.tolist() == [[0, 1], [0, 0], [0, 1]]  # the stored top row is the right column
    img = read_config_image(s.image, cfg)
    assert img.shape == (3, 2, 3) and (img[:, :, 0] // 200).tolist() == shown.tolist()
    assert image_size(s.image, exif="apply") == (3, 2)
    assert load_target(s, cfg, image_size(s.image, exif="apply"))[:, :, 0].tolist() == shown.tolist()
    # ignore: the stored pixels and size
    cfg = _cfg(tmp_path, exif_orientation="ignore")
    (s,) = load_train_samples(cfg)
    assert (read_config_image(s.image, cfg)[:, :, 0] // 200).tolist() == stored.tolist()
    assert load_target(s, cfg, (2, 3))[:, :, 0].tolist() == stored.tolist()


def test_test_images_are_read_with_the_configs_exif_choice(tmp_path):
    """The predictor's inputs and the submission's row sizes read test images with the config's choice; a reader
    given none refuses a turned file."""
    from seg_toolkit.predictor import _Inputs

    stored = np.zeros((2, 3, 3), np.uint8)
    stored[0, 0] = 255
    _tagged(tmp_path / "test/t.png", stored, tag=8)
    cfg = _cfg(tmp_path, test_images="test", exif_orientation="apply")
    (s,) = load_test_samples(cfg)
    assert read_image(s.image, exif="apply").tolist() == np.rot90(stored, 1).tolist()  # tag 8: 90 degrees counter-clockwise
    assert image_size(s.image, exif="apply") == (3, 2)

    class _Member:  # what _Inputs reads of a member: its preprocessing key and config
        def __init__(self, exif):
            self.preprocess = (3, (), None, exif, (), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
            self.cfg = dataclasses.replace(cfg, transforms=dataclasses.replace(cfg.transforms, mean=[0.0] * 3, std=[1.0] * 3))

    item = _Inputs([s], [_Member("apply")], None, cfg.data.max_image_pixels, cfg)[0]
    assert item["size"] == (3, 2) and item["images"][_Member("apply").preprocess].shape == (3, 3, 2)
    with pytest.raises(DataError, match="EXIF orientation tag 8"):
        read_image(s.image)  # no choice given: refused, never guessed
    # each member reads with its own run's choice (the lead's was used for every member): one that refuses turned
    # files refuses it beside one that turns it
    with pytest.raises(DataError, match="EXIF orientation tag 8"):
        _Inputs([s], [_Member("apply"), _Member("error")], None, cfg.data.max_image_pixels, cfg)[0]


@pytest.mark.parametrize("tag", range(1, 9))
def test_array_turn_matches_pillow_exif_transpose(tmp_path, tag):
    arr = np.arange(6, dtype=np.uint8).reshape(2, 3) * 40
    path = _tagged(tmp_path / "a.png", arr, tag)
    want = np.asarray(ImageOps.exif_transpose(Image.open(path)))
    assert turn_array(arr, tag).tolist() == want.tolist()
    assert image_file.oriented_size(tag, 2, 3) == want.shape


# ----------------------------------------------------------------------------- 5. lossy WebP masks


def test_lossy_webp_mask_is_refused_and_lossless_read_exactly(tmp_path):
    m = np.zeros((16, 16), np.uint8)
    m[:, 8:] = 1
    _image(tmp_path, 16, 16)
    _save(tmp_path / "lbl/a.webp", m, lossless=False, quality=80)
    assert lossy_webp(tmp_path / "lbl/a.webp")
    ids = _cfg(tmp_path, task="multiclass", num_classes=2, mask_ext=".webp")
    (s,) = load_train_samples(ids)
    with pytest.raises(DataError, match=r"a\.webp: mask is a lossy WebP \(VP8\) file \(lossy"):
        load_target(s, ids, (16, 16))
    cfg = _cfg(tmp_path, task="multiclass", num_classes=2, mask_ext=".webp", mask_channel=0)  # WebP is stored as RGB
    with pytest.raises(DataError, match=r"a\.webp: mask is a lossy WebP \(VP8\) file.*convert the masks to PNG"):
        load_target(s, cfg, (16, 16))
    _save(tmp_path / "lbl/a.webp", m, lossless=True)
    assert not lossy_webp(tmp_path / "lbl/a.webp")
    assert load_target(s, cfg, (16, 16)).tolist() == m.tolist()
    # a lossy binary mask with data.mask_threshold says how to read it
    _save(tmp_path / "lbl/a.webp", m * 255, lossless=False, quality=90)
    binary = _cfg(tmp_path, mask_ext=".webp", mask_threshold=128, mask_channel=0)
    (s,) = load_train_samples(binary)
    assert load_target(s, binary, (16, 16))[:, :, 0].tolist() == m.tolist()


def test_jpeg_compressed_tiff_mask_is_refused_and_lzw_read_exactly(tmp_path):
    """The same mask as .jpg was refused; as a JPEG-compressed TIFF it was read with 1 pixel in 8 changed, within the
    class ids, so no other check fired."""
    m = np.zeros((32, 32), np.uint8)
    m[8:20, 8:20] = 2
    _image(tmp_path, 32, 32)
    _save(tmp_path / "lbl/a.tif", m, compression="jpeg")
    cfg = _cfg(tmp_path, task="multiclass", num_classes=3, mask_ext=".tif")
    (s,) = load_train_samples(cfg)
    with pytest.raises(DataError, match=r"a\.tif: mask is a TIFF \(jpeg compression\) file \(lossy"):
        load_target(s, cfg, (32, 32))
    _save(tmp_path / "lbl/a.tif", m, compression="tiff_lzw")
    assert load_target(s, cfg, (32, 32)).tolist() == m.tolist()


def test_lossy_webp_with_alpha_is_lossy(tmp_path):
    _save(tmp_path / "a.webp", np.zeros((8, 8, 4), np.uint8), lossless=False, quality=80)
    assert (tmp_path / "a.webp").read_bytes()[12:16] == b"VP8X" and lossy_webp(tmp_path / "a.webp")


# ----------------------------------------------------------------------------- 6. overlapping multiclass rows


def test_overlapping_multiclass_rows_are_an_error_naming_the_classes(tmp_path):
    _image(tmp_path, 8, 8)
    # class 1: pixels 1..20, class 2: pixels 11..30 (column-major, 1-based): 10 pixels in both
    (tmp_path / "train.csv").write_text("id,cls,rle\na,1,1 20\na,2,11 20\n")
    cfg = _csv_cfg(tmp_path, task="multiclass", num_classes=3, class_column="cls")
    (s,) = load_train_samples(cfg)
    with pytest.raises(DataError, match=r"train\.csv line 2 \(id 'a'\): the masks of classes 1 and 2 overlap on 10 "
                                        r"pixel\(s\).*data\.task: multilabel.*seg-toolkit audit"):
        load_target(s, cfg, (8, 8))
    from seg_toolkit.audit import audit

    res = audit(cfg)  # the audit lists it under its own kind
    assert [p.kind for p in res.problems] == ["class_overlap"] and res.n_read == 0
    (tmp_path / "train.csv").write_text("id,cls,rle\na,1,1 10\na,2,11 20\n")
    (s,) = load_train_samples(cfg)
    assert load_target(s, cfg, (8, 8)).T.ravel()[:32].tolist() == [1] * 10 + [2] * 20 + [0] * 2


# ----------------------------------------------------------------------------- 7. rows disagreeing on the group


def test_rows_of_one_image_disagreeing_on_the_group_are_a_problem(tmp_path):
    for i in range(2):
        _image(tmp_path, 4, 4, f"i{i}")
    (tmp_path / "train.csv").write_text("id,cls,rle,patient\ni0,1,1 2,P1\ni0,2,5 2,P2\ni1,1,1 2,P2\ni1,2,,P2\n")
    cfg = _csv_cfg(tmp_path, task="multilabel", num_classes=2, class_column="cls", group_column="patient",
                   folds={"method": "group"})
    with pytest.raises(DataError, match=r"train\.csv line 3: id 'i0' has group 'P2' in column 'patient', but 'P1' "
                                        r"at line 2"):
        list_train_samples(cfg)
    problems = []
    samples, bad = list_train_samples(cfg, lambda kind, where, msg: problems.append((kind, where)))
    assert [k for k, _ in problems] == ["bad_group"] and problems[0][1].endswith("train.csv line 3")
    assert bad == {"i0"} and {s.id: s.group for s in samples} == {"i0": "P1", "i1": "P2"}


# ----------------------------------------------------------------------------- 8. trailing comma


def test_csv_rows_with_a_trailing_comma_are_refused_naming_the_line(tmp_path):
    _image(tmp_path, 4, 4)
    (tmp_path / "train.csv").write_text("id,rle\na,1 3,\n")
    with pytest.raises(DataError, match=r"train\.csv line 2: 3 fields, trailing comma, but the header has 2 "
                                        r"\('id', 'rle'\)"):
        list_train_samples(_csv_cfg(tmp_path))
    (tmp_path / "train.csv").write_text("id,rle\na,1 3\n")
    assert read_csv_strict(tmp_path / "train.csv", ["id", "rle"], "training CSV").to_dict("list") == {
        "id": ["a"], "rle": ["1 3"]}


def test_csv_rows_with_a_missing_field_are_refused_and_lines_count_blank_lines(tmp_path):
    """A row short of the header's fields (a truncated line) was read with "" in the missing field: an empty mask.
    Messages counted data rows from the header, so every line after a blank line (which pandas skips) or a quoted
    field spanning lines was named too low."""
    for n in "abc":
        _image(tmp_path, 3, 4, n)
    cfg = _csv_cfg(tmp_path, task="multilabel", num_classes=2, class_column="cls")
    (tmp_path / "train.csv").write_text("id,cls,rle\na,1,1 2\nb,2\n")
    with pytest.raises(DataError, match=r"train\.csv line 3: 2 field\(s\), but the header has 3 \('id', 'cls', 'rle'\); "
                                        r".*a truncated line\?"):
        list_train_samples(cfg)
    # lines 3 and 5 blank (5 only spaces), line 6 opens a quoted field that ends on line 7: c's bad row is line 8
    (tmp_path / "train.csv").write_text('id,rle\na,1 2\n\nb,1 2\n   \n"b2","1\n2"\nc,1 x\n')
    df = read_csv_strict(tmp_path / "train.csv", ["id", "rle"], "training CSV")
    assert df["id"].tolist() == ["a", "b", "b2", "c"] and df.attrs["lines"] == [2, 4, 6, 8]
    with pytest.raises(DataError, match=r"train\.csv line 8 \(id 'c'\): RLE token 'x' is not an integer"):
        list_train_samples(_csv_cfg(tmp_path))


# ----------------------------------------------------------------------------- 9, 10. keys that cannot apply


def test_group_column_in_the_folder_layout_is_refused_at_load(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.group_column: 'patient' is a column of data\.train_csv.*"
                                          r"data\.group_pattern"):
        config_from_dict({"data": {"root": str(tmp_path), "layout": "folder", "group_column": "patient"},
                          "folds": {"method": "group"}})


def test_binary_task_with_a_class_column_is_refused_at_load(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.class_column: 'ClassId'.*binary task reads one mask per image.*"
                                          r"remove data\.class_column, or use data\.task: multilabel"):
        _csv_cfg(tmp_path, class_column="ClassId")


# ----------------------------------------------------------------------------- 11. one mask for two images


def test_one_mask_file_listed_for_two_images_is_refused(tmp_path):
    for name in ("a", "b"):
        _image(tmp_path, 2, 2, name)
    _save(tmp_path / "lbl/a.png", np.eye(2, dtype=np.uint8))
    (tmp_path / "train.txt").write_text("img/a.png lbl/a.png\nimg/b.png lbl/./a.png\n")
    cfg = _cfg(tmp_path, train_lists=["train.txt"])
    with pytest.raises(DataError, match=r"train\.txt line 2: mask lbl/\./a\.png of image img/b\.png is also listed at "
                                        r".*train\.txt line 1 for another image"):
        load_list_samples(cfg, ["train.txt"])
    problems = []
    listed = list(iter_list_samples(cfg, ["train.txt"], lambda kind, where, msg: problems.append((kind, where))))
    assert [s.id for s in listed] == ["a"] and [k for k, _ in problems] == ["duplicate_mask"]
    assert problems[0][1].endswith("train.txt line 2")


# ----------------------------------------------------------------------------- 12. RGB mask hint


def test_rgb_mask_error_suggests_mask_channel_and_colors(tmp_path):
    _image(tmp_path, 2, 2)
    _save(tmp_path / "lbl/a.png", np.stack([np.eye(2, dtype=np.uint8) * 255] * 3, -1))
    cfg = _cfg(tmp_path)
    (s,) = load_train_samples(cfg)
    with pytest.raises(DataError, match=r"a\.png: mask is RGB \(3 channels\).*set data\.mask_channel: 0.*"
                                        r"data\.mask_format: colors"):
        load_target(s, cfg, (2, 2))
    fixed = _cfg(tmp_path, mask_channel=0)
    assert load_target(s, fixed, (2, 2))[:, :, 0].tolist() == [[1, 0], [0, 1]]
    assert IGNORE_INDEX not in load_target(s, fixed, (2, 2))


def test_png_exif_chunk_after_the_image_data_is_found_without_decoding(tmp_path):
    """An eXIf chunk may follow IDAT; image_size finds it from the chunk headers (Pillow would decode the image)."""
    import struct
    import zlib

    stored = np.zeros((2, 3, 3), np.uint8)
    stored[0, 0] = 255
    data = _tagged(tmp_path / "a.png", stored, tag=6).read_bytes()
    chunks, pos = [], 8
    while pos < len(data):
        size = struct.unpack(">I", data[pos:pos + 4])[0]
        chunks.append(data[pos:pos + 12 + size])
        pos += 12 + size
    exif = [c for c in chunks if c[4:8] == b"eXIf"]
    rest = [c for c in chunks if c[4:8] != b"eXIf"]
    assert len(exif) == 1 and rest[-1][4:8] == b"IEND"
    late = tmp_path / "late.png"
    late.write_bytes(data[:8] + b"".join(rest[:-1]) + exif[0] + rest[-1])
    assert "exif" not in Image.open(late).info  # not seen before decoding
    assert image_size(late, exif="apply") == (3, 2)
    assert read_image(late, exif="apply").tolist() == np.rot90(stored, -1).tolist()
    with pytest.raises(DataError, match="EXIF orientation tag 6"):
        image_size(late, exif="error")
    assert zlib.crc32(exif[0][4:-4]) == struct.unpack(">I", exif[0][-4:])[0]


def test_tiffs_pillow_would_read_otherwise_are_refused_naming_the_file(tmp_path):
    """Pillow read page 0 of a 3-page TIFF alone, an 8-bit R, G, B, NIR TIFF as RGB (the NIR band lost), and turned
    TIFFs of an orientation tag itself (scrambling non-square grey ones), so that data.exif_orientation ignore gave
    turned pixels and apply turned them twice; each is refused now, by the reader and by the size from the header.
    A TIFF Pillow cannot open at all (5 bands) is named as such, not as a corrupt file."""
    tifffile = pytest.importorskip("tifffile")
    rng = np.random.default_rng(0)
    pages = [Image.fromarray(rng.integers(0, 256, (20, 32), dtype=np.uint8)) for _ in range(3)]
    pages[0].save(tmp_path / "stack.tif", save_all=True, append_images=pages[1:])
    rgbn = rng.integers(0, 256, (20, 32, 4), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgbn.tif", rgbn, photometric="rgb", extrasamples=[0])  # a 4th band, not alpha
    grey = rng.integers(0, 256, (20, 32), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "turned.tif", grey, metadata=None, extratags=[(274, "H", 1, 6, True)])
    tifffile.imwrite(tmp_path / "five.tif", rng.integers(0, 256, (20, 32, 5), dtype=np.uint8), photometric="minisblack",
                     planarconfig="contig")
    cases = {"stack.tif": "a TIFF of 3 pages; one image per file is read",
             "rgbn.tif": r"a TIFF of 4 samples per pixel, which Pillow reads as RGB \(3 band\(s\)\): the other 1 would be lost",
             "turned.tif": "TIFF orientation tag 6: Pillow turns such a TIFF as it reads it",
             "five.tif": r"not a readable image .*; a TIFF Pillow does not read \(more than 4 bands"}
    for name, message in cases.items():
        for exif in ("error", "ignore", "apply"):
            with pytest.raises(DataError, match=rf"{name}: {message}"):
                read_image(tmp_path / name, 4 if name == "rgbn.tif" else 1, exif=exif)
            with pytest.raises(DataError, match=rf"{name}: {message}"):
                image_size(tmp_path / name, exif=exif)
    with pytest.raises(DataError, match="stack.tif: a TIFF of 3 pages"):
        read_mask(tmp_path / "stack.tif")
    # the same files without what Pillow misreads are read exactly
    pages[0].save(tmp_path / "one.tif")
    assert np.array_equal(read_image(tmp_path / "one.tif", 1)[..., 0], np.asarray(pages[0]))
    tifffile.imwrite(tmp_path / "rgba.tif", rgbn, photometric="rgb", extrasamples=[2])  # the 4th band an alpha
    assert np.array_equal(read_image(tmp_path / "rgba.tif", 4), rgbn)
    tifffile.imwrite(tmp_path / "upright.tif", grey, metadata=None, extratags=[(274, "H", 1, 1, True)])
    assert np.array_equal(read_image(tmp_path / "upright.tif", 1, exif="apply")[..., 0], grey)
    # the review: a full image with its overview (a COG's or GeoTIFF's reduced-resolution page, NewSubfileType 1) or a
    # thumbnail was refused as "2 pages"; page 0 is the image. A 16-bit RGB BigTIFF was read by its high byte only
    with tifffile.TiffWriter(tmp_path / "cog.tif") as w:
        w.write(rgbn[..., :3], photometric="rgb")
        w.write(rgbn[::2, ::2, :3], photometric="rgb", subfiletype=1)
    assert np.array_equal(read_image(tmp_path / "cog.tif", 3), rgbn[..., :3]) and image_size(tmp_path / "cog.tif") == (20, 32)
    with tifffile.TiffWriter(tmp_path / "thumb_first.tif") as w:  # the second review: page 0 a thumbnail, read for the image
        w.write(rgbn[::2, ::2, :3], photometric="rgb", subfiletype=1)
        w.write(rgbn[..., :3], photometric="rgb")
    with pytest.raises(DataError, match="thumb_first.tif: a TIFF whose page 0 is a reduced-resolution page"):
        read_image(tmp_path / "thumb_first.tif", 3)
    deep = rng.integers(0, 65536, (20, 32, 3), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "big16.tif", deep, photometric="rgb", bigtiff=True)
    want = np.floor(deep.astype(np.float64) * 255 / 65535 + 0.5).astype(np.uint8)
    assert np.array_equal(read_image(tmp_path / "big16.tif", 3), want)


def test_array_and_integer_messages(tmp_path):
    """A big-endian uint16 .npy was refused ('a >u2 array has no fixed range') where the same values little-endian
    were read over 0..65535; a channels-first array said only that it had W channels; an int16 TIFF (Pillow's mode I)
    was called a 32-bit integer image."""
    values = np.arange(0, 65536, 4099, dtype=np.uint16).reshape(4, 4)
    np.save(tmp_path / "le.npy", values)
    np.save(tmp_path / "be.npy", values.astype(">u2"))
    assert np.array_equal(read_image(tmp_path / "be.npy", 1), read_image(tmp_path / "le.npy", 1))
    assert wide_values(tmp_path / "be.npy", in_channels=1) == wide_values(tmp_path / "le.npy", in_channels=1)
    np.save(tmp_path / "chw.npy", np.zeros((3, 8, 6), np.uint8))
    with pytest.raises(DataError, match=r"chw.npy: array of shape \(3, 8, 6\) has 6 channel\(s\); data.in_channels is 3; "
                                        r"it looks channels-first \(C, H, W\)"):
        read_image(tmp_path / "chw.npy", 3)
    Image.fromarray(np.array([[-5, 7]], np.int32), mode="I").save(tmp_path / "signed.tif")
    with pytest.raises(DataError, match=r"signed.tif: a signed or 32-bit integer image \(PIL mode I; values -5..7"):
        read_image(tmp_path / "signed.tif", 1)
