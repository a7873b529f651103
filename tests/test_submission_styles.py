"""Every RLE style a competition may want, as one declared spec (``RLESpec``) and its config keys.

Hand-worked strings for SIIM (relative starts, ``-1`` for empty, 0-based), Airbus (column-major,
one row per ship, the id repeated), row-major instance rows, 0-based starts, and class 0 rows; the checker on instance
rows; official DSB 2018 instance rows and TGS strings (skipped without ../shared/data).
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image
from scipy import ndimage

from seg_toolkit.config import ConfigError, config_from_dict, load_config
from seg_toolkit.rle import RLEError, RLESpec, instance_overlap, rle_decode, rle_encode
from seg_toolkit.submission import SubmissionError, SubmissionWriter, mask_rows, submission_columns, submission_spec
from seg_toolkit.submission_check import check_submission
from seg_toolkit.submission_score import score_submission

from .conftest import demo_dict, shared_dataset

SIIM = RLESpec(order="F", index_base=0, starts="relative", empty="-1")
AIRBUS = RLESpec(order="F", instances=True)  # "1 is pixel (1,1), 2 is pixel (2,1)": column-major, as TGS
ROW_MAJOR = RLESpec(order="C", instances=True)  # Carvana / Sartorius numbering, one row per object

# ----------------------------------------------------------------------------- hand-worked strings

# 3 x 4 (H x W), column-major pixel numbers (0-based) in brackets:
#   [[0 1 0 0],      [0] [3] [6] [ 9]
#    [0 1 0 1],      [1] [4] [7] [10]
#    [1 0 0 1]]      [2] [5] [8] [11]
# F order: 0 0 1 | 1 1 0 | 0 0 0 | 0 1 1  -> runs at 0-based 2..4 (length 3) and 10..11 (length 2)
#   Kaggle (1-based, absolute):     "3 3 11 2"
#   0-based, absolute:              "2 3 10 2"
#   SIIM (0-based, relative):       "2 3 5 2"   the 2nd start is the gap after the 1st run: 10 - (2 + 3) = 5
#   1-based, relative:              "3 3 6 2"   (the same gaps, counted from 1)
SIIM_MASK = np.array([[0, 1, 0, 0], [0, 1, 0, 1], [1, 0, 0, 1]], np.uint8)


@pytest.mark.parametrize(
    "spec, text",
    [
        (RLESpec(), "3 3 11 2"),
        (RLESpec(index_base=0), "2 3 10 2"),
        (SIIM, "2 3 5 2"),
        (RLESpec(starts="relative"), "3 3 6 2"),
    ],
)
def test_hand_worked_index_base_and_relative_starts(spec, text):
    assert spec.encode(SIIM_MASK) == text
    np.testing.assert_array_equal(spec.decode(text, SIIM_MASK.shape), SIIM_MASK)
    assert spec.encode_rows(SIIM_MASK) == [text]


def _siim_rle2mask(rle: str, height: int, width: int) -> np.ndarray:
    """SIIM's published decoder, restated: ``pos += start; fill length; pos += length``, column-major."""
    flat = np.zeros(height * width, np.uint8)
    if rle.strip() != "-1":
        values = [int(x) for x in rle.split()]
        pos = 0
        for start, length in zip(values[0::2], values[1::2]):
            pos += start
            flat[pos : pos + length] = 1
            pos += length
    return flat.reshape(width, height).T


def test_siim_empty_is_minus_one_and_matches_the_reference_decoder():
    empty = np.zeros((3, 4), np.uint8)
    assert SIIM.encode(empty) == "-1"
    assert SIIM.decode("-1", (3, 4)).sum() == 0
    assert SIIM.decode(" -1", (3, 4)).sum() == 0  # SIIM's train-rle.csv writes " -1"
    np.testing.assert_array_equal(_siim_rle2mask("2 3 5 2", 3, 4), SIIM_MASK)
    # touching runs in the reference decoder are a gap of 0 (accepted, like adjacent absolute runs)
    np.testing.assert_array_equal(SIIM.decode("0 2 0 1", (1, 4)), [[1, 1, 1, 0]])


