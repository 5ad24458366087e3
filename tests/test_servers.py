"""The Prefect and MLflow servers: start healthy, stop leaving nothing, fail with clear errors.

The first test starts both real servers (~30-50 s on 2 cores); the others are quick and
exercise the error paths with real sockets and real processes.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from flows.health import ServerError, check_reachable
from flows.servers import (
    _spawn,
    preflight,
    start_servers,
    wait_healthy,
)
from rlhf_core.processes import free_port
from tests.conftest import REPO


def _alive(pids: list[int]) -> list[int]:
    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            pass
    return out


@pytest.fixture()
def listening_port():
    """A port some other program is listening on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.e2e
def test_both_servers_start_healthy_in_the_workspace_and_stop_leaving_no_process(tmp_path):
    servers = start_servers(tmp_path, prefect_port=free_port(), mlflow_port=free_port())
    try:
        pids = servers.prefect.alive_processes() + servers.mlflow.alive_processes()
        check_reachable(servers.prefect_api_url, name="Prefect API", kind="prefect")
        check_reachable(servers.mlflow_url, name="MLflow", kind="mlflow")
        assert set(servers.startup_seconds) == {"Prefect server", "MLflow server"}
        # State lives in the workspace, nowhere else.
        assert (tmp_path / "prefect" / "prefect.db").is_file()
        assert (tmp_path / "mlflow" / "mlflow.db").is_file()
        assert servers.prefect_url.startswith("http://127.0.0.1:")  # loopback by default
        listening = [
            c.laddr for pid in _alive(pids) for c in psutil.Process(pid).net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN
        ]  # fmt: skip
        assert listening and {addr.ip for addr in listening} == {"127.0.0.1"}, listening
    finally:
        servers.stop()
    assert pids, "no server processes were found while running"
    assert _alive(pids) == []
    with pytest.raises(ServerError, match=re.escape(servers.mlflow_url)):
        check_reachable(servers.mlflow_url, name="MLflow", kind="mlflow")
    with pytest.raises(ServerError, match=re.escape(servers.prefect_api_url)):
        check_reachable(servers.prefect_api_url, name="Prefect API", kind="prefect")


def test_taken_port_is_refused_naming_the_url_and_the_option(tmp_path, listening_port):
    with pytest.raises(ServerError) as err:
        start_servers(tmp_path, prefect_port=listening_port, mlflow_port=free_port())
    assert f"http://127.0.0.1:{listening_port}" in str(err.value)
    assert "--prefect-port" in str(err.value) and "already in use" in str(err.value)
    with pytest.raises(ServerError, match=f"MLflow server at http://127.0.0.1:{listening_port}.*--mlflow-port"):
        start_servers(tmp_path, prefect_port=free_port(), mlflow_port=listening_port)
    assert not (tmp_path / "logs").exists(), "a server was spawned although a port was taken"


def test_cli_ui_with_a_taken_port_prints_one_error_line(tmp_path, listening_port):
    result = subprocess.run(
        [sys.executable, "-m", "flows.cli_servers", "ui", "-w", str(tmp_path), "--mlflow-port", str(listening_port),
         "--prefect-port", str(free_port())],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"127.0.0.1:{listening_port}" in errors[0], result.stderr
    assert "Traceback" not in result.stderr


def test_check_reachable_on_a_closed_port_names_the_url():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ServerError, match=rf"MLflow tracking server at {re.escape(url)} is unreachable"):
        check_reachable(url, name="MLflow tracking server", kind="mlflow")
    with pytest.raises(ServerError, match=r"Prefect API at .*/api is unreachable"):
        preflight(None, f"{url}/api")
    with pytest.raises(ServerError, match="not an http"):
        check_reachable("sqlite:///x.db", name="MLflow tracking server")
    preflight("sqlite:///embedded.db", "")  # embedded mode: nothing to reach, no error


def test_cli_deploy_fails_fast_when_prefect_is_unreachable(tmp_path):
    api = f"http://127.0.0.1:{free_port()}/api"
    result = subprocess.run(
        [sys.executable, "-m", "flows.cli_servers", "deploy", "--config", "smoke", "-w", str(tmp_path),
         "--prefect-api-url", api, "--no-worker"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert f"error: Prefect API at {api} is unreachable" in result.stderr


def test_a_server_that_exits_early_is_reported_with_its_log_tail(tmp_path):
    proc = _spawn(
        "test server", "http://127.0.0.1:1", f"http://127.0.0.1:{free_port()}/health",
        [sys.executable, "-c", "print('bad backend store URI'); raise SystemExit(3)"],
        {}, tmp_path, tmp_path / "logs" / "t.log",
    )  # fmt: skip
    with pytest.raises(ServerError, match=r"exited with code 3 (?s:.*)bad backend store URI"):
        wait_healthy([proc], timeout=60)


def test_a_server_that_never_gets_healthy_times_out_with_its_log_tail(tmp_path):
    health = f"http://127.0.0.1:{free_port()}/health"
    proc = _spawn(
        "slow server", "http://127.0.0.1:9", health,
        [sys.executable, "-c", "import time; print('still migrating', flush=True); time.sleep(120)"],
        {}, tmp_path, tmp_path / "logs" / "slow.log",
    )  # fmt: skip
    try:
        with pytest.raises(ServerError, match=r"not healthy after 2 s (?s:.*)still migrating") as err:
            wait_healthy([proc], timeout=2)
        assert health in str(err.value)
    finally:
        proc.stop(timeout=5)
    assert not proc.running()


def test_prefect_yaml_deployment_parameters_are_exactly_the_presets():
    import subprocess
    import sys

    import yaml

    from rlhf_core.config.pipeline import PipelineConfig, load_config

    spec = yaml.safe_load((REPO / "infra" / "prefect.yaml").read_text())
    names = []
    for deployment in spec["deployments"]:
        preset = deployment["name"].removeprefix("rlhf-")
        assert deployment["entrypoint"] == "flows/stages.py:rlhf_pipeline"
        assert PipelineConfig.model_validate(deployment["parameters"]["config"]) == load_config(preset), (
            f"infra/prefect.yaml deployment {deployment['name']} drifted from configs/{preset}.yaml: "
            "run .venv/bin/python infra/render_prefect_yaml.py"
        )
        names.append(preset)
    assert {"smoke", "demo"} <= set(names)
    check = subprocess.run([sys.executable, str(REPO / "infra" / "render_prefect_yaml.py"), "--check"],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stderr

