# Two targets do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.xfverify-installed

.PHONY: setup demo test bench-cpu clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[all]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/xfverify native

test: $(STAMP)
	$(BIN)/python -m pytest -n auto --durations=25  # a worker per core; tests/conftest.py hands out the work

bench-cpu: $(STAMP)
	$(BIN)/python bench/cpu_pipeline.py --out bench/results/cpu_pipeline.json

clean:
	rm -rf $(VENV) xfverify-out .pytest_cache