@pytest.mark.parametrize(
    "spec, bad, message",
    [
        (RLESpec(index_base=0), "-1 2", "start -1 (pair 1) is < 0; starts are 0-indexed"),
        (RLESpec(index_base=0), "5 2", "ends at pixel 6 (numbered from 0), past the image's 6 pixels"),
        (RLESpec(index_base=0), "3 1 2 1", "runs are unsorted"),
        (SIIM, "2 1 -1 2", "start -1 (pair 2) is < 0; relative starts are gaps after the previous run's end"),
        (SIIM, "2 3 1 1", "ends at pixel 6 (numbered from 0)"),  # 2..4, then a gap of 1 -> pixel 6 of 0..5
        (SIIM, "-1 1", "start -1 (pair 1) is < 0; starts are 0-indexed"),
        (RLESpec(starts="relative"), "1 2 0 1", "start 0 (pair 2) is < 1; relative starts"),
        (SIIM, "1 2 x 1", "'x' is not an integer"),
        (SIIM, "99999999999999999999 1", "too large"),
        # each gap below 2**53, their sum past int64: was a wrapped, negative end and no error
        (SIIM, " ".join(["9007199254740991 1"] * 1025), "relative runs end past the image's 6 pixels (the gaps and "
                                                         "lengths of its 1025 pairs add up to 9232379236109516800)"),
    ],
)
def test_spec_errors_name_the_row(spec, bad, message):
    with pytest.raises(RLEError) as err:
        spec.decode(bad, (2, 3), where="sub.csv line 3 (id 'q')")
    assert "sub.csv line 3 (id 'q')" in str(err.value) and message in str(err.value)


def test_relative_strings_need_no_order_between_runs():
    # "5 1 1 1" is unsorted as absolute runs; as SIIM gaps it is pixels 5 and 7 (0-based)
    assert SIIM.decode("5 1 1 1", (1, 8)).ravel().tolist() == [0, 0, 0, 0, 0, 1, 0, 1]
    with pytest.raises(RLEError, match="unsorted"):
        RLESpec(index_base=0).decode("5 1 1 1", (1, 8))


def test_spec_fields_are_checked():
    for kwargs, msg in [({"order": "X"}, "column-major"), ({"index_base": 2}, "index_base"), ({"index_base": True}, "index_base"),
                        ({"starts": "rel"}, "starts"), ({"min_instance_area": -1}, "min_instance_area")]:
        with pytest.raises(ValueError, match=msg):
            RLESpec(**kwargs)


SPECS = [RLESpec(order=o, index_base=b, starts=s) for o, b, s in itertools.product("FC", (0, 1), ("absolute", "relative"))]


@settings(max_examples=200, deadline=None)
@given(
    mask=st.integers(1, 10).flatmap(
        lambda h: st.integers(1, 10).flatmap(lambda w: arrays(np.uint8, (h, w), elements=st.integers(0, 1)))
    ),
    spec=st.sampled_from(SPECS),
)
def test_round_trip_every_style(mask, spec):
    text = spec.encode(mask)
    np.testing.assert_array_equal(spec.decode(text, mask.shape), mask)
    assert spec.encode(spec.decode(text, mask.shape)) == text
    if spec.order == "F" and spec.index_base == 0 and spec.starts == "relative":
        np.testing.assert_array_equal(_siim_rle2mask(text or "-1", *mask.shape), mask)


@settings(max_examples=200, deadline=None)
@given(
    text=st.text(alphabet=st.sampled_from(list("0123456789 -")), max_size=24),
    spec=st.sampled_from(SPECS + [SIIM]),
)
def test_every_style_only_raises_its_own_error(text, spec):
    try:
        out = spec.decode(text, (4, 5))
    except RLEError:
        return
    assert out.shape == (4, 5) and set(np.unique(out)) <= {0, 1}


def test_default_spec_is_rle_encode():
    m = np.array([[0, 1, 1], [1, 0, 0]], np.uint8)
    for order in "FC":
        assert RLESpec(order=order).encode(m) == rle_encode(m, order)
        np.testing.assert_array_equal(RLESpec(order=order).decode("2 2", (2, 3)), rle_decode("2 2", (2, 3), order))


# ----------------------------------------------------------------------------- instance rows (Airbus, DSB 2018)

# Instance rows, row-major (C; Sartorius), 1-based, one row per object, no object = one row with an empty field.
# 4 x 5, row-major pixel numbers (1-based):
#   [[1 1 0 0 0],       1  2  3  4  5        ship A: pixels 1, 2                -> "1 2"
#    [0 0 0 0 1],       6  7  8  9 10        ship B: 10, 14, 15, and 18, which
#    [0 0 0 1 1],      11 12 13 14 15                touches 14 only diagonally:
#    [0 0 1 0 0]]      16 17 18 19 20                8-connected, so one object  -> "10 1 14 2 18 1"
SHIPS = np.array([[1, 1, 0, 0, 0], [0, 0, 0, 0, 1], [0, 0, 0, 1, 1], [0, 0, 1, 0, 0]], np.uint8)


