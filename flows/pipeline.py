"""The `rlhf-pipeline` Prefect flow: data -> SFT -> reward model, tracked in MLflow.

`run_pipeline(cfg)` is what `rlhf run` calls: it points Prefect's ephemeral API and
MLflow's sqlite store into the workspace (no servers to start), creates a fresh run
directory, runs the flow, and returns a summary of where everything went.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from flows.config import PipelineConfig
from flows.runtime import prepare_environment


@dataclass
class RunSummary:
    run_dir: Path
    wall_seconds: float
    mlflow_run_id: str | None
    outputs: dict = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)


def run_pipeline(cfg: PipelineConfig, resume_run: str | None = None) -> RunSummary:
    """Run the whole pipeline on ``cfg`` in a new run directory (or resume ``resume_run``)."""
    if resume_run is not None:
        from tasks.artifacts import workspace_from

        runs = workspace_from(cfg.workspace).runs
        if not (runs / resume_run).is_dir():
            from rlhf_core.errors import UserError

            raise UserError(f"--resume {resume_run}: no such run in {runs}")
    prepare_environment(cfg.workspace)
    _start_ephemeral_api(cfg.workspace)  # before anything talks to the API (the crash sweep does)
    _preflight(cfg)
    from flows.stages import rlhf_pipeline

    started = time.perf_counter()
    result = rlhf_pipeline(cfg, resume_run=resume_run)
    wall = time.perf_counter() - started
    run_dir = Path(result["run_dir"])
    lines = [f"{stage}: {where}" for stage, where in result["outputs"].items()]
    if result.get("mlflow_run_id"):
        lines.append(f"MLflow run: {result['mlflow_run_id']} (store: {result['tracking_uri']})")
        lines.append(f"open the UIs: rlhf ui --workspace {cfg.workspace}")
        lines.append(f"resume this run after a failure: rlhf run --resume {run_dir.name} (same --config/--set)")
    return RunSummary(run_dir, wall, result.get("mlflow_run_id"), result["outputs"], lines)



def _preflight(cfg: PipelineConfig) -> None:
    """Fail before any training when a configured MLflow or Prefect server is unreachable (names the URL).

    Then sweep: flow runs of this Prefect API (the workspace's embedded one, or the server)
    whose process was killed are set Crashed instead of staying Running (flows.runtime).
    """
    import os

    from flows.servers import preflight, reconcile_runs
    from rlhf_core.distributed import check_distributed

    check_distributed(cfg.distributed)  # a setup this machine cannot run is refused before any stage
    api = os.environ.get("PREFECT_API_URL")
    preflight(cfg.tracking.tracking_uri, api, reconcile=False)
    reconcile_runs(api)


def _start_ephemeral_api(workspace: Path) -> None:
    """Start Prefect's ephemeral API (no PREFECT_API_URL) now, one process at a time per workspace.

    Every `rlhf run` starts its own ephemeral API on the workspace's sqlite database, and the
    first start creates (migrates) that database: two runs started together would migrate it at
    the same time and one would fail. Started here under a workspace lock, the second waits,
    then finds the database ready; the flow reuses this process's server (Prefect keeps one).
    """
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if settings.api.url or not settings.server.ephemeral.enabled:
        return  # a real server: it owns its database
    from prefect.server.api.server import SubprocessASGIServer

    from tasks.artifacts import workspace_from

    with workspace_from(workspace).lock("prefect-store"):
        SubprocessASGIServer().start()


def run_stage(cfg: PipelineConfig, stage: str, run_id: str) -> dict[str, str]:
    """Run one stage flow on an existing run directory (its earlier stages must have finished)."""
    from tasks.artifacts import workspace_from

    run = workspace_from(cfg.workspace).run(run_id)
    if not run.path.is_dir():
        from rlhf_core.errors import UserError

        raise UserError(f"run '{run_id}' not found in {run.path.parent}")
    prepare_environment(cfg.workspace)
    _start_ephemeral_api(cfg.workspace)  # before anything talks to the API (the crash sweep does)
    _preflight(cfg)
    from flows.stages import STAGE_FLOWS

    return STAGE_FLOWS[stage](cfg, str(run.path))
