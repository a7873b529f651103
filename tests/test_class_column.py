"""Submissions with the class in a column of its own (``submission.class_column``): Severstal since its 2019 update,
``ImageId,EncodedPixels,ClassId``, one row per image and class, the sample one row per image (``ClassId`` 0)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from seg_toolkit.cli import main
from seg_toolkit.config import ConfigError, config_from_dict, config_to_dict
from seg_toolkit.cv import run_cv
from seg_toolkit.inference import predict_test
from seg_toolkit.submission import SubmissionError, SubmissionWriter, mask_rows, submission_header
from seg_toolkit.submission_check import check_submission
from seg_toolkit.submission_score import score_submission

from .conftest import demo_dict

# two classes on a 3x4 image; column-major pixels (1-based): class 1 at (0,0),(1,0) -> "1 2"; class 2 at (2,3) -> 12
TWO = np.zeros((2, 3, 4), np.uint8)
TWO[0, 0:2, 0] = 1
TWO[1, 2, 3] = 1


def _cfg(tmp_path, **submission):
    base = demo_dict(tmp_path / "root", tmp_path / "runs", data={"num_classes": 2})
    base["submission"] = {"path": str(tmp_path / "sub.csv"), **submission}
    return config_from_dict(base)


def test_rows_carry_the_class_in_its_column(tmp_path):
    cfg = _cfg(tmp_path, class_column="ClassId")
    assert mask_rows("a.jpg", TWO, cfg) == [("a.jpg", "1 2", "1"), ("a.jpg", "12 1", "2")]
    assert mask_rows("b.jpg", np.zeros_like(TWO), cfg) == [("b.jpg", "", "1"), ("b.jpg", "", "2")]
    # submission.classes: which classes and in which order, as for per-class ids
    assert mask_rows("a.jpg", TWO, _cfg(tmp_path, class_column="ClassId", classes=[2])) == [("a.jpg", "12 1", "2")]
    # no sample in the folder: the header is id, RLE, class
    assert submission_header(cfg) == ["ImageId", "EncodedPixels", "ClassId"]


@pytest.mark.parametrize(
    "submission, message",
    [
        ({"class_column": "ClassId", "per_class": True}, "submission.class_column: 'ClassId' writes each row's class in its "
         "own column, so ids are image ids; submission.per_class"),
        ({"class_column": "ClassId", "instances": True}, "instance rows (submission.instances: one row per object) with a "
         "class column are not supported"),
        ({"class_column": "ImageId", "id_column": "ImageId"}, "submission.class_column: 'ImageId' is also submission.id_column"),
        ({"class_column": " "}, "submission.class_column: ' ': expected a column name"),
        ({}, "or submission.class_column (the class in a column of its own, e.g. Severstal's ClassId)"),
    ],
)
def test_class_column_checked_at_load(tmp_path, submission, message):
    with pytest.raises(ConfigError) as err:
        _cfg(tmp_path, **submission)
    assert message in str(err.value)


def test_writer_puts_fields_in_the_sample_order_and_counts_an_image_once(tmp_path):
    out = tmp_path / "sub.csv"
    header = ["ClassId", "ImageId", "EncodedPixels"]  # any order the sample has
    with SubmissionWriter(out, header, ["a", "a", "b"], repeated_ids=True, fields=("ImageId", "EncodedPixels", "ClassId")) as w:
        w.write([("a", "1 2", "1"), ("a", "", "2")])
        w.write([("b", "", "1"), ("b", "3 1", "2")])
    assert out.read_text() == "ClassId,ImageId,EncodedPixels\n1,a,1 2\n2,a,\n1,b,\n2,b,3 1\n"
    with pytest.raises(ValueError, match="row fields"):
        SubmissionWriter(tmp_path / "x.csv", header, None, fields=("ImageId", "EncodedPixels"))


@pytest.fixture(scope="module")
def severstal(demo_root, tmp_path_factory):
    """The demo competition with Severstal's 2019 sample (one row per image, ``ClassId`` 0), trained for one epoch."""
    tmp = tmp_path_factory.mktemp("severstal")
    root = tmp / "data"
    shutil.copytree(demo_root, root)
    old = pd.read_csv(demo_root / "sample_submission.csv", dtype=str)
    images = list(dict.fromkeys(old.ImageId_ClassId.str.rsplit("_", n=1).str[0]))
    (root / "sample_submission.csv").write_text("ImageId,EncodedPixels,ClassId\n" + "".join(f"{i},1 1,0\n" for i in images))
    # untuned, with a low threshold: one epoch's probabilities still give some non-empty rows to compare
    base = demo_dict(root, tmp / "runs", postprocess={"tune": False, "threshold": [0.2]})
    cfg = config_from_dict({**base, "submission": {"class_column": "ClassId", "path": str(tmp / "severstal.csv")}})
    run_cv(cfg)
    return cfg, images, tmp