def test_instance_rows_one_row_per_ship():
    assert ROW_MAJOR.encode_rows(SHIPS) == ["1 2", "10 1 14 2 18 1"]  # ordered by first pixel
    assert ROW_MAJOR.encode_rows(np.zeros_like(SHIPS)) == [""]
    # min_instance_area: A has 2 pixels, B 4
    assert RLESpec(order="C", instances=True, min_instance_area=3).encode_rows(SHIPS) == ["10 1 14 2 18 1"]
    assert RLESpec(order="C", instances=True, min_instance_area=5).encode_rows(SHIPS) == [""]
    # Airbus' column-major numbering of the same ships: A = (0,0),(0,1) -> 1, 5; B = (1,4),(2,4),(2,3),(3,2) -> 18, 19, 15, 12
    assert AIRBUS.encode_rows(SHIPS) == ["1 1 5 1", "12 1 15 1 18 2"]
    np.testing.assert_array_equal(ROW_MAJOR.decode_rows(["1 2", "10 1 14 2 18 1"], SHIPS.shape), SHIPS)
    np.testing.assert_array_equal(AIRBUS.decode_rows(["1 1 5 1", "12 1 15 1 18 2"], SHIPS.shape), SHIPS)


def test_instances_with_other_styles():
    # SIIM style per object: B's column-major runs 11, 14, 17..18 (0-based) -> gaps 11, 2, 2
    spec = RLESpec(order="F", index_base=0, starts="relative", empty="-1", instances=True)
    assert spec.encode_rows(SHIPS) == ["0 1 3 1", "11 1 2 1 2 2"]
    assert spec.encode_rows(np.zeros((2, 2))) == ["-1"]


def test_instance_overlap_finds_the_shared_pixel():
    a, b, c = (RLESpec().runs(s, 100) for s in ("1 5 20 3", "30 2", "21 1"))
    assert instance_overlap([a, b]) is None
    assert instance_overlap([a, b, c]) == (0, 2, 20)  # 0-based pixel 20 = Kaggle pixel 21


def _cfg(task="binary", num_classes=1, data=None, **submission):
    loss = {"ce": 1.0} if task == "multiclass" else {"bce": 1.0}
    rows = {} if task == "binary" else {"class_column": "ClassId"}  # RLE rows of several classes name the class
    return config_from_dict({"data": {"task": task, "num_classes": num_classes, **rows, **(data or {})},
                             "submission": submission, "loss": loss})


def test_mask_rows_airbus_config():
    cfg = _cfg(instances=True)  # Airbus: the default column-major order
    assert submission_spec(cfg) == AIRBUS
    assert mask_rows("ship.jpg", SHIPS[None], cfg) == [("ship.jpg", "1 1 5 1"), ("ship.jpg", "12 1 15 1 18 2")]
    assert mask_rows("sea.jpg", np.zeros((1, 4, 5), np.uint8), cfg) == [("sea.jpg", "")]


def test_mask_rows_siim_config():
    cfg = _cfg(rle_index_base=0, rle_starts="relative", empty_token="-1")
    assert submission_spec(cfg) == SIIM
    assert mask_rows("1.2.276", SIIM_MASK[None], cfg) == [("1.2.276", "2 3 5 2")]
    assert mask_rows("1.2.277", np.zeros((1, 3, 4), np.uint8), cfg) == [("1.2.277", "-1")]


def test_multiclass_class_zero_when_listed():
    label = np.array([[0, 2, 2], [1, 0, 0]], np.uint8)
    # column-major pixels (1-based): class 0 at (0,0),(1,1),(1,2) -> 1, 4, 6; class 1 -> 2; class 2 -> 3, 5
    cfg = _cfg("multiclass", 3, per_class=True, classes=[0, 1, 2])
    assert mask_rows("m", label, cfg) == [("m_0", "1 1 4 1 6 1"), ("m_1", "2 1"), ("m_2", "3 1 5 1")]
    # rows in the listed order, a subset allowed
    assert mask_rows("m", label, _cfg("multiclass", 3, per_class=True, classes=[2, 0])) == [("m_2", "3 1 5 1"), ("m_0", "1 1 4 1 6 1")]
    # the default is unchanged: classes 1.., no background row
    assert mask_rows("m", label, _cfg("multiclass", 3, per_class=True)) == [("m_1", "2 1"), ("m_2", "3 1 5 1")]
    # one class (here the background) needs no per-class ids
    assert mask_rows("m", label, _cfg("multiclass", 3, classes=[0])) == [("m", "1 1 4 1 6 1")]


