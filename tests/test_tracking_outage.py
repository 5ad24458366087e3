"""Tracking server down mid-run: metrics are buffered in a spool and flushed, never lost.

The server tests run a real MLflow tracking server (flows.servers) on a free port, stop it
in the middle of a stage and start it again on the same port and sqlite store; each start
costs 15-50 s on 2 busy cores. The spool tests use an embedded sqlite store.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.servers import start_mlflow_server, wait_healthy
from rlhf_core.processes import free_port
from tasks import tracking
from tasks.artifacts import workspace_from
from tasks.spool import TrackingUnavailableError, read_spool
from tests.conftest import REPO

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


class MlflowServer:
    """A real `mlflow server` on a fixed port and workspace store, stopped and started at will."""

    def __init__(self, workspace: Path) -> None:
        self.workspace = workspace
        self.port = free_port()
        self.proc = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def spawn(self) -> None:
        self.proc = start_mlflow_server(self.workspace, self.port)

    def start(self) -> None:
        self.spawn()
        wait_healthy([self.proc], timeout=300)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import mlflow

    srv = MlflowServer(tmp_path_factory.mktemp("ws-outage"))
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()
        mlflow.set_tracking_uri(None)


def _experiment(server: MlflowServer, name: str) -> str:
    ws = workspace_from(server.workspace)
    return tracking.configure(server.url, ws.mlflow_artifacts, name)


def _steps(client, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def _loss(step: int) -> dict[str, float]:
    return {"sft/loss": 1.0 / (step + 1), "sft/grad_norm": float(step)}


@pytest.mark.e2e
def test_metrics_logged_while_the_server_is_down_reach_it_exactly_once(server, tmp_path, caplog):
    from mlflow.tracking import MlflowClient

    caplog.set_level(logging.INFO, logger="rlhf.tracking")
    experiment_id = _experiment(server, "outage")
    parent = tracking.start_parent_run(experiment_id, "pipeline")
    spool_dir = tmp_path / "runs" / "r1" / tracking.SPOOL_DIR
    with tracking.stage_run(parent.run_id, experiment_id, "sft", spool_dir=spool_dir, flush_timeout_s=300) as stage:
        run_id = stage.run_id
        for step in range(0, 5):
            stage.log_metrics(_loss(step), step)
        assert stage.pending_batches == 0

        # 1. The server goes down mid-stage: training goes on, batches are kept, one warning.
        server.stop()
        started = time.monotonic()
        for step in range(5, 10):
            stage.log_metrics(_loss(step), step)
        assert time.monotonic() - started < 15, "logging stalled while the server was down"
        assert stage.pending_batches == 5
        warnings = [r for r in caplog.records if r.name == "rlhf.tracking" and r.levelno == logging.WARNING]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]
        assert server.url in warnings[0].getMessage() and str(stage.spool.path) in warnings[0].getMessage()

        # 2. It comes back: the next call sends the held-back batches with its own.
        server.start()
        time.sleep(max(0.0, stage._retry_at - time.monotonic()))
        stage.log_metrics(_loss(10), 10)
        assert stage.pending_batches == 0
        assert _steps(MlflowClient(server.url), run_id, "sft/loss") == list(range(11))

        # 3. Down again, and only coming back while the stage ends: the end-of-stage flush waits for it.
        server.stop()
        for step in range(11, 15):
            stage.log_metrics(_loss(step), step)
        assert stage.pending_batches == 4
        server.spawn()
    warnings = [r for r in caplog.records if r.name == "rlhf.tracking" and r.levelno == logging.WARNING]
    assert len(warnings) == 2  # one per outage, not one per step

    client = MlflowClient(server.url)
    for key in ("sft/loss", "sft/grad_norm"):
        assert _steps(client, run_id, key) == list(range(15)), key  # every step, exactly once
    assert client.get_run(run_id).info.status == "FINISHED"
    state = read_spool(stage.spool.path)
    assert len(state.batches) == 15 and not state.pending and state.end is None
    # Replaying the spool now sends nothing a second time.
    assert tracking.flush_spool(stage.spool.path, timeout_s=5).batches == 0
    assert _steps(client, run_id, "sft/loss") == list(range(15))


@pytest.mark.e2e
def test_a_server_that_never_comes_back_fails_the_stage_clearly_and_the_flush_command_delivers_later(
    server, tmp_path
):
    from mlflow.tracking import MlflowClient

    if server.proc is None or not server.proc.running():
        server.start()
    wait_healthy([server.proc], timeout=300)
    experiment_id = _experiment(server, "outage-for-good")
    parent = tracking.start_parent_run(experiment_id, "pipeline")
    run_dir = tmp_path / "runs" / "r2"
    with pytest.raises(TrackingUnavailableError) as err:
        with tracking.stage_run(parent.run_id, experiment_id, "reward", spool_dir=run_dir / tracking.SPOOL_DIR,
                                flush_timeout_s=3) as stage:  # fmt: skip
            run_id = stage.run_id
            stage.log_metrics({"rm/loss": 0.7}, 0)
            server.stop()
            for step in range(1, 6):
                stage.log_metrics({"rm/loss": 0.7 - 0.1 * step}, step)
    message = str(err.value)
    spool = run_dir / tracking.SPOOL_DIR / f"reward-{run_id}.jsonl"
    assert server.url in message and str(spool) in message, message
    assert f"rlhf tracking flush {run_dir}" in message and "5 metric batches" in message
    assert spool.is_file() and len(read_spool(spool).pending) == 5

    server.start()
    client = MlflowClient(server.url)
    assert _steps(client, run_id, "rm/loss") == [0]
    assert client.get_run(run_id).info.status == "RUNNING"  # its end could not be sent either
    result = subprocess.run(
        [sys.executable, "-m", "flows.cli", "tracking", "flush", str(run_dir), "--timeout", "30"],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "sent 5 metric batch(es)" in result.stdout and "marked FAILED" in result.stdout, result.stdout
    assert _steps(client, run_id, "rm/loss") == list(range(6))
    assert client.get_run(run_id).info.status == "FAILED"  # the stage failed: its MLflow run says so
    again = subprocess.run(
        [sys.executable, "-m", "flows.cli", "tracking", "flush", str(run_dir)],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert again.returncode == 0 and "nothing to send" in again.stdout, again.stdout + again.stderr
    assert _steps(client, run_id, "rm/loss") == list(range(6))


def test_flush_command_on_an_unreachable_server_exits_2_naming_the_url_and_the_spool(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    spool = tmp_path / "runs" / "r3" / tracking.SPOOL_DIR / "sft-abc.jsonl"
    spool.parent.mkdir(parents=True)
    lines = [{"spool": 1, "run_id": "abc", "tracking_uri": url, "stage": "sft"},
             {"batch": 0, "step": 0, "timestamp": 1, "metrics": {"sft/loss": 1.0}}]  # fmt: skip
    spool.write_text("".join(json.dumps(line) + "\n" for line in lines))
    result = subprocess.run(
        [sys.executable, "-m", "flows.cli", "tracking", "flush", str(spool.parent.parent), "--timeout", "1"],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors and url in result.stderr and str(spool) in result.stderr.replace("\n", ""), result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture()
def sqlite_store(tmp_path):
    import mlflow

    ws = workspace_from(tmp_path)
    experiment_id = tracking.configure(ws.mlflow_uri, ws.mlflow_artifacts, "spool")
    yield ws, experiment_id
    mlflow.set_tracking_uri(None)


def test_a_spool_left_by_a_killed_process_is_replayed_once(sqlite_store, tmp_path):
    """Batches written but never acknowledged (the process died) are sent by a replay, once; a torn line is skipped."""
    from mlflow.tracking import MlflowClient

    ws, experiment_id = sqlite_store
    run_id = tracking.start_parent_run(experiment_id, "p").run_id
    spool = tmp_path / "tracking" / f"ppo-{run_id}.jsonl"
    tracker = tracking.MlflowTracker(run_id, ws.mlflow_uri, spool=spool, stage="ppo")
    tracker.log_metrics({"ppo/kl": 0.1, "ppo/reward": float("nan")}, 0)  # sent and acknowledged; NaN skipped
    with open(spool, "a", encoding="utf-8") as fh:  # what a process killed after spooling leaves behind
        for step in (1, 2):
            fh.write(json.dumps({"batch": step, "step": step, "timestamp": 1000 + step, "metrics": {"ppo/kl": 0.1 * step}}) + "\n")
        fh.write('{"batch": 3, "step": 3, "timest')  # torn mid-write
    state = read_spool(spool)
    assert [b["step"] for b in state.pending] == [1, 2]

    report = tracking.flush_spool(spool)
    assert (report.batches, report.values, report.run_id) == (2, 2, run_id)
    assert tracking.flush_spool(spool).batches == 0  # acknowledged: never sent twice
    client = MlflowClient(ws.mlflow_uri)
    assert _steps(client, run_id, "ppo/kl") == [0, 1, 2]
    assert "ppo/reward" not in client.get_run(run_id).data.metrics
    # A tracker reopened on the spool (a resumed run) continues after the torn line.
    reopened = tracking.MlflowTracker(run_id, ws.mlflow_uri, spool=spool, stage="ppo")
    reopened.log_metrics({"ppo/kl": 0.4}, 4)
    assert _steps(client, run_id, "ppo/kl") == [0, 1, 2, 4]
    assert not read_spool(spool).pending


def test_a_rejected_batch_raises_instead_of_waiting_for_a_server(sqlite_store, tmp_path):
    """Only an unreachable server is waited for: a request MLflow refuses (here: a deleted run) fails at once."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    ws, experiment_id = sqlite_store
    run_id = tracking.start_parent_run(experiment_id, "p").run_id
    MlflowClient(ws.mlflow_uri).delete_run(run_id)
    tracker = tracking.MlflowTracker(run_id, ws.mlflow_uri, spool=tmp_path / "s.jsonl")
    with pytest.raises(MlflowException) as err:
        tracker.log_metrics({"x": 1.0}, 0)
    assert not tracking.is_unreachable(err.value)
    assert tracker.pending_batches == 1  # still in the spool, not dropped


