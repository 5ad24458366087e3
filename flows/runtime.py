"""Process-level setup before prefect/mlflow are imported: keep state in the workspace.

With no PREFECT_API_URL set, Prefect runs an ephemeral API whose database lives under
PREFECT_HOME; we point that (and MLflow's sqlite store) into the workspace so a user
finds everything in one place and nothing needs starting first.

Also how the process ends (Ctrl-C, SIGTERM: :class:`Interrupted`) and what its console and run
log show. The crash sweep, for runs whose process was killed, is flows/crash_sweep.py.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


EXTRA_LOGGERS = "rlhf,rlhf_core,tasks"
# The logger these warnings have always gone to (from when they shared this module with the crash sweep).
log = logging.getLogger("rlhf.reconcile")

SERVER_NICE_ENV = "RLHF_PREFECT_SERVER_NICE"
# Only without PREFECT_API_URL, i.e. for the ephemeral API server `rlhf run` starts as its own
# subprocess (uvicorn, alive as long as the run); a user's value wins. That server's idle CPU
# (~0.8 CPU-s a minute, measured) is almost all its docket worker polling every 0.1-0.25 s,
# which no setting reaches; its services cost little and stay on: the task run recorder writes
# the task runs (UI, crash sweep), the event persister the UI's event feed, the triggers run
# automations found in the workspace's database (the zombie-run one, once `rlhf ui`/`deploy` made it).
EPHEMERAL_SERVER_DEFAULTS = {
    # Proactive automations are checked every 60 s instead of 5 s (each pass also deletes closed
    # buckets from sqlite): the zombie-run automation's window is 3 heartbeats = 540 s.
    # An ISO 8601 duration: Prefect refuses a bare "60" for this setting.
    "PREFECT_SERVER_EVENTS_PROACTIVE_GRANULARITY": "PT60S",
    # The server runs 10 nice levels below `rlhf run` (see lower_server_priority), so that on 2
    # cores its wake-ups give way to torch's threads (not yet measured on step times); 0 = off.
    SERVER_NICE_ENV: "10",
}


def prepare_environment(workspace: Path) -> None:
    """Must run before the first `import prefect` in this process to take effect."""
    workspace = workspace.expanduser().resolve()
    workspace.mkdir(parents=True, exist_ok=True)
    if "PREFECT_API_URL" not in os.environ:
        os.environ.setdefault("PREFECT_HOME", str(workspace / "prefect"))
        for key, value in EPHEMERAL_SERVER_DEFAULTS.items():
            os.environ.setdefault(key, value)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # The ephemeral API migrates a fresh sqlite DB on first start: on a busy 2-core machine
    # that can exceed Prefect's 20 s default.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
    # Our own warnings (rlhf.tracking: server unreachable, rlhf.reconcile: crashed runs,
    # rlhf_core: out-of-memory retries and corrupt checkpoints set aside) also reach the Prefect run page.
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", EXTRA_LOGGERS)
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def lower_server_priority(pid: int) -> int | None:
    """Set the ephemeral API server process ``pid`` RLHF_PREFECT_SERVER_NICE levels nicer than this one.

    Capped at 19 (the lowest priority); the same call twice gives the same niceness. Returns the
    niceness set, or None when the server is left as it is (unset, 0 or negative, not a number,
    or the process cannot be changed: only a warning then).
    """
    raw = os.environ.get(SERVER_NICE_ENV, "").strip()
    try:
        increment = int(raw or 0)
    except ValueError:
        log.warning("%s=%r is not a whole number: the Prefect API server keeps its priority", SERVER_NICE_ENV, raw)
        return None
    if increment <= 0:  # raising a priority needs privileges, and is not what this is for
        return None
    import psutil

    niceness = min(19, os.nice(0) + increment)
    try:
        psutil.Process(pid).nice(niceness)
    except (psutil.Error, OSError) as exc:
        log.warning("could not lower the priority of the Prefect API server (pid %s): %s", pid, exc)
        return None
    return niceness


# --- Ending a run: Ctrl-C, SIGTERM, SIGKILL ---------------------------------------------
# The ephemeral Prefect API server is a child of `rlhf run`. Started as Prefect starts it, it
# shares the terminal's foreground process group: Ctrl-C stopped it at the same moment as the
# run, which then spent minutes retrying the dead API to report the interrupt; after a SIGKILL
# of `rlhf run` it lived on as an orphan. So it starts in its own session (no Ctrl-C reaches it;
# the run stops it at exit) through rlhf_core.processes.GUARD, which asks the kernel to SIGTERM
# it when its parent dies and then execs the server.


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT), SIGTERM or SIGHUP ended the command; ``run_id`` is the run it stopped.

    A KeyboardInterrupt, so Prefect records the flow run Crashed ("aborted by an interrupt
    signal") and every ``except BaseException`` on the way marks its MLflow run FAILED.
    """

    def __init__(self, signum: int = signal.SIGINT, run_id: str | None = None, resume: str | None = None,
                 note: str | None = None) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)
        self.run_id = run_id
        self.resume = resume  # the command that carries on, e.g. `rlhf run --resume RUN_ID -c smoke`
        self.note = note

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM

    def describe(self) -> str:
        """The one line the CLI prints."""
        how = "interrupted (Ctrl-C)" if self.signum == signal.SIGINT else f"stopped by {signal.Signals(self.signum).name}"
        then = f"; carry on with: {self.resume}" if self.resume else ""
        if self.run_id is not None:
            return f"{how}: run {self.run_id} stopped (finished stages and checkpoints are kept){then}"
        return f"{how}{': ' + self.note if self.note else ''}{then}"


