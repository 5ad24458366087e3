"""Iterated online RLHF: the `rlhf-iterate` flow (one round) and `rlhf iterate` (N rounds).

A round (Bai et al. 2022, "Iterated Online RLHF", sec. 4.5) is a new run directory:

    label    the champion's replies to fresh RL prompts, labelled (simulated panel, files, Label Studio)
    data     the base run's curated files (the latest round's, else the champion's run's), its
             preference pairs grown by the round's labelled rows
    sft      the base run's SFT model (linked: the KL reference stays the SFT model)
    reward   warm-started from the champion's reward model, trained on old + new pairs
    ppo      from the champion policy against that reward model (KL to the SFT model)
    eval     the new policy beside SFT, best-of-N and the previous champion; the registry rule

The champion is the registry's ``<prefix>-policy@champion`` (``--from-run RUN`` names a run
instead). Each round's MLflow run (stage runs nested in it) is tagged with its round, champion and
source run; `rlhf iterate --rounds N` nests the rounds under one MLflow run. Every finished round
adds a line to ``<workspace>/iterate/<name>/rounds.jsonl`` (Elo of the new policy and of the
champion, gold delta, labels, decision) and redraws ``elo_by_round.png`` from it, so scheduled
rounds build the same history. One round at a time per pipeline and workspace.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from flows.runtime import prepare_environment
from flows.servers import preflight
from flows.stages import _apply_threads, _context, _outputs_gone, eval_flow, ppo_flow, reward_flow
from rlhf_core.config.pipeline import PipelineConfig, dump_config
from rlhf_core.errors import UserError
from tasks.artifacts import RunDir, Workspace, workspace_from
from tasks.context import StageContext
from tasks.iterate import (
    ELO_PLOT, LEDGER, base_run, champion_from_registry, champion_from_run, history_dir, label_round, link_round_inputs,
    read_ledger, read_round, round_number, write_round,
)
from tasks.stages.eval import PREVIOUS_CHAMPION, PRIMARY
from tasks.stages.label import Champion, LabelTimeout

def round_config(config: PipelineConfig, champion: Champion) -> PipelineConfig:
    """The pipeline config of a round: reward model and policy start from the champion's, no DPO, no checkpoint policies."""
    data = config.model_dump(mode="json")
    data["reward"]["init_from"] = champion.reward_dir
    data["ppo"]["init_from"] = champion.policy_dir
    data["dpo"]["enabled"] = False
    data["eval"]["ppo_checkpoints"] = False
    for stage in ("sft", "reward", "ppo", "eval"):
        data[stage]["enabled"] = True
    return PipelineConfig.model_validate(data)


def open_round(config: PipelineConfig, ws: Workspace, tracking_uri: str, from_run: str | None,
               resume_run: str | None) -> tuple[RunDir, dict[str, Any]]:
    """A new round's run directory and ``round.json`` (champion from ``from_run`` or the registry; data
    from the latest round), or the round to resume."""
    if resume_run:
        run = ws.existing_run(resume_run, option="--resume")
        info = read_round(run)
        if info is None:
            raise UserError(f"--resume {resume_run}: not an `rlhf iterate` round (no round.json); "
                            "a pipeline run resumes with `rlhf run --resume`")
        return run, info
    champion = champion_from_run(ws, from_run) if from_run else champion_from_registry(config, ws, tracking_uri)
    base = base_run(config, ws, champion)
    number = round_number(ws, base)
    if (unfinished := unfinished_round(ws, base)) is not None:
        raise UserError(f"round {number} on run {base} is unfinished in {unfinished} (the labels given there are kept): "
                        f"carry it on with `rlhf iterate --resume {unfinished}`, or delete {ws.runs / unfinished} "
                        "to start the round afresh")
    run = ws.new_run(f"{config.name}-round{number}")
    return run, write_round(run, number, champion, base)


def unfinished_round(ws: Workspace, base: str) -> str | None:
    """A round on ``base`` whose evaluation never finished (a timeout, a crash): resume it, not a second one."""
    if not ws.runs.is_dir():
        return None
    for path in sorted(ws.runs.iterdir(), reverse=True):
        info = read_round(RunDir(path)) if path.is_dir() else None
        if info is not None and info.get("base_run") == base and RunDir(path).outputs("eval") is None:
            return path.name
    return None


