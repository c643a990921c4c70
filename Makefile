# Set-up and entry points. `make demo` and `make test` work on a fresh clone: each creates
# .venv when it is missing and installs the project (editable) with its dependencies.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Extra arguments for pytest, e.g. `make test PYTEST_ARGS="--runslow -k detectors"`.
PYTEST_ARGS ?=

.PHONY: help venv install test test-all lint demo toy-data figures crosscheck-oid gpu-check real-world clean

help:
	@echo "make demo      run the whole pipeline on the toy world (CPU, minutes)"
	@echo "make test      run the test suite (slow tests skipped; PYTEST_ARGS=--runslow for all)"
	@echo "make lint      ruff"
	@echo "make toy-data  generate the synthetic toy data set under data/toy"
	@echo "make figures   copy the README's figures from the toy benchmark's outputs into img/"
	@echo "make crosscheck-oid  check the Open Images metric against the TF Object Detection API"
	@echo "make gpu-check every CUDA path once with timings (scripts/gpu_check.sh; --dry_run on CPU: GPU_CHECK_ARGS=--dry_run)"
	@echo "make real-world  the real-world check: Darknet YOLOv3-tiny and registry photos (benchmarks/real_world.sh)"
	@echo "make clean     remove runs/ and caches (keeps .venv and data/)"

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch and torchvision first and pinned to the tested pair; the rest from requirements.txt.
$(STAMP): $(PY) requirements.txt pyproject.toml
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install --no-deps -e .
	$(PY) -m pip install "pytest>=7.4" "ruff>=0.5"
	touch $(STAMP)

venv install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-all: $(STAMP)
	$(PY) -m pytest -q --runslow $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

toy-data: $(STAMP)
	$(PY) scripts/make_toy_dataset.py --out data/toy

demo: $(STAMP)
	bash scripts/demo.sh

# The README's figures: the only command that writes into img/. They come from the toy
# benchmark's outputs (bash benchmarks/toy_benchmark.sh, into $(BENCH_OUT)).
BENCH_OUT ?= runs/toy_benchmark
figures:
	@for f in rate_map-voc07.png visual.png; do \
	    test -f $(BENCH_OUT)/$$f || { echo "error: $(BENCH_OUT)/$$f missing: run bash benchmarks/toy_benchmark.sh first" >&2; exit 1; }; \
	done
	cp $(BENCH_OUT)/rate_map-voc07.png img/toy_rate_map-voc07.png
	cp $(BENCH_OUT)/visual.png img/toy_visual.png

# The Open Images challenge metric (icm/evaluation/oid_challenge.py) against the TensorFlow
# Object Detection API's per-image matching: the registry's `object-detection` build,
# downloaded without its dependencies (TensorFlow is not needed for that module) into
# runs/ (never installed), then the cross-check test with it on the path.
OD_API := runs/object_detection_api
crosscheck-oid: $(STAMP)
	test -d $(OD_API)/object_detection || { 	    $(PY) -m pip download --no-deps --dest $(OD_API) "object-detection==0.0.3" && 	    $(PY) -m zipfile -e $(OD_API)/object_detection-0.0.3-py3-none-any.whl $(OD_API); }
	PYTHONPATH=$(OD_API) $(PY) -m pytest -q tests/test_oid_challenge.py -rs

gpu-check: $(STAMP)
	bash scripts/gpu_check.sh $(GPU_CHECK_ARGS)

real-world: $(STAMP)
	bash benchmarks/real_world.sh

clean:
	rm -rf runs .pytest_cache .ruff_cache
	find . -name __pycache__ -prune -not -path "./$(VENV)/*" -exec rm -rf {} +
