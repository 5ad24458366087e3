"""The evaluation stage's Prefect task: the stage body (tasks/stages/eval.py) in the stage's MLflow
run, then the registry decision for the PPO policy and the comparison on the Prefect run page."""

from __future__ import annotations

import math
from typing import Any

from prefect import task

import tasks.stages.eval
from rlhf_core.config.pipeline import PipelineConfig
from tasks.context import STAGE_CACHE, StageContext


@task(name="eval", cache_policy=STAGE_CACHE, persist_result=True)
def evaluate_stage(cfg: PipelineConfig, ctx: StageContext) -> dict[str, str]:
    """SFT vs PPO (and DPO) vs best-of-N on the held-out prompts; the registry decision; a summary on the Prefect run page."""
    with ctx.stage_run("eval") as tracker:
        outputs = tasks.stages.eval.run(cfg, ctx.run, tracker)
        ppo = ctx.run.outputs("ppo")
        decision = _promotion(cfg, ctx, tracker, ppo["model_dir"] if ppo else None, outputs.metrics)
        links = "tracking off"
        if tracker.run_id is not None:
            links = (f"{ctx.mlflow_run_link(tracker.run_id, 'evaluation stage run')} · "
                     f"{ctx.mlflow_run_link(ctx.parent_run_id, 'pipeline run')}")  # fmt: skip
        note = ctx.mlflow_note()
        ctx.publish_markdown(
            "evaluation",
            f"# Evaluation\n\n{outputs.report}\n\nRegistry: {decision}\n\nMLflow: {links}" + (f"\n\n{note}" if note else ""),
            "PPO / DPO / best-of-N vs SFT on held-out prompts ("
            + ("gold scorer, reward model, KL)" if cfg.eval.gold else "no gold scorer for this data: reward model, KL)"),
        )
    return ctx.run.record_outputs("eval", outputs.files)


def _promotion(cfg: Any, ctx: StageContext, tracker: Any, ppo_dir: str | None, metrics: dict[str, float]) -> str:
    """Move the `champion` alias of this pipeline's policy model only when the evaluation says the new policy is better."""
    if not (ppo_dir and cfg.registry.enabled and ctx.tracking_enabled):
        return "no PPO policy registered in this run (registry or tracking off)"
    from tasks.registry import find_version, promote_if_better

    name = ctx.registered_model("policy")
    version = find_version(tracker.client, name, ppo_dir)
    if version is None:
        return f"no registered {name} version for this run's PPO model"
    if not cfg.eval.gold:
        decision = never_promoted_without_gold(tracker.client, name, version)
        tracker.set_tags({"registry.decision": decision})
        return f"{name} v{version}: {decision}"
    rule = cfg.registry
    ci_low = metrics.get("eval/gold_delta_ci_low", float("nan"))
    gate = (ci_low > 0) if rule.require_gold_ci_above_zero else True
    gate_reason = f"gold(policy) - gold(SFT) 95% CI low {ci_low:.4f} > 0" if rule.require_gold_ci_above_zero else "no gate"
    score = metrics.get(rule.champion_metric, float("nan"))
    _, decision = promote_if_better(
        tracker.client, name, version, score, metric=rule.champion_metric,
        min_improvement=rule.min_improvement, gate=gate and math.isfinite(score), gate_reason=gate_reason,
    )
    tracker.set_tags({"registry.decision": decision})
    return f"{name} v{version}: {decision}"


NO_GOLD_DECISION = (
    "kept as candidate, not promoted: no gold score for this data (eval.gold=false), and the reward-model score "
    "PPO optimised cannot certify the policy it was optimised into; read eval/samples.jsonl and move `champion` by hand"
)


def never_promoted_without_gold(client: Any, name: str, version: str) -> str:
    """Without a gold scorer `champion` never moves on its own: the version keeps `candidate`, and the rule
    and the decision are tagged on it as :func:`tasks.registry.promote_if_better` tags its own."""
    client.set_model_version_tag(name, version, "promotion_rule", "eval.gold=false: never promoted automatically")
    client.set_model_version_tag(name, version, "promotion_decision", NO_GOLD_DECISION)
    return NO_GOLD_DECISION
