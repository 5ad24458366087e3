"""Process-level setup before prefect/mlflow are imported: keep state in the workspace.

With no PREFECT_API_URL set, Prefect runs an ephemeral API whose database lives under
PREFECT_HOME; we point that (and MLflow's sqlite store) into the workspace so a user
finds everything in one place and nothing needs starting first.

It also holds the crash sweep (:func:`reconcile_crashed_runs`): flow runs whose process was
killed are set Crashed instead of staying Running in the Prefect UI (prefect and mlflow are
imported inside those functions only).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rlhf_core.processes import GUARD, guarded  # noqa: F401 - the Prefect API server starts through it


EXTRA_LOGGERS = "rlhf,rlhf_core,tasks"

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
        _log().warning("%s=%r is not a whole number: the Prefect API server keeps its priority", SERVER_NICE_ENV, raw)
        return None
    if increment <= 0:  # raising a priority needs privileges, and is not what this is for
        return None
    import psutil

    niceness = min(19, os.nice(0) + increment)
    try:
        psutil.Process(pid).nice(niceness)
    except (psutil.Error, OSError) as exc:
        _log().warning("could not lower the priority of the Prefect API server (pid %s): %s", pid, exc)
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
    """
    seen: list[int] = []

    def on_signal(signum: int, _frame) -> None:
        if seen:
            os._exit(128 + signum)
        seen.append(signum)
        raise Interrupted(signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)


