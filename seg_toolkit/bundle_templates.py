"""The files ``seg-toolkit bundle`` writes beside the runs: ``predict.py``, ``predict.ipynb`` and ``README.md``.

Placeholders are ``@@NAME@@`` (filled by :func:`fill`), so the Python inside needs no brace escaping.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["PREDICT_PY", "README_MD", "fill", "notebook", "predict_py", "readme"]

PREDICT_PY = '''\
"""Predict the test set with this bundle and write the submission (written by `seg-toolkit bundle`).

    @@INSTALL_DOC@@
    python WHERE/predict.py --data-root COMPETITION_DATA --out submission.csv

An existing --out file is replaced only with --overwrite.

Offline: every model is rebuilt from the weights stored here (no pretrained download), Hugging
Face is put offline, albumentations does not look for a newer version on PyPI, and torch's cache
points inside this folder. Every bundled file is checked against its sha256 in bundle.json first.
The bundle folder is only read: it may lie anywhere (a read-only /kaggle/input/<dataset>).
"""

import argparse
import logging
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # before albumentations is imported: no version check online
os.environ["TORCH_HOME"] = str(HERE / "torch_home")  # nothing is downloaded; never the user's cache either


def main(argv=None):
    p = argparse.ArgumentParser(description="Predict the test images with the bundled run and write the submission CSV.")
    p.add_argument("--data-root", required=True, help="the competition folder (replaces data.root of the configs)")
    p.add_argument("--out", default="submission.csv", help="submission path (default: submission.csv)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file (default: refuse)")
    p.add_argument("--run", help="which bundled run predicts (default: @@DEFAULT_RUN@@; see bundle.json)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda (default: auto)")
    p.add_argument("--batch-size", type=int, help="images per batch (default: the run's predict.batch_size)")
    p.add_argument("--num-workers", type=int, help="data loader workers (default: the run's train.num_workers)")
    args = p.parse_args(argv)
    try:
        from seg_toolkit.bundle import predict_bundle
        from seg_toolkit.errors import SegToolkitError
    except ImportError as e:
        sys.exit(f"seg_toolkit is not installed ({e}); first: @@INSTALL_HINT@@")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        out = predict_bundle(HERE, args.data_root, args.out, run=args.run, device=args.device,
                             batch_size=args.batch_size, num_workers=args.num_workers, overwrite=args.overwrite)
    except (SegToolkitError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"submission: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
'''

README_MD = """\
# @@TITLE@@

Made by `seg-toolkit bundle` (seg_toolkit @@VERSION@@) on @@CREATED@@. Everything a Kaggle code
competition notebook needs offline: the trained weights, the runs' configs and tuned
post-processing, @@WHEELS_PHRASE@@, and the prediction script.

## Run it

In a Kaggle notebook with the internet off, add this folder (uploaded as a dataset) and the
competition data, then run `predict.ipynb` (it finds both folders under `/kaggle/input`) or:

```bash
@@KAGGLE_INSTALL@@python /kaggle/input/<this-dataset>/predict.py --data-root /kaggle/input/<competition> --out /kaggle/working/submission.csv
```

Anywhere else, the same with this folder's path (it can lie anywhere and is only read):

```bash
@@LOCAL_INSTALL@@@@PYTHON@@ @@WHERE@@/predict.py --data-root COMPETITION_DATA --out submission.csv
```

`--data-root` replaces `data.root` of the configs (the competition folder with
`@@TEST_IMAGES@@` and `@@SAMPLE@@`). `--device auto` (the default) uses a GPU when there is one.
`--run NAME` predicts with another bundled run (default `@@DEFAULT_RUN@@`). An existing `--out` file is
replaced only with `--overwrite` (in `predict.ipynb`: `OVERWRITE = True`).

Upload with the Kaggle CLI (`--dir-mode tar` keeps the sub-folders):

```bash
kaggle datasets init -p @@WHERE@@      # then edit dataset-metadata.json: title and id
kaggle datasets create -p @@WHERE@@ --dir-mode tar
```

## Base environment

@@BASE_ENV@@

## What is inside

