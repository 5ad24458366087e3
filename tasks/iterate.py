"""The Prefect tasks of an `rlhf iterate` round: find the champion, label its replies, link the round's inputs.

The champion is the registry's ``<prefix>-policy@champion`` (or a run named with ``--from-run``);
its version's ``rlhf.stage_dir`` tag names the run directory that trained it, whose reward model
and SFT model the round builds on. While the batch waits for people, the Prefect run page shows
a progress bar (tasks labelled of all) and, for Label Studio, a link to the project.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import task

import tasks.stages.label as label_stage
from rlhf_core.config.pipeline import PipelineConfig
from rlhf_core.errors import ConfigError, UserError
from rlhf_core.labeling import FileLabeler, Labeler, Progress, SimulatedLabeler
from tasks.artifacts import RunDir, Workspace
from tasks.context import STAGE_CACHE, StageContext
from tasks.stages.label import Champion

ROUND_FILE = "round.json"  # in a round's run directory: its number, champion and source run


def make_labeler(cfg: PipelineConfig) -> Labeler:
    """The labelling backend ``iterate.labeler`` names (Label Studio's credentials from the environment)."""
    it = cfg.iterate
    if it.labeler == "simulated":
        return SimulatedLabeler(n_annotators=it.simulated_annotators, target_agreement=it.simulated_agreement, seed=cfg.seed)
    if it.labeler == "file":
        return FileLabeler(it.label_dir or Path(cfg.workspace) / "labels")
    from rlhf_core.label_studio import LabelStudioLabeler

    return LabelStudioLabeler.from_env()


def champion_from_run(ws: Workspace, run_id: str, version: str | None = None) -> Champion:
    """The PPO policy of run ``run_id`` and the reward model it was trained against."""
    run = ws.existing_run(run_id, option="--from-run")
    for stage in ("ppo", "reward", "sft", "data"):
        if run.outputs(stage) is None:
            raise UserError(f"--from-run {run_id}: its {stage} stage has not finished, so it has no policy to iterate on")
    return Champion(policy_dir=run.require("ppo")["model_dir"], reward_dir=run.require("reward")["model_dir"],
                    source_run=run.run_id, version=version or f"run {run.run_id}")


def champion_from_registry(cfg: PipelineConfig, ws: Workspace, tracking_uri: str) -> Champion:
    """The registry's ``champion`` policy and the run directory that trained it (clear errors when missing)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from tasks.registry import CHAMPION, registered_model_name

    if not (cfg.tracking.enabled and cfg.registry.enabled):
        raise ConfigError("rlhf iterate starts from the registry's champion policy, but tracking or the registry is off "
                          "in this config: name the run to start from with --from-run RUN_ID")
    name = registered_model_name(cfg.registry.model_prefix or cfg.name, "policy")
    try:
        version = MlflowClient(tracking_uri=tracking_uri).get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        latest = latest_policy_run(ws)
        start = f"--from-run {latest} (the latest run with a PPO policy)" if latest else "--from-run RUN_ID"
        raise UserError(f"no champion to iterate on: registered model {name!r} has no '{CHAMPION}' alias in {tracking_uri} "
                        f"(`rlhf run` promotes one when its evaluation passes the registry rule; or start from a run: "
                        f"{start})") from None
    stage_dir = version.tags.get("rlhf.stage_dir")
    if not stage_dir or not Path(stage_dir).is_dir():
        raise UserError(f"{name} v{version.version} ({CHAMPION}): its model directory {stage_dir!r} is not in this "
                        f"workspace: start from a run with --from-run RUN_ID")
    run_dir = Path(stage_dir).parent.parent  # <run>/ppo/model
    return champion_from_run(ws, run_dir.name, version=f"{name} v{version.version}")


LEDGER = "rounds.jsonl"
ELO_PLOT = "elo_by_round.png"


def history_dir(cfg: PipelineConfig) -> Path:
    """``<workspace>/iterate/<name>/``: the round ledger and the Elo-by-round plot."""
    return Path(cfg.workspace) / "iterate" / cfg.name


def read_ledger(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def base_run(cfg: PipelineConfig, ws: Workspace, champion: Champion) -> str:
    """The run whose curated data a new round grows: the latest finished round (its preferences hold
    every earlier round's labels, promoted or not), else the champion's own run."""
    rows = [r for r in read_ledger(history_dir(cfg) / LEDGER) if ws.run(r["run"]).outputs("data") is not None]
    return max(rows, key=lambda r: r["round"])["run"] if rows else champion.source_run


def latest_policy_run(ws: Workspace) -> str | None:
    """The newest run of the workspace whose PPO stage finished (what ``--from-run`` would take)."""
    if not ws.runs.is_dir():
        return None
    runs = sorted((p.name for p in ws.runs.iterdir() if p.is_dir()), reverse=True)
    return next((r for r in runs if ws.run(r).outputs("ppo") is not None), None)


def read_round(run: RunDir) -> dict[str, Any] | None:
    path = run.path / ROUND_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def write_round(run: RunDir, number: int, champion: Champion, base: str) -> dict[str, Any]:
    info = {"round": number, "champion": champion.__dict__, "base_run": base, "batch": run.run_id}
    (run.path / ROUND_FILE).write_text(json.dumps(info, indent=2), encoding="utf-8")
    return info


def round_number(ws: Workspace, base: str) -> int:
    """One more than the base run's round (a plain pipeline run is round 0)."""
    info = read_round(ws.run(base))
    return (info["round"] if info else 0) + 1


@task(name="label", cache_policy=STAGE_CACHE, persist_result=True)
def label_round(cfg: PipelineConfig, ctx: StageContext, champion: Champion, round_no: int, base: str) -> dict[str, str]:
    """Sample the champion's replies, send them for labelling, wait, import and validate the labels."""
    from tasks.artifacts import workspace_from

    labeler = make_labeler(cfg)
    source = workspace_from(cfg.workspace).run(base)
    with ctx.stage_run("label") as tracker:
        tracker.set_tags({"rlhf.round": str(round_no), "rlhf.champion": champion.version, "rlhf.labeler": labeler.name})
        outputs = label_stage.run(
            cfg, ctx.run, source, champion, round_no, labeler, tracker,
            on_progress=_progress_reporter(ctx),
            on_submitted=lambda batch: _announce(ctx, labeler, batch, round_no, _deadline(cfg.iterate.label_timeout_s)),
        )
        ctx.publish_markdown("labels", f"# Round {round_no}: labels\n\n{outputs.report}", "What the labellers gave back")
    return ctx.run.record_outputs("label", outputs.files)


def _deadline(timeout_s: float) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(time.time() + timeout_s))


def _announce(ctx: StageContext, labeler: Labeler, batch: str, round_no: int, deadline: str) -> None:
    """Say on the Prefect run page where the batch waits to be labelled."""
    from prefect import get_run_logger

    place = label_stage.location(labeler, batch)
    text = f"round {round_no}: batch `{batch}` sent to the {labeler.name} labeller" + (f": {place}" if place else "")
    get_run_logger().info(text)
    text += f". The round waits until every task has a label, at most until {deadline} (iterate.label_timeout_s)."
    ctx.publish_markdown("labelling", f"# Waiting for labels\n\n{text}", "Where this round's comparisons are labelled")


def _progress_reporter(ctx: StageContext):
    """A callback showing the labelled share as a Prefect progress artifact (and in the log)."""
    from prefect import get_run_logger

    state: dict[str, Any] = {}

    def report(progress: Progress) -> None:
        from prefect.artifacts import create_progress_artifact, update_progress_artifact

        share = 100.0 * progress.labelled_tasks / max(progress.total_tasks, 1)
        get_run_logger().info("labelled %d of %d tasks (%d labels)", progress.labelled_tasks, progress.total_tasks, progress.labels)
        if "id" not in state:
            state["id"] = create_progress_artifact(share, key="labelling-progress",
                                                   description=f"tasks labelled (of {progress.total_tasks})")
        else:
            update_progress_artifact(state["id"], share)

    return report


@task(name="round-inputs")
def link_round_inputs(ctx: StageContext, base: str, workspace: str) -> dict[str, str]:
    """The source run's curated data (preferences grown by this round's rows) and SFT model, recorded as this run's."""
    from tasks.artifacts import workspace_from

    return label_stage.link_round_inputs(ctx.run, workspace_from(workspace).run(base))
