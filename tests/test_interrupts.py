"""Ending `rlhf run` from outside: Ctrl-C, SIGTERM, SIGKILL. It stops within seconds, says how to
carry on in one line, records the runs as ended, and leaves no process behind.

The end-to-end tests start `rlhf run -c smoke` in its own session (as a terminal starts a
foreground job), wait until SFT is training, then send Ctrl-C as a terminal does (SIGINT to the
whole process group), SIGTERM or SIGKILL to `rlhf run`, and check by pid every process of that
session and every descendant seen while it ran. Before, Ctrl-C also stopped the embedded Prefect
API server (same process group) and `rlhf run` kept retrying it for minutes; after SIGKILL the
server lived on as an orphan.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import MODEL_CACHE, REPO

# --- the pieces, without a run ---------------------------------------------------------------


def _cmdline(proc: psutil.Process) -> str:
    """The command line, or "" for a short-lived process (`file`, `ldconfig`) that has already exited."""
    try:
        return " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return ""


def _wait_gone(proc: psutil.Process, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.1)
    return False


def test_stop_tree_also_ends_workers_that_run_in_sessions_of_their_own(tmp_path):
    """tasks.distributed on Ctrl-C, SIGTERM or a timeout: torchrun's workers sit in their own
    sessions, so stopping the launcher alone (as `subprocess.run` did) left them running."""
    from rlhf_core.processes import guarded, stop_tree

    pid_file = tmp_path / "worker.pid"
    launcher = (
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a launcher that does not stop its workers\n"
        "w = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'], start_new_session=True)\n"
        f"open({str(pid_file)!r}, 'w').write(str(w.pid))\n"
        "time.sleep(120)\n"
    )
    proc = subprocess.Popen(guarded([sys.executable, "-c", launcher]))
    deadline = time.monotonic() + 30
    while not pid_file.is_file() or not pid_file.read_text():
        assert time.monotonic() < deadline, "the launcher never started its worker"
        time.sleep(0.1)
    worker = psutil.Process(int(pid_file.read_text()))
    stop_tree(proc, grace_s=1.0)
    assert proc.poll() is not None
    assert _wait_gone(worker, 5), "the worker outlived its stopped launcher"


def test_a_guarded_process_dies_with_its_parent_even_by_sigkill():
    """rlhf_core.processes.guarded: the kernel SIGTERMs the child when its parent dies (PR_SET_PDEATHSIG)."""
    parent_code = (
        "import subprocess, sys, time\n"
        "from rlhf_core.processes import guarded\n"
        "child = subprocess.Popen(guarded([sys.executable, '-c', 'import time; time.sleep(120)']), start_new_session=True)\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        child = psutil.Process(int(parent.stdout.readline()))
        deadline = time.monotonic() + 10  # the guard execs the program: the same pid, another command line
        while "time.sleep(120)" not in " ".join(child.cmdline()) or "prctl" in " ".join(child.cmdline()):
            assert time.monotonic() < deadline, child.cmdline()
            time.sleep(0.05)
        assert child.ppid() == parent.pid and os.getsid(child.pid) != os.getsid(parent.pid)  # its own session
        parent.kill()
        parent.wait()
        assert _wait_gone(child, 5), "the guarded child outlived its SIGKILLed parent"
    finally:
        if parent.poll() is None:
            parent.kill()
        for proc in psutil.Process().children(recursive=True):
            proc.kill()


def test_an_interrupt_says_what_stopped_and_how_to_carry_on_in_one_line():
    from flows.runtime import Interrupted

    line = Interrupted(signal.SIGINT, "RUN1", resume="rlhf run --resume RUN1 -c smoke").describe()
    assert line == ("interrupted (Ctrl-C): run RUN1 stopped (finished stages and checkpoints are kept); "
                    "carry on with: rlhf run --resume RUN1 -c smoke")
    assert Interrupted(signal.SIGINT).exit_code == 130 and Interrupted(signal.SIGTERM).exit_code == 143
    early = Interrupted(signal.SIGTERM, note="before the run started: nothing to resume").describe()
    assert early == "stopped by SIGTERM: before the run started: nothing to resume"
    assert isinstance(Interrupted(), KeyboardInterrupt)  # Prefect records Crashed, except-BaseException cleans up


def _record(name: str, msg: str, exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, None) if exc is not None else None
    return logging.LogRecord(name, logging.ERROR, __file__, 1, msg, None, exc_info)


def test_the_console_drops_prefects_echo_of_errors_the_cli_reports_itself():
    from flows.runtime import QuietKnownFailures
    from rlhf_core.errors import DataError

    quiet = QuietKnownFailures()
    err = DataError("sft train data: row 3: too long")
    dropped = [
        _record("prefect.task_runs", "Task run failed with exception: %r" % err, err),
        _record("prefect.flow_runs", "Encountered exception during execution: %r" % err, err),
        _record("prefect.task_runs", "Finished in state Failed('Task run encountered an exception DataError: x')"),
        _record("prefect.flow_runs", "Finished in state Failed('Flow run encountered an exception: DataError: x')"),
        _record("prefect.task_runs", "Crash detected! Execution was aborted by an interrupt signal."),
        _record("prefect.flow_runs", "Finished in state Crashed('Execution was aborted by a termination signal.')"),
        _record("prefect.task_runs", "Task run failed", KeyboardInterrupt()),
    ]
    kept = [
        _record("prefect.task_runs", "Task run failed with exception: RuntimeError('bug')", RuntimeError("bug")),
        _record("prefect.task_runs", "Finished in state Failed('Task run encountered an exception RuntimeError: bug')"),
        _record("prefect.task_runs", "Finished in state Completed()"),
        _record("rlhf.tracking", "MLflow tracking server unreachable"),
    ]
    assert [quiet.filter(r) for r in dropped] == [False] * len(dropped)
    assert [quiet.filter(r) for r in kept] == [True] * len(kept)


# --- a real run, ended from outside ----------------------------------------------------------

STOP_WITHIN_S = 30  # from the signal to the exit of `rlhf run` (measured: 2-8 s on 2 busy cores)
GONE_WITHIN_S = 15  # from that exit to the last process of the session gone


class _Run:
    """`rlhf run -c smoke` training SFT for as long as it is let, its output read line by line."""

    def __init__(self, workspace: Path, ignored: tuple[signal.Signals, ...] = ()) -> None:
        """``ignored``: signals the run starts with ignored, as `cmd &` (SIGINT) or nohup (SIGHUP) leave
        them; the others start at their defaults, as in a terminal, whatever pytest was started with."""
        argv = [
            sys.executable, "-m", "flows.cli", "run", "-c", "smoke", "-w", str(workspace),
            "--set", f"model.cache_dir={MODEL_CACHE}", "--set", "sft.optim.max_steps=100000",
            "--set", "ppo.enabled=false", "--set", "dpo.enabled=false", "--set", "eval.enabled=false",
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}  # its own ephemeral API
        def dispositions() -> None:  # in the child, before exec (inherited through it)
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, signal.SIG_IGN if sig in ignored else signal.SIG_DFL)

        self.proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     start_new_session=True, preexec_fn=dispositions)
        self.lines: list[tuple[float, str]] = []
        self.seen: dict[int, psutil.Process] = {}
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for raw in self.proc.stdout:
            self.lines.append((time.monotonic(), raw.decode(errors="replace").rstrip()))

    def _note_processes(self) -> None:
        """Every live process of the run's session and every descendant of `rlhf run`."""
        sid = self.proc.pid
        try:
            found = psutil.Process(sid).children(recursive=True)
        except psutil.NoSuchProcess:
            found = []
        for proc in psutil.process_iter():
            try:
                if os.getsid(proc.pid) == sid:
                    found.append(proc)
            except (ProcessLookupError, PermissionError):
                continue
        for proc in found:
            self.seen.setdefault(proc.pid, proc)

    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def wait_until_training(self, timeout: float = 420) -> None:
        deadline = time.monotonic() + timeout
        while not any(line.startswith("sft: step") for _, line in self.lines):
            assert self.proc.poll() is None, f"`rlhf run` ended early:\n{self.text()[-3000:]}"
            assert time.monotonic() < deadline, f"SFT never started:\n{self.text()[-3000:]}"
            self._note_processes()
            time.sleep(0.3)
        self._note_processes()
        server = [p for p in self.seen.values() if "uvicorn" in _cmdline(p)]
        assert server, "the ephemeral Prefect API server was not seen"

    def send(self, sig: signal.Signals, *, to_group: bool) -> float:
        self._note_processes()
        sent = time.monotonic()
        if to_group:
            os.killpg(self.proc.pid, sig)  # what a terminal does on Ctrl-C
        else:
            os.kill(self.proc.pid, sig)
        return sent

    def leftovers(self) -> list[str]:
        """Processes seen during the run still alive GONE_WITHIN_S after it ended (same pid and start time)."""
        deadline = time.monotonic() + GONE_WITHIN_S
        while True:
            self._note_processes()
            alive = []
            for proc in self.seen.values():
                try:
                    if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                        alive.append(f"{proc.pid}: {' '.join(proc.cmdline())[:120]}")
                except psutil.NoSuchProcess:
                    pass
            if not alive or time.monotonic() > deadline:
                return alive
            time.sleep(0.2)

    def kill_everything(self) -> None:
        for proc in [*self.seen.values(), psutil.Process(self.proc.pid) if self.proc.poll() is None else None]:
            try:
                if proc is not None:
                    proc.kill()
            except psutil.NoSuchProcess:
                pass
        if self.proc.poll() is None:
            self.proc.wait()