@@CONTENTS@@

`bundle.json` lists every run, member, fold and file under `runs/` with its sha256, and the versions;
`predict.py` checks every file against it first and refuses one changed, missing or added.
@@PINNED@@"""


def fill(template: str, **values: Any) -> str:
    for key, value in values.items():
        template = template.replace(f"@@{key.upper()}@@", str(value))
    if "@@" in template:
        raise ValueError(f"unfilled placeholder in template: {template[template.index('@@'):][:40]!r}")
    return template


_FIND = '''\
# Where things are: found under /kaggle/input on Kaggle; elsewhere set SEG_BUNDLE / SEG_DATA_ROOT / SEG_OUT.
import glob
import os
import subprocess
import sys
from pathlib import Path

TEST_IMAGES = @@TEST_IMAGES@@  # data.test_images of the bundled run: how the competition folder is recognised


def find(name, skip=None):
    """The folder under /kaggle/input (up to 3 levels down) that holds `name`."""
    for depth in (1, 2, 3):
        for hit in sorted(glob.glob("/kaggle/input" + "/*" * depth + "/" + name)):
            root = hit[: -len(name) - 1]
            if skip is None or (root != skip and not root.startswith(skip.rstrip("/") + "/")):  # not a name's prefix
                return root
    return None


BUNDLE = os.environ.get("SEG_BUNDLE") or find("bundle.json")
DATA_ROOT = os.environ.get("SEG_DATA_ROOT") or find(TEST_IMAGES, skip=BUNDLE)
OUT = os.environ.get("SEG_OUT", "/kaggle/working/submission.csv")
assert BUNDLE and DATA_ROOT, f"set SEG_BUNDLE and SEG_DATA_ROOT (found bundle {BUNDLE!r}, data {DATA_ROOT!r})"
print(f"bundle {BUNDLE}\\ndata {DATA_ROOT}\\nsubmission {OUT}")
'''

_INSTALL = '''\
# seg_toolkit and its dependencies from the bundle's wheels only (no index, no network), at the exact versions the runs
# were tuned with (requirements.txt): an image's own timm or albumentations would otherwise be kept
r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--find-links", f"{BUNDLE}/wheels",
                    "-r", f"{BUNDLE}/requirements.txt"],
                   capture_output=True, text=True)
print(r.stdout[-3000:], r.stderr[-3000:])
r.check_returncode()
'''

_NO_INSTALL = '''\
# made with --no-wheels: the bundle holds no wheels, so seg_toolkit and its dependencies must be installed already
import importlib.util
assert importlib.util.find_spec("seg_toolkit"), "seg_toolkit is not installed, and this bundle (made with --no-wheels) has no wheels"
'''

_PREDICT = '''\
# every bundled fold x TTA x scale, the tuned post-processing, the submission checked against the sample
OVERWRITE = False  # True: replace an existing OUT (e.g. the submission of an earlier run of this notebook)
r = subprocess.run([sys.executable, f"{BUNDLE}/predict.py", "--data-root", DATA_ROOT, "--out", OUT]
                   + (["--overwrite"] if OVERWRITE else []), capture_output=True, text=True)
print(r.stdout[-5000:], r.stderr[-5000:])
r.check_returncode()
print(Path(OUT).read_text()[:400])
'''


def notebook(title: str, test_images: str, wheels: bool = True) -> str:
    """``predict.ipynb`` (nbformat 4): find the folders, install ``requirements.txt`` from the wheels (``wheels``; else
    only check that seg_toolkit is installed), run predict.py."""
    def cell(kind: str, source: str) -> dict[str, Any]:
        c: dict[str, Any] = {"cell_type": kind, "metadata": {}, "source": source.rstrip("\n")}
        if kind == "code":
            c.update(execution_count=None, outputs=[])
        return c

    intro = (f"# {title}\n\nPredicts the test set with the bundled runs offline and writes `submission.csv`. "
             "Add this bundle (a dataset) and the competition data to the notebook, turn the internet off, run all.")
    cells = [cell("markdown", intro), cell("code", fill(_FIND, test_images=repr(test_images))),
             cell("code", _INSTALL if wheels else _NO_INSTALL), cell("code", _PREDICT)]
    nb = {"cells": cells, "nbformat": 4, "nbformat_minor": 5,
          "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                       "language_info": {"name": "python"}}}
    for i, c in enumerate(cells):
        c["id"] = f"cell-{i}"
    return json.dumps(nb, indent=1) + "\n"


def readme(title: str, data: dict[str, Any], test_images: str, sample: str) -> str:
    """``README.md`` of a bundle from its ``bundle.json`` data."""
    w = data["wheels"]
    if w:
        base = "\n".join(f"- `{n}` (bundled with {v['bundled_with'] or 'not installed'}; required: "
                         f"{'; '.join(v['required']) or 'by nothing bundled'})" for n, v in w["base_env"].items())
        base = (f"`--base-env {','.join(data['base_env'])}`: these packages are **not** in `wheels/`; the target "
                "image must provide them, with what they need (Kaggle images carry torch and torchvision). "
                f"Everything else seg_toolkit needs is in `wheels/` ({w['count']} wheels, for Python "
                f"{data['versions']['bundled_with']['python']} on {data['versions']['platform']}; {w['verified']}).\n\n{base}")
    else:
        base = "Made with `--no-wheels`: no wheels are bundled; install seg_toolkit and its dependencies yourself."
    lines = []
    for info in data["runs"]:
        if info["kind"] == "ensemble":
            lines.append(f"- `runs/{info['name']}`: ensemble ({info['space']} space) of "
                         + ", ".join(f"`{m['run'][3:]}` (weight {m['weight']:.3f})" for m in info["members"]))
        else:
            lines.append(f"- `runs/{info['name']}`: folds {info['folds']}, weights {'float16' if data['fp16'] else 'float32'}")
    lines += [f"- **warning**: {x}" for x in data["warnings"]]
    version = data["versions"]["bundled_with"]["seg_toolkit"]
    install = data.get("install") or "seg_toolkit"
    if w:
        steps = {"wheels_phrase": "seg_toolkit and its dependencies as wheels",
                 "kaggle_install": "pip install --no-index --find-links /kaggle/input/<this-dataset>/wheels "
                                   "-r /kaggle/input/<this-dataset>/requirements.txt\n",
                 "local_install": "python -m pip install --no-index --find-links BUNDLE/wheels -r BUNDLE/requirements.txt\n",
                 "pinned": _PINNED.replace("@@INSTALL@@", install)}
    else:
        needed = f"# {install} ({version}) and its dependencies must be installed already (no wheels here)\n"
        steps = {"wheels_phrase": "no wheels (made with `--no-wheels`)", "kaggle_install": needed,
                 "local_install": needed, "pinned": ""}
    return fill(README_MD, title=title, version=version, created=data["created"],
                python="python", where="BUNDLE", test_images=test_images, sample=sample,
                default_run=data["default_run"], base_env=base, contents="\n".join(lines), **steps)


_PINNED = """`requirements.txt` pins the exact versions of `wheels/` (the environment the bundle was made in, @@INSTALL@@
with its dependencies); the commands above install exactly those, replacing versions the image already has, so the
runs resize, normalise and build their models with the libraries they were tuned with (`pip install ... seg_toolkit`
alone would keep an image's older timm or albumentations wherever it fits seg_toolkit's ranges).
"""


def predict_py(default_run: str, wheels: bool) -> str:
    """``predict.py``: its install line says where seg_toolkit comes from (the bundled wheels, or installed already)."""
    if wheels:
        doc = "pip install --no-index --find-links WHERE/wheels -r WHERE/requirements.txt"
        hint = ("{sys.executable} -m pip install --no-index --find-links {HERE / 'wheels'} "
                "-r {HERE / 'requirements.txt'}")
    else:
        doc = "# made with --no-wheels: seg_toolkit and its dependencies must be installed already"
        hint = "this bundle (made with --no-wheels) has no wheels: install seg_toolkit and its dependencies"
    return fill(PREDICT_PY, default_run=default_run, install_doc=doc, install_hint=hint)
