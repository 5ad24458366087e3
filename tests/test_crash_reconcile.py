"""A crashed flow never stays 'Running': the start-up sweep marks it Crashed (and its MLflow runs FAILED).

The end-to-end test runs `rlhf run -c smoke` in a subprocess against a Prefect test API,
kills it with SIGKILL while the SFT stage trains, and checks what the sweep then records.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest

from flows.crash_sweep import LABEL_HOST, LABEL_PID, LABEL_STARTED, owner_alive, owner_labels
from tests.conftest import MODEL_CACHE, REPO


def test_the_owner_of_a_flow_run_is_alive_only_while_its_very_process_runs():
    me = owner_labels()
    assert me[LABEL_PID] == os.getpid() and me[LABEL_HOST] == socket.gethostname()
    assert owner_alive(me) is True
    assert owner_alive({**me, LABEL_STARTED: me[LABEL_STARTED] - 3600}) is False  # the pid was reused
    assert owner_alive({**me, LABEL_HOST: "another-host"}) is None  # cannot tell from here: left alone
    assert owner_alive({}) is None  # not a run we started
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    started = psutil.Process(gone.pid).create_time()
    gone.wait()
    assert owner_alive({LABEL_HOST: socket.gethostname(), LABEL_PID: gone.pid, LABEL_STARTED: started}) is False


def _flow_runs(client, flow_name: str):
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    return client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])))


@pytest.mark.e2e
def test_a_pipeline_killed_mid_stage_is_marked_crashed_with_its_mlflow_runs_failed(tmp_path):
    from mlflow.tracking import MlflowClient
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    from prefect.client.schemas.objects import StateType

    from flows.crash_sweep import ZOMBIE_AUTOMATION, reconcile_crashed_runs

    workspace = tmp_path / "ws"
    log_path = tmp_path / "rlhf-run.log"
    with prefect_test_harness(server_startup_timeout=180):
        env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
        env.pop("PREFECT_HOME", None)
        argv = [
            sys.executable, "-m", "flows.cli", "run", "-c", "smoke", "-w", str(workspace),
            "--set", f"model.cache_dir={MODEL_CACHE}", "--set", "sft.optim.max_steps=100000",
            "--set", "ppo.enabled=false", "--set", "dpo.enabled=false", "--set", "eval.enabled=false",
        ]  # fmt: skip
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            # Wait until the SFT stage trains: its subflow is running and its metrics are being logged.
            deadline = time.monotonic() + 420
            while True:
                assert proc.poll() is None, f"`rlhf run` ended early:\n{log_path.read_text()[-3000:]}"
                assert time.monotonic() < deadline, f"SFT never started:\n{log_path.read_text()[-3000:]}"
                spools = list(workspace.glob("runs/*/tracking/sft-*.jsonl"))
                if spools and '"batch"' in spools[0].read_text():
                    break
                time.sleep(1)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

        with get_client(sync_client=True) as client:
            (pipeline,) = _flow_runs(client, "rlhf-pipeline")
            (sft,) = _flow_runs(client, "sft")
            assert pipeline.state.is_running() and sft.state.is_running()  # what the UI showed until now

            crashed = reconcile_crashed_runs()
            assert [c.flow_run_id for c in crashed] == [str(pipeline.id)]
            assert crashed[0].subflows == 1 and crashed[0].task_runs >= 1 and crashed[0].mlflow_runs == 2
            pipeline, sft = client.read_flow_run(pipeline.id), client.read_flow_run(sft.id)
            (data,) = _flow_runs(client, "data")
            assert pipeline.state.is_crashed() and sft.state.is_crashed(), (pipeline.state, sft.state)
            assert f"pid {proc.pid}" in pipeline.state.message
            assert data.state.is_completed()  # a stage that had finished keeps its state
            tasks = client.read_task_runs()
            assert not [t for t in tasks if t.state.is_running() or t.state.is_pending()]
            assert reconcile_crashed_runs() == []  # nothing left to do on the next start
            # `rlhf run` against a server also made sure Prefect's heartbeat automation exists there.
            (automation,) = client.read_automations_by_name(ZOMBIE_AUTOMATION)
            assert automation.enabled and automation.trigger.within.total_seconds() == 3 * 180
            assert automation.actions[0].state == StateType.CRASHED

    (run_dir,) = (workspace / "runs").iterdir()
    client = MlflowClient(f"sqlite:///{workspace / 'mlflow' / 'mlflow.db'}")
    parent_id = json.loads((run_dir / "pipeline.json").read_text())["mlflow_run_id"]
    parent = client.get_run(parent_id)
    children = client.search_runs([parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")
    by_stage = {r.data.tags["rlhf.stage"]: r.info.status for r in children}
    assert parent.info.status == "FAILED" and "is gone" in parent.data.tags["rlhf.crash"]
    assert by_stage == {"data": "FINISHED", "sft": "FAILED"}