def test_multilabel_instances_per_class():
    two = np.stack([SHIPS, np.zeros_like(SHIPS)])
    cfg = _cfg("multilabel", 2, data={"rle_order": "C"}, per_class=True, instances=True, classes=[2, 1])
    assert mask_rows("a", two, cfg) == [("a_2", ""), ("a_1", "1 2"), ("a_1", "10 1 14 2 18 1")]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(task="multilabel", num_classes=3, per_class=True, classes=[1, 4]),
         "submission.classes[1]: class 4 is outside 1..3"),
        (dict(task="multilabel", num_classes=3, per_class=True, classes=[0, 1]),
         "submission.classes[0]: class 0 is outside 1..3 (class 0 is background, which only a multiclass label map has)"),
        (dict(task="multiclass", num_classes=3, per_class=True, classes=[0, 3]), "submission.classes[1]: class 3 is outside 0..2"),
        (dict(task="multiclass", num_classes=3, per_class=True, classes=[1, 1]), "submission.classes[1]: class 1 is listed twice"),
        (dict(task="multiclass", num_classes=3, classes=[0, 1]),
         "submission.per_class: data.task=multiclass with data.num_classes=3 submits 2 classes [0, 1] (submission.classes)"),
        (dict(rle_index_base=2), "submission.rle_index_base: expected 0 or 1"),
        (dict(rle_index_base=True), "submission.rle_index_base: expected int"),
        (dict(rle_starts="relativ"), "submission.rle_starts: 'relativ' is not one of 'absolute', 'relative' (did you mean 'relative'?)"),
        (dict(min_instance_area=10), "submission.min_instance_area: only applies to instance rows"),
        (dict(instances=True, min_instance_area=-1), "submission.min_instance_area: expected >= 0, got -1"),
        (dict(instances="yes"), "submission.instances: expected bool"),
    ],
)
def test_config_keys_checked_at_load(kwargs, message):
    with pytest.raises(ConfigError) as err:
        _cfg(**kwargs)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_shipped_configs_keep_the_kaggle_spec():
    from pathlib import Path

    for path in sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")):
        spec = submission_spec(load_config(path))
        empty = "-" if path.stem == "contrails_cpu" else ""  # contrails writes an empty mask as '-'
        instances = path.stem == "dsb_cpu"  # DSB 2018: one row per nucleus
        order = "C" if path.stem == "uwmadison_cpu" else "F"  # UW-Madison's runs go along the rows
        assert (spec.index_base, spec.starts, spec.instances, spec.empty, spec.order) == (1, "absolute", instances, empty, order), path
    # DSB 2018 ships no sample with its stage-1 images: the header is the config's, the competition's
    assert submission_columns(load_config(Path(__file__).resolve().parents[1] / "configs/dsb_cpu.yaml")) == (
        "ImageId", "EncodedPixels")


# ----------------------------------------------------------------------------- writer and checker on instance rows


def test_writer_accepts_repeated_ids_only_for_instance_rows(tmp_path):
    cfg = _cfg(data={"rle_order": "C"}, instances=True)
    out = tmp_path / "sub.csv"
    with SubmissionWriter(out, ("ImageId", "EncodedPixels"), ["a", "b"], repeated_ids=True) as w:
        w.write(mask_rows("a", SHIPS[None], cfg))
        w.write(mask_rows("b", np.zeros((1, 4, 5), np.uint8), cfg))
    assert out.read_text() == "ImageId,EncodedPixels\na,1 2\na,10 1 14 2 18 1\nb,\n"
    with pytest.raises(SubmissionError, match="row 2: id 'a' where the sample has 'b'"):
        with SubmissionWriter(tmp_path / "x.csv", ("ImageId", "EncodedPixels"), ["a", "b"]) as w:
            w.write(mask_rows("a", SHIPS[None], cfg))
            w.write(mask_rows("b", SHIPS[None], cfg))
    with pytest.raises(SubmissionError, match="1 ids in 2 rows written, the sample has 2"):
        with SubmissionWriter(tmp_path / "y.csv", ("ImageId", "EncodedPixels"), ["a", "b"], repeated_ids=True) as w:
            w.write(mask_rows("a", SHIPS[None], cfg))
    assert not (tmp_path / "x.csv").exists() and not (tmp_path / "y.csv").exists()


@pytest.fixture
def airbus_sample(tmp_path):
    sample = tmp_path / "sample.csv"
    sample.write_text("ImageId,EncodedPixels\na.jpg,1 2\nb.jpg,1 2\nc.jpg,1 2\n")
    return sample


def _sub(tmp_path, body: str):
    path = tmp_path / "sub.csv"
    path.write_text("ImageId,EncodedPixels\n" + body)
    return path


