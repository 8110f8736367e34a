# The README's two commands: `make run` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run demo test lint bench clean

# Reinstall when the project's requirements change; torch/torchvision come from constraints.txt.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev,onnx]'
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m app.quickstart

# The seed's experiment (hotdog demo --help); e.g. make demo ARGS='--epochs 12'
demo: $(STAMP)
	$(PY) -m app.cli demo $(ARGS)

# The suite in TEST_WORKERS processes (pytest-xdist): about 40 % of one process's time is spent
# waiting on the processes a test starts (a worker importing torch, a job's training process),
# which a second process fills. TEST_WORKERS=0 runs it in this one process.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist worksteal

# ruff, mypy (pyproject's [tool.mypy]) and the layer contracts (import-linter).
lint: $(STAMP)
	$(PY) -m ruff check app worker tests bench
	$(PY) -m mypy
	$(VENV)/bin/lint-imports

bench: $(STAMP)
	$(PY) bench/train_throughput.py
	$(PY) bench/predict_load.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