def test_predict_writes_one_row_per_image_and_class(severstal):
    cfg, images, tmp = severstal
    out = predict_test(cfg, overwrite=True)
    sub = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert list(sub.columns) == ["ImageId", "EncodedPixels", "ClassId"]
    assert sub.ImageId.tolist() == [i for i in images for _ in (1, 2, 3)]
    assert sub.ClassId.tolist() == ["1", "2", "3"] * len(images)
    sample = cfg.data_path(cfg.data.sample_submission)
    assert check_submission(out, sample, spec=None, class_column="ClassId", classes=[1, 2, 3]) == []
    # the same run in the original form (ImageId_ClassId ids) writes the same masks, row for row
    per_id = config_from_dict(demo_dict(Path(cfg.data.root), Path(cfg.runs_dir), postprocess={"tune": False, "threshold": [0.2]}))
    root = tmp / "data"
    shutil.copy(root / "sample_submission.csv", tmp / "severstal_sample.csv")
    try:
        pd.DataFrame({"ImageId_ClassId": [f"{i}_{k}" for i in images for k in (1, 2, 3)], "EncodedPixels": "1 1"}).to_csv(
            root / "sample_submission.csv", index=False)
        classic = pd.read_csv(predict_test(per_id, out=tmp / "classic.csv"), dtype=str, keep_default_na=False)
    finally:
        shutil.copy(tmp / "severstal_sample.csv", root / "sample_submission.csv")
    assert (sub.ImageId + "_" + sub.ClassId).tolist() == classic.ImageId_ClassId.tolist()
    assert sub.EncodedPixels.tolist() == classic.EncodedPixels.tolist()
    assert (sub.EncodedPixels != "").any()


def test_check_submission_cli_with_the_config_and_with_the_flag(severstal, capsys, tmp_path):
    cfg, images, tmp = severstal
    out = predict_test(cfg, overwrite=True)
    sample = str(cfg.data_path(cfg.data.sample_submission))
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(f"experiment: t\nruns_dir: {cfg.runs_dir}\ndata: {{root: {cfg.data.root}, task: multilabel, num_classes: 3, "
                        "layout: csv, id_column: ImageId, class_column: ClassId, rle_column: EncodedPixels}\n"
                        "model: {arch: scratch_unet, depth: 2, base_width: 4}\nsubmission: {class_column: ClassId}\n")
    assert main(["check-submission", str(out), "--sample", sample, "--config", str(cfg_file)]) == 0
    assert main(["check-submission", str(out), "--sample", sample, "--class-column", "ClassId"]) == 0
    capsys.readouterr()
    # without being told, the image ids repeat: the checker says so instead of passing a file it cannot read
    assert main(["check-submission", str(out), "--sample", sample]) == 1
    assert "duplicate ids" in capsys.readouterr().out


def test_score_submission_reads_the_class_column(severstal, tmp_path):
    """Scored against a solution laid out as Severstal's train.csv (other column order, empty classes without a row)."""
    cfg, images, tmp = severstal
    sol = pd.read_csv(cfg.data_path("test_solution.csv"), dtype=str, keep_default_na=False)
    ids = sol.ImageId_ClassId.str.rsplit("_", n=1)
    full = pd.DataFrame({"ImageId": ids.str[0], "EncodedPixels": sol.EncodedPixels, "ClassId": ids.str[1]})
    exact = tmp_path / "exact.csv"
    full.to_csv(exact, index=False)
    sparse = tmp_path / "solution.csv"
    full[full.EncodedPixels != ""][["ImageId", "ClassId", "EncodedPixels"]].to_csv(sparse, index=False)
    assert (full.EncodedPixels == "").any()  # some classes are empty, so the sparse solution leaves rows out
    assert score_submission(exact, sparse, cfg) == pytest.approx(1.0)
    wrong = full.copy()
    k = int(np.flatnonzero(wrong.EncodedPixels != "")[0])
    wrong.loc[k, "EncodedPixels"] = ""  # one present class predicted empty: its dice is 0
    lossy = tmp_path / "lossy.csv"
    wrong.to_csv(lossy, index=False)
    assert score_submission(lossy, sparse, cfg) == pytest.approx(1 - 1 / len(full))
    spurious = full.copy()
    k = int(np.flatnonzero(spurious.EncodedPixels == "")[0])
    spurious.loc[k, "EncodedPixels"] = "1 5"  # pixels of a class the sparse solution has no row for: dice 0, not skipped
    extra = tmp_path / "extra.csv"
    spurious.to_csv(extra, index=False)
    assert score_submission(extra, sparse, cfg) == pytest.approx(1 - 1 / len(full))
    unknown = full.copy()
    unknown.loc[0, "ClassId"] = "9"
    bad = tmp_path / "unknown.csv"
    unknown.to_csv(bad, index=False)
    with pytest.raises(SubmissionError, match=r"unknown.csv: id '[^']+' has rows of class\(es\) \[9\]"):
        score_submission(bad, sparse, cfg)


