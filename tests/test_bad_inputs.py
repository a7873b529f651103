"""Bad input, one table: what users of real competitions (CamVid, Cityscapes, pets, Severstal,
Airbus, TGS, SIIM, Carvana) actually get wrong, and the legitimate variants that must keep working.

Each row of ``CASES`` is an input a user could produce (built tiny, in a temporary folder), the
command (``seg-toolkit ...`` through :func:`seg_toolkit.cli.main`, or a library call), and the
outcome: ``OK`` (exit code 0 / no error), or a fragment of the one ``error: ...`` line that
names the culprit (exit code 2, no traceback). ``w.after`` adds checks that run after the
command (the data is still there, no run folder was made ...). Nothing here trains: a ``train``
row must fail before the first epoch.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Union

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from seg_toolkit.cli import main
from seg_toolkit.config import config_from_dict, load_config, save_config
from seg_toolkit.cv import prepare_run
from seg_toolkit.data import load_or_make_folds, load_target, load_test_samples, load_train_samples, read_image
from seg_toolkit.data.io import image_size
from seg_toolkit.data.sources import check_train_samples, class_names
from seg_toolkit.errors import SegToolkitError
from seg_toolkit.rle import rle_encode
from seg_toolkit.files import write_json, write_npy
from seg_toolkit.run import Run

from .conftest import demo_dict

OK = None  # expected outcome of a legitimate variant


class World:
    """The temporary folder of one case, with builders for tiny competitions."""

    def __init__(self, tmp: Path, demo_root: Path) -> None:
        self.tmp, self.demo_root = tmp, demo_root
        self.runs = tmp / "runs"
        self.checks: list[Callable[[], Any]] = []

    def after(self, check: Callable[[], Any]) -> None:
        self.checks.append(check)

    def yaml(self, data: dict, name: str = "cfg.yaml") -> str:
        path = self.tmp / name
        path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        return str(path)

    # ------------------------------------------------------------------ the demo (multilabel, Severstal-style CSV)
    def demo(self) -> Path:
        root = self.tmp / "comp"
        if not root.exists():
            shutil.copytree(self.demo_root, root)
        return root

    def demo_dict(self, **sections) -> dict:
        return demo_dict(self.demo(), self.runs, **sections)

    def demo_cfg(self, **sections) -> str:
        return self.yaml(self.demo_dict(**sections))

    # ------------------------------------------------------------------ a binary competition (TGS / Carvana style)
    def binary(self, layout: str = "csv", n: int = 6, ids: list[str] | None = None, image_ext: str = ".png",
               mask_ext: str = ".png", fg: int = 255, empty: bool = False, hw=(16, 20)) -> Path:
        """``n`` images with an 8x8 square (every other one empty), as ``id,rle_mask`` rows or mask files."""
        root = self.tmp / "bin"
        ids = ids or [f"im{i}" for i in range(n)]
        rng = np.random.default_rng(0)
        (root / "train/images").mkdir(parents=True, exist_ok=True)
        (root / "train/masks").mkdir(parents=True, exist_ok=True)
        rows = []
        for i, image_id in enumerate(ids):
            _save(root / "train/images" / f"{image_id}{image_ext}", rng.integers(0, 255, (*hw, 3), dtype=np.uint8))
            mask = np.zeros(hw, np.uint8)
            if i % 2 and not empty:
                mask[4:12, 5:13] = 1
            if layout == "csv":
                rows.append({"id": image_id, "rle_mask": rle_encode(mask)})
            else:
                _save(root / "train/masks" / f"{image_id}{mask_ext}", (mask * fg).astype(np.uint8))
        if layout == "csv":
            pd.DataFrame(rows).to_csv(root / "train.csv", index=False)
        return root

    def binary_dict(self, root: Path, runs: Path | None = None, **data) -> dict:
        return {"experiment": "b", "runs_dir": str(runs or self.runs),
                "data": {"root": str(root), "task": "binary", "num_classes": 1, **data},
                "folds": {"n_splits": 2, "method": "kfold"},
                "model": {"arch": "scratch_unet", "depth": 2, "base_width": 4}, "train": {"epochs": 1, "batch_size": 2}}

    def binary_cfg(self, root: Path, **data) -> str:
        return self.yaml(self.binary_dict(root, **data))

    # ------------------------------------------------------------------ a multiclass label-map competition (CamVid style)
    def labels(self, n: int = 6, values=(0, 1, 2), void: int | None = None) -> Path:
        root = self.tmp / "lab"
        rng = np.random.default_rng(1)
        for i in range(n):
            _save(root / "imgs" / f"f{i}.png", rng.integers(0, 255, (16, 24, 3), dtype=np.uint8))
            label = rng.choice(np.array(values, np.uint8), (16, 24))
            if void is not None:
                label[0] = void
            _save(root / "labels" / f"f{i}.png", label)
        return root

    def labels_cfg(self, root: Path, **data) -> str:
        return self.yaml({"experiment": "m", "runs_dir": str(self.runs),
                          "data": {"root": str(root), "task": "multiclass", "num_classes": 3, "layout": "folder",
                                   "train_images": "imgs", "train_masks": "labels", **data},
                          "loss": {"ce": 1.0}, "folds": {"n_splits": 2, "method": "kfold"},
                          "submission": {"per_class": True}})

    # ------------------------------------------------------------------ a trained-looking run (no training: OOF files written by hand)
    def fake_run(self) -> tuple[str, Run]:
        """The demo config and a run folder with everything `cv` / `tune` / the report read."""
        path = self.demo_cfg()
        cfg = load_config(path)
        run = Run.of(cfg)
        run.dir.mkdir(parents=True)
        save_config(cfg, run.config_yaml)
        samples = load_train_samples(cfg)
        load_or_make_folds(samples, cfg, run.folds_csv)
        for k in range(cfg.folds.n_splits):
            write_json(run.done_json(k), {"fold": k})
        for s in samples:
            write_npy(run.oof_path(s.id), np.full((3, *image_size(s.image)), 100, np.uint8))
        return path, run

    def first_oof(self, run: Run) -> Path:
        return sorted(run.oof_dir.iterdir())[0]


def _save(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".gif": "GIF"}.get(Path(path.name.split("_mask")[-1]).suffix.lower(), "PNG")
    Image.fromarray(arr).save(path, format=fmt)
    return path


def reads(cfg_path: str, n: int | None = None, ids: list[str] | None = None, areas: list[int] | None = None):
    """What training reads before its first epoch, and every target and image; checks the result."""

    def run() -> None:
        cfg = load_config(cfg_path)
        samples = load_train_samples(cfg)
        check_train_samples(samples, cfg)
        load_or_make_folds(samples, cfg, Path(cfg_path).parent / "folds_check.csv")
        got = []
        for s in samples:
            image = read_image(s.image, cfg.data.in_channels, cfg.data.max_image_pixels)
            target = load_target(s, cfg, image.shape[:2])
            got.append(int(((target != 0) & (target != 255)).sum()))
        if n is not None:
            assert len(samples) == n
        if ids is not None:
            assert [s.id for s in samples] == ids
        if areas is not None:
            assert got == areas

    return run


# ----------------------------------------------------------------------------- the cases
# Each builder takes the World and returns the command: argv for `seg-toolkit`, or a callable.


def _data_folder_as_run_folder(w: World):
    """The issue-16 data loss: runs_dir: data, experiment: tgs, data.root: data/tgs, train --overwrite."""
    root = w.binary()
    cfg = w.binary_dict(root, runs=root.parent)
    cfg["experiment"] = root.name
    w.after(lambda: (root / "train.csv").is_file() and len(list((root / "train/images").iterdir())) == 6 or _fail("data deleted"))
    return ["train", w.yaml(cfg), "--overwrite"]


def _data_folder_with_our_files_via_remove(w: World):
    """Even when the data folder holds files of a run (a folds.csv copied there), Run.remove refuses it."""
    root = w.binary()
    (root / "folds.csv").write_text("id,fold,stratum\n")
    cfg = config_from_dict(w.binary_dict(root))
    w.after(lambda: (root / "train.csv").is_file() or _fail("data deleted"))
    return lambda: Run(root).remove(cfg)


def _run_inside_data_root(w: World):
    root = w.binary()
    return ["train", w.yaml(w.binary_dict(root, runs=root / "runs"))]


def _run_contains_data_root(w: World):
    root = w.binary()
    return ["train", w.yaml(w.binary_dict(root, runs=w.tmp.parent) | {"experiment": w.tmp.name})]


def _run_contains_an_absolute_input(w: World):
    root = w.binary()
    weights = w.runs / "b" / "encoder.pth"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"weights")
    cfg = w.binary_dict(root)
    cfg["model"] = {"arch": "scratch_unet", "encoder_weights": str(weights)}
    w.after(lambda: weights.is_file() or _fail("weights deleted"))
    return ["train", w.yaml(cfg), "--overwrite"]


def _overwrite_a_folder_that_is_no_run(w: World):
    root = w.binary()
    mine = w.runs / "b"
    (mine / "photos").mkdir(parents=True)
    (mine / "notes.txt").write_text("mine")
    w.after(lambda: (mine / "notes.txt").is_file() or _fail("user file deleted"))
    return ["train", w.binary_cfg(root), "--overwrite"]


def _overwrite_a_run_holding_a_user_file(w: World):
    root = w.binary()
    path = w.binary_cfg(root)
    cfg = load_config(path)
    run = Run.of(cfg)
    run.fold_dir(0).mkdir(parents=True)
    save_config(cfg, run.config_yaml)
    (run.fold_dir(0) / "metrics.csv").write_text("epoch\n1\n")
    (run.dir / "my_analysis.ipynb").write_text("{}")
    w.after(lambda: (run.dir / "my_analysis.ipynb").is_file() and run.config_yaml.is_file() or _fail("deleted"))
    return ["train", path, "--overwrite"]


def _overwrite_a_real_run(w: World):
    """Legitimate: --overwrite of a run folder made by the toolkit removes it (fold files included)."""
    root = w.binary()
    cfg = config_from_dict(w.binary_dict(root))
    run = prepare_run(cfg, [0, 1])
    (run.fold_dir(0)).mkdir()
    (run.fold_dir(0) / "last.pt").write_bytes(b"x")
    (run.dir / ".cv.json.abc123.tmp").write_text("")  # an atomic write cut short
    w.after(lambda: not run.fold_dir(0).exists() and run.config_yaml.is_file() or _fail("not overwritten"))
    return lambda: prepare_run(cfg, [0, 1], overwrite=True)


def _remove_a_path_outside_the_run(w: World):
    root = w.binary()
    cfg = config_from_dict(w.binary_dict(root))
    run = prepare_run(cfg, [0, 1])
    return lambda: run.remove(cfg, root / "train")


def _remove_the_tta_scratch(w: World):
    """Legitimate: tune --tta's scratch folder goes through the same guard."""
    root = w.binary()
    cfg = config_from_dict(w.binary_dict(root))
    run = prepare_run(cfg, [0, 1])
    run.tta_search_dir(0).mkdir(parents=True)
    (run.tta_search_dir(0) / "im1.npy").write_bytes(b"")
    w.after(lambda: not run.tta_search_root.exists() and run.config_yaml.is_file() or _fail("scratch kept"))
    return lambda: run.remove(cfg, run.tta_search_root)


