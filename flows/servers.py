"""Start, health-check and stop the Prefect server and the MLflow tracking server.

Both run as child processes in their own process group (so stopping them also stops
the uvicorn / job-runner children they spawn), keep all their state in the workspace,
and listen on loopback unless told otherwise::

    <workspace>/prefect/prefect.db        Prefect server database (sqlite)
    <workspace>/mlflow/mlflow.db          MLflow tracking + registry store (sqlite) ...
    <workspace>/mlflow/artifacts/         ... and its artifact root
    <workspace>/logs/<server>.log         each server's stdout/stderr

The Prefect database is the same file the embedded (ephemeral) mode uses through
``PREFECT_HOME`` (see :mod:`flows.runtime`), so runs made with ``rlhf run`` show up
in the UI later. Only the standard library (and psutil) is imported here: the CLI's
``--help`` path imports this module's callers.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from flows.health import ServerError, check_reachable, health_url, http_ok
from tasks.mlflow_store import relocate as relocate_store

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PREFECT_PORT = 4200
DEFAULT_MLFLOW_PORT = 5000
# Measured on 2 busy cores: Prefect ~35 s, MLflow ~50 s when both start together.
DEFAULT_START_TIMEOUT = 180.0
DEFAULT_STOP_TIMEOUT = 20.0
LOG_TAIL_LINES = 25


@dataclass
class ManagedProcess:
    """A long-running child process (a server or a worker) in its own process group."""

    name: str
    url: str
    health_url: str | None
    process: subprocess.Popen
    log_path: Path
    started_at: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"

    def alive_processes(self) -> list[int]:
        """Pids still alive in this process group or among its known descendants."""
        return sorted(pid for pid in _group_and_descendants(self.pid) if _alive(pid))

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        """SIGTERM the whole process group, then SIGKILL whatever is left after ``timeout``."""
        # Snapshot descendants first: a child that made its own session would escape killpg.
        targets = _group_and_descendants(self.pid)
        _signal_all(self.pid, targets, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.process.poll()  # reap the leader so it does not linger as a zombie
            if not any(_alive(p) for p in targets | _group_members(self.pid)):
                return
            time.sleep(0.2)
        _signal_all(self.pid, targets | _group_members(self.pid), signal.SIGKILL)
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL cannot be ignored
            pass


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _group_members(pgid: int) -> set[int]:
    import psutil

    members = set()
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(proc.pid) == pgid:
                members.add(proc.pid)
        except (ProcessLookupError, PermissionError):
            continue
    return members


def _group_and_descendants(pid: int) -> set[int]:
    import psutil

    found = _group_members(pid) | {pid}
    try:
        found |= {child.pid for child in psutil.Process(pid).children(recursive=True)}
    except psutil.NoSuchProcess:
        pass
    return found


def _signal_all(pgid: int, pids: set[int], sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def format_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def ensure_port_free(host: str, port: int, what: str, option: str) -> None:
    """Raise a ServerError naming the URL and the option to change if ``port`` is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR: a port in TIME_WAIT from a server we just stopped is free to use.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ServerError(
                f"cannot start the {what} at {format_url(host, port)}: port {port} on {host} is already in use "
                f"({exc.strerror}); stop whatever listens there or choose another port with {option}"
            ) from exc


def preflight(tracking_uri: str | None, prefect_api_url: str | None = None, *, reconcile: bool = True) -> None:
    """Check the servers a run will talk to; a no-op for the embedded (sqlite / ephemeral) mode.

    ``prefect_api_url`` defaults to the ``PREFECT_API_URL`` environment variable. With a Prefect
    server and ``reconcile`` (`rlhf deploy`), crashed flow runs are then swept: see
    :func:`reconcile_runs`.
    """
    prefect_api_url = prefect_api_url if prefect_api_url is not None else os.environ.get("PREFECT_API_URL")
    if prefect_api_url:
        check_reachable(prefect_api_url, name="Prefect API", kind="prefect")
    if tracking_uri and tracking_uri.startswith(("http://", "https://")):
        check_reachable(tracking_uri, name="MLflow tracking server", kind="mlflow")
    if prefect_api_url and reconcile:
        reconcile_runs(prefect_api_url)