MISSING_A = "line 2 (id 'a'): no row for class(es) [2] of this image; this submission has one row per image and class [1, 2]"


@pytest.mark.parametrize(
    "body, problem",
    [
        ("a,1 2,1\na,,2\nb,,1\nb,,2\n", None),
        ("a,1 2,x\na,,2\nb,,1\nb,,2\n", "line 2 (id 'a'): class 'x' is not a whole number; a class name? "
                                         "submission.class_format: '{name}' writes names"),
        ("a,1 2,1\na,,5\nb,,1\nb,,2\n", ["line 3 (id 'a'): class 5 is not one this competition submits ([1, 2])", MISSING_A]),
        ("a,1 2,1\na,,1\nb,,1\nb,,2\n", ["line 3 (id 'a'): class 1 again for this image; one row per image and class",
                                         MISSING_A]),
        # a class the writer has a row for, absent (the file would pass as the sample's ids, in order)
        ("a,1 2,1\nb,,1\nb,,2\n", MISSING_A),
        # 2 distinct ids, as the sample: it said "4 distinct ids (in 4 rows)", counting the groups of rows
        ("a,1 2,1\nb,,1\na,,2\nb,,2\n", ["rows of id 'a' are not together "
         "(lines 2 and 4); one image's rows (one per class) must be consecutive", "rows of id 'b' are not together (lines 3 "
         "and 5); one image's rows (one per class) must be consecutive"]),
        ("b,,1\nb,,2\na,1 2,1\na,,2\n", "rows are in a different order than the sample: line 2 has 'b', the sample 'a'"),
    ],
)
def test_checker_class_column_problems(tmp_path, body, problem):
    sample = tmp_path / "sample.csv"
    sample.write_text("ImageId,EncodedPixels,ClassId\na,1 1,0\nb,1 1,0\n")
    sub = tmp_path / "sub.csv"
    sub.write_text("ImageId,EncodedPixels,ClassId\n" + body)
    problems = check_submission(sub, sample, n_pixels=12, class_column="ClassId", classes=[1, 2])
    assert problems == ([] if problem is None else problem if isinstance(problem, list) else [problem])


def test_checker_compares_the_classes_a_sample_lists(tmp_path):
    """A sample whose class column lists each image's classes (not the placeholder 0): its (image, class) pairs are
    the rows, with or without the config's classes; with the placeholder and no classes, a class-0 row is refused."""
    listing = tmp_path / "listing.csv"
    listing.write_text("ImageId,EncodedPixels,ClassId\na,,1\na,,2\nb,,1\nb,,2\n")
    sub = tmp_path / "sub.csv"
    sub.write_text("ImageId,EncodedPixels,ClassId\na,,1\nb,,1\nb,,3\n")
    assert check_submission(sub, listing, class_column="ClassId") == [
        "id 'a' class 2 (sample line 3): no such row here", "id 'b' class 2 (sample line 5): no such row here",
        "line 4 (id 'b'): class 3, which the sample does not list for this image"]
    assert check_submission(listing, listing, class_column="ClassId") == []
    placeholder = tmp_path / "placeholder.csv"
    placeholder.write_text("ImageId,EncodedPixels,ClassId\na,1 1,0\nb,1 1,0\n")
    assert check_submission(placeholder, placeholder, class_column="ClassId") == [
        f"line {n} (id {i!r}): class 0, the sample's placeholder (its class column is 0 on every row), not a class; a row "
        "per image and class names the class" for n, i in ((2, "a"), (3, "b"))]
    assert check_submission(listing, placeholder, class_column="ClassId") == []
    from seg_toolkit.submission_check import sample_class_pairs

    # each pair named by the line it is first listed on (a repeat kept the last); Severstal's placeholder lists none
    assert sample_class_pairs(["a", "a", "a", "b"], ["1", "2", "1", "1"]) == {("a", 1): 2, ("a", 2): 3, ("b", 1): 5}
    assert sample_class_pairs(["a", "b"], ["0", " 0 "]) is None