def _overwrite_a_run_with_a_user_file_in_its_report(w: World):
    """Only the run's top level and fold_<k>/ were looked at: report/, oof/, export/, ... and failed_attempt_<n>/
    went with whatever the user had put in them."""
    root = w.binary()
    cfg = config_from_dict(w.binary_dict(root))
    run = prepare_run(cfg, [0, 1])
    run.report_dir.mkdir()
    (run.report_dir / "index.html").write_text("<html></html>")
    (run.report_dir / "confusion.png").write_bytes(b"")
    (run.report_dir / "my_figures").mkdir()
    (run.report_dir / "my_figures" / "talk.pdf").write_bytes(b"%PDF")
    run.oof_dir.mkdir()
    (run.oof_dir / "a.npy").write_bytes(b"")
    (run.oof_dir / "presence").mkdir()
    (run.oof_dir / "presence" / "a.npy").write_bytes(b"")
    w.after(lambda: (run.report_dir / "my_figures" / "talk.pdf").is_file() or _fail("report/ deleted with the user's file"))
    return lambda: prepare_run(cfg, [0, 1], overwrite=True)


def _remove_a_fold_whose_failed_attempt_holds_a_user_file(w: World):
    root = w.binary()
    cfg = config_from_dict(w.binary_dict(root))
    run = prepare_run(cfg, [0, 1])
    aside = run.failed_attempt_dir(0, 1)
    aside.mkdir(parents=True)
    (aside / "last.pt").write_bytes(b"")
    (aside / "metrics.csv").write_text("epoch\n1\n")
    (aside / "why_it_failed.txt").write_text("mine")
    w.after(lambda: (aside / "why_it_failed.txt").is_file() or _fail("failed_attempt_1 deleted with the user's file"))
    return lambda: run.remove(cfg, run.fold_dir(0))


