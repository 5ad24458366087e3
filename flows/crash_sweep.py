"""The crash sweep: flow runs whose process was killed are set Crashed instead of staying Running.

A flow run whose process is killed (SIGKILL, out of memory, a reboot) cannot report its own
end, so Prefect keeps showing it Running. Every top-level flow run we start records its owner
(host, pid, process start time) as flow-run labels; `rlhf run`, `rlhf ui` and `rlhf deploy`
first sweep: a RUNNING/PENDING run whose owner on this host is gone is set Crashed (with its
subflows and task runs) and its MLflow runs FAILED. Runs on another host are left alone
(their pids mean nothing here); those started by a worker also get Prefect's heartbeat
automation (`ensure_zombie_automation`).

Prefect and MLflow are imported inside the functions only.
"""

from __future__ import annotations

from dataclasses import dataclass


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