def _tag_round(ctx: StageContext, number: int, champion: Champion, iteration_run_id: str | None) -> None:
    if not ctx.tracking_enabled:
        return
    tags = {"rlhf.round": str(number), "rlhf.champion": champion.version, "rlhf.source_run": champion.source_run,
            "rlhf.flow": "rlhf-iterate"}
    if iteration_run_id:
        tags["mlflow.parentRunId"] = iteration_run_id  # shown nested under the `rlhf iterate` run
    ctx.parent_tracker().set_tags(tags)


@flow(name="rlhf-iterate", log_prints=True)
def rlhf_iterate(config: PipelineConfig, from_run: str | None = None, resume_run: str | None = None,
                 iteration_run_id: str | None = None) -> dict:
    """One round of iterated online RLHF from the champion: label its replies -> reward model -> PPO -> evaluation.

    ``from_run``: start from this run's PPO policy instead of the registry's champion. ``resume_run``:
    a round to carry on (its labels already given are kept; finished stages are skipped).
    """
    started = time.perf_counter()
    preflight(config.tracking.tracking_uri, reconcile=False)
    _apply_threads(config)
    ws = workspace_from(config.workspace)
    busy = f"another `rlhf iterate` round of {config.name} is running in workspace {ws.root}: one round at a time"
    with ws.try_lock(f"iterate-{config.name}", busy):
        run, info = open_round(config, ws, config.tracking.tracking_uri or ws.mlflow_uri, from_run, resume_run)
        number, champion, base = int(info["round"]), Champion(**info["champion"]), info["base_run"]
        get_run_logger().info("round %d in %s: policy from %s, data from run %s", number, run.path, champion.version, base)
        cfg = round_config(config, champion)
        run.config.write_text(dump_config(cfg), encoding="utf-8")
        ctx = _context(cfg, str(run.path))
        _tag_round(ctx, number, champion, iteration_run_id)
        try:
            row = _run_round(cfg, ctx, ws, run, number, champion, base, started)
        except LabelTimeout as exc:
            if ctx.tracking_enabled:
                ctx.parent_tracker().finish_quietly("FAILED")
            raise LabelTimeout(f"{exc}: rlhf iterate --resume {run.run_id}", resume_run=run.run_id) from None
        except BaseException:
            if ctx.tracking_enabled:
                ctx.parent_tracker().finish_quietly("FAILED")
            raise
    return {"run_dir": str(run.path), "round": row, "mlflow_run_id": ctx.parent_run_id or None,
            "experiment_id": ctx.experiment_id, "tracking_uri": ctx.tracking_uri}


def _run_round(cfg: PipelineConfig, ctx: StageContext, ws: Workspace, run: RunDir, number: int, champion: Champion,
               base: str, started: float) -> dict[str, Any]:
    from tasks.summary import pipeline_summary, summary_markdown

    label_round.with_options(refresh_cache=_outputs_gone(run, "label"))(cfg, ctx, champion, number, base)
    link_round_inputs(ctx, base, str(ws.root))
    reward_flow(cfg, str(run.path), ctx)
    ppo_flow(cfg, str(run.path), ctx)
    eval_flow(cfg, str(run.path), ctx)
    row = record_round(cfg, ctx, run, number, champion)
    summary = pipeline_summary(ctx, time.perf_counter() - started, gold=cfg.eval.gold)
    ctx.publish_markdown("round-summary", round_markdown(row, history_dir(cfg)) + "\n\n" + summary_markdown(summary),
                         f"Round {number}: labels, Elo of the new policy vs the champion, registry decision")
    if ctx.tracking_enabled:
        parent = ctx.parent_tracker()
        parent.log_metrics({**summary.metrics, **round_metrics(row)}, step=0)
        parent.log_artifact(history_dir(cfg) / ELO_PLOT)
        parent.log_artifact(history_dir(cfg) / LEDGER)
        parent.finish("FINISHED", cfg.tracking.flush_timeout_s)
    return row


