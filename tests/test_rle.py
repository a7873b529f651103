"""RLE: hand-worked strings, both pixel orders, round trips, malformed input, real Kaggle files."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from seg_toolkit.rle import RLEError, rle_area, rle_decode, rle_encode

from .conftest import shared_dataset

# A non-square 2x3 mask, worked out by hand:
#   [[0 1 1]
#    [0 1 0]]
# column-major (top to bottom, then left to right): 0 0 | 1 1 | 1 0 -> pixels 3,4,5 -> "3 3"
# row-major (left to right, then top to bottom):    0 1 1 | 0 1 0 -> pixels 2,3 and 5 -> "2 2 5 1"
MASK = np.array([[0, 1, 1], [0, 1, 0]], np.uint8)


def test_encode_by_hand_both_orders():
    assert rle_encode(MASK, order="F") == "3 3"
    assert rle_encode(MASK, order="C") == "2 2 5 1"


def test_decode_by_hand_both_orders():
    np.testing.assert_array_equal(rle_decode("3 3", (2, 3), order="F"), MASK)
    np.testing.assert_array_equal(rle_decode("2 2 5 1", (2, 3), order="C"), MASK)
    # the same string in the other order is a different mask: the order is never guessed
    assert not np.array_equal(rle_decode("3 3", (2, 3), order="C"), MASK)


def test_empty_and_full():
    assert rle_encode(np.zeros((4, 5))) == ""
    assert rle_encode(np.ones((4, 5))) == "1 20"
    assert rle_decode("", (4, 5)).sum() == 0
    assert rle_decode(None, (4, 5)).dtype == np.uint8
    np.testing.assert_array_equal(rle_decode("1 20", (4, 5)), np.ones((4, 5), np.uint8))


def test_nonzero_values_count_as_foreground():
    m = np.array([[0, 255], [65535, 0]], np.uint16)
    assert rle_encode(m) == "2 2"  # column-major: (1,0)=65535 is pixel 2, (0,1)=255 is pixel 3


def test_area_without_decoding():
    assert rle_area("1 3 10 2") == 5
    assert rle_area("") == 0


@pytest.mark.parametrize(
    "bad, message",
    [
        ("1", "odd number of tokens"),
        ("1 2 3", "odd number of tokens"),
        ("a 2", "'a' is not an integer"),
        ("1.5 2", "'1.5' is not an integer"),
        ("nan nan", "'nan' is not an integer"),
        ("nan", "'nan' is not an integer"),  # a lone nan (pandas wrote NaN): a non-number, not an odd count
        ("1 2 x", "'x' is not an integer"),
        ("0 2", "start 0 (pair 1) is < 1"),
        ("-3 2", "start -3"),
        ("1 0", "length 0 (pair 1) is < 1"),
        ("1 -2", "length -2"),
        ("5 1 1 1", "unsorted"),
        ("1 3 2 1", "overlapping"),
        ("6 2", "ends at pixel 7, past the image's 6 pixels"),
        ("9223372036854775807 5", "too large for any image"),  # would overflow start + length
        ("99999999999999999999 1", "too large for any image"),
    ],
)
def test_malformed_input_names_the_row(bad, message):
    with pytest.raises(RLEError) as err:
        rle_decode(bad, (2, 3), where="train.csv line 7 (id 'abc')")
    assert "train.csv line 7 (id 'abc')" in str(err.value)
    assert message in str(err.value)


def test_non_string_is_refused():
    with pytest.raises(RLEError, match="must be a string"):
        rle_decode(float("nan"), (2, 3), where="row 1")


def test_adjacent_runs_are_accepted():
    # touching is not overlapping: 1..2 then 3..3
    np.testing.assert_array_equal(rle_decode("1 2 3 1", (1, 4), order="C"), [[1, 1, 1, 0]])


def test_bad_order_argument():
    with pytest.raises(ValueError, match="column-major"):
        rle_encode(MASK, order="X")


@settings(max_examples=150, deadline=None)
@given(
    mask=st.integers(1, 12).flatmap(
        lambda h: st.integers(1, 12).flatmap(lambda w: arrays(np.uint8, (h, w), elements=st.integers(0, 1)))
    ),
    order=st.sampled_from(["F", "C"]),
)
def test_round_trip_property(mask, order):
    rle = rle_encode(mask, order)
    np.testing.assert_array_equal(rle_decode(rle, mask.shape, order), mask)
    # and the string is canonical: decoding then encoding gives it back
    assert rle_encode(rle_decode(rle, mask.shape, order), order) == rle


@pytest.mark.parametrize("order", ["F", "C"])
def test_long_and_short_runs_decode_as_a_plain_slice_per_run(order):
    """The decoder paints long runs a slice each and short ones all at once (bench/bench_rle.py): both against a
    plain loop, on blocks (runs of 60-400 pixels) and on speckle (runs of 1-3)."""
    rng = np.random.default_rng(4)
    blocks = np.zeros((300, 400), np.uint8)
    for _ in range(12):
        y, x = rng.integers(0, 250), rng.integers(0, 330)
        blocks[y : y + rng.integers(5, 50), x : x + rng.integers(60, 70)] = 1
    speckle = (rng.random((300, 400)) > 0.9).astype(np.uint8)
    for mask in (blocks, speckle):
        rle = rle_encode(mask, order)
        values = [int(v) for v in rle.split()]
        plain = np.zeros(mask.size, np.uint8)
        for start, length in zip(values[0::2], values[1::2]):
            plain[start - 1 : start - 1 + length] = 1
        np.testing.assert_array_equal(rle_decode(rle, mask.shape, order), plain.reshape(mask.shape, order=order))
        np.testing.assert_array_equal(plain.reshape(mask.shape, order=order), mask)


@pytest.mark.parametrize("text", ["1 3\n10 2\t", "001 3 010 2", "1\xa03 10\u20032", " 1 3 10 2 "])
def test_numbers_read_alike_whatever_the_spaces_and_leading_zeros(text):
    """ASCII-spaced digits go through NumPy's text reader; other whitespace (a no-break space pasted from a web page)
    through the token list: the same mask either way."""
    np.testing.assert_array_equal(rle_decode(text, (3, 4)), rle_decode("1 3 10 2", (3, 4)))


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet=st.sampled_from(list("0123456789 -.x\t")), max_size=30) | st.text(max_size=30))
def test_decoder_only_raises_its_own_error(text):
    try:
        out = rle_decode(text, (5, 7))
    except RLEError:
        return
    assert out.shape == (5, 7) and set(np.unique(out)) <= {0, 1}


def test_tgs_train_csv_matches_masks_exactly():
    """Every row of the real TGS train.csv decodes (column-major) to its mask PNG and re-encodes byte for byte."""
    root = shared_dataset("tgs_salt")
    df = pd.read_csv(root / "train.csv", dtype=str, keep_default_na=False)
    assert len(df) == 3000
    for image_id, rle in zip(df["id"], df["rle_mask"]):
        mask = np.asarray(Image.open(root / "train" / "masks" / f"{image_id}.png")) > 0
        np.testing.assert_array_equal(rle_decode(rle, mask.shape, "F"), mask, err_msg=image_id)
        assert rle_encode(mask, "F") == rle, image_id


def test_dsb_non_square_instances():
    """DSB 2018 instance masks on non-square images: the H/W convention must be right."""
    root = shared_dataset("dsb2018_stage1_test")
    sol = pd.read_csv(root / "stage1_solution.csv", dtype=str, keep_default_na=False)
    checked = 0
    for folder in sorted((root / "stage1_test").iterdir()):
        rows = sol[sol["ImageId"] == folder.name]
        h, w = int(rows["Height"].iloc[0]), int(rows["Width"].iloc[0])
        for k, rle in enumerate(rows["EncodedPixels"]):
            path = folder / "masks" / f"{folder.name}_{k}.png"
            if not path.is_file():
                continue
            mask = np.asarray(Image.open(path)) > 0
            assert mask.shape == (h, w)
            np.testing.assert_array_equal(rle_decode(rle, (h, w), "F"), mask)
            assert rle_encode(mask, "F") == rle
            checked += 1
    assert checked > 100