def test_checker_instance_rows(tmp_path, airbus_sample):
    good = _sub(tmp_path, "a.jpg,1 2\na.jpg,10 1 14 2 18 1\nb.jpg,\nc.jpg,3 1\n")
    assert check_submission(good, airbus_sample, spec=AIRBUS) == []
    assert check_submission(good, airbus_sample, spec=AIRBUS, n_pixels=20) == []
    # without the instance spec the same file is what the old checker said: duplicate ids
    assert check_submission(good, airbus_sample) == ["4 rows; the sample has 3", "duplicate ids: 'a.jpg' (lines 2 and 3)"]


@pytest.mark.parametrize(
    "body, problems",
    [
        # 3 distinct ids, as the sample (it said "4 distinct ids", counting a.jpg's two groups of rows)
        ("a.jpg,1 2\nb.jpg,\na.jpg,5 1\nc.jpg,\n",
         ["rows of id 'a.jpg' are not together (lines 2 and 4); one image's instance rows must be consecutive"]),
        ("b.jpg,\na.jpg,1 2\nc.jpg,\n", ["rows are in a different order than the sample: line 2 has 'b.jpg', the sample 'a.jpg'"]),
        ("a.jpg,1 2\nc.jpg,\n", ["2 distinct ids (in 2 rows); the sample has 3", "1 sample ids missing, e.g. ['b.jpg']"]),
        ("a.jpg,1 3\na.jpg,3 2\nb.jpg,\nc.jpg,\n",
         ["line 3 (id 'a.jpg'): this object overlaps the one on line 2 at pixel 3; one image's objects must not overlap"]),
        ("a.jpg,1 2\na.jpg,\nb.jpg,\nc.jpg,\n",
         ["line 3 (id 'a.jpg'): an empty mask among the 2 instance rows of this id; an image without objects has exactly one row"]),
        ("a.jpg,1 2\nb.jpg,\nc.jpg,19 3\n", ["line 4 (id 'c.jpg'): RLE run 19 3 ends at pixel 21, past the image's 20 pixels"]),
    ],
)
def test_checker_instance_row_problems(tmp_path, airbus_sample, body, problems):
    assert check_submission(_sub(tmp_path, body), airbus_sample, spec=AIRBUS, n_pixels=20) == problems


def test_checker_reads_siim_and_zero_based_strings(tmp_path):
    sample = tmp_path / "sample.csv"
    sample.write_text("ImageId,EncodedPixels\np,-1\nq,-1\nr,-1\n")
    sub = _sub(tmp_path, "p,2 3 5 2\nq,-1\nr,5 1 1 1\n")
    assert check_submission(sub, sample, spec=SIIM, n_pixels=12) == []
    # read as Kaggle strings: "-1" is malformed, and "5 1 1 1" is unsorted
    kaggle = check_submission(sub, sample, n_pixels=12)
    assert len(kaggle) == 2 and "odd number of tokens" in kaggle[0] and "unsorted" in kaggle[1]
    bad = _sub(tmp_path, "p,2 3 -1 2\nq,\nr,0 1\n")
    assert check_submission(bad, sample, spec=SIIM, n_pixels=12) == [
        "line 2 (id 'p'): RLE start -1 (pair 2) is < 0; relative starts are gaps after the previous run's end, counted from 0",
        "line 3 (id 'q'): empty field, but an empty mask is written as '-1' in this competition",
    ]
    # spaces around an empty token, as the decoder reads them (was: "odd number of tokens (1)", and for a blank
    # cell where the token is '': "empty field, but an empty mask is written as ''")
    assert check_submission(_sub(tmp_path, "p,2 3 5 2\nq, -1 \nr,5 1 1 1\n"), sample, spec=SIIM, n_pixels=12) == []
    assert check_submission(_sub(tmp_path, "p,0 1\nq, \nr,11 1\n"), sample, empty_tokens=("",),
                            spec=RLESpec(index_base=0), n_pixels=12) == []
    # 0-based absolute: "0 1" is the first pixel; as Kaggle's 1-based string it is an error
    assert check_submission(_sub(tmp_path, "p,0 1\nq,\nr,11 1\n"), sample, empty_tokens=("",),
                            spec=RLESpec(index_base=0), n_pixels=12) == []
    assert "past the image's 12 pixels" in check_submission(_sub(tmp_path, "p,0 1\nq,\nr,12 1\n"), sample, empty_tokens=("",),
                                                            spec=RLESpec(index_base=0), n_pixels=12)[0]


