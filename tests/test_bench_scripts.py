"""`make bench` is not run by the suite (it times things); this keeps its scripts importable, so a
renamed or moved library function breaks a test instead of the next person's `make bench`."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = sorted((Path(__file__).resolve().parents[1] / "bench").glob("bench_*.py"))


@pytest.mark.parametrize("path", BENCH, ids=[p.stem for p in BENCH])
def test_bench_script_imports_and_has_main(path):
    spec = importlib.util.spec_from_file_location(f"_bench_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # module level only: every script runs under `if __name__ == "__main__"`
    assert callable(getattr(module, "main", None)), f"{path.name}: no main()"


def test_every_bench_script_is_in_make_bench():
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    assert BENCH and all(f"bench/{p.name}" in makefile for p in BENCH)


# Importing is not enough: a config check added later once made `bench_train_loop.py` stop at its
# own config (a multilabel demo without submission.per_class). These run each quick script's main()
# end to end on tiny inputs and read the ratio it prints; the slow ones (bench_amp, bench_tgs_step:
# minutes of full-size steps) build their models through the same build_model/load_config paths.
QUICK = {
    "bench_train_loop": (["--epochs", "1", "--images", "8", "--size", "32", "32", "--batch", "4"], "ratio toolkit / hand-written:"),
    "bench_predict": (["--rounds", "1", "--images", "4", "--size", "32", "32", "--folds", "2"], "ratio Predictor / hand-written:"),
    "bench_validation": (["--rounds", "1", "--batch", "2"], "validation loss, original size / model size:"),
    "bench_tta": (["--encoder", "tu-test_resnet", "--size", "64", "--batch", "2", "--warmup", "0", "--repeats", "1"], "ratio tta_predict"),
    "bench_lovasz": (["--rounds", "1", "--batch", "2", "--unfitted", "0.5"], "ratio textbook / toolkit:"),
    "bench_region": (["--rounds", "1", "--batch", "1", "--size", "16", "24"], "ratio smp / toolkit:"),
    "bench_onnx": (["--models", "scratch", "--sizes", "64", "--batch", "2", "--warmup", "0", "--repeats", "1"], ", ratio "),
    "bench_objects": (["--rounds", "1", "--images", "1"], "ratio kernel / toolkit:"),
    "bench_object_folders": (["--rounds", "1", "--images", "1", "--nuclei", "6"], "ratio every epoch / kept:"),
    "bench_camvid_step": (["--rounds", "1", "--batch", "2", "--size", "64", "64", "--encoder", "tu-test_resnet"],
                          "ratio lovasz on the main logits (loss_aux) / committed:"),
}


@pytest.mark.parametrize("name", sorted(QUICK))
def test_quick_bench_runs_and_prints_a_ratio(name, monkeypatch, capsys):
    import logging
    import math
    import re
    import sys
    import warnings

    if name == "bench_onnx":
        pytest.importorskip("onnxruntime", reason="bench_onnx needs the onnx extra")
    args, marker = QUICK[name]
    path = next(p for p in BENCH if p.stem == name)
    spec = importlib.util.spec_from_file_location(f"_bench_run_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys, "argv", [path.name, *args])
    # some scripts silence warnings and logging for their printout: not for the tests after this one
    with warnings.catch_warnings():
        try:
            module.main()
        finally:
            logging.disable(logging.NOTSET)
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if marker in line]
    assert lines, f"{path.name} printed no '{marker}' line:\n{out}"
    ratios = [float(x) for x in re.findall(r"(\d+\.\d+)x?", lines[0].split(marker, 1)[1])]
    assert ratios and all(math.isfinite(r) and r > 0 for r in ratios), lines[0]
