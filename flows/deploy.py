"""Register the pipeline's flows as Prefect deployments on a process work pool.

Only deployments can be triggered and scheduled from the Prefect UI. Each flow defined
in :data:`FLOW_MODULES` becomes one deployment named after the config
(``rlhf-pipeline/rlhf-demo``), with:

- the config as its default parameters (the UI shows them as a form and validates
  edits against the pydantic schema before a run is created),
- on the pipeline flow only, a schedule (cron in UTC, or a fixed interval), registered
  inactive by default so nothing runs until a user turns it on (the stage flows are for runs
  by hand: scheduled too, each would redo its stage beside the scheduled pipeline),
- code pulled from this repository directory (``flow.from_source(<repo>, entrypoint)``):
  a process worker on the same machine runs it with the same virtualenv.

The list of flows is discovered, not hard-coded: every Prefect flow object defined in a
module of :data:`FLOW_MODULES` is deployed, so new stage flows need no change here.
Prefect is imported inside the functions (the CLI's ``--help`` path imports this module).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from flows.health import ServerError, check_reachable
from flows.runtime import EXTRA_LOGGERS
from rlhf_core.config.pipeline import PipelineConfig

REPO_DIR = Path(__file__).resolve().parent.parent
# Modules whose flows are deployed (import path, file path relative to the repo).
FLOW_MODULES: tuple[tuple[str, str], ...] = (("flows.stages", "flows/stages.py"), ("flows.iterate", "flows/iterate.py"))
DEFAULT_POOL = "rlhf-process"
DEFAULT_CRON = "0 3 * * *"  # 03:00 UTC daily: off-hours for a shared machine
SCHEDULED_FLOW = "rlhf-pipeline"  # the flow a schedule goes on by default
SCHEDULABLE_FLOWS = ("rlhf-pipeline", "rlhf-iterate")  # `rlhf deploy --scheduled-flow`: the weekly round
# What every flow run started by a worker should have, whatever the worker's shell had.
RUN_ENV = {
    "DO_NOT_TRACK": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "GX_ANALYTICS_ENABLED": "false",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "PREFECT_LOGGING_EXTRA_LOGGERS": EXTRA_LOGGERS,  # our warnings on the run page, also for worker runs
}


@dataclass(frozen=True)
class FlowEntry:
    """One deployable flow: its Prefect name and ``file.py:function`` entrypoint."""

    flow_name: str
    module: str
    attr: str
    entrypoint: str
    parameters: tuple[str, ...]


@dataclass(frozen=True)
class DeployedFlow:
    flow_name: str
    deployment_name: str
    deployment_id: str
    url: str | None
    schedule: str = "no schedule"

    @property
    def full_name(self) -> str:
        return f"{self.flow_name}/{self.deployment_name}"


def discover_flows(modules: Sequence[tuple[str, str]] = FLOW_MODULES) -> list[FlowEntry]:
    """Every Prefect flow object defined (not merely imported) in ``modules``."""
    from prefect import Flow

    entries = []
    for module_name, rel_path in modules:
        module = importlib.import_module(module_name)
        for attr, obj in vars(module).items():
            if isinstance(obj, Flow) and getattr(obj.fn, "__module__", None) == module_name:
                params = tuple(inspect.signature(obj.fn).parameters)
                entries.append(FlowEntry(obj.name, module_name, attr, f"{rel_path}:{attr}", params))
    return entries


def default_parameters(entry: FlowEntry, cfg: PipelineConfig) -> dict[str, Any]:
    """The deployment's default parameters, filled from the pipeline config.

    A parameter annotated ``PipelineConfig`` gets the whole config; one annotated with a
    stage config type (``SFTConfig``, ...) gets that section; others keep the flow's default.
    """
    fn = getattr(importlib.import_module(entry.module), entry.attr).fn
    hints = inspect.get_annotations(fn, eval_str=True)
    sections = {type(getattr(cfg, name)): name for name in PipelineConfig.model_fields if hasattr(getattr(cfg, name), "model_dump")}
    params: dict[str, Any] = {}
    for name in entry.parameters:
        hint = hints.get(name)
        if hint is PipelineConfig:
            params[name] = cfg.model_dump(mode="json")
        elif hint in sections:
            params[name] = getattr(cfg, sections[hint]).model_dump(mode="json")
    return params


def absolutize_paths(model: BaseModel, base: Path) -> None:
    """Make every relative ``Path`` field (nested) absolute against ``base``, in place.

    A deployment's runs start in the worker's working directory, not where the user typed
    `rlhf deploy`; resolving here keeps ".rlhf" meaning what the user meant. Lists of paths
    (the data inputs, which may also be hub ids) are :func:`resolve_inputs`' job.
    """
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            absolutize_paths(value, base)
        elif isinstance(value, Path) and not value.is_absolute():
            setattr(model, name, (base / value.expanduser()).resolve())


def resolve_inputs(cfg: PipelineConfig, cwd: Path, fallback: Path = REPO_DIR) -> None:
    """Absolute paths for the config's data inputs, in place; a missing input is a ConfigError.

    A deployment's runs start in the worker's directory, not where the user typed
    `rlhf deploy`, and may start weeks later: a path is fixed here, once. A relative path
    resolves against ``cwd``; where nothing is there but the repository has it (the shipped
    ``data/demo`` files of the presets), against the repository. Hub ids stay as they are.
    """
    from data_checks.importers import looks_like_hub_id
    from rlhf_core.config.data import DataInput
    from rlhf_core.errors import ConfigError

    missing = []
    for key in ("demonstrations", "preferences", "rl_prompts"):
        resolved = []
        for i, entry in enumerate(getattr(cfg.data, key)):
            given = entry.path if isinstance(entry, DataInput) else entry  # {path, harmful} keeps its label
            source = str(given)
            path = given.expanduser()
            candidates = [path] if path.is_absolute() else [cwd / path, fallback / path]
            found = next((c for c in candidates if c.exists()), None)
            if found is not None:
                found = found.resolve()
                resolved.append(entry.model_copy(update={"path": found}) if isinstance(entry, DataInput) else found)
            elif source.startswith("hf:") or (not path.is_absolute() and looks_like_hub_id(source)):
                resolved.append(entry)
            else:
                where = "" if path.is_absolute() else f" (looked in {cwd} and {fallback})"
                missing.append(f"data.{key}[{i}]: {source}: no such file{where}")
        setattr(cfg.data, key, resolved)
    if missing:
        raise ConfigError(
            "; ".join(missing) + ": scheduled runs would fail at the data stage; fix the paths "
            "(relative ones resolve against the directory `rlhf deploy` runs in) and deploy again"
        )


def _api_settings(prefect_api_url: str):
    """Point this process's Prefect client at the server, whatever was imported before."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    return temporary_settings(updates={PREFECT_API_URL: prefect_api_url})


