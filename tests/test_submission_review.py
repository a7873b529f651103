"""Review fixes of the submission path: rows in the sample's order (4), stale test_probs/ (5), the bundle's
predict.py and an existing --out (7), an empty token that is a run-length string (10)."""

from __future__ import annotations

import json
import runpy
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import seg_toolkit.inference as inference_mod
from seg_toolkit.bundle import build_bundle, predict_bundle
from seg_toolkit.config import ConfigError, config_from_dict
from seg_toolkit.data import load_test_samples
from seg_toolkit.inference import _expected_ids, predict_test
from seg_toolkit.rle import RLESpec
from seg_toolkit.run import Run, RunExistsError
from seg_toolkit.submission import SubmissionError, SubmissionWriter, mask_rows
from seg_toolkit.submission_check import check_submission

from .conftest import demo_dict
from .test_inference import fake_run

ID = "ImageId_ClassId"


@pytest.fixture
def world(demo_root, tmp_path):
    """A copy of the demo competition (its sample may be edited) and a run of two untrained folds on it."""
    root = tmp_path / "data"
    shutil.copytree(demo_root, root)
    runs = tmp_path / "runs"

    def cfg(**sections):
        return config_from_dict(demo_dict(root, runs, **sections))

    fake_run(cfg(), seeds=(1, 2))
    return root, runs, cfg


def _sample(root: Path) -> pd.DataFrame:
    return pd.read_csv(root / "sample_submission.csv", dtype=str, keep_default_na=False)


