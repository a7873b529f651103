# The two commands of the README. Both create .venv/ on first use and reuse it after
# (it is rebuilt when setup.cfg or pyproject.toml change).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test bench clean-demo

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

## make demo: install, build the demo competition, train all folds, predict, check the submission
demo: $(STAMP)
	$(BIN)/seg-toolkit demo configs/demo.yaml

## make test: install (with dev extras), lint (undefined/unused names, likely bugs), run the test suite
test: $(STAMP)
	$(BIN)/ruff check --quiet --select F,E9,B --ignore B008,B023,B905 seg_toolkit tests bench
	$(BIN)/python -m pytest -q -n 2

## make bench: speed benchmarks (ratios against a baseline in the same process)
bench: $(STAMP)
	$(BIN)/python bench/bench_train_loop.py
	$(BIN)/python bench/bench_tta.py
	$(BIN)/python bench/bench_predict.py
	$(BIN)/python bench/bench_onnx.py
	$(BIN)/python bench/bench_amp.py
	$(BIN)/python bench/bench_validation.py
	$(BIN)/python bench/bench_rle.py
	$(BIN)/python bench/bench_lovasz.py
	$(BIN)/python bench/bench_region.py
	$(BIN)/python bench/bench_objects.py
	$(BIN)/python bench/bench_object_folders.py
	$(BIN)/python bench/bench_tgs_step.py
	$(BIN)/python bench/bench_camvid_step.py

clean-demo:
	rm -rf data/demo runs/demo submissions/demo.csv
