"""Start and stop a local Label Studio (its own venv, ``make label-studio``) for tests and `rlhf ui`.

Label Studio 1.23.2 runs Django's server in one process; it is started through
:func:`rlhf_core.processes.guarded` (it dies with us) in a process group of its own, with its
sqlite database and media under ``data_dir`` and its output in ``log_path``. The admin login it
creates on the first start comes through the environment, never argv (``ps`` shows argv).
Standard library and psutil only, like :mod:`flows.servers`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from rlhf_core.errors import ConfigError
from rlhf_core.label_studio import (
    KEY_ENV,
    PASSWORD_ENV,
    URL_ENV,
    USERNAME_ENV,
    LabelStudioError,
    LabelStudioUnavailable,
)
from rlhf_core.processes import guarded

DEFAULT_START_TIMEOUT_S = 300.0  # ~40 s on 2 idle cores; a loaded machine takes several times that


@dataclass
class LabelStudioServer:
    """A Label Studio started by :func:`start_label_studio`: a child process group; ``stop()`` ends it."""

    url: str
    process: subprocess.Popen = field(repr=False)
    log_path: Path
    startup_s: float = 0.0

    name = "Label Studio"

    def running(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 25) -> str:
        """The last ``lines`` of its log (what `rlhf ui` shows when it stops unexpectedly)."""
        try:
            return "\n".join(self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM the process group, then SIGKILL whatever of it is left after ``grace_s``."""
        try:
            family = [psutil.Process(self.process.pid), *psutil.Process(self.process.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            family = []
        _signal_group(self.process.pid, signal.SIGTERM)
        _, alive = psutil.wait_procs(family, timeout=grace_s)
        _signal_group(self.process.pid, signal.SIGKILL)
        for proc in alive:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL cannot be ignored
            pass

    def __enter__(self) -> LabelStudioServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def server_env(data_dir: Path, url: str, username: str, password: str) -> dict[str, str]:
    """The child's environment: its data directory, the admin login Label Studio creates on first
    start (through the environment, never argv, which ``ps`` shows), no phone-home (Sentry,
    analytics, PyPI version check), and no open sign-up: people join through the admin's invite link
    (Organization > Add People), so nobody who merely reaches the port can label. Our own client
    settings are not passed on."""
    env = {k: v for k, v in os.environ.items() if k not in (URL_ENV, KEY_ENV)}
    env.update({
        "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir), "LABEL_STUDIO_HOST": url,
        USERNAME_ENV: username, PASSWORD_ENV: password,
        "LABEL_STUDIO_SENTRY_DSN": "", "LABEL_STUDIO_FRONTEND_SENTRY_DSN": "",
        "LABEL_STUDIO_COLLECT_ANALYTICS": "false", "LABEL_STUDIO_LATEST_VERSION_CHECK": "false",
        "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
    })
    return env


def start_label_studio(venv: Path | str, data_dir: Path | str, port: int, username: str, password: str,
                       log_path: Path | str, *, host: str = "127.0.0.1",
                       timeout_s: float = DEFAULT_START_TIMEOUT_S) -> LabelStudioServer:
    """Start ``label-studio start`` from ``venv`` on ``host:port`` with its sqlite database in
    ``data_dir``; return once ``GET /health`` answers ``{"status": "UP"}`` (~40 s on 2 cores).

    ``username`` (an email) / ``password``: the admin account, created on the first start. The
    port must be free: Label Studio would otherwise silently move to another one.
    """
    program = Path(venv) / "bin" / "label-studio"
    if not program.is_file():
        raise ConfigError(f"{program} not found: build Label Studio's venv with `make label-studio` "
                          f"(bash infra/label_studio/setup.sh {venv})")
    url = f"http://{host}:{port}"
    _check_port_free(host, port, url)
    data_dir, log_path = Path(data_dir), Path(log_path)
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    argv = [str(program), "start", "--no-browser", "--port", str(port), "--internal-host", host]
    with open(log_path, "ab") as log:
        process = subprocess.Popen(guarded(argv), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=server_env(data_dir, url, username, password), start_new_session=True)
    server = LabelStudioServer(url, process, log_path)
    started = time.monotonic()
    try:
        _wait_up(server, timeout_s)
    except BaseException:
        server.stop()
        raise
    server.startup_s = time.monotonic() - started
    return server


def _check_port_free(host: str, port: int, url: str) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise LabelStudioError(f"cannot start Label Studio at {url}: port {port} is already in use ({exc.strerror})"
                                   ) from None


def _wait_up(server: LabelStudioServer, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not server.running():
            raise LabelStudioError(f"Label Studio at {server.url} exited with code {server.process.returncode} while "
                                   f"starting; its log {server.log_path} ends:\n{_tail(server.log_path)}")
        if _health_up(server.url):
            return
        time.sleep(1.0)
    raise LabelStudioUnavailable(f"Label Studio at {server.url} did not answer /health within {timeout_s:.0f} s; "
                                 f"its log {server.log_path} ends:\n{_tail(server.log_path)}")


def _health_up(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=5) as response:  # noqa: S310 - our own http URL
            return json.loads(response.read()).get("status") == "UP"
    except (OSError, ValueError):
        return False


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