def handle_termination() -> None:
    """SIGTERM and SIGHUP end a command as Ctrl-C does (an :class:`Interrupted` exception), not at once.

    Python's default for SIGTERM is to die on the spot: no flow-run state, no MLflow status, no
    cleanup. Prefect's flow engine swaps in its own SIGTERM handler while a flow runs and, once
    it has recorded the crash, sends the signal again to the handler set here. A second signal
    while the command unwinds exits at once. Main thread only (signal handlers live there).
    SIGTERM or SIGHUP ignored at start stays ignored: `nohup rlhf run ... &` must outlive the
    terminal it was started from, as the user asked. SIGINT is set explicitly, as `rlhf ui` does: a
    shell that starts a command with `&` leaves it ignored, and then Ctrl-C / `kill -INT` would do nothing.
    """
    seen: list[int] = []

    def on_signal(signum: int, _frame) -> None:
        if seen:
            os._exit(128 + signum)
        seen.append(signum)
        raise Interrupted(signum)

    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is not signal.SIG_IGN:
            signal.signal(sig, on_signal)


def exit_hard_on_next_signal(code: int) -> None:
    """After an interrupt was reported: another Ctrl-C/SIGTERM during the clean-up exits at once."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is not signal.SIG_IGN:  # nohup's SIGHUP stays ignored
            signal.signal(sig, lambda *_: os._exit(code))


# --- What the console shows when a run fails -----------------------------------------------
# Prefect logs a failing task or flow run with its traceback, on every level of nesting (task,
# stage subflow, pipeline: ~180 lines), then the CLI prints the one-line error. For our own
# errors (UserError: bad input, a failed training check) and interrupts those records stay in
# the run's log file and on the Prefect run page, and the console gets the one line.

_LOG_FORMAT = "%(asctime)s | %(levelname)-7s | %(name)s - %(message)s"


def _user_error_names() -> set[str]:
    from rlhf_core.errors import UserError

    names, todo = set(), [UserError]
    while todo:
        cls = todo.pop()
        names.add(cls.__name__)
        todo += cls.__subclasses__()
    return names


class QuietKnownFailures(logging.Filter):
    """Drops, on the console only, Prefect's echo of an error the CLI reports in one line itself."""

    STATE_NOISE = ("Execution was aborted by an interrupt signal", "Execution was aborted by a termination signal")

    def filter(self, record: logging.LogRecord) -> bool:
        from rlhf_core.errors import UserError

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, (UserError, KeyboardInterrupt)) or type(exc).__name__ == "TerminationSignal":
            return False
        if not record.name.startswith(("prefect", "rlhf", "tasks")):
            return True
        message = record.getMessage()
        if message.startswith("Stopping temporary server"):
            return False  # printed at exit, after the CLI's last line
        if message.startswith(("Finished in state Failed(", "Finished in state Crashed(", "Crash detected!")):
            if any(noise in message for noise in self.STATE_NOISE):
                return False
            return not any(f"exception {name}:" in message or f"exception: {name}:" in message
                           for name in _user_error_names())
        return True


def quiet_console() -> None:
    """Attach :class:`QuietKnownFailures` to Prefect's console handlers (once; after Prefect set up logging)."""
    from prefect.logging.configuration import ensure_logging_setup
    from prefect.logging.handlers import PrefectConsoleHandler

    ensure_logging_setup()
    for name in ("", "uvicorn"):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, PrefectConsoleHandler) and not any(
                isinstance(f, QuietKnownFailures) for f in handler.filters
            ):
                handler.addFilter(QuietKnownFailures())


class _RedactingFormatter(logging.Formatter):
    """Log lines as everything else we write: secrets masked (rlhf_core.redact)."""

    def format(self, record: logging.LogRecord) -> str:
        from rlhf_core.redact import redact_text

        return redact_text(super().format(record))


@contextmanager
def run_log(path: Path) -> Iterator[Path]:
    """Everything logged in this process (Prefect's run logs with tracebacks, ours) also goes to ``path``.

    Appends: a resumed run adds to the file of its earlier attempts. Added after Prefect has set
    up logging: a handler on the root logger before that makes Prefect drop its console handler.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(_RedactingFormatter(_LOG_FORMAT))
    handler.setLevel(logging.INFO)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield path
    finally:
        root.removeHandler(handler)
        handler.close()