def ensure_work_pool(name: str, prefect_api_url: str) -> bool:
    """Create a process work pool called ``name`` unless it exists; True if created."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with _api_settings(prefect_api_url), get_client(sync_client=True) as client:
        try:
            pool = client.read_work_pool(name)
        except ObjectNotFound:
            client.create_work_pool(
                WorkPoolCreate(
                    name=name,
                    type="process",
                    description="rlhf-pipeline: flow runs as local processes (created by `rlhf deploy`).",
                    base_job_template=ProcessWorker.get_default_base_job_template(),
                )
            )
            return True
    if pool.type != "process":
        raise ServerError(
            f"work pool '{name}' at {prefect_api_url} has type '{pool.type}', not 'process'; "
            "pass --pool with another name"
        )
    return False


@dataclass(frozen=True)
class ScheduleSpec:
    """A deployment schedule as the user gave it: cron (UTC) or an interval in seconds."""

    cron: str | None = None
    interval_s: float | None = None
    active: bool = False

    def to_prefect(self):
        from prefect.schedules import Cron, Interval

        if self.interval_s is not None:
            return Interval(self.interval_s, timezone="UTC", active=self.active)
        return Cron(self.cron, timezone="UTC", active=self.active)

    def describe(self) -> str:
        when = f"every {self.interval_s:g} s" if self.interval_s is not None else f"cron '{self.cron}' (UTC)"
        return f"{when}, {'active' if self.active else 'off'}"


def make_schedule(cron: str | None, interval_s: float | None, active: bool) -> ScheduleSpec | None:
    """The schedule for ``--cron`` / ``--interval`` (None: no schedule); a bad one is a ServerError."""
    if interval_s is not None:
        if cron:
            raise ServerError("give --cron or --interval, not both")
        if interval_s < 1:
            raise ServerError(f"--interval {interval_s:g}: must be at least 1 second")
        return ScheduleSpec(interval_s=float(interval_s), active=active)
    if not cron:
        return None
    check_cron(cron)
    return ScheduleSpec(cron=cron, active=active)


def deploy_flows(
    cfg: PipelineConfig,
    prefect_api_url: str,
    *,
    pool: str = DEFAULT_POOL,
    schedule: ScheduleSpec | None = ScheduleSpec(cron=DEFAULT_CRON),
    deployment_name: str | None = None,
    source_dir: Path = REPO_DIR,
    env: Mapping[str, str] | None = None,
    modules: Sequence[tuple[str, str]] = FLOW_MODULES,
    scheduled_flow: str = SCHEDULED_FLOW,
) -> list[DeployedFlow]:
    """Create or update one deployment per discovered flow; return what was registered.

    ``schedule`` goes on the ``scheduled_flow`` deployment only (the pipeline, or `rlhf-iterate` for rounds). Its on/off state is the
    schedule's own ``active`` flag, and deployments are never paused: the Prefect UI then shows
    one consistent state (the deployments list, the schedule toggle and the deployment toggle),
    as for ``infra/prefect.yaml``. ``cfg.workspace`` should be absolute: the worker runs flows
    from ``source_dir``. Prints nothing (Prefect's ``deploy`` prints a table per deployment).
    """
    check_reachable(prefect_api_url, name="Prefect API", kind="prefect")
    ensure_work_pool(pool, prefect_api_url)
    from prefect import Flow

    name = deployment_name or cfg.name
    ui = prefect_api_url.rstrip("/").removesuffix("/api")
    deployed = []
    with _api_settings(prefect_api_url):
        for entry in discover_flows(modules):
            remote: Flow = Flow.from_source(source=str(source_dir), entrypoint=entry.entrypoint)
            scheduled = schedule is not None and entry.flow_name == scheduled_flow
            deployment = remote.to_deployment(
                name=name,
                schedules=[schedule.to_prefect()] if scheduled else [],
                paused=False,
                parameters=default_parameters(entry, cfg),
                job_variables={"env": {**RUN_ENV, **(env or {})}},
                description=(remote.description or "").strip().splitlines()[0] if remote.description else None,
                tags=["rlhf", cfg.name],
            )
            deployment_id = deployment.apply(work_pool_name=pool)
            deployed.append(
                DeployedFlow(
                    entry.flow_name, name, str(deployment_id), f"{ui}/deployments/deployment/{deployment_id}",
                    schedule.describe() if scheduled else "no schedule (run by hand)",
                )
            )
    if not deployed:
        raise ServerError(f"no Prefect flows found in {', '.join(p for _, p in modules)}: nothing to deploy")
    return sorted(deployed, key=lambda d: d.flow_name != scheduled_flow)  # the scheduled one first


def check_cron(cron: str) -> None:
    from prefect.client.schemas.schedules import CronSchedule

    try:
        CronSchedule(cron=cron)
    except ValueError as exc:
        raise ServerError(f"--cron {cron!r} is not a valid cron expression (e.g. '0 3 * * *' = 03:00 daily)") from exc
