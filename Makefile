# Two commands from a fresh clone: `make demo` and `make test`. Each creates .venv when missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -e '.[dev]'
	touch $(STAMP)

# A short Sol-RL run on the tiny SD3 base (configs/solrl/demo.yaml): prints the held-out
# GenEval-Shapes accuracy before and after, and the exported checkpoint with its model card.
demo: $(STAMP)
	$(BIN)/vgen train configs/solrl/demo.yaml

# Every test runs on one torch thread (tests/conftest.py), so two pytest-xdist workers keep both
# cores of the 2-core CI machine busy: the suite takes about two thirds of its one-process time.
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2

lint: $(STAMP)
	$(BIN)/ruff check vgen tests tools

clean:
	rm -rf $(VENV) runs .pytest_cache
