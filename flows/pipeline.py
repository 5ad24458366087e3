"""Running the `rlhf-pipeline` Prefect flow (flows/stages.py) from the CLI, tracked in MLflow.

`run_pipeline(cfg)` is what `rlhf run` calls: it points Prefect's ephemeral API and
MLflow's sqlite store into the workspace (no servers to start), creates a fresh run
directory, runs the flow (data -> SFT -> reward model -> PPO and DPO -> evaluation), and
returns a summary of where everything went. `run_eval(cfg, run_id)` is `rlhf eval RUN_ID`.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from flows.runtime import prepare_environment
from rlhf_core.config.pipeline import PipelineConfig


@dataclass
class RunSummary:
    run_dir: Path
    wall_seconds: float
    mlflow_run_id: str | None
    outputs: dict = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)


def run_pipeline(cfg: PipelineConfig, resume_run: str | None = None) -> RunSummary:
    """Run the whole pipeline on ``cfg`` in a new run directory (or resume ``resume_run``).

    Everything the config alone can tell is checked first, before anything is written or any
    server starts: the config itself (flows.preflight.preflight_config), and for a resume the run
    id and that the run was made with this config. The run directory is made before the flow
    starts, so an interrupt can name the run to resume (:class:`flows.runtime.Interrupted`); a
    stage's error reaches the caller as itself, its traceback kept in ``<run>/run.log``
    (``exc.log_file``) instead of on the console.
    """
    from flows.preflight import check_resume_config, preflight_config
    from rlhf_core.errors import UserError
    from tasks.artifacts import workspace_from

    preflight_config(cfg)
    ws = workspace_from(cfg.workspace)
    run = None
    if resume_run is not None:
        run = ws.existing_run(resume_run, option="--resume")
        check_resume_config(cfg, run.path)
    try:
        prepare_environment(cfg.workspace)
        start_up(cfg)
        from flows.runtime import quiet_console, run_log
        from flows.stages import rlhf_pipeline

        run = run or ws.new_run(cfg.name)
        quiet_console()
        started = time.perf_counter()
        with run_log(run.path / RUN_LOG) as log_file:
            try:
                result = rlhf_pipeline(cfg, resume_run=run.run_id)
            except UserError as exc:
                exc.log_file, exc.run_id = str(log_file), run.run_id
                raise
    except KeyboardInterrupt as exc:
        raise _interrupted(exc, run) from None
    wall = time.perf_counter() - started
    run_dir = Path(result["run_dir"])
    lines = [f"{stage}: {where}" for stage, where in result["outputs"].items()]
    if not cfg.eval.gold:
        from rlhf_core.eval_report import NO_GOLD_NOTE

        lines.append(NO_GOLD_NOTE)
    if result.get("mlflow_run_id"):
        from tasks import tracking

        lines.append(f"MLflow run: {result['mlflow_run_id']} (store: {result['tracking_uri']})")
        page = tracking.run_url(result["tracking_uri"], result["experiment_id"], result["mlflow_run_id"])
        lines.append(f"its page: {page}")
        lines.append(tracking.ui_note(result["tracking_uri"]) or f"open the UIs: rlhf ui --workspace {cfg.workspace}")
        lines.append(f"resume this run after a failure: rlhf run --resume {run_dir.name} (same --config/--set)")
    return RunSummary(run_dir, wall, result.get("mlflow_run_id"), result["outputs"], lines)


RUN_LOG = "run.log"  # in the run directory: everything logged, tracebacks included


def _interrupted(exc: KeyboardInterrupt, run):
    """``exc`` (Ctrl-C, or SIGTERM as flows.runtime.Interrupted) as an Interrupted naming ``run``."""
    import signal

    from flows.runtime import Interrupted

    signum = getattr(exc, "signum", signal.SIGINT)
    if run is None or not run.path.is_dir():
        return Interrupted(signum, note="before the run started: nothing to resume")
    return Interrupted(signum, run.run_id)


def start_up(cfg: PipelineConfig) -> None:
    """Before the flow: Prefect's API up, the MLflow store ready, then the preflight checks and crash sweep.

    A new workspace's MLflow sqlite store is created (its schema migrated) in a thread while
    Prefect's ephemeral API starts in its subprocess: both take seconds, and they overlap
    instead of adding up (bench/README.md).
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

    # (a distributed setup this machine cannot run was refused before, by preflight_config)
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

    current = SubprocessASGIServer._instances.get(None)
    if current is not None and not current.running and not isinstance(current, _guarded_server_class()):
        SubprocessASGIServer._instances.pop(None)  # made but never started: ours replaces it
    return _guarded_server_class()()


@functools.cache
def _guarded_server_class():
    """Prefect's ephemeral API server, started apart from the run's signals and dying with it.

    Prefect's ``SubprocessASGIServer`` starts uvicorn in the caller's process group: Ctrl-C on
    `rlhf run` killed it too, and a SIGKILL of the run left it running. This one starts it in
    its own session (the run stops it at exit, Prefect's atexit hook) through rlhf_core.processes.GUARD
    (SIGTERM when the run dies). Prefect keeps one instance per port, so the flow's client finds
    this one and reuses it. Command and environment as Prefect 3.8's ``_run_uvicorn_command``.
    """
    import os
    import subprocess
    import sys

    import prefect
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import get_current_settings

    from rlhf_core.processes import guarded

    class GuardedASGIServer(SubprocessASGIServer):
        def _run_uvicorn_command(self) -> subprocess.Popen:
            argv = [
                sys.executable, "-m", "uvicorn", "--app-dir", str(prefect.__module_path__.parent),
                "--factory", "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(self.port),
                "--log-level", "error", "--lifespan", "on",
            ]  # fmt: skip
            env = {
                **os.environ,
                "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1",
                **get_current_settings().to_environment_variables(exclude_unset=True),
            }  # fmt: skip
            return subprocess.Popen(guarded(argv), env=env, start_new_session=True)

    return GuardedASGIServer


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


def run_eval(cfg: PipelineConfig, run_id: str) -> dict[str, str]:
    """Run the evaluation stage flow on an existing run directory (its earlier stages must have finished)."""
    from flows.preflight import preflight_config
    from rlhf_core.errors import UserError
    from tasks.artifacts import workspace_from

    preflight_config(cfg, data=False)  # the stage reads the run's curated data, not the config's files
    run = workspace_from(cfg.workspace).existing_run(run_id, option="rlhf eval")
    try:
        prepare_environment(cfg.workspace)
        start_up(cfg)
        from flows.runtime import quiet_console, run_log
        from flows.stages import eval_flow

        quiet_console()
        with run_log(run.path / RUN_LOG) as log_file:
            try:
                return eval_flow(cfg, str(run.path))
            except UserError as exc:
                exc.log_file, exc.run_id = str(log_file), run.run_id
                raise
    except KeyboardInterrupt as exc:
        raise _interrupted(exc, run) from None