def _remove_a_fold_holding_a_user_file(w: World):
    """The guard checks an entry it deletes (a fold folder) for files no run writes, as it checks the whole run."""
    root = w.binary()
    cfg = config_from_dict(w.binary_dict(root))
    run = prepare_run(cfg, [0, 1])
    run.fold_dir(1).mkdir(parents=True)
    (run.fold_dir(1) / "last.pt").write_bytes(b"")
    (run.fold_dir(1) / "notes.md").write_text("mine")
    w.after(lambda: (run.fold_dir(1) / "notes.md").is_file() and (run.fold_dir(1) / "last.pt").is_file()
            or _fail("fold_1 deleted with the user's file"))
    return lambda: run.remove(cfg, run.fold_dir(1))


def _cuda_without_cuda(w: World):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    w.after(lambda: not w.runs.exists() or _fail("run folder written"))
    return ["train", w.demo_cfg(train={"device": "cuda", "epochs": 1})]


def _base_chain(w: World):
    (w.tmp / "c.yaml").write_text("train: {epochs: 3, batch_size: 2}\noptim: {lr: 0.01}\n")
    (w.tmp / "b.yaml").write_text("base: c.yaml\ntrain: {epochs: 5}\n")
    (w.tmp / "a.yaml").write_text("base: b.yaml\nexperiment: a\n")

    def check():
        cfg = load_config(w.tmp / "a.yaml")
        assert (cfg.experiment, cfg.train.epochs, cfg.train.batch_size, cfg.optim.lr) == ("a", 5, 2, 0.01)

    return check


def _base_cycle(w: World):
    (w.tmp / "a.yaml").write_text("base: b.yaml\nexperiment: a\n")
    (w.tmp / "b.yaml").write_text("base: a.yaml\n")
    return ["train", str(w.tmp / "a.yaml")]


def _base_self(w: World):
    (w.tmp / "a.yaml").write_text("base: ./a.yaml\n")
    return ["train", str(w.tmp / "a.yaml")]


def _base_missing(w: World):
    (w.tmp / "a.yaml").write_text("base: shared.yaml\n")
    return ["train", str(w.tmp / "a.yaml")]


def _config_not_utf8(w: World):
    (w.tmp / "a.yaml").write_bytes("experiment: caf\xe9\n".encode("latin-1"))
    return ["train", str(w.tmp / "a.yaml")]


def _config_a_list(w: World):
    (w.tmp / "a.yaml").write_text("- data\n- train\n")
    return ["train", str(w.tmp / "a.yaml")]


def _config_with_bom(w: World):
    path = w.tmp / "a.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + b"experiment: bom\n")
    return lambda: load_config(path).experiment == "bom" or _fail("BOM")


def _config_is_a_plain_folder(w: World):
    (w.tmp / "configs").mkdir()
    return ["train", str(w.tmp / "configs")]


def _train_csv_header_only(w: World):
    root = w.demo()
    (root / "train.csv").write_text("ImageId,ClassId,EncodedPixels\n")
    return ["train", w.demo_cfg()]


def _train_csv_zero_bytes(w: World):
    root = w.demo()
    (root / "train.csv").write_bytes(b"")
    return ["train", w.demo_cfg()]


def _train_csv_is_a_folder(w: World):
    root = w.binary()
    (root / "labels").mkdir()
    return ["train", w.binary_cfg(root, train_csv="labels")]


def _train_csv_latin1(w: World):
    root = w.binary()
    (root / "train.csv").write_bytes("id,rle_mask\ncaf\xe9,\n".encode("latin-1"))
    return ["train", w.binary_cfg(root)]


def _train_csv_bom_crlf(w: World):
    """Legitimate: a CSV saved by Excel on Windows (BOM, CRLF) reads as the plain one."""
    root = w.binary()
    text = (root / "train.csv").read_text()
    (root / "train.csv").write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode())
    return reads(w.binary_cfg(root), ids=[f"im{i}" for i in range(6)], areas=[0, 64, 0, 64, 0, 64])


def _unicode_and_spaced_ids(w: World):
    """Legitimate: ids with accents, CJK and inner spaces are file names like any other."""
    ids = ["café_01", "图像2", "img 03", "Ölfeld-4", "x5", "y6"]
    root = w.binary(ids=ids)
    return reads(w.binary_cfg(root), ids=ids, areas=[0, 64, 0, 64, 0, 64])


def _id_with_trailing_space(w: World):
    root = w.binary()
    df = pd.read_csv(root / "train.csv", dtype=str, keep_default_na=False)
    df.loc[2, "id"] = "im2 "
    df.to_csv(root / "train.csv", index=False)
    return ["train", w.binary_cfg(root)]


def _ids_carrying_the_extension(w: World):
    """Legitimate (Severstal): ids are file names with their extension."""
    root = w.binary()
    df = pd.read_csv(root / "train.csv", dtype=str, keep_default_na=False)
    df["id"] = df["id"] + ".png"
    df.to_csv(root / "train.csv", index=False)
    return reads(w.binary_cfg(root), n=6)


