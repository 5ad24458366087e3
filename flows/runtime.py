"""Process-level setup before prefect/mlflow are imported: keep state in the workspace.

With no PREFECT_API_URL set, Prefect runs an ephemeral API whose database lives under
PREFECT_HOME; we point that (and MLflow's sqlite store) into the workspace so a user
finds everything in one place and nothing needs starting first.
"""

from __future__ import annotations

import os
from pathlib import Path


def prepare_environment(workspace: Path) -> None:
    """Must run before the first `import prefect` in this process to take effect."""
    workspace = workspace.expanduser().resolve()
    workspace.mkdir(parents=True, exist_ok=True)
    if "PREFECT_API_URL" not in os.environ:
        os.environ.setdefault("PREFECT_HOME", str(workspace / "prefect"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # The ephemeral API migrates a fresh sqlite DB on first start: on a busy 2-core machine
    # that can exceed Prefect's 20 s default.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