def test_predict_refuses_a_sample_listing_other_classes(severstal, tmp_path):
    cfg, images, tmp = severstal
    root = tmp_path / "data"
    shutil.copytree(Path(cfg.data.root), root)
    (root / "sample_submission.csv").write_text(
        "ImageId,EncodedPixels,ClassId\n" + "".join(f"{i},,{k}\n" for i in images for k in (1, 2, 3, 4)))
    moved = config_from_dict({**config_to_dict(cfg), "data": {**config_to_dict(cfg)["data"], "root": str(root)}})
    with pytest.raises(SubmissionError, match=rf"sample_submission.csv line 2: image '{images[0]}' is listed with classes "
                       r"\[1, 2, 3, 4\] in ClassId; this submission writes classes \[1, 2, 3\] for each image; set "
                       r"submission.classes: \[1, 2, 3, 4\]"):
        predict_test(moved, out=tmp_path / "x.csv")
    assert not (tmp_path / "x.csv").exists()
    # listing the classes written, in the writer's order, it predicts and the checker agrees
    (root / "sample_submission.csv").write_text(
        "ImageId,EncodedPixels,ClassId\n" + "".join(f"{i},,{k}\n" for i in images for k in (1, 2, 3)))
    out = predict_test(moved, out=tmp_path / "y.csv")
    assert check_submission(out, root / "sample_submission.csv", class_column="ClassId", classes=[1, 2, 3]) == []


def test_a_sample_with_the_class_before_the_rle_column(severstal, tmp_path):
    """Severstal's train.csv and UW-Madison's sample put the class column second (ImageId,ClassId,EncodedPixels): the
    RLE column was taken to be the sample's second column, the class column itself, so predict refused the sample
    ('[ImageId, ClassId, ClassId]') and check-submission --class-column read the classes as RLE ('odd number of
    tokens')."""
    cfg, images, tmp = severstal
    root = tmp_path / "data"
    shutil.copytree(Path(cfg.data.root), root)
    (root / "sample_submission.csv").write_text("ImageId,ClassId,EncodedPixels\n" + "".join(f"{i},0,1 1\n" for i in images))
    moved = config_from_dict({**config_to_dict(cfg), "data": {**config_to_dict(cfg)["data"], "root": str(root)},
                              "submission": {**config_to_dict(cfg)["submission"], "path": None}})
    out = predict_test(moved, out=tmp_path / "x.csv")
    sub = pd.read_csv(out, dtype=str, keep_default_na=False)
    usual = pd.read_csv(predict_test(cfg, overwrite=True), dtype=str, keep_default_na=False)
    assert list(sub.columns) == ["ImageId", "ClassId", "EncodedPixels"]
    pd.testing.assert_frame_equal(sub, usual[["ImageId", "ClassId", "EncodedPixels"]])
    assert check_submission(out, root / "sample_submission.csv", class_column="ClassId", classes=[1, 2, 3]) == []


def test_checker_names_a_class_column_the_sample_lacks(tmp_path):
    sample = tmp_path / "sample.csv"
    sample.write_text("ImageId,EncodedPixels\na,1 1\n")
    assert check_submission(sample, sample, class_column="ClassId") == [
        "no column 'ClassId' (submission.class_column); the sample has ['ImageId', 'EncodedPixels']"]


def test_severstal_sample_without_class_column_names_the_key(severstal, tmp_path):
    cfg, _, _ = severstal
    plain = config_from_dict(demo_dict(Path(cfg.data.root), Path(cfg.runs_dir), postprocess={"tune": False, "threshold": [0.2]}))
    with pytest.raises(SubmissionError, match="if 'ClassId' holds each row's class .*set submission.class_column: ClassId"):
        predict_test(plain, out=tmp_path / "x.csv")
    assert not (tmp_path / "x.csv").exists()


def test_a_multilabel_csv_without_a_class_column_names_the_old_severstal_form(demo_root, tmp_path):
    """Severstal's first train.csv has ImageId_ClassId ids and no class column: refused when the config loads (it was
    found when train.csv was read), naming data.id_format; the CSV reader says the same of a config changed after
    loading."""
    import dataclasses

    from seg_toolkit.data import load_train_samples

    d = demo_dict(demo_root, tmp_path / "runs")
    d["data"] = {k: v for k, v in d["data"].items() if k != "class_column"}
    message = (r"data.class_column: a multilabel task read from a CSV .*needs a class column .*or data.id_format when the "
               r"id holds the class, with data.id_column naming that column: '\{id\}_\{cls\}' for Severstal's older "
               r"train.csv .*ImageId_ClassId")
    with pytest.raises(ConfigError, match=message):
        config_from_dict(d)
    cfg = config_from_dict(demo_dict(demo_root, tmp_path / "runs"))
    with pytest.raises(Exception, match=message):
        load_train_samples(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, class_column=None)))
    assert not (tmp_path / "runs").exists()


