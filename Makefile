PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench selftest clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/gradparity check

test: $(STAMP)
	$(BIN)/ruff check gradparity ours reference tests benchmarks
	$(BIN)/python -m pytest -q -n auto

selftest: $(STAMP)
	$(BIN)/gradparity selftest

bench: $(STAMP)
	$(BIN)/python benchmarks/tolerance.py
	$(BIN)/python benchmarks/report_speed.py

lint: $(STAMP)
	$(BIN)/ruff check gradparity ours reference tests benchmarks
	$(BIN)/ruff format --check gradparity ours reference tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info reports/latest