@pytest.fixture
def run(tmp_path):
    started = _Run(tmp_path / "ws")
    yield started
    started.kill_everything()


def _after(run: _Run, sent: float) -> list[str]:
    return [line for t, line in run.lines if t >= sent and line.strip()]


RESUME_LINE = re.compile(
    r"^(interrupted \(Ctrl-C\)|stopped by SIGTERM): run (?P<run>\S+) stopped \(finished stages and checkpoints are "
    r"kept\); carry on with: rlhf run --resume (?P=run) -c smoke --set model\.cache_dir=\S+ .*-w \S+$"
)


def _states(workspace: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(Prefect flow-run state by flow name, MLflow run status by run name), read from the workspace's stores."""
    with sqlite3.connect(workspace / "prefect" / "prefect.db") as db:
        flows = dict(db.execute("select flow.name, flow_run.state_type from flow_run join flow on flow.id = flow_run.flow_id"))
    with sqlite3.connect(workspace / "mlflow" / "mlflow.db") as db:
        mlflow = dict(db.execute("select name, status from runs"))
    return flows, mlflow


@pytest.mark.slow
def test_ctrl_c_stops_the_run_in_seconds_with_one_line_and_leaves_nothing_running(run, tmp_path):
    run.wait_until_training()
    sent = run.send(signal.SIGINT, to_group=True)
    code = run.proc.wait(timeout=STOP_WITHIN_S)
    took = time.monotonic() - sent
    time.sleep(0.5)  # the reader thread catches up
    assert code == 130, run.text()[-3000:]
    assert run.leftovers() == []
    after = _after(run, sent)
    told = [line for line in after if RESUME_LINE.match(line)]
    assert len(told) == 1, after
    assert not [line for line in after if "Traceback" in line or "ERROR" in line or "Crash" in line], after
    assert took < STOP_WITHIN_S
    run_id = RESUME_LINE.match(told[0])["run"]
    assert (tmp_path / "ws" / "runs" / run_id / "config.yaml").is_file()
    flows, mlflow = _states(tmp_path / "ws")
    assert flows["rlhf-pipeline"] == "CRASHED" and flows["sft"] == "CRASHED" and flows["data"] == "COMPLETED"
    assert mlflow == {run_id: "FAILED", "data": "FINISHED", "sft": "FAILED"}


@pytest.mark.slow
def test_ctrl_c_stops_a_run_its_shell_started_with_sigint_ignored(tmp_path):
    """A shell starts `rlhf run ... &` with SIGINT ignored; Ctrl-C (or `kill -INT`) still stops it, as `rlhf ui`."""
    run = _Run(tmp_path / "ws", ignored=(signal.SIGINT,))
    try:
        run.wait_until_training()
        sent = run.send(signal.SIGINT, to_group=True)
        code = run.proc.wait(timeout=STOP_WITHIN_S)
        time.sleep(0.5)
        assert code == 130, run.text()[-3000:]
        assert run.leftovers() == []
        assert len([line for line in _after(run, sent) if RESUME_LINE.match(line)]) == 1, _after(run, sent)
    finally:
        run.kill_everything()


@pytest.mark.slow
def test_a_nohup_run_outlives_the_hangup_and_still_stops_on_sigterm(tmp_path):
    """`nohup rlhf run ... &`: SIGHUP (the terminal closing) is ignored, as the user asked; SIGTERM stops it cleanly."""
    run = _Run(tmp_path / "ws", ignored=(signal.SIGHUP,))
    try:
        run.wait_until_training()
        busy = psutil.Process(run.proc.pid).cpu_times()
        hup = run.send(signal.SIGHUP, to_group=True)
        time.sleep(8)
        assert run.proc.poll() is None, run.text()[-3000:]
        assert not [line for line in _after(run, hup) if "stopped" in line or "interrupted" in line], _after(run, hup)
        after = psutil.Process(run.proc.pid).cpu_times()
        assert after.user + after.system - busy.user - busy.system > 2, (busy, after)  # still training, not stuck
        sent = run.send(signal.SIGTERM, to_group=False)
        code = run.proc.wait(timeout=STOP_WITHIN_S)
        time.sleep(0.5)
        assert code == 143, run.text()[-3000:]
        assert run.leftovers() == []
        assert len([line for line in _after(run, sent) if RESUME_LINE.match(line)]) == 1, _after(run, sent)
    finally:
        run.kill_everything()


@pytest.mark.slow
def test_sigterm_stops_the_run_like_ctrl_c(run, tmp_path):
    run.wait_until_training()
    sent = run.send(signal.SIGTERM, to_group=False)
    code = run.proc.wait(timeout=STOP_WITHIN_S)
    time.sleep(0.5)
    assert code in (143, 130), run.text()[-3000:]
    assert run.leftovers() == []
    after = _after(run, sent)
    assert len([line for line in after if RESUME_LINE.match(line)]) == 1, after
    assert not [line for line in after if "Traceback" in line], after
    flows, mlflow = _states(tmp_path / "ws")
    assert flows["rlhf-pipeline"] == "CRASHED" and flows["sft"] == "CRASHED"
    assert mlflow["sft"] == "FAILED"


@pytest.mark.slow
def test_after_sigkill_of_the_run_its_api_server_does_not_live_on(run):
    run.wait_until_training()
    run.send(signal.SIGKILL, to_group=False)
    assert run.proc.wait(timeout=10) == -signal.SIGKILL
    assert run.leftovers() == []