def test_score_submission_merges_instance_rows(demo_root, tmp_path):
    """A submission scored against a solution in the same instance format: exact = 1, one ship lost < 1."""
    from seg_toolkit.data import load_test_samples
    from seg_toolkit.data.io import image_size

    base = demo_dict(demo_root, tmp_path / "runs")
    cfg = config_from_dict({**base, "submission": {**base["submission"], "instances": True}})
    sol = pd.read_csv(demo_root / "test_solution.csv", dtype=str, keep_default_na=False)
    truth = dict(zip(sol.iloc[:, 0], sol.iloc[:, 1]))
    rows, masks = [], {}
    for s in load_test_samples(cfg):
        hw = image_size(s.image)
        mask = np.stack([rle_decode(truth[f"{s.id}_{k}"], hw) for k in (1, 2, 3)])
        mask[0, :2, :2] = 1  # a second object of class 1 in the corner
        rows += mask_rows(s.id, mask, cfg)
        masks[s.id] = mask
    assert len({r[0] for r in rows}) < len(rows)  # class 1 has several objects
    exact = tmp_path / "exact.csv"
    pd.DataFrame(rows, columns=list(sol.columns)).to_csv(exact, index=False)
    assert score_submission(exact, exact, cfg) == pytest.approx(1.0)
    dropped = next(i for i in range(1, len(rows)) if rows[i][0] == rows[i - 1][0])
    lossy = tmp_path / "lossy.csv"
    pd.DataFrame(rows[:dropped] + rows[dropped + 1 :], columns=list(sol.columns)).to_csv(lossy, index=False)
    # worked out: 4 images x 3 classes = 12 (image, class) dice scores, 11 of them exact (1; empty and empty: 1); the
    # lossy cell's mask L is the exact one E less the dropped object (objects are disjoint): dice 2|L| / (|L| + |E|)
    row_id, rle = rows[dropped]
    image_id, cls = row_id.rsplit("_", 1)
    e = masks[image_id][int(cls) - 1].astype(bool)
    lost = rle_decode(rle, e.shape).astype(bool)
    assert lost.any() and not (lost & ~e).any()
    l_px, e_px = int((e & ~lost).sum()), int(e.sum())
    assert len(masks) == 4 and score_submission(lossy, exact, cfg) == pytest.approx((11 + 2 * l_px / (l_px + e_px)) / 12)
    # a row either file cannot be read as names its file, line and id
    df = pd.DataFrame(rows, columns=list(sol.columns))
    bad = tmp_path / "bad.csv"
    df.iloc[[0, 1]].assign(**{df.columns[1]: ["1 2 3", ""]}).to_csv(bad, index=False)
    with pytest.raises(RLEError, match=rf"bad.csv line 2 \(id '{df.iloc[0, 0]}'\).*odd number of tokens"):
        score_submission(bad, exact, cfg)
    df.iloc[[0]].assign(**{df.columns[0]: ["img"]}).to_csv(bad, index=False)
    with pytest.raises(SubmissionError, match=r"bad.csv line 2 \(id 'img'\): the id does not read as submission.id_format"):
        score_submission(bad, exact, cfg)
    df.iloc[[0]].to_csv(bad, index=False)  # a solution with one image's row
    with pytest.raises(SubmissionError, match=r"bad.csv: no row for test image"):
        score_submission(exact, bad, cfg)


# ----------------------------------------------------------------------------- official strings


def test_tgs_strings_through_the_spec():
    """TGS train.csv: the Kaggle spec decodes every row to `mask > 0` and re-encodes it byte for byte;
    the other styles round-trip the same masks."""
    root = shared_dataset("tgs_salt")
    df = pd.read_csv(root / "train.csv", dtype=str, keep_default_na=False)
    kaggle = RLESpec(order="F")
    for k, (image_id, rle) in enumerate(zip(df["id"], df["rle_mask"])):
        mask = np.asarray(Image.open(root / "train" / "masks" / f"{image_id}.png")) > 0
        np.testing.assert_array_equal(kaggle.decode(rle, mask.shape), mask, err_msg=image_id)
        assert kaggle.encode_rows(mask) == [rle], image_id
        if k % 10 == 0:
            for spec in SPECS:
                np.testing.assert_array_equal(spec.decode(spec.encode(mask), mask.shape), mask, err_msg=f"{image_id} {spec}")


@pytest.fixture(scope="module")
def dsb():
    """DSB 2018 stage-1 test: the official rows of the 11 images kept, with their instance masks."""
    root = shared_dataset("dsb2018_stage1_test")
    sol = pd.read_csv(root / "stage1_solution.csv", dtype=str, keep_default_na=False)
    images = {}
    for folder in sorted((root / "stage1_test").iterdir()):
        rows = sol[sol["ImageId"] == folder.name]
        h, w = int(rows["Height"].iloc[0]), int(rows["Width"].iloc[0])
        masks = [np.asarray(Image.open(folder / "masks" / f"{folder.name}_{k}.png")) > 0 for k in range(len(rows))]
        images[folder.name] = ((h, w), rows["EncodedPixels"].tolist(), masks)
    return root, sol, images