def _elo(eval_json: dict[str, Any], name: str) -> dict[str, float]:
    for rating in eval_json.get("elo", []):
        if rating["name"] == name:
            return rating
    return {"rating": float("nan"), "ci_low": float("nan"), "ci_high": float("nan")}


def _promoted(cfg: PipelineConfig, ctx: StageContext, ppo_dir: str) -> tuple[bool, str | None, str]:
    """Whether the registry's champion alias now points at this round's policy, that version, and the
    registry's reason (the version's ``promotion_decision`` tag)."""
    if not (ctx.tracking_enabled and cfg.registry.enabled):
        return False, None, "not registered (tracking or registry off)"
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from tasks.registry import CHAMPION, find_version

    client = MlflowClient(tracking_uri=ctx.tracking_uri)
    name = ctx.registered_model("policy")
    version = find_version(client, name, ppo_dir)
    if version is None:
        return False, None, f"no registered {name} version for this round's policy"
    try:
        champion = client.get_model_version_by_alias(name, CHAMPION).version
    except MlflowException:
        champion = None
    decision = client.get_model_version(name, version).tags.get("promotion_decision", "no decision recorded")
    return champion == version, f"{name} v{version}", decision


def record_round(cfg: PipelineConfig, ctx: StageContext, run: RunDir, number: int, champion: Champion) -> dict[str, Any]:
    """The round's line in the ledger (added once, also when a round is resumed) and the redrawn Elo plot."""
    from tasks.plots import plot_elo_by_round

    result = json.loads(Path(run.require("eval")["eval_json"]).read_text(encoding="utf-8"))
    labels = json.loads(Path(run.require("label")["report"]).read_text(encoding="utf-8"))
    new, old = _elo(result, PRIMARY), _elo(result, PREVIOUS_CHAMPION)
    promoted, version, decision = _promoted(cfg, ctx, run.require("ppo")["model_dir"])
    row = {
        "round": number, "run": run.run_id, "champion_before": champion.version, "new_version": version,
        "promoted": promoted, "decision": decision, "elo_new": new["rating"], "elo_new_ci_low": new["ci_low"], "elo_new_ci_high": new["ci_high"],
        "elo_champion": old["rating"], "elo_champion_ci_low": old["ci_low"], "elo_champion_ci_high": old["ci_high"],
        "gold_delta": result["metrics"].get("eval/gold_delta"), "labels": labels["labels"], "rows_added": labels["rows"],
        "inter_annotator_agreement": labels["inter_annotator_agreement"],
    }
    out = history_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    rows = read_ledger(out / LEDGER)
    if not any(r["run"] == run.run_id for r in rows):
        with (out / LEDGER).open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        rows.append(row)
    plot_elo_by_round(sorted(rows, key=lambda r: r["round"]), out / ELO_PLOT)
    return row


def round_metrics(row: dict[str, Any]) -> dict[str, float]:
    keys = ("elo_new", "elo_new_ci_low", "elo_new_ci_high", "elo_champion", "elo_champion_ci_low", "elo_champion_ci_high",
            "gold_delta", "labels", "rows_added", "inter_annotator_agreement")
    metrics = {f"round/{k}": float(row[k]) for k in keys if row.get(k) is not None}
    return {**metrics, "round/promoted": float(row["promoted"]), "round/number": float(row["round"])}


def round_markdown(row: dict[str, Any], where: Path) -> str:
    decision = row["decision"]
    return (f"# Round {row['round']}\n\nFrom {row['champion_before']}; {row['labels']} labels, {row['rows_added']} "
            f"preference rows added.\n\n| policy | Elo [95% CI] |\n|---|---|\n"
            f"| new ({row['new_version'] or 'unregistered'}) | {_rating(row, 'elo_new')} |\n"
            f"| champion before | {_rating(row, 'elo_champion')} |\n\nDecision: {decision}. "
            f"History: `{where / LEDGER}`, plot `{where / ELO_PLOT}`.")


def _rating(row: dict[str, Any], key: str) -> str:
    return f"{row[key]:.0f} [{row[key + '_ci_low']:.0f}, {row[key + '_ci_high']:.0f}]"


