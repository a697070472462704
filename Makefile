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

# Until the Sol-RL recipe lands: check the world's verifier, then sample the tiny SD3 base
# on held-out (test-split) prompts, one per category; both write under runs/.
demo: $(STAMP)
	$(BIN)/vgen bench world configs/bench/world.yaml
	$(BIN)/vgen sample --model assets/sd3-tiny-shapes --prompts @configs/demo/prompts.txt --seeds 0-3 \
		--out runs/demo-samples

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check vgen tests tools

clean:
	rm -rf $(VENV) runs .pytest_cache