def test_a_resumed_run_first_sends_what_an_earlier_attempt_left_in_its_spools(tmp_path):
    """`rlhf run --resume` replays the run's spools before anything else; the flow run records its owner."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run
    from prefect.testing.utilities import prefect_test_harness

    from flows.crash_sweep import LABEL_EXPERIMENT, LABEL_PID, LABEL_TRACKING_URI
    from flows.stages import _context
    from rlhf_core.config.pipeline import load_config

    cfg = load_config("smoke", [f"workspace={tmp_path}"])
    ws = workspace_from(tmp_path)
    experiment_id = tracking.configure(ws.mlflow_uri, ws.mlflow_artifacts, cfg.name)
    run = ws.new_run("earlier")
    parent = tracking.start_parent_run(experiment_id, run.run_id)
    tracking.end_run(parent.run_id, "FAILED")
    (run.path / "pipeline.json").write_text(json.dumps({"mlflow_run_id": parent.run_id, "tracking_uri": ws.mlflow_uri}))
    client = MlflowClient(ws.mlflow_uri)
    stage_id = client.create_run(experiment_id, tags={"mlflow.parentRunId": parent.run_id}).info.run_id
    spool = run.path / tracking.SPOOL_DIR / f"sft-{stage_id}.jsonl"
    spool.parent.mkdir()
    lines = [{"spool": 1, "run_id": stage_id, "tracking_uri": ws.mlflow_uri, "stage": "sft"},
             *({"batch": i, "step": i, "timestamp": 10 + i, "metrics": {"sft/loss": 2.0 - i}} for i in range(3)),
             {"sent": [0]}, {"end": "FAILED"}]  # fmt: skip
    spool.write_text("".join(json.dumps(line) + "\n" for line in lines))
    # Batch 0 got through before (another timestamp: were it resent, MLflow would keep both values).
    client.log_batch(stage_id, metrics=[Metric("sft/loss", 2.0, 9, 0)])

    @flow
    def resume_probe() -> tuple[str, str]:
        ctx = _context(cfg, str(run.path))
        return ctx.parent_run_id, str(flow_run.get_id())

    with prefect_test_harness(server_startup_timeout=180):
        parent_id, flow_run_id = resume_probe()
        with get_client(sync_client=True) as prefect:
            labels = prefect.read_flow_run(flow_run_id).labels
    assert parent_id == parent.run_id
    assert _steps(client, stage_id, "sft/loss") == [0, 1, 2]  # batches 1 and 2 sent, batch 0 not twice
    assert client.get_run(stage_id).info.status == "FAILED"  # the status the earlier attempt could not send
    assert client.get_run(parent.run_id).info.status == "RUNNING"  # reopened for the resumed run
    assert not read_spool(spool).pending and read_spool(spool).end is None
    assert labels[LABEL_PID] == os.getpid() and labels[LABEL_TRACKING_URI] == ws.mlflow_uri
    assert labels[LABEL_EXPERIMENT] == experiment_id
