# Two entry points on a fresh machine: `make demo` and `make test`.
# Both build .venv once (re-built when pyproject.toml changes) and then run.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test venv clean quality-reference

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/pip install --quiet $(TORCH_PINS)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m wsss.demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

# Pin the quality guard's numbers (tests/quality/reference.json) after a change meant to move
# quality; commit the file with the new figures in the message.
quality-reference: $(STAMP)
	$(BIN)/python tests/quality/guard.py --write-reference

clean:
	rm -rf $(VENV) mlruns mlflow.db data/synth data/demo-synth cams runs/sweeps runs/compare
