"""Child processes that cannot outlive the process that started them (standard library only).

A child started through :data:`GUARD` asks the kernel to SIGTERM it when its parent dies
(``prctl(PR_SET_PDEATHSIG)``, kept across ``exec``), so a SIGKILL of `rlhf run` leaves no
Prefect API server or torchrun launcher behind. A ``preexec_fn`` would do the same, but it is
unsafe once threads run (and they do: the MLflow store warms in one).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

# argv: [python, -c, GUARD, parent pid, program, args...]. The death signal belongs to the
# thread that forked the child: start servers from the main thread (a worker thread ending
# would take the server with it).
GUARD = (
    "import ctypes, os, signal, sys\n"
    "try:\n"
    "    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG\n"
    "except AttributeError:  # not Linux: no death signal\n"
    "    pass\n"
    "if os.getppid() != int(sys.argv[1]):  # the parent died before prctl: no signal will come\n"
    "    sys.exit(0)\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


def guarded(argv: list[str]) -> list[str]:
    """``argv`` run through :data:`GUARD`: the process is SIGTERMed when this one dies (Linux)."""
    return [sys.executable, "-c", GUARD, str(os.getpid()), *argv]


def stop_tree(proc: subprocess.Popen, grace_s: float = 30.0) -> None:
    """SIGTERM ``proc`` (a launcher that stops its own workers on SIGTERM, as torchrun does), then
    SIGKILL it and every descendant it had if any is still alive after ``grace_s``.

    The descendants are read first: torchrun starts its workers in sessions of their own, so
    neither a signal to its process group nor its death reaches them.
    """
    import psutil

    try:
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(_alive(p) for p in family):
        proc.poll()
        time.sleep(0.2)
    for p in family:
        if _alive(p):
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL cannot be ignored
        pass


def _alive(p) -> bool:
    import psutil

    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on ``host`` (a launcher's rendezvous port, a test server's)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
