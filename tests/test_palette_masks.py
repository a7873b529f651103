"""Palette (mode P) masks are read by their indices, the VOC convention; a grey palette that would make the ids the
inverse of the mask the file shows (a 0/255 mask quantized, or saved as GIF from RGB) is refused, naming the file.

Each file is made here with Pillow the way users make them; the expected ids are the drawn ones.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from seg_toolkit.data import DataError
from seg_toolkit.data.mask_io import read_mask, read_mask_array


def _drawn(h: int = 16, w: int = 20) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[3:9, 4:12] = 1
    m[10:14, 2:18] = 2
    return m


def _palette_file(path, ids: np.ndarray, palette: list[int]):
    im = Image.fromarray(ids.astype(np.uint8), mode="P")
    im.putpalette(palette)
    im.save(path)
    return path


def test_a_voc_palette_is_read_by_index_void_included(tmp_path):
    ids = _drawn()
    ids[0, :] = 255  # VOC's void border
    palette = [0, 0, 0, 128, 0, 0, 0, 128, 0] + [0, 0, 0] * 252 + [224, 224, 192]
    got = read_mask(_palette_file(tmp_path / "voc.png", ids, palette))
    assert got.dtype == np.uint8 and np.array_equal(got, ids)


@pytest.mark.parametrize("palette", [[0, 0, 0, 1, 1, 1, 2, 2, 2],  # greys equal to the ids
                                     [0, 0, 0, 100, 100, 100, 200, 200, 200]])  # greys rising with the ids
def test_a_grey_palette_that_rises_with_the_ids_is_read_by_index(tmp_path, palette):
    ids = _drawn()
    assert np.array_equal(read_mask(_palette_file(tmp_path / "g.png", ids, palette)), ids)


def test_a_grey_mask_converted_to_p_reads_its_grey_values(tmp_path):
    mask = _drawn() * 255 // 2  # 0 / 127 / 254
    Image.fromarray(mask.astype(np.uint8)).convert("P").save(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    assert np.array_equal(read_mask(tmp_path / "p.png"), mask)


@pytest.mark.parametrize("how", ["quantize", "rgb_gif"])
def test_a_quantized_or_gif_0_255_mask_with_white_at_index_0_is_refused(tmp_path, how):
    fg = _drawn() > 0
    grey = Image.fromarray((fg * 255).astype(np.uint8))
    path = tmp_path / ("m.png" if how == "quantize" else "m.gif")
    (grey.quantize(2) if how == "quantize" else grey.convert("RGB")).save(path)
    im = Image.open(path)
    index_of_white = int(np.asarray(im)[fg][0])
    assert im.mode == "P" and index_of_white == 0  # read by index, the foreground would be class 0
    with pytest.raises(DataError) as e:
        read_mask(path)
    msg = str(e.value)
    assert str(path) in msg and "0 shown as grey 255" in msg and "data.mask_format: colors" in msg
    # the remedy the error names: read as colours, the greys are what was drawn
    colors = read_mask_array(path, kind="colors")
    assert np.array_equal(colors[..., 0] == 255, fg) and (colors == colors[..., :1]).all()


@pytest.mark.parametrize("ids, palette, said", [
    (np.zeros((8, 8)), [255, 255, 255, 0, 0, 0], "0 shown as grey 255"),  # all white, index 0: would read as empty
    (np.ones((8, 8)), [255, 255, 255, 0, 0, 0], "1 shown as grey 0"),  # all black at index 1: would read as full
    (_drawn(), [2, 2, 2, 1, 1, 1, 0, 0, 0], "0 shown as grey 2, 1 shown as grey 1, 2 shown as grey 0"),  # inverted
])
def test_a_grey_palette_whose_ids_contradict_the_picture_is_refused(tmp_path, ids, palette, said):
    path = _palette_file(tmp_path / "x.png", ids, palette)
    with pytest.raises(DataError, match="palette mask whose palette is grey") as e:
        read_mask(path)
    assert said in str(e.value)


def test_a_colour_label_saved_as_a_palette_png_is_refused_when_the_classes_csv_names_its_colours(tmp_path):
    """A colour label image saved as a palette PNG (pngquant, optipng, PIL's quantize: colours numbered by first use),
    read by index with a classes CSV that lists each class's r,g,b: Sky, Road, Car (classes 0, 3, 8) became classes
    0, 1, 2 (Sky, Building, Pole), and training went ahead. The palette says which classes its indices are; they are
    compared before training. A VOC palette (index i coloured as class i, or colours the CSV does not list) passes."""
    from seg_toolkit.config import config_from_dict
    from seg_toolkit.data.colors import check_color_masks
    from seg_toolkit.data.sources import load_train_samples

    colours = {0: (128, 128, 128), 1: (128, 0, 0), 3: (128, 64, 128), 8: (64, 0, 128)}
    rows = "".join(f"{i},c{i},{r},{g},{b}\n" for i, (r, g, b) in ((i, colours.get(i, (i, i, i))) for i in range(9)))
    (tmp_path / "classes.csv").write_text("id,name,r,g,b\n" + rows)
    for d in ("images", "masks"):
        (tmp_path / d).mkdir()
    ids = np.full((12, 16), 3, np.uint8)
    ids[:4] = 0
    ids[6:9, 4:10] = 8
    rgb = np.zeros((12, 16, 3), np.uint8)
    for k, c in colours.items():
        rgb[ids == k] = c
    Image.fromarray(rgb).quantize(colors=3).save(tmp_path / "masks" / "a.png")
    Image.fromarray(rgb).save(tmp_path / "images" / "a.png")
    cfg = config_from_dict({"data": {"root": str(tmp_path), "task": "multiclass", "num_classes": 9, "layout": "folder",
                                     "train_images": "images", "train_masks": "masks", "classes_csv": "classes.csv"},
                            "folds": {"n_splits": 2}, "loss": {"ce": 1.0}, "submission": {"per_class": True}})
    samples = load_train_samples(cfg)
    index_of_road = int(np.asarray(Image.open(tmp_path / "masks" / "a.png"))[11, 0])
    assert index_of_road != 3  # the quantizer's numbering, not the class's
    with pytest.raises(DataError, match=rf"a.png: a palette mask whose index {index_of_road} is coloured \[128, 64, 128\], "
                                        r"the colour classes.csv gives class 3: its indices are not class ids .* "
                                        r"data.mask_format: colors"):
        check_color_masks(samples, cfg)
    palette = [c for i in range(9) for c in colours.get(i, (i, i, i))]  # VOC-style: index i is coloured as class i
    _palette_file(tmp_path / "masks" / "a.png", ids, palette)
    check_color_masks(samples, cfg)
    _palette_file(tmp_path / "masks" / "a.png", ids, [0, 0, 0] * 3 + [200, 10, 10] * 6)  # colours the CSV does not list
    check_color_masks(samples, cfg)
    # the review's false refusals: a grey palette (an id mask converted to P: index i shown as grey i) beside a CSV
    # whose void row is black (CamVid's 11), and a void row's colour at the void index (VOC's 255 listed as id 21)
    with_void = "".join(line + ",0\n" for line in rows.splitlines()) + "9,void,0,0,0,1\n10,edge,224,224,192,1\n"
    (tmp_path / "classes.csv").write_text("id,name,r,g,b,ignore\n" + with_void)
    Image.fromarray(ids).convert("P").save(tmp_path / "masks" / "a.png")
    check_color_masks(samples, cfg)
    voc = ids.copy()
    voc[0, :] = 255
    _palette_file(tmp_path / "masks" / "a.png", voc, [0, 0, 0] * 255 + [224, 224, 192])
    check_color_masks(samples, cfg)
    # the second review: a grey class colour still counts (class 0's (128, 128, 128) at index 1 is a quantized label)
    _palette_file(tmp_path / "masks" / "a.png", np.where(ids == 0, 1, 0).astype(np.uint8), [9, 9, 9, 128, 128, 128])
    with pytest.raises(DataError, match=r"index 1 is coloured \[128, 128, 128\], the colour classes.csv gives class 0"):
        check_color_masks(samples, cfg)