def _rle_empty_fields(w: World):
    """Legitimate (Airbus, TGS): an empty RLE field is an empty mask, which pandas would read as NaN."""
    root = w.binary()
    assert ",\n" in (root / "train.csv").read_text()
    return reads(w.binary_cfg(root), areas=[0, 64, 0, 64, 0, 64])


def _rle_nan_as_text(w: World):
    root = w.binary()
    df = pd.read_csv(root / "train.csv", dtype=str, keep_default_na=False)
    df.loc[0, "rle_mask"] = "NaN"
    df.to_csv(root / "train.csv", index=False)
    return ["train", w.binary_cfg(root)]


def _rle_column_with_leading_space(w: World):
    """SIIM's train-rle.csv names its column ' EncodedPixels' (a leading space)."""
    root = w.binary()
    (root / "train.csv").write_text((root / "train.csv").read_text().replace("id,rle_mask", "ImageId, EncodedPixels"))
    return ["train", w.binary_cfg(root, id_column="ImageId", rle_column="EncodedPixels")]


def _all_rle_masks_empty(w: World):
    root = w.binary(empty=True)
    w.after(lambda: not w.runs.exists() or _fail("run folder written"))
    return ["train", w.binary_cfg(root)]


def _csv_images_are_jpg(w: World):
    root = w.binary(image_ext=".jpg")
    return ["train", w.binary_cfg(root)]


def _all_mask_files_empty(w: World):
    root = w.binary(layout="folder", empty=True)
    return ["train", w.binary_cfg(root, layout="folder")]


def _zero_one_masks_with_threshold_128(w: World):
    root = w.binary(layout="folder", fg=1)
    return ["train", w.binary_cfg(root, layout="folder", mask_threshold=128)]


def _sixteen_bit_masks(w: World):
    """Legitimate (TGS): 16-bit masks with 65535 as foreground."""
    root = w.binary(layout="folder")
    for p in (root / "train/masks").iterdir():
        Image.fromarray(np.asarray(Image.open(p)).astype(np.uint16) * 257).save(p)
    assert Image.open(next((root / "train/masks").iterdir())).mode.startswith("I")
    return reads(w.binary_cfg(root, layout="folder"), areas=[0, 64, 0, 64, 0, 64])


def _jpeg_masks_undeclared(w: World):
    root = w.binary(layout="folder", mask_ext=".jpg")
    return ["train", w.binary_cfg(root, layout="folder", mask_ext=".jpg")]


def _jpeg_masks_with_threshold(w: World):
    """Legitimate once declared: 0/255 JPEG masks read with data.mask_threshold: 128 are the drawn squares."""
    root = w.binary(layout="folder", mask_ext=".jpg")
    return reads(w.binary_cfg(root, layout="folder", mask_ext=".jpg", mask_threshold=128), areas=[0, 64, 0, 64, 0, 64])


def _jpeg_label_maps(w: World):
    root = w.labels()
    return ["train", w.labels_cfg(root, mask_ext=".jpg")]


def _jpeg_content_named_png(w: World):
    root = w.binary(layout="folder")
    for p in (root / "train/masks").iterdir():
        Image.open(p).save(p, format="JPEG")
    return ["train", w.binary_cfg(root, layout="folder")]


def _threshold_on_label_maps(w: World):
    root = w.labels()
    return ["train", w.labels_cfg(root, mask_threshold=128)]


def _images_jpg_masks_png(w: World):
    """Legitimate (pets, Carvana): images .jpg, masks .png."""
    root = w.binary(layout="folder", image_ext=".jpg")
    return reads(w.binary_cfg(root, layout="folder", image_ext=".jpg"), n=6)


def _carvana_mask_suffix(w: World):
    """Legitimate (Carvana): masks are <id>_mask.gif, so data.mask_ext is '_mask.gif'."""
    root = w.binary(layout="folder", mask_ext="_mask.gif")
    return reads(w.binary_cfg(root, layout="folder", mask_ext="_mask.gif"), areas=[0, 64, 0, 64, 0, 64])


def _masks_have_another_extension(w: World):
    root = w.binary(layout="folder", mask_ext=".gif")
    return ["train", w.binary_cfg(root, layout="folder")]


def _folder_images_are_jpg(w: World):
    root = w.binary(layout="folder", image_ext=".jpg")
    return ["train", w.binary_cfg(root, layout="folder")]


def _train_images_is_a_file(w: World):
    root = w.binary(layout="folder")
    (root / "images.zip").write_bytes(b"PK")
    return ["train", w.binary_cfg(root, layout="folder", train_images="images.zip")]


def _zero_255_in_multiclass(w: World):
    root = w.labels(values=(0, 255))
    return ["train", w.labels_cfg(root, num_classes=2)]


def _void_255_declared(w: World):
    """Legitimate (Cityscapes, pets trimaps converted): 255 is the void id when declared."""
    root = w.labels(void=255)
    return reads(w.labels_cfg(root, ignore_index=255), n=6)


def _mask_of_another_size_than_its_image(w: World):
    """Found by the first epoch that read the pair (the pets audit: a whole epoch after folds.csv and config.yaml were
    written); the headers tell it before anything is written."""
    root = w.labels()
    _save(root / "labels" / "f3.png", np.zeros((16, 31), np.uint8))
    w.after(lambda: not w.runs.exists() or not any(w.runs.iterdir()) or _fail("a run folder was written"))
    return ["train", w.labels_cfg(root)]


def _all_label_maps_background(w: World):
    root = w.labels(values=(0,), void=255)
    return ["train", w.labels_cfg(root, ignore_index=255)]


def _list_file_empty(w: World):
    root = w.labels()
    (root / "train.txt").write_text("\n\n")
    return ["train", w.labels_cfg(root, train_lists=["train.txt"])]


def _list_file_is_a_folder(w: World):
    root = w.labels()
    return ["train", w.labels_cfg(root, train_lists=["imgs"])]


