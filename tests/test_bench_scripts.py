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