def test_a_submission_of_some_classes_is_scored_on_those(severstal, tmp_path):
    """submission.classes a subset, metric.classes unset: every class never submitted was an (empty, empty) pair
    scoring 1 in the mean (0.787 for a grader's 0.681 in the audit's run); the grader scores the rows it has."""
    import dataclasses

    cfg, _, _ = severstal
    some = dataclasses.replace(cfg, submission=dataclasses.replace(cfg.submission, classes=[1, 2]))
    sol = pd.read_csv(cfg.data_path("test_solution.csv"), dtype=str, keep_default_na=False)
    ids = sol.ImageId_ClassId.str.rsplit("_", n=1)
    full = pd.DataFrame({"ImageId": ids.str[0], "EncodedPixels": sol.EncodedPixels, "ClassId": ids.str[1]})
    full = full[full.ClassId.isin(["1", "2"])].reset_index(drop=True)
    solution = tmp_path / "solution.csv"
    full.to_csv(solution, index=False)
    wrong = full.copy()
    wrong.loc[int(np.flatnonzero(wrong.EncodedPixels != "")[0]), "EncodedPixels"] = ""  # one pair's dice 0
    lossy = tmp_path / "lossy.csv"
    wrong.to_csv(lossy, index=False)
    assert len(full) < len(sol)  # fewer pairs than all the classes give
    assert score_submission(lossy, solution, some) == pytest.approx(1 - 1 / len(full))


def _named_ids_competition(demo_root, root, names):
    """The demo competition with Understanding Clouds' ids: Image_Label '<image>_<class name>' in train.csv, the
    sample and the solution (no class column)."""
    shutil.copytree(demo_root, root)
    train = pd.read_csv(demo_root / "train.csv", dtype=str, keep_default_na=False)
    pd.DataFrame({"Image_Label": train.ImageId + "_" + train.ClassId.map(lambda c: names[int(c) - 1]),
                  "EncodedPixels": train.EncodedPixels}).to_csv(root / "train.csv", index=False)
    for name in ("sample_submission.csv", "test_solution.csv"):
        df = pd.read_csv(demo_root / name, dtype=str, keep_default_na=False)
        image, cls = df.ImageId_ClassId.str.rsplit("_", n=1).str[0], df.ImageId_ClassId.str.rsplit("_", n=1).str[1]
        pd.DataFrame({"Image_Label": image + "_" + cls.map(lambda c: names[int(c) - 1]),
                      "EncodedPixels": df.EncodedPixels}).to_csv(root / name, index=False)


def test_class_names_in_the_ids_train_and_submit_as_class_numbers_do(demo_root, tmp_path):
    """Understanding Clouds' Image_Label ('0011165.jpg_Fish') and Severstal's first train.csv ('0002cc93b.jpg_1') hold
    the class in the id: data.id_format reads them ({name} through data.class_names), submission.id_format writes
    them. The same run as with a class column: the same CV score and the same masks, row for row."""
    from seg_toolkit.data import load_train_samples
    from seg_toolkit.submission_score import score_submission

    names = ["Fish", "Fish_Sugar", "Sugar"]  # one name the end of another: the longest is tried first
    root = tmp_path / "clouds"
    _named_ids_competition(demo_root, root, names)
    base = demo_dict(demo_root, tmp_path / "runs", experiment="numbers", postprocess={"tune": False})
    clouds = demo_dict(root, tmp_path / "runs", experiment="names", postprocess={"tune": False},
                       data={**base["data"], "root": str(root), "id_column": "Image_Label", "class_column": None,
                             "id_format": "{id}_{name}", "class_names": names},
                       submission={**base["submission"], "id_format": "{id}_{name}", "path": str(tmp_path / "names.csv")})
    numbers, named = config_from_dict(base), config_from_dict(clouds)
    assert [(s.id, s.rles) for s in load_train_samples(named)] == [(s.id, s.rles) for s in load_train_samples(numbers)]
    assert run_cv(named)["score"] == run_cv(numbers)["score"]
    by_name = pd.read_csv(predict_test(named), dtype=str, keep_default_na=False)
    by_number = pd.read_csv(predict_test(numbers), dtype=str, keep_default_na=False)
    assert by_name.Image_Label.tolist()[:3] == [f"{by_number.ImageId_ClassId[0][:-2]}_{n}" for n in names]
    assert by_name.EncodedPixels.tolist() == by_number.EncodedPixels.tolist()
    assert check_submission(predict_test(named, overwrite=True), root / "sample_submission.csv") == []
    assert score_submission(predict_test(named, overwrite=True), root / "test_solution.csv", named) == \
        score_submission(predict_test(numbers, overwrite=True), demo_root / "test_solution.csv", numbers)
    # Severstal's first train.csv: the class number in the id
    severstal = tmp_path / "severstal"
    shutil.copytree(demo_root, severstal)
    train = pd.read_csv(demo_root / "train.csv", dtype=str, keep_default_na=False)
    pd.DataFrame({"ImageId_ClassId": train.ImageId + "_" + train.ClassId, "EncodedPixels": train.EncodedPixels}).to_csv(
        severstal / "train.csv", index=False)
    v1 = config_from_dict(demo_dict(severstal, tmp_path / "runs", data={**base["data"], "root": str(severstal),
                          "id_column": "ImageId_ClassId", "class_column": None, "id_format": "{id}_{cls}"}))
    assert [(s.id, s.rles) for s in load_train_samples(v1)] == [(s.id, s.rles) for s in load_train_samples(numbers)]


