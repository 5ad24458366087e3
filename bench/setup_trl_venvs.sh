#!/usr/bin/env bash
# Build the two TRL venvs the PPO/SFT/RM side-by-side benchmarks run their peers in.
#   bench/.venv-trl116  trl==1.16.0 (SFTTrainer, RewardTrainer, RLOOTrainer) on our exact pins
#   bench/.venv-trl024  trl==0.24.0 (the last release with PPOTrainer) + transformers 4.x
# torch goes in FIRST in both: an unpinned requirement would otherwise pull a CUDA build (STACK.md).
# Usage: bash bench/setup_trl_venvs.sh [trl116|trl024|all]   (idempotent; ~1-2 min each)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
which=${1:-all}

make_venv() {  # $1 = venv dir; creates it once
  [ -x "$1/bin/python" ] || "$PY" -m venv "$1"
  "$1/bin/python" -m pip install -q --upgrade pip >/dev/null
}

if [ "$which" = all ] || [ "$which" = trl116 ]; then
  V=bench/.venv-trl116
  make_venv "$V"
  "$V/bin/pip" install -q torch==2.13.0
  # constraints.txt is our lock: TRL runs on the very same torch/transformers/accelerate/datasets builds
  "$V/bin/pip" install -q -c constraints.txt trl==1.16.0
  "$V/bin/python" -c "import trl, torch, transformers; from trl import SFTTrainer, RewardTrainer, RLOOTrainer; print('trl116 ok', trl.__version__, torch.__version__, transformers.__version__)"
fi

if [ "$which" = all ] || [ "$which" = trl024 ]; then
  V=bench/.venv-trl024
  make_venv "$V"
  "$V/bin/pip" install -q torch==2.13.0
  "$V/bin/pip" install -q torch==2.13.0 "trl==0.24.0" "transformers<5"
  "$V/bin/python" -c "import trl, torch, transformers; from trl import PPOTrainer, PPOConfig; print('trl024 ok', trl.__version__, torch.__version__, transformers.__version__)"
fi
