"""The `rlhf-pipeline` Prefect flow: data -> SFT -> reward model, tracked in MLflow.

`run_pipeline(cfg)` is what `rlhf run` calls: it points Prefect's ephemeral API and
MLflow's sqlite store into the workspace (no servers to start), creates a fresh run
directory, runs the flow, and returns a summary of where everything went.
"""

from __future__ import annotations

import logging
import threading
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
    start_up(cfg)
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


def start_up(cfg: PipelineConfig) -> None:
    """Before the flow: Prefect's API up, the MLflow store ready, then the preflight checks and crash sweep.

    A new workspace's MLflow sqlite store is created (its schema migrated) in a thread while
    Prefect's ephemeral API starts in its subprocess: the two take ~5-7 s and ~15 s on 2 cores,
    and overlap instead of adding up.
    """
    server = _ephemeral_api()
    warming = _warm_mlflow_store(cfg)
    try:
        if server is not None:  # before anything talks to the API (the crash sweep does)
            _start_ephemeral_api(cfg.workspace, server)
    finally:
        if warming is not None:
            warming.join()  # the sweep may mark MLflow runs FAILED in this store
    _preflight(cfg)


def _warm_mlflow_store(cfg: PipelineConfig) -> threading.Thread | None:
    """Create (migrate) the local sqlite MLflow store and the experiment in a thread; None when not needed.

    A remote tracking server is left alone (the preflight names it if it is down). An error here
    is only logged: the flow's own `tracking.configure` meets it again and reports it.
    """
    if not cfg.tracking.enabled:
        return None
    from tasks.artifacts import workspace_from

    ws = workspace_from(cfg.workspace)
    uri = cfg.tracking.tracking_uri or ws.mlflow_uri
    if not uri.startswith("sqlite:"):
        return None

    def warm() -> None:
        from tasks import tracking

        try:
            with ws.lock("mlflow-store"):
                tracking.configure(uri, ws.mlflow_artifacts, cfg.tracking.experiment or cfg.name)
        except Exception as exc:
            logging.getLogger("rlhf.tracking").debug("preparing the MLflow store %s ahead failed: %s", uri, exc)

    thread = threading.Thread(target=warm, name="rlhf-mlflow-store", daemon=True)
    thread.start()
    return thread


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


def _ephemeral_api():
    """The ephemeral Prefect API server to start (no PREFECT_API_URL), or None with a real server.

    Imports Prefect's server modules in this thread, before `_warm_mlflow_store` imports MLflow
    in another: both pull in sqlalchemy and alembic, and two threads importing the same modules
    for the first time at once can meet a half-initialised one.
    """
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if settings.api.url or not settings.server.ephemeral.enabled:
        return None  # a real server: it owns its database
    from prefect.server.api.server import SubprocessASGIServer

    return SubprocessASGIServer()


def _start_ephemeral_api(workspace: Path, server) -> None:
    """Start Prefect's ephemeral API ``server`` now, one process at a time per workspace.

    Every `rlhf run` starts its own ephemeral API on the workspace's sqlite database, and the
    first start creates (migrates) that database: two runs started together would migrate it at
    the same time and one would fail. Started here under a workspace lock, the second waits,
    then finds the database ready; the flow reuses this process's server (Prefect keeps one).
    Once it answers, the server runs at a lower priority than the training (flows.runtime).
    """
    from flows.runtime import lower_server_priority
    from tasks.artifacts import workspace_from

    with workspace_from(workspace).lock("prefect-store"):
        server.start()
    if server.server_process is not None:
        lower_server_priority(server.server_process.pid)


def run_stage(cfg: PipelineConfig, stage: str, run_id: str) -> dict[str, str]:
    """Run one stage flow on an existing run directory (its earlier stages must have finished)."""
    from tasks.artifacts import workspace_from

    run = workspace_from(cfg.workspace).run(run_id)
    if not run.path.is_dir():
        from rlhf_core.errors import UserError

        raise UserError(f"run '{run_id}' not found in {run.path.parent}")
    prepare_environment(cfg.workspace)
    start_up(cfg)
    from flows.stages import STAGE_FLOWS

    return STAGE_FLOWS[stage](cfg, str(run.path))
