"""The Kubernetes GPU work-pool example passes Prefect's template validation and the worker's manifest checks."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def test_kubernetes_gpu_pool_template_checks_pass():
    proc = subprocess.run([sys.executable, "infra/k8s/check_template.py"], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "nvidia.com/gpu" in proc.stdout + proc.stderr  # it reported the GPU request it checked