@pytest.mark.parametrize("data, message", [
    ({"id_format": "{id}_{cls}"}, r"data.id_format: '\{id\}_\{cls\}' reads the class out of the training CSV's ids: "
                                  r".*without data.class_column \(.*data.class_column 'ClassId'\)"),
    ({"class_column": None, "id_format": "{id}_{name}"}, r"data.id_format: '\{id\}_\{name\}': \{name\} is a class name: "
                                                         r"set data.class_names"),
    ({"class_column": None, "id_format": "{id}"}, r"data.id_format: '\{id\}' must contain \{cls\} \(the class number\) "
                                                  r"or \{name\} \(its name\) exactly once"),
    ({"class_column": None, "id_format": "{id}_{cls}", "layout": "folder"}, r"data.id_format: .* csv layout"),
])
def test_id_format_checked_at_load(demo_root, tmp_path, data, message):
    base = demo_dict(demo_root, tmp_path / "runs")
    with pytest.raises(ConfigError, match=message):
        config_from_dict({**base, "data": {**base["data"], **data}})


def test_an_id_that_does_not_read_as_the_id_format_names_its_line(demo_root, tmp_path):
    from seg_toolkit.data import load_train_samples
    from seg_toolkit.data.io import DataError

    root = tmp_path / "clouds"
    _named_ids_competition(demo_root, root, ["Fish", "Flower", "Sugar"])
    text = (root / "train.csv").read_text().splitlines()
    text[3] = text[3].replace("_Sugar,", "_Gravel,")
    (root / "train.csv").write_text("\n".join(text) + "\n")
    base = demo_dict(root, tmp_path / "runs")
    cfg = config_from_dict({**base, "data": {**base["data"], "id_column": "Image_Label", "class_column": None,
                                              "id_format": "{id}_{name}", "class_names": ["Fish", "Flower", "Sugar"]}})
    with pytest.raises(DataError, match=r"train.csv line 4 \(id '[0-9a-f]+_Gravel'\): the id does not read as "
                                        r"data.id_format '\{id\}_\{name\}' \(class names \['Fish', 'Flower', 'Sugar'\]\)"):
        load_train_samples(cfg)


def test_id_formats_split_as_written():
    """{cls}: the id as long as it can be (as before {name} came); {name}: the longest name, whichever side the id is
    on; literal braces are text, not a field."""
    from seg_toolkit.data.sources import parse_submission_id
    from seg_toolkit.submission import row_ids

    assert parse_submission_id("{id}{cls}").fullmatch("img12").group("id", "cls") == ("img1", "2")
    assert parse_submission_id("{id}_{cls}").fullmatch("a_1_2").group("id", "cls") == ("a_1", "2")
    names = ["Fish", "Fish_Sugar", "Sugar"]
    assert parse_submission_id("{name}_{id}", names).fullmatch("Fish_Sugar_0011165.jpg").group("name", "id") == \
        ("Fish_Sugar", "0011165.jpg")
    assert parse_submission_id("{id}_{name}", names).fullmatch("0011165.jpg_Fish_Sugar").group("id", "name") == \
        ("0011165.jpg", "Fish_Sugar")
    braces = config_from_dict({"data": {"task": "multilabel", "num_classes": 2, "class_column": "c"},
                               "submission": {"per_class": True, "id_format": "{{name}}_{id}_{cls}"}})
    assert row_ids(braces, "a") == ["{name}_a_1", "{name}_a_2"]
    assert parse_submission_id("{{name}}_{id}_{cls}").fullmatch("{name}_a_1").group("id", "cls") == ("a", "1")


def test_a_name_two_classes_share_in_classes_csv_is_refused_for_name_ids(tmp_path):
    from seg_toolkit.data.io import DataError
    from seg_toolkit.submission import row_ids

    (tmp_path / "classes.csv").write_text("id,name\n1,Fish\n2,Fish\n3,Sugar\n")
    cfg = config_from_dict({"data": {"root": str(tmp_path), "task": "multilabel", "num_classes": 3, "class_column": "c",
                                     "classes_csv": "classes.csv"},
                            "submission": {"per_class": True, "id_format": "{id}_{name}"}})
    with pytest.raises(DataError, match=r"class name\(s\) \['Fish'\] given to more than one class"):
        row_ids(cfg, "a")