def exit_hard_on_next_signal(code: int) -> None:
    """After an interrupt was reported: another Ctrl-C/SIGTERM during the clean-up exits at once."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
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


# --- Crashed flow runs -------------------------------------------------------------------
# A flow run whose process is killed (SIGKILL, out of memory, a reboot) cannot report its own
# end, so Prefect keeps showing it Running. Every top-level flow run we start records its owner
# (host, pid, process start time) as flow-run labels; `rlhf run`, `rlhf ui` and `rlhf deploy`
# first sweep: a RUNNING/PENDING run whose owner on this host is gone is set Crashed (with its
# subflows and task runs) and its MLflow runs FAILED. Runs on another host are left alone
# (their pids mean nothing here); those started by a worker also get Prefect's heartbeat
# automation (`ensure_zombie_automation`).

LABEL_HOST = "rlhf.owner.host"
LABEL_PID = "rlhf.owner.pid"
LABEL_STARTED = "rlhf.owner.started"  # the process's start time: a reused pid is not the owner
LABEL_TRACKING_URI = "rlhf.tracking_uri"
LABEL_EXPERIMENT = "rlhf.mlflow_experiment_id"
ZOMBIE_AUTOMATION = "rlhf: crash flow runs that stopped sending heartbeats"


def _log():
    import logging

    return logging.getLogger("rlhf.reconcile")


def owner_labels() -> dict[str, str | int | float]:
    """This process as the owner of a flow run: host name, pid, and start time."""
    import socket

    import psutil

    me = psutil.Process()
    return {LABEL_HOST: socket.gethostname(), LABEL_PID: me.pid, LABEL_STARTED: round(me.create_time(), 3)}


def owner_alive(labels: dict) -> bool | None:
    """Whether the owner recorded in ``labels`` still runs; None when it is unknowable from here."""
    import socket

    import psutil

    if LABEL_PID not in labels or labels.get(LABEL_HOST) != socket.gethostname():
        return None
    try:
        proc = psutil.Process(int(labels[LABEL_PID]))
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return abs(proc.create_time() - float(labels.get(LABEL_STARTED, 0))) < 1.0
    except (psutil.NoSuchProcess, ValueError):
        return False
    except psutil.AccessDenied:
        return None


def record_owner(flow_run_id: str, extra: dict | None = None) -> None:
    """Label a flow run with this process (and ``extra`` labels); a failure only logs a warning."""
    if not flow_run_id:
        return
    from uuid import UUID

    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            client.update_flow_run_labels(UUID(flow_run_id), {**owner_labels(), **(extra or {})})
    except Exception as exc:  # the run goes on; it only loses crash detection
        _log().warning("could not record the owner of flow run %s: %s", flow_run_id, exc)


@dataclass
class CrashedRun:
    """One flow run the sweep marked Crashed."""

    flow_run_id: str
    name: str
    owner: str
    subflows: int
    task_runs: int
    mlflow_runs: int


def _prefect_api(prefect_api_url: str | None):
    from contextlib import nullcontext

    if not prefect_api_url:
        return nullcontext()
    from prefect.settings import PREFECT_API_URL, temporary_settings

    return temporary_settings(updates={PREFECT_API_URL: prefect_api_url})


def reconcile_crashed_runs(prefect_api_url: str | None = None) -> list[CrashedRun]:
    """Set Crashed every RUNNING/PENDING flow run whose recorded owner process on this host is gone.

    Also its RUNNING/PENDING subflows and task runs, and FAILED its RUNNING MLflow runs (the
    parent and stage runs tagged with its flow-run id). Uses ``prefect_api_url`` or the current
    Prefect API (the workspace's embedded one without PREFECT_API_URL). Never raises: what it
    cannot reach is logged as a warning.
    """
    try:
        with _prefect_api(prefect_api_url):
            return _sweep()
    except Exception as exc:
        _log().warning("could not check the Prefect API for crashed flow runs: %s", exc)
        return []


def _sweep() -> list[CrashedRun]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterParentFlowRunId,
        FlowRunFilterState,
        FlowRunFilterStateType,
        TaskRunFilter,
        TaskRunFilterState,
        TaskRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed

    live = [StateType.RUNNING, StateType.PENDING]
    active = FlowRunFilterState(type=FlowRunFilterStateType(any_=live))
    crashed: list[CrashedRun] = []
    with get_client(sync_client=True) as client:
        for run in client.read_flow_runs(flow_run_filter=FlowRunFilter(state=active)):
            labels = run.labels or {}
            if owner_alive(labels) is not False:
                continue
            owner = f"pid {labels[LABEL_PID]} on {labels.get(LABEL_HOST)}"
            message = (
                f"Crashed: the process that ran this flow run ({owner}) is gone (killed, out of memory or the "
                "machine restarted); marked by `rlhf` at start-up"
            )
            ids, frontier = [run.id], [run.id]
            while frontier:  # subflows (and theirs) still shown running
                children = client.read_flow_runs(flow_run_filter=FlowRunFilter(
                    parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=frontier), state=active))
                frontier = [child.id for child in children if child.id not in ids]
                ids += frontier
            tasks = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)),
                task_run_filter=TaskRunFilter(state=TaskRunFilterState(type=TaskRunFilterStateType(any_=live))),
            )
            for task_run in tasks:
                client.set_task_run_state(task_run.id, Crashed(message=message), force=True)
            for flow_run_id in reversed(ids):  # children first, the parent last
                client.set_flow_run_state(flow_run_id, Crashed(message=message), force=True)
            failed = _fail_mlflow_runs(labels, str(run.id), message)
            crashed.append(CrashedRun(str(run.id), run.name, owner, len(ids) - 1, len(tasks), failed))
            _log().warning(
                "flow run '%s' (%s) was still shown running but its process (%s) is gone: marked Crashed "
                "with %d subflow(s); %d MLflow run(s) marked FAILED", run.name, run.id, owner, len(ids) - 1, failed,
            )  # fmt: skip
    return crashed


def _fail_mlflow_runs(labels: dict, flow_run_id: str, message: str) -> int:
    """FAILED for the RUNNING MLflow runs tagged with this flow-run id (parent and stages)."""
    uri, experiment_id = labels.get(LABEL_TRACKING_URI), labels.get(LABEL_EXPERIMENT)
    if not uri or not experiment_id:
        return 0
    try:
        if str(uri).startswith(("http://", "https://")):
            from flows.health import check_reachable

            check_reachable(str(uri), name="MLflow tracking server", kind="mlflow")  # not MLflow's minutes of retries
        from mlflow.tracking import MlflowClient

        client = MlflowClient(str(uri))
        runs = client.search_runs(
            [str(experiment_id)],
            filter_string=f"tags.`prefect.flow_run_id` = '{flow_run_id}' and attributes.status = 'RUNNING'",
        )
        for mlflow_run in runs:
            client.set_tag(mlflow_run.info.run_id, "rlhf.crash", message)
            client.set_terminated(mlflow_run.info.run_id, status="FAILED")
        return len(runs)
    except Exception as exc:
        _log().warning("could not mark the MLflow runs of crashed flow run %s FAILED in %s: %s", flow_run_id, uri, exc)
        return 0


def ensure_zombie_automation(prefect_api_url: str | None = None) -> bool:
    """Create (once) the Prefect automation that sets Crashed a flow run whose heartbeats stop.

    Prefect 3.8 flow runs send a `prefect.flow-run.heartbeat` event every
    PREFECT_FLOWS_HEARTBEAT_FREQUENCY seconds (default 180); the automation fires when three
    are missed. This covers runs a worker started (or on another host), which the pid sweep
    cannot judge. Needs a Prefect server (its triggers service); True if it was created now.
    """
    from datetime import timedelta

    try:
        with _prefect_api(prefect_api_url):
            from prefect.automations import Automation
            from prefect.client.orchestration import get_client
            from prefect.client.schemas.objects import StateType
            from prefect.events.actions import ChangeFlowRunState
            from prefect.events.schemas.automations import EventTrigger, Posture
            from prefect.events.schemas.events import ResourceSpecification
            from prefect.settings import get_current_settings

            with get_client(sync_client=True) as client:
                if client.read_automations_by_name(ZOMBIE_AUTOMATION):
                    return False
            frequency = get_current_settings().flows.heartbeat_frequency
            if not frequency:
                _log().warning("flow-run heartbeats are off (PREFECT_FLOWS_HEARTBEAT_FREQUENCY): no zombie-run automation")
                return False
            Automation(
                name=ZOMBIE_AUTOMATION,
                description="Flow runs that stop sending heartbeats (their process died) are set Crashed.",
                trigger=EventTrigger(
                    after={"prefect.flow-run.heartbeat"},
                    expect={"prefect.flow-run.*"},  # another heartbeat or any state change
                    match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
                    for_each={"prefect.resource.id"},
                    posture=Posture.Proactive,
                    threshold=1,
                    within=timedelta(seconds=3 * frequency),
                ),
                actions=[ChangeFlowRunState(
                    state=StateType.CRASHED, force=True,
                    message=f"Crashed: no heartbeat for {3 * frequency} s (its process died)",
                )],
            ).create()
            return True
    except Exception as exc:
        _log().warning("could not create the Prefect automation '%s': %s", ZOMBIE_AUTOMATION, exc)
        return False
