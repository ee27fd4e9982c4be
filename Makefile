PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test parity lint bench selftest mutants clean

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

# The parity suite on fresh random examples, 20 times as many as make test draws (minutes).
parity: $(STAMP)
	$(BIN)/python -m pytest tests/parity -q -n auto --hypothesis-profile=explore

selftest: $(STAMP)
	$(BIN)/gradparity selftest

# Speed and memory figures (issue 16), under 10 minutes on a 2-core machine: writes
# benchmarks/results.json, results.md, scaling.png and the README's Performance section.
bench: $(STAMP)
	$(BIN)/python benchmarks/bench.py

# Mutation testing of tolerance, metrics, diagnose*, locate and reference/layout (outside CI):
# 5-10 minutes with 2 workers on a 2-core machine, stopped at 45; fails under a 90% kill rate.
mutants: $(STAMP)
	$(BIN)/python -c "from importlib.metadata import version; assert (3, 8) <= tuple(map(int, version('mutmut').split('.')[:2])) < (4, 0)" \
		2>/dev/null || $(BIN)/pip install --quiet -c constraints.txt -e '.[mutation]'
	$(BIN)/python benchmarks/mutants.py --max-children 2 --budget-minutes 45 --threshold 90

lint: $(STAMP)
	$(BIN)/ruff check gradparity ours reference tests benchmarks
	$(BIN)/ruff format --check gradparity ours reference tests benchmarks
	$(BIN)/mypy gradparity

clean:
	rm -rf $(VENV) build *.egg-info reports/latest