def reconcile_runs(prefect_api_url: str | None) -> None:
    """Set Crashed the flow runs whose process died (see flows.crash_sweep), and with a Prefect server
    make sure its heartbeat automation exists (it covers runs started by a worker). Never raises."""
    from flows.crash_sweep import ensure_zombie_automation, reconcile_crashed_runs

    reconcile_crashed_runs(prefect_api_url)
    if prefect_api_url:
        ensure_zombie_automation(prefect_api_url)


def _server_env(extra: Mapping[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    return env


def _spawn(name: str, url: str, health: str | None, argv: Sequence[str], env: Mapping[str, str], cwd: Path, log_path: Path) -> ManagedProcess:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            list(argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,  # own process group: stop() signals the server and its children
        )
    return ManagedProcess(name, url, health, process, log_path)


def start_prefect_server(workspace: Path, port: int = DEFAULT_PREFECT_PORT, host: str = DEFAULT_HOST) -> ManagedProcess:
    """Spawn `prefect server start` with its sqlite database in ``<workspace>/prefect``. Does not wait."""
    workspace = workspace.expanduser().resolve()
    ensure_port_free(host, port, "Prefect server", "--prefect-port")
    home = workspace / "prefect"
    home.mkdir(parents=True, exist_ok=True)
    url = format_url(host, port)
    env = _server_env(
        {
            "PREFECT_HOME": str(home),
            "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
            # The v2 UI (the default at /) fetches its session-replay config from an analytics
            # host on every page load whatever the setting above says; the v1 UI makes no such call.
            "PREFECT_SERVER_UI_V2_ENABLED": "false",
            # The UI calls the API at this address; it must match where the server listens.
            "PREFECT_UI_API_URL": f"{url}/api",
        }
    )
    env.pop("PREFECT_API_URL", None)  # the server itself is not a client of another API
    argv = [sys.executable, "-m", "prefect", "server", "start", "--host", host, "--port", str(port)]
    return _spawn("Prefect server", url, health_url(url, "prefect"), argv, env, workspace, workspace / "logs" / "prefect-server.log")


def start_mlflow_server(
    workspace: Path, port: int = DEFAULT_MLFLOW_PORT, host: str = DEFAULT_HOST, allowed_hosts: str | None = None
) -> ManagedProcess:
    """Spawn `mlflow server` on the workspace's sqlite store and artifact root. Does not wait."""
    workspace = workspace.expanduser().resolve()
    ensure_port_free(host, port, "MLflow server", "--mlflow-port")
    mlflow_dir = workspace / "mlflow"
    artifacts = mlflow_dir / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    relocate_store(workspace)  # a copied or moved workspace: its store must show its own artifacts
    url = format_url(host, port)
    env = _server_env(
        {
            "MLFLOW_DISABLE_TELEMETRY": "true",
            # The GenAI job runner spawns ~8 huey processes we never use; keep 2 cores free.
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": os.environ.get("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false"),
        }
    )
    argv = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{mlflow_dir / 'mlflow.db'}",
        # Same artifact root the embedded mode uses (tasks.artifacts.Workspace.mlflow_artifacts),
        # so runs logged with or without the server are browsable in the same UI.
        "--default-artifact-root", artifacts.as_uri(),
        "--artifacts-destination", artifacts.as_uri(),
        "--host", host, "--port", str(port),
        "--workers", "1",
    ]  # fmt: skip
    if allowed_hosts:
        argv += ["--allowed-hosts", allowed_hosts]
    return _spawn("MLflow server", url, health_url(url, "mlflow"), argv, env, workspace, workspace / "logs" / "mlflow-server.log")


def wait_healthy(procs: Sequence[ManagedProcess], timeout: float = DEFAULT_START_TIMEOUT) -> dict[str, float]:
    """Poll each server's health URL until all answer; return seconds-to-healthy per server.

    Raises ServerError with the tail of the server's log if one exits or is not healthy in time.
    """
    pending = {p.name: p for p in procs if p.health_url}
    ready: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while pending:
        for name, proc in list(pending.items()):
            if not proc.running():
                raise ServerError(
                    f"the {name} at {proc.url} exited with code {proc.process.returncode} before it was healthy; "
                    f"last lines of {proc.log_path}:\n{proc.log_tail()}"
                )
            ok, _ = http_ok(proc.health_url or proc.url, timeout=2.0)
            if ok:
                ready[name] = time.monotonic() - proc.started_at
                del pending[name]
        if not pending:
            break
        if time.monotonic() > deadline:
            name, proc = next(iter(pending.items()))
            raise ServerError(
                f"the {name} at {proc.url} was not healthy after {timeout:.0f} s ({proc.health_url} did not answer 2xx); "
                f"last lines of {proc.log_path}:\n{proc.log_tail()}"
            )
        time.sleep(0.5)
    return ready


@dataclass
class Servers:
    """The running Prefect and MLflow servers of one workspace."""

    workspace: Path
    prefect: ManagedProcess
    mlflow: ManagedProcess
    startup_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def prefect_url(self) -> str:
        return self.prefect.url

    @property
    def prefect_api_url(self) -> str:
        return self.prefect.url + "/api"

    @property
    def mlflow_url(self) -> str:
        return self.mlflow.url

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        for proc in (self.prefect, self.mlflow):
            proc.stop(timeout)


def start_servers(
    workspace: Path,
    *,
    prefect_port: int = DEFAULT_PREFECT_PORT,
    mlflow_port: int = DEFAULT_MLFLOW_PORT,
    host: str = DEFAULT_HOST,
    timeout: float = DEFAULT_START_TIMEOUT,
    allowed_hosts: str | None = None,
) -> Servers:
    """Start both servers side by side and wait until both are healthy (stop both on failure)."""
    # Check both ports before spawning anything, so a taken port costs no start-up time.
    ensure_port_free(host, prefect_port, "Prefect server", "--prefect-port")
    ensure_port_free(host, mlflow_port, "MLflow server", "--mlflow-port")
    started: list[ManagedProcess] = []
    try:
        started.append(start_prefect_server(workspace, prefect_port, host))
        started.append(start_mlflow_server(workspace, mlflow_port, host, allowed_hosts))
        seconds = wait_healthy(started, timeout)
        servers = Servers(workspace.expanduser().resolve(), started[0], started[1], seconds)
        # Runs in this workspace's database whose process was killed show Crashed, not Running.
        reconcile_runs(servers.prefect_api_url)
    except BaseException:
        for proc in started:
            proc.stop()
        raise
    return servers


@contextmanager
def running_servers(workspace: Path, **kwargs) -> Iterator[Servers]:
    """``with running_servers(ws) as s:`` — both servers up inside the block, stopped after."""
    servers = start_servers(workspace, **kwargs)
    try:
        yield servers
    finally:
        servers.stop()


def start_worker(pool: str, prefect_api_url: str, workspace: Path, *, name: str | None = None, env: Mapping[str, str] | None = None) -> ManagedProcess:
    """Spawn a Prefect process worker polling ``pool`` (its flow runs are its child processes)."""
    workspace = workspace.expanduser().resolve()
    child_env = _server_env({"PREFECT_API_URL": prefect_api_url, **(env or {})})
    child_env.pop("PREFECT_HOME", None)  # a worker is a client of the server, never ephemeral
    argv = [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--type", "process"]
    if name:
        argv += ["--name", name]
    log_path = workspace / "logs" / f"worker-{pool}.log"
    return _spawn(f"Prefect worker ({pool})", prefect_api_url, None, argv, child_env, workspace, log_path)