def _images_whose_extensions_differ_in_case(w: World):
    """f0.png and f0.PNG were one id for two pictures: the second trained against the first's mask, folds.csv listed
    f0 twice, and its OOF file was written twice (found by an audit)."""
    root = w.labels()
    shutil.copy(root / "imgs" / "f1.png", root / "imgs" / "f0.PNG")
    return ["train", w.labels_cfg(root)]


def _test_images_whose_extensions_differ_in_case(w: World):
    """Without a sample submission, predict wrote two rows of one id, which its own check-submission then refused."""
    root = w.demo()
    (root / "sample_submission.csv").unlink()
    first = sorted((root / "test/images").iterdir())[0]
    shutil.copy(first, first.with_suffix(".PNG"))
    return lambda: load_test_samples(load_config(w.demo_cfg()))


def _image_name_with_a_leading_space(w: World):
    """The folder layout took file stems as ids unchecked, where the CSV and list layouts refuse surrounding spaces."""
    root = w.labels()
    for folder in ("imgs", "labels"):
        (root / folder / "f1.png").rename(root / folder / " f1.png")
    return ["train", w.labels_cfg(root)]


def _list_file_path_with_a_space(w: World):
    root = w.labels()
    (root / "imgs" / "f0.png").rename(root / "imgs" / "my f0.png")
    (root / "train.txt").write_text("imgs/my f0.png labels/f0.png\nimgs/f1.png labels/f1.png\n")
    return ["train", w.labels_cfg(root, train_lists=["train.txt"])]


def _list_file_bom_crlf(w: World):
    """Legitimate (CamVid lists edited on Windows): BOM and CRLF."""
    root = w.labels()
    text = "".join(f"imgs/f{i}.png labels/f{i}.png\r\n" for i in range(6))
    (root / "train.txt").write_bytes(b"\xef\xbb\xbf" + text.encode())
    return reads(w.labels_cfg(root, train_lists=["train.txt"]), ids=[f"f{i}" for i in range(6)])


def _data_limit_zero(w: World):
    return ["train", w.demo_cfg(), "--set", "data.limit=0"]


def _classes_csv_bad_id(w: World):
    root = w.labels()
    (root / "classes.csv").write_text("id,name\n0,background\none,road\n2,car\n")
    return lambda: class_names(load_config(w.labels_cfg(root, classes_csv="classes.csv")))


def _sample_id_column_differs(w: World):
    w.demo()
    return lambda: load_test_samples(load_config(w.demo_cfg(submission={"per_class": True, "id_column": "ImageId"})))


def _train_with_a_sample_column_the_config_lacks(w: World):
    """submission.* keys that do not fit the sample were found by predict, after every fold had trained (a config
    audit): train checks the sample before anything is written now, as predict does."""
    w.demo()
    w.after(lambda: not (w.runs / "t" / "fold_0").exists() or pytest.fail("a fold was written"))
    return ["train", w.demo_cfg(submission={"per_class": True, "id_column": "Foo"})]


def _train_with_a_class_the_sample_lacks(w: World):
    w.demo()
    return ["train", w.demo_cfg(data={"num_classes": 4})]


def _sample_ids_without_class(w: World):
    root = w.demo()
    df = pd.read_csv(root / "sample_submission.csv", dtype=str, keep_default_na=False)
    df["ImageId_ClassId"] = df["ImageId_ClassId"].str.rsplit("_", n=1).str[0]
    df.drop_duplicates("ImageId_ClassId").to_csv(root / "sample_submission.csv", index=False)
    return lambda: load_test_samples(load_config(w.demo_cfg()))


def _sample_rows(w: World, edit: Callable[[pd.DataFrame], pd.DataFrame]):
    """The rows of an edited sample submission, checked before any image is predicted (were: after all of them,
    'ids differ from the sample submission: 12 rows written, the sample has 13', no line named)."""
    from seg_toolkit.inference import _expected_ids

    root = w.demo()
    path = root / "sample_submission.csv"
    edit(pd.read_csv(path, dtype=str, keep_default_na=False)).to_csv(path, index=False)
    cfg = load_config(w.demo_cfg())
    return lambda: _expected_ids(cfg, load_test_samples(cfg))


def _sample_row_twice(w: World):
    return _sample_rows(w, lambda df: pd.concat([df, df.iloc[[1]]], ignore_index=True))


def _sample_row_of_class_4(w: World):
    def edit(df):
        df.loc[len(df)] = [df["ImageId_ClassId"][0].rsplit("_", 1)[0] + "_4", ""]
        return df

    return _sample_rows(w, edit)


def _test_images_are_jpg(w: World):
    root = w.demo()
    for p in (root / "test/images").iterdir():
        Image.open(p).convert("RGB").save(p.with_suffix(".jpg"))
        p.unlink()
    return lambda: load_test_samples(load_config(w.demo_cfg()))


def _check_with_zero_byte_sample(w: World):
    (w.tmp / "sample.csv").write_bytes(b"")
    (w.tmp / "sub.csv").write_text("id,rle_mask\na,\n")
    return ["check-submission", str(w.tmp / "sub.csv"), "--sample", str(w.tmp / "sample.csv")]


def _check_with_sample_folder(w: World):
    (w.tmp / "sample").mkdir()
    (w.tmp / "sub.csv").write_text("id,rle_mask\na,\n")
    return ["check-submission", str(w.tmp / "sub.csv"), "--sample", str(w.tmp / "sample")]


def _check_missing_submission(w: World):
    (w.tmp / "sample.csv").write_text("id,rle_mask\na,\n")
    return ["check-submission", str(w.tmp / "nope.csv"), "--sample", str(w.tmp / "sample.csv")]


def _check_with_bom_sample(w: World):
    """Legitimate: a sample submission with a BOM; the submission without one matches it."""
    (w.tmp / "sample.csv").write_bytes(b"\xef\xbb\xbfid,rle_mask\r\na,1 1\r\n")
    (w.tmp / "sub.csv").write_text("id,rle_mask\na,3 4\n")
    return ["check-submission", str(w.tmp / "sub.csv"), "--sample", str(w.tmp / "sample.csv")]


