# ckptflow: `make demo` sets everything up and runs the pipeline on sample
# data; `make test` runs the test suite. Both install what they need first.

PYTHON ?= python3.11
VENV   ?= .venv
HOME_DIR ?= ./ckptflow_home
UV     := $(shell command -v uv 2>/dev/null)
BIN    := $(VENV)/bin

export TF_USE_LEGACY_KERAS := 1

.PHONY: install system-deps demo test test-fast lint-imports lock golden clean

# System tools: Graphviz renders `ckptflow lineage --format svg`.
system-deps:
	@command -v dot >/dev/null 2>&1 || { \
	  echo "installing graphviz"; \
	  (apt-get update -qq && apt-get install -y -qq graphviz >/dev/null) || \
	  echo "warning: could not install graphviz; lineage --format svg will not work"; }

$(BIN)/ckptflow: requirements.lock pyproject.toml
	@if [ -z "$(UV)" ]; then $(PYTHON) -m pip install --quiet uv; fi
	uv venv --allow-existing --python $(PYTHON) $(VENV)
	uv pip install --python $(BIN)/python --compile-bytecode -r requirements.lock
	uv pip install --python $(BIN)/python --no-deps -e .
	@touch $@

install: system-deps $(BIN)/ckptflow

demo: install
	$(BIN)/ckptflow run --home $(HOME_DIR)

test: install lint-imports
	$(BIN)/python -m pytest -q

# The floor plan: each layer imports only from its own layer or below
# (pyproject.toml [tool.importlinter]; README, ARCHITECTURE).
lint-imports: install
	$(BIN)/lint-imports --no-cache

# Everything but the end-to-end pipeline runs and the heavy tests.
test-fast: install
	$(BIN)/python -m pytest -q -m "not e2e and not heavy"

# Regenerate the golden Kubeflow spec (kubeflow/testdata/pipeline_golden.json)
# after an intended change to the compiled pipeline; review its diff.
golden: install
	$(BIN)/python -m ckptflow.kubeflow.golden

# Recompile the pinned dependency set (hosts-free: names and versions only).
lock:
	uv pip compile requirements.in --python-version 3.11 -o requirements.lock

clean:
	rm -rf $(HOME_DIR) build *.egg-info