DSB = RLESpec(order="F", instances=True)


def test_dsb_instance_rows_decode_to_their_masks(dsb):
    _, _, images = dsb
    n = 0
    for image_id, (hw, rles, masks) in images.items():
        assert hw[0] != hw[1] or image_id.startswith("0114f484")  # the one square image
        for rle, mask in zip(rles, masks):
            np.testing.assert_array_equal(DSB.decode(rle, hw), mask, err_msg=image_id)
            n += 1
        np.testing.assert_array_equal(DSB.decode_rows(rles, hw), np.any(masks, axis=0))
    assert n == 1020


def test_dsb_instance_writer_reproduces_untouched_objects(dsb):
    """Writing an image's union with the instance writer gives one string per 8-connected object:
    every official object that touches no other comes back byte for byte; touching ones merge,
    and the union is kept exactly."""
    _, _, images = dsb
    isolated = exact_images = 0
    for image_id, (hw, rles, masks) in images.items():
        union = np.any(masks, axis=0)
        produced = DSB.encode_rows(union)
        np.testing.assert_array_equal(DSB.decode_rows(produced, hw), union, err_msg=image_id)
        assert instance_overlap([DSB.runs(r, union.size) for r in produced]) is None
        labels, n = ndimage.label(union, structure=np.ones((3, 3), bool))
        assert len(produced) == n
        if n == len(masks):  # no two objects touch: the same multiset of strings
            assert sorted(produced) == sorted(rles), image_id
            exact_images += 1
        for rle, mask in zip(rles, masks):
            component = np.unique(labels[mask])
            if len(component) == 1 and (labels == component[0]).sum() == mask.sum():
                assert rle in produced, image_id
                isolated += 1
    assert exact_images >= 1 and isolated >= 300


def test_dsb_official_csv_passes_the_instance_checker(dsb, tmp_path):
    """All 4152 official rows (65 images): distinct ids in order, no overlapping objects, runs inside each image."""
    _, sol, _ = dsb
    sub = tmp_path / "sub.csv"
    sol[["ImageId", "EncodedPixels"]].to_csv(sub, index=False)
    sample = tmp_path / "sample.csv"
    sol[["ImageId"]].drop_duplicates().assign(EncodedPixels="1 1").to_csv(sample, index=False)
    sizes = {i: int(h) * int(w) for i, h, w in zip(sol["ImageId"], sol["Height"], sol["Width"])}
    assert check_submission(sub, sample, spec=DSB, n_pixels=sizes) == []
    # one image's rows moved apart, and two objects made to overlap, are both caught
    moved = pd.concat([sol.iloc[1:], sol.iloc[:1]])[["ImageId", "EncodedPixels"]]
    moved.to_csv(sub, index=False)
    assert any("are not together" in p for p in check_submission(sub, sample, spec=DSB, n_pixels=sizes))
    dup = sol[["ImageId", "EncodedPixels"]].copy()
    dup.iloc[1, 1] = dup.iloc[0, 1]
    dup.to_csv(sub, index=False)
    assert check_submission(sub, sample, spec=DSB, n_pixels=sizes) == [
        "line 3 (id '0114f484a16c152baa2d82fdd43740880a762c93f436c8988ac461c5c9dbe7d5'): this object overlaps the one on "
        "line 2 at pixel 31632; one image's objects must not overlap"
    ]



def test_check_submission_cli_reads_instance_and_siim_rows(tmp_path, capsys):
    from seg_toolkit.cli import main

    sample = tmp_path / "sample.csv"
    sample.write_text("ImageId,EncodedPixels\na,1 1\nb,1 1\n")
    airbus = tmp_path / "airbus.csv"  # image a has two objects (two rows), b none
    airbus.write_text("ImageId,EncodedPixels\na,1 2\na,7 1\nb,\n")
    assert main(["check-submission", str(airbus), "--sample", str(sample)]) == 1
    assert "duplicate ids: 'a' (lines 2 and 3)" in capsys.readouterr().out
    assert main(["check-submission", str(airbus), "--sample", str(sample), "--instances"]) == 0
    siim = tmp_path / "siim.csv"  # 0-based relative starts, -1 for empty: "0 2 4 1" = pixels 0-1 and 6
    siim.write_text("ImageId,EncodedPixels\na,0 2 4 1\nb,-1\n")
    assert main(["check-submission", str(siim), "--sample", str(sample), "--index-base", "0", "--relative",
                 "--empty-token", "-1"]) == 0
    assert main(["check-submission", str(siim), "--sample", str(sample), "--empty-token", "-1"]) == 1
    assert "line 2 (id 'a')" in capsys.readouterr().out