def test_class_names_in_the_training_class_column_read_as_their_numbers(demo_root, tmp_path):
    """UW-Madison's train.csv holds the class's name in its class column ('large_bowel'): it was refused ("is not an
    integer"). A name of data.class_names reads as its number, the same samples as the numbers give; a name the config
    does not know is named with the names it does."""
    from seg_toolkit.data import load_train_samples
    from seg_toolkit.data.io import DataError

    names = ["large_bowel", "small_bowel", "stomach"]
    root = tmp_path / "named"
    shutil.copytree(demo_root, root)
    train = pd.read_csv(demo_root / "train.csv", dtype=str, keep_default_na=False)
    train.assign(ClassId=train.ClassId.map(lambda c: names[int(c) - 1])).to_csv(root / "train.csv", index=False)
    numbers = config_from_dict(demo_dict(demo_root, tmp_path / "runs"))
    named = config_from_dict(demo_dict(root, tmp_path / "runs", data={"class_names": names}))
    assert [(s.id, s.rles) for s in load_train_samples(named)] == [(s.id, s.rles) for s in load_train_samples(numbers)]
    train.assign(ClassId=["liver"] + train.ClassId.map(lambda c: names[int(c) - 1]).tolist()[1:]).to_csv(
        root / "train.csv", index=False)
    with pytest.raises(DataError, match=r"train.csv line 2: class 'liver' in column 'ClassId' is neither a class number "
                                        r"nor a class name \(\['large_bowel', 'small_bowel', 'stomach'\]"):
        load_train_samples(named)


def test_class_names_in_the_submission_class_column(severstal, tmp_path, caplog):
    """UW-Madison submits ``id,class,predicted`` with the class's name ('large_bowel'), as its train.csv holds it; the
    class column wrote numbers only, which its grader never matches. ``submission.class_format: '{name}'`` writes the
    names (the masks are the numbers' run's, row for row), checked and scored as names; the header-only sample says
    nothing of the form, so the training CSV's names beside a submission of numbers are warned of."""
    import logging

    from seg_toolkit.submission import class_column_names, class_of_text, class_text

    cfg, images, tmp = severstal
    names = ["large_bowel", "small_bowel", "stomach"]
    root = tmp_path / "data"
    shutil.copytree(Path(cfg.data.root), root)
    train = pd.read_csv(root / "train.csv", dtype=str, keep_default_na=False)
    train.assign(ClassId=train.ClassId.map(lambda c: names[int(c) - 1])).to_csv(root / "train.csv", index=False)
    (root / "sample_submission.csv").write_text("ImageId,ClassId,EncodedPixels\n")  # a code competition's: header only
    d = config_to_dict(cfg)

    def moved(fmt):
        return config_from_dict({**d, "data": {**d["data"], "root": str(root), "class_names": names},
                                 "submission": {**d["submission"], "path": None, "class_format": fmt}})

    with caplog.at_level(logging.WARNING, logger="seg_toolkit"):
        numbers = pd.read_csv(predict_test(moved("{cls}"), out=tmp_path / "numbers.csv"), dtype=str, keep_default_na=False)
    assert "class column holds class names ('large_bowel') and submission.class_column writes class numbers: set " \
           "submission.class_format: '{name}'" in caplog.text
    caplog.clear()
    named_cfg = moved("{name}")
    with caplog.at_level(logging.WARNING, logger="seg_toolkit"):
        out = predict_test(named_cfg, out=tmp_path / "names.csv")
    assert "lists no class" not in caplog.text
    named = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert list(named.columns) == ["ImageId", "ClassId", "EncodedPixels"]
    assert named.ClassId.tolist() == names * len(images)
    assert named.EncodedPixels.tolist() == numbers.EncodedPixels.tolist() and (named.EncodedPixels != "").any()
    by_name = class_column_names(named_cfg)
    assert by_name == {"large_bowel": 1, "small_bowel": 2, "stomach": 3}
    assert [class_text(k, by_name) for k in (1, 3)] == ["large_bowel", "stomach"] and class_text(2, None) == "2"
    assert [class_of_text(t, by_name) for t in (" stomach ", "3", "liver")] == [3, None, None]
    assert [class_of_text(t, None) for t in (" 3", "stomach", "")] == [3, None, None]
    # checked as names: the numbers' file is refused, row by row, naming the form
    sample = root / "sample_submission.csv"
    assert check_submission(out, sample, class_column="ClassId", classes=[1, 2, 3], class_names=by_name) == []
    problems = check_submission(tmp_path / "numbers.csv", sample, class_column="ClassId", classes=[1, 2, 3],
                                class_names=by_name)
    assert problems[0] == (f"line 2 (id {named.ImageId[0]!r}): class '1' is not a class name of this submission (['large_bowel', "
                           "'small_bowel', 'stomach']) (a number: submission.class_format '{name}' writes names)")
    # scored as names: the same score as the numbers' file against the numbers' solution
    sol = pd.read_csv(cfg.data_path("test_solution.csv"), dtype=str, keep_default_na=False)
    ids = sol.ImageId_ClassId.str.rsplit("_", n=1)
    by_number = pd.DataFrame({"ImageId": ids.str[0], "ClassId": ids.str[1], "EncodedPixels": sol.EncodedPixels})
    by_number.to_csv(tmp_path / "sol_numbers.csv", index=False)
    by_number.assign(ClassId=by_number.ClassId.map(lambda c: names[int(c) - 1])).to_csv(tmp_path / "sol_names.csv", index=False)
    score = score_submission(out, tmp_path / "sol_names.csv", named_cfg)
    assert score == score_submission(tmp_path / "numbers.csv", tmp_path / "sol_numbers.csv", moved("{cls}")) < 1.0
    # the grader's solution in the other form reads either way (the review: its numbers were called the submission's fault)
    assert score_submission(out, tmp_path / "sol_numbers.csv", named_cfg) == score
    assert score_submission(tmp_path / "numbers.csv", tmp_path / "sol_names.csv", moved("{cls}")) == score
    # the config's own checks (check-submission --config, and demo, which left the names out and called the file
    # INVALID) take the names from one place
    from seg_toolkit.submission_check import config_check_args

    assert config_check_args(named_cfg)["class_names"] == by_name
    assert check_submission(out, sample, **config_check_args(named_cfg)) == []
    with pytest.raises(SubmissionError, match=r"numbers.csv line 2 \(id '[^']+'\): ClassId: class '1' is not a class name"):
        score_submission(tmp_path / "numbers.csv", tmp_path / "sol_names.csv", named_cfg)
    # a sample listing the names: predict with numbers is refused before predicting, naming the key
    (root / "sample_submission.csv").write_text(
        "ImageId,ClassId,EncodedPixels\n" + "".join(f"{i},{n},\n" for i in dict.fromkeys(named.ImageId) for n in names))
    with pytest.raises(SubmissionError, match=r"sample_submission.csv line 2: ClassId: class 'large_bowel' is not a whole "
                                              r"number; a class name\? submission.class_format: '\{name\}' writes names"):
        predict_test(moved("{cls}"), out=tmp_path / "refused.csv")
    assert not (tmp_path / "refused.csv").exists()
    listed = pd.read_csv(predict_test(named_cfg, out=tmp_path / "listed.csv"), dtype=str, keep_default_na=False)
    pd.testing.assert_frame_equal(listed, named)