@dataclass
class IterateSummary:
    rounds: list[dict[str, Any]] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    iteration_run_id: str | None = None
    history: Path | None = None


def run_iterate(cfg: PipelineConfig, rounds: int = 1, from_run: str | None = None,
                resume_run: str | None = None) -> IterateSummary:
    """`rlhf iterate`: ``rounds`` rounds in this process, each a `rlhf-iterate` flow run, nested under
    one MLflow run. The first starts from ``from_run`` (or resumes ``resume_run``); the later ones from the
    registry's champion when it has one, else from ``from_run`` again. Each round grows the latest round's data."""
    from flows.pipeline import start_up
    from flows.preflight import preflight_config
    from flows.runtime import quiet_console, run_log

    if rounds < 1:
        raise UserError(f"--rounds {rounds}: at least one round")
    preflight_config(cfg, data=False)  # a round reads its source run's curated data, not the config's files
    if cfg.iterate.labeler == "label-studio":  # reachable, credentials accepted: before minutes of sampling
        from tasks.iterate import make_labeler

        make_labeler(cfg).check()
    prepare_environment(cfg.workspace)
    start_up(cfg)
    quiet_console()
    summary = IterateSummary(history=history_dir(cfg))
    summary.iteration_run_id = _start_iteration_run(cfg, rounds)
    status = "FAILED"
    log = Path(cfg.workspace) / "logs" / f"iterate-{time.strftime('%Y%m%d-%H%M%S')}.log"
    try:
        with run_log(log):
            for i in range(rounds):
                result = rlhf_iterate(cfg, from_run=from_run if i == 0 else _next_source(cfg, from_run),
                                      resume_run=resume_run if i == 0 else None, iteration_run_id=summary.iteration_run_id)
                summary.rounds.append(result["round"])
                summary.runs.append(Path(result["run_dir"]).name)
                _log_iteration(cfg, summary)
        status = "FINISHED"
    finally:
        _end_iteration_run(cfg, summary.iteration_run_id, status)
    return summary


def _next_source(cfg: PipelineConfig, from_run: str | None) -> str | None:
    """The policy the next round starts from: the registry's champion when it has one (None), else
    ``from_run``'s again (nothing was promoted; without the registry nothing ever is)."""
    if from_run is None or not (cfg.tracking.enabled and cfg.registry.enabled):
        return from_run
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from tasks.registry import CHAMPION, registered_model_name

    ws = workspace_from(cfg.workspace)
    name = registered_model_name(cfg.registry.model_prefix or cfg.name, "policy")
    try:
        MlflowClient(tracking_uri=cfg.tracking.tracking_uri or ws.mlflow_uri).get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return from_run
    return None


def _start_iteration_run(cfg: PipelineConfig, rounds: int) -> str | None:
    if not cfg.tracking.enabled:
        return None
    from tasks import tracking

    ws = workspace_from(cfg.workspace)
    uri = cfg.tracking.tracking_uri or ws.mlflow_uri
    with ws.lock("mlflow-store"):
        experiment_id = tracking.configure(uri, ws.mlflow_artifacts, cfg.tracking.experiment or cfg.name)
    run = tracking.start_parent_run(experiment_id, f"iterate-{time.strftime('%Y%m%d-%H%M%S')}",
                                    tags={"rlhf.flow": "rlhf-iterate", "rlhf.rounds": str(rounds), "rlhf.pipeline": cfg.name})
    return run.run_id


def _log_iteration(cfg: PipelineConfig, summary: IterateSummary) -> None:
    if summary.iteration_run_id is None:
        return
    from tasks.tracking import MlflowTracker

    row = summary.rounds[-1]
    tracker = MlflowTracker(summary.iteration_run_id)
    tracker.log_metrics(round_metrics(row), step=int(row["round"]))
    tracker.log_artifact(history_dir(cfg) / ELO_PLOT)


def _end_iteration_run(cfg: PipelineConfig, run_id: str | None, status: str) -> None:
    if run_id is None:
        return
    from tasks import tracking

    tracking.end_run(run_id, status)