def _oof_pickled(w: World):
    path, run = w.fake_run()
    np.save(w.first_oof(run), np.array([{"evil": 1}, None], dtype=object), allow_pickle=True)
    return ["cv", path]


def _oof_truncated(w: World):
    path, run = w.fake_run()
    victim = w.first_oof(run)
    victim.write_bytes(victim.read_bytes()[:40])
    from seg_toolkit.tune import tune_postprocess

    return lambda: tune_postprocess(load_config(path))


def _oof_float(w: World):
    path, run = w.fake_run()
    np.save(w.first_oof(run), np.zeros((3, 48, 64), np.float32))
    from seg_toolkit.report import write_oof_summary

    cfg = load_config(path)
    return lambda: write_oof_summary(run, cfg, load_train_samples(cfg))


def _oof_pickled_in_ensemble(w: World):
    path, run = w.fake_run()
    np.save(w.first_oof(run), np.array([1, "x"], dtype=object), allow_pickle=True)
    from seg_toolkit.ensemble import _OOF

    cfg = load_config(path)
    folds = run.completed_folds()
    return lambda: list(_OOF(cfg, [run], folds, run.fold_of(), 1 << 20))


def _folds_csv_damaged(w: World):
    path, run = w.fake_run()
    text = run.folds_csv.read_text().splitlines()
    text[3] = text[3].split(",")[0] + ",one,empty"
    run.folds_csv.write_text("\n".join(text) + "\n")
    return ["train", path, "--resume"]


def _fail(what: str):
    raise AssertionError(what)


Command = Union[list, Callable[[], Any]]


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[World], Command]
    expect: str | None  # a fragment of the one error line (exit code 2), or OK


