#!/usr/bin/env bash
# Builds the separate venv that Label Studio runs in (people label comparisons in its web page;
# rlhf_core/label_studio.py talks to it over its REST API).
#   bash infra/label_studio/setup.sh [VENV_DIR]        (default .venv-label-studio; `make label-studio` runs this)
# Label Studio pins Django 5.2 and its own label-studio-sdk, which nothing checks against the
# project's pins, so it lives in its own venv and runs as a child process (flows/label_studio_server.py).
set -euo pipefail
VENV="${1:-.venv-label-studio}"
PYTHON="${PYTHON:-python3}"
LABEL_STUDIO_SPEC="${LABEL_STUDIO_SPEC:-label-studio==1.23.2}"
PIP="$VENV/bin/python -m pip --disable-pip-version-check"

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
$PIP install -q "$LABEL_STUDIO_SPEC"
# Not `label-studio --version`: it migrates a database under ~/.local/share and asks PyPI for news.
"$VENV/bin/python" -c "import importlib.metadata as m, label_studio; print('label-studio', m.version('label-studio'), 'django', m.version('django'))"
touch "$VENV/.installed"