def test_checker_names_a_row_with_more_fields_than_the_header(tmp_path):
    """A trailing comma on every row: pandas read the ids as an index and reported the RLE strings as unknown ids."""
    sample = tmp_path / "sample.csv"
    sample.write_text("ImageId,EncodedPixels\np,\nq,\n")
    ragged = _sub(tmp_path, "p,1 2,\nq,,\n")
    assert check_submission(ragged, sample, n_pixels=12) == [f"{ragged} line 2: 3 fields, the header 2 (a trailing comma?)"]
    assert check_submission(_sub(tmp_path, "p,1 2\nq,\n"), sample, n_pixels=12) == []
    # after a field over the csv module's 131,072 characters (one large image's mask), a line that lost its comma
    # was still named; before, the csv error ended the line count and pandas read the missing field as an empty mask
    long = " ".join(f"{p} 1" for p in range(1, 200_001, 2))
    cut = _sub(tmp_path, f"p,{long}\nq\n")
    assert check_submission(cut, sample, n_pixels=200_000) == [f"{cut} line 3: 1 fields, the header 2"]


def test_checker_reads_the_second_column_as_the_rle(tmp_path):
    """Severstal's later sample (ImageId, EncodedPixels, ClassId): the RLE is the second column, as the writer's,
    never the last (the checker read ClassId as an RLE: 'an odd number of tokens' on every row)."""
    sample = tmp_path / "sample.csv"
    sample.write_text("ImageId,EncodedPixels,ClassId\na.jpg,1 1,1\nb.jpg,1 1,2\n")
    good = tmp_path / "sub.csv"
    good.write_text("ImageId,EncodedPixels,ClassId\na.jpg,1 2 10 3,1\nb.jpg,,2\n")
    assert check_submission(good, sample, n_pixels=20) == []
    bad = tmp_path / "bad.csv"
    bad.write_text("ImageId,EncodedPixels,ClassId\na.jpg,1 2 10,1\nb.jpg,,2\n")
    assert len(check_submission(bad, sample)) == 1 and "odd number of tokens" in check_submission(bad, sample)[0]
    assert check_submission(good, sample, columns=("ImageId", "Rle")) == [
        "no column 'Rle' (submission.rle_column); the sample has ['ImageId', 'EncodedPixels', 'ClassId']"]


def test_check_submission_refuses_an_empty_token_that_reads_as_a_mask(tmp_path, capsys):
    """'1 1' as --empty-token would pass the sample's one-pixel placeholder rows as empty masks; the scorer paints pixel 1."""
    from seg_toolkit.cli import main

    sample = tmp_path / "sample.csv"
    sample.write_text("ImageId,EncodedPixels\na,1 1\nb,1 1\n")
    assert main(["check-submission", str(sample), "--sample", str(sample), "--empty-token", "1 1"]) == 2
    err = capsys.readouterr().err
    assert "empty token '1 1' reads as a run-length string (starts counted from 1, absolute): pixel 1" in err
    # with 0-based starts '1 1' paints a pixel too (the second one)
    with pytest.raises(ConfigError, match=r"empty token '1 1' reads as .*starts counted from 0"):
        check_submission(sample, sample, empty_tokens=("1 1",), spec=RLESpec(index_base=0))
    assert check_submission(sample, sample, empty_tokens=("",)) == []


def test_submission_style_defaults_to_the_training_csvs():
    """A SIIM config that sets only the data.rle_* keys: the submission is written in the same style (it was 1-based
    absolute runs with '' for empty, and check-submission --config agreed with that hybrid); a submission key set
    says otherwise."""
    siim = {"rle_index_base": 0, "rle_starts": "relative", "rle_empty_token": "-1", "rle_order": "C"}
    cfg = config_from_dict({"data": siim})
    spec = submission_spec(cfg)
    assert (spec.order, spec.index_base, spec.starts, spec.empty) == ("C", 0, "relative", "-1")
    m = np.zeros((3, 4), np.uint8)
    m[0, 1:3] = 1  # row-major pixels 1, 2 (0-based): start 1, then relative
    m[2, 0] = 1  # pixel 8: 5 after the end of the first run (3)
    assert spec.encode(m) == "1 2 5 1" and spec.encode(np.zeros_like(m)) == "-1"
    mine = submission_spec(config_from_dict({"data": siim, "submission": {"rle_index_base": 1, "empty_token": ""}}))
    assert (mine.order, mine.index_base, mine.starts, mine.empty) == ("C", 1, "relative", "")
    assert submission_spec(config_from_dict({})) == RLESpec()  # Kaggle's: 1-based absolute column-major, '' for empty