CASES = [
    # ---- the run folder: nothing but what a run wrote is ever deleted, and never the data
    Case("run folder is data.root (train --overwrite)", _data_folder_as_run_folder, "(runs_dir/experiment) is data.root"),
    Case("Run.remove on the data folder", _data_folder_with_our_files_via_remove, "is data.root"),
    Case("run folder inside data.root", _run_inside_data_root, "lies inside data.root"),
    Case("run folder contains data.root", _run_contains_data_root, "contains data.root"),
    Case("run folder contains the encoder weights", _run_contains_an_absolute_input, "contains model.encoder_weights"),
    Case("overwrite a folder that is no run", _overwrite_a_folder_that_is_no_run, "holds files but is not a run folder"),
    Case("overwrite a run holding a user file", _overwrite_a_run_holding_a_user_file,
         "holds 1 file(s) that seg_toolkit did not write (my_analysis.ipynb)"),
    Case("overwrite a run made by the toolkit", _overwrite_a_real_run, OK),
    Case("remove a path outside the run", _remove_a_path_outside_the_run, "is not a file that runs write inside"),
    Case("remove tune --tta scratch", _remove_the_tta_scratch, OK),
    Case("overwrite a run with a user file in report/", _overwrite_a_run_with_a_user_file_in_its_report,
         "holds 1 file(s) that seg_toolkit did not write (report/my_figures/talk.pdf)"),
    Case("remove a fold whose failed attempt holds a user file", _remove_a_fold_whose_failed_attempt_holds_a_user_file,
         "fold_0: it holds 1 file(s) that seg_toolkit did not write (failed_attempt_1/why_it_failed.txt)"),
    Case("remove a fold holding a user file", _remove_a_fold_holding_a_user_file,
         "fold_1: it holds 1 file(s) that seg_toolkit did not write (notes.md)"),
    Case("train.device cuda without CUDA", _cuda_without_cuda, "train.device: 'cuda' but CUDA is not available"),
    # ---- configs
    Case("base chain a -> b -> c", _base_chain, OK),
    Case("base cycle a -> b -> a", _base_cycle, "cycle: "),
    Case("base names itself", _base_self, "base: the configs name each other in a cycle"),
    Case("base file missing", _base_missing, "a.yaml: base: 'shared.yaml' not found"),
    Case("config not UTF-8", _config_not_utf8, "a.yaml: not a UTF-8 text file"),
    Case("config is a YAML list", _config_a_list, "a.yaml: a config file must be a mapping"),
    Case("config with a BOM", _config_with_bom, OK),
    Case("config path is a plain folder", _config_is_a_plain_folder, "configs: is a folder without config.yaml"),
    Case("data.limit 0", _data_limit_zero, "data.limit: expected null (all samples) or >= 1, got 0"),
    Case("data.mask_threshold on label maps", _threshold_on_label_maps, "data.mask_threshold: applies to binary masks only"),
    # ---- training CSV (TGS, Severstal, Airbus, SIIM)
    Case("train.csv with only a header", _train_csv_header_only, "train.csv: no data rows (only the header"),
    Case("train.csv of 0 bytes", _train_csv_zero_bytes, "train.csv: file is empty (0 bytes)"),
    Case("train_csv names a folder", _train_csv_is_a_folder, "labels: is a folder; expected the training CSV"),
    Case("train.csv in Latin-1", _train_csv_latin1, "train.csv: training CSV (data.train_csv) is not UTF-8"),
    Case("train.csv with BOM and CRLF", _train_csv_bom_crlf, OK),
    Case("unicode ids and ids with inner spaces", _unicode_and_spaced_ids, OK),
    Case("id with a trailing space", _id_with_trailing_space, "line 4 (id 'im2 '): id 'im2 ' is empty or has surrounding spaces"),
    Case("ids carrying the extension (Severstal)", _ids_carrying_the_extension, OK),
    Case("empty RLE fields (Airbus/TGS)", _rle_empty_fields, OK),
    Case("RLE 'NaN' written as text", _rle_nan_as_text, "a NaN written as text? an empty mask is an empty field"),
    Case("RLE column name with a leading space (SIIM)", _rle_column_with_leading_space,
         "missing column(s) 'EncodedPixels'; it has 'ImageId', ' EncodedPixels'"),
    Case("every RLE mask empty", _all_rle_masks_empty, "every mask is empty (column 'rle_mask' is empty for all 6"),
    Case("csv ids whose images are .jpg", _csv_images_are_jpg,
         "6 of 6 training ids have no image in"),
    # ---- mask files (pets, Carvana, CamVid, Cityscapes)
    Case("every mask file empty", _all_mask_files_empty, "all 6 training masks are empty (no pixel with a value > 0; the largest mask value is 0)"),
    Case("0/1 masks with mask_threshold 128", _zero_one_masks_with_threshold_128,
         "no pixel with a value >= data.mask_threshold=128; the largest mask value is 1"),
    Case("16-bit masks (TGS)", _sixteen_bit_masks, OK),
    Case("JPEG masks, no threshold", _jpeg_masks_undeclared, "data.mask_ext: '.jpg' is a lossy format"),
    Case("JPEG masks with mask_threshold", _jpeg_masks_with_threshold, OK),
    Case("JPEG label maps", _jpeg_label_maps, "a multiclass label map cannot be read back from it"),
    Case("JPEG data in .png mask files", _jpeg_content_named_png, "mask is a JPEG file (lossy"),
    Case("images .jpg, masks .png", _images_jpg_masks_png, OK),
    Case("Carvana _mask.gif", _carvana_mask_suffix, OK),
    Case("masks with another extension", _masks_have_another_extension,
         "found 'im0.gif' there: set data.mask_ext: '.gif'"),
    Case("folder images are .jpg, image_ext .png", _folder_images_are_jpg,
         "no *.png images (data.image_ext); it holds 6 '.jpg' file(s): set data.image_ext: '.jpg'"),
    Case("train_images names a file", _train_images_is_a_file, "images.zip: image folder (data.train_images) is a file"),
    Case("0/255 masks as multiclass", _zero_255_in_multiclass, "0/255 masks are binary masks (data.task: binary)"),
    Case("void 255 declared (Cityscapes)", _void_255_declared, OK),
    Case("a mask of another size than its image", _mask_of_another_size_than_its_image,
         "labels/f3.png: mask is 16x31 (HxW) but its image f3.png is 16x24; image and mask must have the same size"),
    Case("every label map background", _all_label_maps_background, "all 6 training masks are empty (no pixel with a class id other than 0"),
    Case("list file empty", _list_file_empty, "train.txt: list file is empty"),
    Case("list file names a folder", _list_file_is_a_folder, "imgs: list file (data.train_lists / data.test_lists) is a folder"),
    Case("list file with BOM and CRLF (CamVid)", _list_file_bom_crlf, OK),
    Case("list file naming a path with a space", _list_file_path_with_a_space,
         "train.txt line 1: expected 'image mask' (two relative paths), got 'imgs/my f0.png labels/f0.png'; the paths are "
         "split at spaces"),
    Case("two images whose extensions differ in case", _images_whose_extensions_differ_in_case,
         "f0.png: id 'f0' is also the id of f0.PNG in the same folder"),
    Case("two test images whose extensions differ in case", _test_images_whose_extensions_differ_in_case,
         "is also the id of"),
    Case("image file name with a leading space", _image_name_with_a_leading_space, "id ' f1' is empty or has surrounding spaces"),
    Case("classes CSV with a non-integer id", _classes_csv_bad_id, "classes.csv line 3: id 'one' is not a non-negative integer"),
    # ---- sample submission and check-submission
    Case("sample submission id column differs", _sample_id_column_differs, "no column 'ImageId' (submission.id_column)"),
    Case("sample ids without the class part", _sample_ids_without_class, "does not match submission.id_format '{id}_{cls}'"),
    Case("sample submission row twice", _sample_row_twice, "sample_submission.csv line 14: id '7922e4f7_2' again (first on line 3)"),
    Case("sample submission row of class 4 (3 classes)", _sample_row_of_class_4,
         "sample_submission.csv line 14: id '7922e4f7_4' is not a row this submission makes (test images x classes [1, 2, 3]"),
    Case("test images are .jpg", _test_images_are_jpg, "there: set data.image_ext: '.jpg'"),
    Case("train with submission.id_column the sample lacks", _train_with_a_sample_column_the_config_lacks,
         "sample_submission.csv: columns ['ImageId_ClassId', 'EncodedPixels']; no column 'Foo' (submission.id_column)"),
    Case("train with a class the sample has no rows for", _train_with_a_class_the_sample_lacks,
         "sample_submission.csv: no row for id"),
    Case("check-submission, 0-byte sample", _check_with_zero_byte_sample, "sample.csv: file is empty (0 bytes)"),
    Case("check-submission, sample is a folder", _check_with_sample_folder, "sample: is a folder; expected the sample submission"),
    Case("check-submission, no such submission", _check_missing_submission, "nope.csv: submission file not found"),
    Case("check-submission, sample with BOM", _check_with_bom_sample, OK),
    # ---- run files the user may have damaged
    Case("OOF file holding pickled objects (cv)", _oof_pickled, "OOF file holds pickled Python objects"),
    Case("OOF file truncated (tune)", _oof_truncated, "not a readable .npy OOF file"),
    Case("OOF file float32 (report summary)", _oof_float, "expected uint8 (C, H, W) OOF probabilities, got a float32 array"),
    Case("OOF file pickled (ensemble)", _oof_pickled_in_ensemble, "OOF file holds pickled Python objects"),
    Case("folds.csv with a non-numeric fold", _folds_csv_damaged, "folds.csv line 4: fold 'one' is not a fold number"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, demo_root, tmp_path, capsys):
    w = World(tmp_path, demo_root)
    command = case.build(w)
    if isinstance(command, list):
        code = main(command)
        captured = capsys.readouterr()
        err = captured.err
        assert "Traceback" not in err
        if case.expect is OK:
            assert code == 0, err
        else:
            errors = [line for line in err.splitlines() if line.startswith("error: ")]
            assert code == 2 and len(errors) == 1, err
            assert case.expect in errors[0], errors[0]
    elif case.expect is OK:
        result = command()
        assert result is not False
    else:
        with pytest.raises(SegToolkitError) as e:
            command()
        message = str(e.value)
        assert "\n" not in message and case.expect in message, message
    for check in w.checks:
        check()


def test_every_deletion_goes_through_the_guard():
    """`shutil.rmtree` appears once in the package: in run_guard.delete_path, which Run.remove calls."""
    root = Path(__file__).resolve().parents[1] / "seg_toolkit"
    calls = [(p.relative_to(root), n) for p in root.rglob("*.py")
             for n, line in enumerate(p.read_text().splitlines(), 1) if "rmtree(" in line]
    assert [str(p) for p, _ in calls] == ["run_guard.py"], calls


def test_the_guard_is_what_keeps_the_data(tmp_path, monkeypatch, demo_root):
    """Without its location check, Run.remove would have deleted the data folder: the check is the cause."""
    w = World(tmp_path, demo_root)
    root = w.binary()
    (root / "folds.csv").write_text("id,fold,stratum\n")
    cfg = config_from_dict(w.binary_dict(root))
    monkeypatch.setattr(Run, "foreign_entries", lambda self: [])
    with pytest.raises(SegToolkitError, match="is data.root"):
        Run(root).remove(cfg)
    assert (root / "train.csv").is_file()


def test_a_run_stopped_before_any_fold_wrote_a_file_takes_the_corrected_config(demo_root, tmp_path, caplog):
    """One training image of another size stops the run at its first batch ('set transforms.resize'); the corrected
    config was then refused ('trained with a different config'), --resume too, though no fold had started."""
    from seg_toolkit.cv import run_cv

    root = tmp_path / "data"
    shutil.copytree(demo_root, root)
    first = sorted((root / "train" / "images").iterdir())[0]
    Image.open(first).resize((80, 60)).save(first)
    data = demo_dict(root, tmp_path / "runs", train={"epochs": 1, "batch_size": 12, "num_workers": 0})
    with pytest.raises(SegToolkitError, match=r"differ in size.*transforms.resize.*predict.batch_size: 1"):
        run_cv(config_from_dict(data))
    run = Run.of(config_from_dict(data))
    assert run.config_yaml.is_file() and not run.trained_folds()
    with pytest.raises(SegToolkitError, match=r"made folds.csv \(no fold has started\) with a different config \(folds.seed"):
        run_cv(config_from_dict({**data, "folds": {**data["folds"], "seed": 5}, "transforms": {"resize": [48, 64]}}))
    fixed = config_from_dict({**data, "transforms": {"resize": [48, 64]}})
    cv = run_cv(fixed)
    assert cv["folds"] == [0, 1] and "no fold has started; its config.yaml is replaced (transforms.resize" in caplog.text
    assert load_config(run.config_yaml).transforms.resize == [48, 64]
    # once a fold has files, a different config is refused as before
    with pytest.raises(SegToolkitError, match="was trained with a different config"):
        run_cv(config_from_dict({**data, "transforms": {"resize": [32, 32]}}), resume=True)


def test_too_many_folds_stops_before_folds_csv_and_the_corrected_count_is_taken(demo_root, tmp_path, caplog):
    """folds.n_splits above the image count stops after config.yaml is saved and before folds.csv: the corrected count
    was refused ('trained with a different config (folds.n_splits: 1000 -> 2)') though nothing was made from it."""
    from seg_toolkit.cv import run_cv

    data = demo_dict(demo_root, tmp_path / "runs", train={"epochs": 1, "batch_size": 12, "num_workers": 0})
    with pytest.raises(SegToolkitError, match=r"12 training samples cannot make folds.n_splits=1000 folds"):
        run_cv(config_from_dict({**data, "folds": {**data["folds"], "n_splits": 1000}}))
    run = Run.of(config_from_dict(data))
    assert run.config_yaml.is_file() and not run.folds_csv.exists()
    assert run_cv(config_from_dict(data))["folds"] == [0, 1]
    assert "no fold has started; its config.yaml is replaced (folds.n_splits: 1000 -> 2)" in caplog.text


def test_check_submission_with_a_config_checks_runs_against_each_test_images_size(demo_root, tmp_path, capsys):
    """`check-submission sub.csv sample.csv --config cfg.yaml` said OK to `3070 10` on a 48x64 image (3072 pixels),
    which the competition's scorer rejects."""
    w = World(tmp_path, demo_root)
    root = w.demo()
    cfg = w.demo_cfg()
    sample = root / "sample_submission.csv"
    sub = pd.read_csv(sample, dtype=str, keep_default_na=False)
    sub.iloc[0, 1] = "3070 10"
    sub.to_csv(tmp_path / "sub.csv", index=False)
    assert main(["check-submission", str(tmp_path / "sub.csv"), "--sample", str(sample), "--config", cfg]) == 1
    out = capsys.readouterr().out
    assert f"line 2 (id {sub.iloc[0, 0]!r})" in out and "3072 pixels" in out, out
    assert main(["check-submission", str(tmp_path / "sub.csv"), "--sample", str(sample)]) == 0  # without the sizes: not knowable
    sub.iloc[0, 1] = "3063 10"  # ends on the last pixel
    sub.to_csv(tmp_path / "sub.csv", index=False)
    assert main(["check-submission", str(tmp_path / "sub.csv"), "--sample", str(sample), "--config", cfg]) == 0
    capsys.readouterr()
    # the sizes unknowable with --config (the test images moved away): the note says why, not "pass --config"
    shutil.move(root / "test" / "images", tmp_path / "moved")
    assert main(["check-submission", str(tmp_path / "sub.csv"), "--sample", str(sample), "--config", cfg]) == 0
    out, err = capsys.readouterr()
    assert "note: run lengths not checked against the test images' sizes" in err
    assert "(the note above says why)" in out and "pass --config" not in out


def test_training_checks_the_sample_submission_without_the_test_images(demo_root, tmp_path):
    """A code competition's test images are hidden until the notebook is submitted: the sample is checked against the
    config's submission keys before training (the cases above), and training goes on without the images."""
    w = World(tmp_path, demo_root)
    root = w.demo()
    shutil.rmtree(root / "test" / "images")
    assert main(["train", w.demo_cfg(train={"epochs": 1, "batch_size": 4, "num_workers": 0})]) == 0
    assert (w.runs / "t" / "cv.json").is_file()