def test_class_names_written_are_the_classes_csv_names_stripped_and_complete(tmp_path):
    """A classes CSV's ' large_bowel' was written with its space (no grader matches it, and check-submission refused the
    toolkit's own file); a class the CSV leaves out was written as the made-up 'class_3'."""
    from seg_toolkit.submission import class_column_names

    (tmp_path / "classes.csv").write_text("id,name\n1, large_bowel\n2,small_bowel \n3,stomach\n")
    cfg = config_from_dict({"data": {"root": str(tmp_path), "task": "multilabel", "num_classes": 3, "class_column": "c",
                                     "classes_csv": "classes.csv"},
                            "submission": {"class_column": "class", "class_format": "{name}"}})
    assert class_column_names(cfg) == {"large_bowel": 1, "small_bowel": 2, "stomach": 3}
    assert mask_rows("a", TWO[:1].repeat(3, 0), cfg)[0] == ("a", "1 2", "large_bowel")
    # parsed once while its bytes are the same (it was parsed for every row written); a caller's edit stays its own
    from seg_toolkit.data.colors import _classes_csv, class_names

    mine = _classes_csv(cfg)
    mine.loc[0, "name"] = "edited"
    assert mine["name"][0] == "edited" and class_names(cfg)[0] == " large_bowel"
    (tmp_path / "classes.csv").write_text("id,name\n1,large_bowel\n2,small_bowel\n")
    with pytest.raises(SubmissionError, match=r"class\(es\) \[3\] have none in classes.csv"):
        class_column_names(cfg)


@pytest.mark.parametrize("submission, data, message", [
    ({"class_format": "{name}"}, {}, r"submission.class_format: '\{name\}' is how submission.class_column writes each "
                                     r"row's class, and there is none"),
    ({"class_format": "{name}", "class_column": "class"}, {}, r"submission.class_format: '\{name\}' writes class names: "
                                                              r"set data.class_names"),
    ({"class_format": "name", "class_column": "class"}, {}, r"submission.class_format"),
])
def test_class_format_checked_at_load(submission, data, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict({"data": {"task": "multilabel", "num_classes": 2, "class_column": "c", **data},
                          "submission": {"per_class": "class_column" not in submission, **submission}})
