# Set-up and entry points. `make demo` and `make test` work on a fresh clone: each creates
# .venv when it is missing and installs the project (editable) with its dependencies.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Extra arguments for pytest, e.g. `make test PYTEST_ARGS="--runslow -k detectors"`.
PYTEST_ARGS ?=

.PHONY: help venv install test test-all lint demo toy-data clean

help:
	@echo "make demo      run the whole pipeline on the toy world (CPU, minutes)"
	@echo "make test      run the test suite (slow tests skipped; PYTEST_ARGS=--runslow for all)"
	@echo "make lint      ruff"
	@echo "make toy-data  generate the synthetic toy data set under data/toy"
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

clean:
	rm -rf runs .pytest_cache .ruff_cache
	find . -name __pycache__ -prune -not -path "./$(VENV)/*" -exec rm -rf {} +