def _rows(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def _no_prediction(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("an image was predicted before the refusal")

    monkeypatch.setattr(inference_mod.Predictor, "iter_predictions", refuse)


# ----------------------------------------------------------------------------- 4: the sample's row order


def test_classes_in_another_order_than_the_sample_are_written_in_the_samples_order(world, tmp_path):
    """Was: `predict --set 'submission.classes=[3,2,1]'` predicted every image, then 'ids differ ... row 1: id
    'cd2052be_3' where the sample has 'cd2052be_1''."""
    from seg_toolkit.files import write_json

    root, _, cfg = world
    # thresholds inside what these random folds predict (about 0.54, 0.50, 0.54), so every class's masks differ
    tuned = Run.of(cfg()).postprocess_json
    write_json(tuned, {"params": {"threshold": [0.543, 0.5, 0.54], "min_area": [0, 0, 0], "empty_gate": [None] * 3}})
    try:
        ref = predict_test(cfg(), out=tmp_path / "ref.csv")
        out = predict_test(cfg(submission={"classes": [3, 2, 1]}), out=tmp_path / "321.csv")
    finally:
        tuned.unlink()
    assert list(_rows(out)[ID]) == list(_sample(root)[ID])
    assert out.read_bytes() == ref.read_bytes()  # the same rows, the sample's order
    # and the rows differ from class to class (all-empty masks would make the comparison blind to a class mix-up)
    assert _rows(ref).groupby(_rows(ref)[ID].str.rsplit("_", n=1).str[1])["EncodedPixels"].apply(tuple).nunique() == 3


@pytest.mark.parametrize("order", ["class_major", "reversed"])
def test_a_sample_that_interleaves_images_is_written_in_its_order(world, tmp_path, order, caplog):
    """Class-major (a_1, b_1, a_2, b_2, ...): rows wait in a spool beside the output until their turn; images and
    classes reversed: each image's rows are put in the sample's order. The file is the sample's order, and no
    spool is left behind."""
    import logging

    caplog.set_level(logging.INFO, logger="seg_toolkit")
    root, _, cfg = world
    ref = _rows(predict_test(cfg(), out=tmp_path / "ref.csv"))
    df = _sample(root)
    if order == "class_major":
        cls = df[ID].str.rsplit("_", n=1).str[1]
        df = df.iloc[np.argsort(cls.to_numpy(), kind="stable")]
    else:
        df = df.iloc[::-1]
    df.to_csv(root / "sample_submission.csv", index=False)
    out_dir = tmp_path / "out"
    out = predict_test(cfg(), out=out_dir / "sub.csv")
    got = _rows(out)
    assert list(got[ID]) == list(df[ID]) != list(ref[ID])
    assert dict(zip(got[ID], got.EncodedPixels)) == dict(zip(ref[ID], ref.EncodedPixels))
    assert [p.name for p in out_dir.iterdir()] == ["sub.csv"]
    assert check_submission(out, root / "sample_submission.csv") == []
    interleaved = "written in the sample's order: it interleaves images' rows" in caplog.text
    assert interleaved == (order == "class_major")  # reversed: images in the sample's order, each one's rows reordered
    assert f"lists rows in another order than they are made (line {2 if order == 'reversed' else 3}:" in caplog.text


def test_a_string_sorted_sample_of_ten_classes_is_written_in_its_order(tmp_path):
    """a_1, a_10, a_2, ...: the writer places each row where the sample has it."""
    cfg = config_from_dict({"data": {"task": "multilabel", "num_classes": 10, "class_column": "ClassId"}, "submission": {"per_class": True},
                            "loss": {"bce": 1.0}})
    masks = {i: (np.arange(10 * 6).reshape(10, 2, 3) % (k + 2) == 0).astype(np.uint8) for k, i in enumerate("ab")}
    rows = {r[0]: r for i in "ab" for r in mask_rows(i, masks[i], cfg)}
    expected = [f"{i}_{c}" for i in "ab" for c in sorted(map(str, range(1, 11)))]
    out = tmp_path / "sub.csv"
    with SubmissionWriter(out, ("id", "rle"), expected) as w:
        for i in "ab":
            w.write(mask_rows(i, masks[i], cfg))
    assert out.read_text() == "id,rle\n" + "".join(f"{x},{rows[x][1]}\n" for x in expected)


def test_the_writer_still_refuses_a_row_twice_an_unknown_row_and_a_missing_one(tmp_path):
    for rows, message in [([("a", ""), ("a", "1 1"), ("b", "")], r"row 2: id 'a' where the sample has 'b' \(written already\)"),
                          ([("a", ""), ("x", "")], r"row 2: id 'x' where the sample has 'b' \(not a sample id\)"),
                          ([("b", "1 1")], r"1 rows written, the sample has 2: none for its line 2 \(id 'a'\)")]:
        out = tmp_path / "sub.csv"
        with pytest.raises(SubmissionError, match=message):
            with SubmissionWriter(out, ("id", "rle"), ["a", "b"]) as w:
                w.write(rows)
        assert list(tmp_path.iterdir()) == []  # neither the file nor a spool


def test_a_sample_listing_some_classes_of_an_image_is_refused_before_predicting(world, monkeypatch):
    root, _, cfg = world
    df = _sample(root)
    image = df[ID][0].rsplit("_", 1)[0]
    df[df[ID] != f"{image}_3"].to_csv(root / "sample_submission.csv", index=False)
    _no_prediction(monkeypatch)
    with pytest.raises(SubmissionError, match=rf"no row for id '{image}_3' \(image {image!r}, class 3\), which this submission "
                                              r"writes; every image of the sample needs a row per class of "
                                              r"submission.classes \[1, 2, 3\]"):
        predict_test(cfg())


def test_a_sample_of_fewer_classes_for_every_image_names_the_classes_to_set(world, monkeypatch):
    root, _, cfg = world
    df = _sample(root)
    df[~df[ID].str.endswith("_2")].to_csv(root / "sample_submission.csv", index=False)
    _no_prediction(monkeypatch)
    with pytest.raises(SubmissionError, match=r"the sample lists classes \[1, 3\] of every image: set "
                                              r"submission.classes: \[1, 3\]"):
        predict_test(cfg())
    monkeypatch.undo()
    written = _rows(predict_test(cfg(submission={"classes": [1, 3]})))
    assert list(written[ID]) == [x for x in df[ID] if not x.endswith("_2")]


def test_repeated_ids_apart_in_the_sample_are_refused_before_predicting(world):
    """Instance rows (or a class column) are written together per image: a sample whose rows of one image are
    apart could never be matched (was: refused after predicting everything)."""
    root, _, cfg = world
    ids = [x.id for x in load_test_samples(cfg())]
    pd.DataFrame({"ImageId": [ids[0], ids[1], ids[0]], "EncodedPixels": ["1 1"] * 3}).to_csv(
        root / "sample_submission.csv", index=False)
    c = config_from_dict(demo_dict(root, tmp := root.parent / "r2", data={"task": "binary", "num_classes": 1, "class_column": None},
                                   submission={"per_class": False, "instances": True, "path": str(tmp / "s.csv")}))
    with pytest.raises(SubmissionError, match=rf"line 4: id {ids[0]!r} again, apart from its rows from line 2"):
        _expected_ids(c, load_test_samples(c))


def test_instance_rows_in_another_class_order_are_refused_before_predicting(world):
    """Instance rows are written in the order they are made (an image's classes in submission.classes order), so a
    sample listing an image's classes in another order, or class-major, could never be matched (was: found by the
    writer after every image was predicted)."""
    root, _, cfg = world
    ids = [x.id for x in load_test_samples(cfg())]
    c = config_from_dict(demo_dict(root, tmp := root.parent / "r3", submission={"instances": True, "path": str(tmp / "s.csv")}))

    def sample(rows):
        pd.DataFrame({ID: rows, "EncodedPixels": ["1 1"] * len(rows)}).to_csv(root / "sample_submission.csv", index=False)
        return _expected_ids(c, load_test_samples(c))

    made = [f"{i}_{k}" for i in ids for k in (1, 2, 3)]
    assert sample(made) == made  # the order rows are made in: accepted as it is
    swapped = [f"{i}_{k}" for i in ids for k in (1, 3, 2)]
    with pytest.raises(SubmissionError, match=rf"line 3: id '{ids[0]}_3' where this submission writes '{ids[0]}_2': with "
                                              r"instance rows \(submission.instances\) the rows are written in the order they "
                                              r"are made \(each image's classes in the order of submission.classes, images in "
                                              r"the sample's order\), so the sample must list them in that order "
                                              r"\(submission.classes sets the classes' order\)"):
        sample(swapped)
    assert _expected_ids(config_from_dict(demo_dict(root, tmp, submission={"instances": True, "classes": [1, 3, 2],
                                                                           "path": str(tmp / "s.csv")})),
                         load_test_samples(c)) == swapped  # the classes' order set as the hint says
    class_major = [f"{i}_{k}" for k in (1, 2, 3) for i in ids]
    with pytest.raises(SubmissionError, match=rf"line 3: id '{ids[1]}_1' where this submission writes '{ids[0]}_2'"):
        sample(class_major)


# ----------------------------------------------------------------------------- 5: stale test_probs/


def test_save_probs_replaces_the_probabilities_of_an_earlier_predict(world, tmp_path):
    """Was: a second predict on another test set left the first one's files in test_probs/, in another dtype."""
    root, _, cfg = world
    predict_test(cfg(predict={"batch_size": 4, "save_probs": "float16"}), out=tmp_path / "a.csv")
    run = Run.of(cfg())
    ids = [x.id for x in load_test_samples(cfg())]
    assert sorted(p.stem for p in run.test_probs_dir.iterdir()) == sorted(ids)
    df = _sample(root)
    df[df[ID].str.rsplit("_", n=1).str[0] != ids[0]].to_csv(root / "sample_submission.csv", index=False)  # 3 of 4 images
    predict_test(cfg(predict={"batch_size": 4, "save_probs": "uint8"}), out=tmp_path / "b.csv")
    files = sorted(run.test_probs_dir.iterdir())
    assert [p.stem for p in files] == sorted(ids[1:])
    assert {np.load(p).dtype for p in files} == {np.dtype(np.uint8)}


def test_a_file_of_the_user_in_test_probs_stops_predict_before_anything_is_deleted(world, tmp_path, monkeypatch):
    _, _, cfg = world
    predict_test(cfg(predict={"batch_size": 4, "save_probs": "uint8"}), out=tmp_path / "a.csv")
    run = Run.of(cfg())
    mine = run.test_probs_dir / "my_notes.txt"
    mine.write_text("mine")
    before = sorted(p.name for p in run.test_probs_dir.iterdir())
    _no_prediction(monkeypatch)
    with pytest.raises(RunExistsError, match=r"test_probs holds my_notes.txt, which predict did not write"):
        predict_test(cfg(predict={"batch_size": 4, "save_probs": "uint8"}), out=tmp_path / "b.csv")
    assert sorted(p.name for p in run.test_probs_dir.iterdir()) == before and mine.read_text() == "mine"


# ----------------------------------------------------------------------------- 7: the bundle's predict.py


def test_bundle_predict_refuses_an_existing_out_unless_overwrite(world, tmp_path, monkeypatch):
    root, _, cfg = world
    bundle = tmp_path / "bundle"
    build_bundle([Run.of(cfg())], bundle, wheels=False)
    mine = tmp_path / "mine.csv"
    mine.write_text("my own file\n")
    with pytest.raises(FileExistsError, match="mine.csv exists; pass --overwrite"):
        predict_bundle(bundle, root, mine)
    assert mine.read_text() == "my own file\n"
    for key in ("HF_HUB_OFFLINE", "HF_HUB_DISABLE_TELEMETRY", "TORCH_HOME"):  # set by predict.py: restored after
        monkeypatch.setenv(key, "x")
    script = runpy.run_path(str(bundle / "predict.py"), run_name="bundle_predict")
    assert script["main"](["--data-root", str(root), "--out", str(mine), "--device", "cpu"]) == 2
    assert mine.read_text() == "my own file\n"
    assert script["main"](["--data-root", str(root), "--out", str(mine), "--device", "cpu", "--overwrite"]) == 0
    assert mine.read_text().startswith(f"{ID},EncodedPixels\n")
    cells = json.loads((bundle / "predict.ipynb").read_text())["cells"]
    predict_cell = "".join(cells[-1]["source"])
    assert "OVERWRITE = False" in predict_cell and '["--overwrite"] if OVERWRITE else []' in predict_cell
    assert "--overwrite" in (bundle / "README.md").read_text()


# ----------------------------------------------------------------------------- 10: an empty token that is an RLE


def test_a_one_pixel_mask_is_written_as_1_1_so_that_token_is_refused_at_load():
    """Was: empty_token '1 1' (listed as allowed) wrote a mask of pixel (0, 0) and an empty mask alike."""
    one = np.zeros((3, 4), np.uint8)
    one[0, 0] = 1
    assert RLESpec().encode(one) == "1 1"
    for submission, reads in [({"empty_token": "1 1"}, "pixel 1"), ({"empty_token": " 2 3 "}, "pixels 2..4"),
                              ({"empty_token": "0 1", "rle_index_base": 0}, "pixel 0"),
                              ({"empty_token": "1 1", "rle_starts": "relative"}, "pixel 1")]:
        with pytest.raises(ConfigError, match=rf"submission.empty_token: {submission['empty_token']!r} reads as a "
                                              rf"run-length string .*: {reads}; a mask of exactly th"):
            config_from_dict({"submission": submission})
    for token in ("", "-", "-1", "0 1", "1 0", "none"):  # not a run list under 1-based starts: no mask is written so
        assert config_from_dict({"submission": {"empty_token": token}}).submission.empty_token == token


def test_a_training_csv_empty_token_that_is_a_run_length_string_is_refused_at_load():
    with pytest.raises(ConfigError, match=r"data.rle_empty_token: '1 1' reads as a run-length string .*pixel 1; .*a row "
                                          r"of data.train_csv with that mask would be read as empty"):
        config_from_dict({"data": {"layout": "csv", "rle_empty_token": "1 1"}})
    assert config_from_dict({"data": {"layout": "csv", "rle_empty_token": "-1"}}).data.rle_empty_token == "-1"
