"""The training stages' Prefect tasks: fetch the base model, SFT, reward model, PPO, DPO.

Each task opens its stage's nested MLflow run, runs the stage body (tasks/stages/<stage>.py) with
that run's tracker, logs the final checkpoint and registers the model, and only then records the
stage's outputs in the run directory. Tasks return paths (never tensors or models), so Prefect
can cache them by inputs + source (tasks.context.STAGE_CACHE).
"""

from __future__ import annotations

from pathlib import Path

from prefect import task

import tasks.stages.dpo
import tasks.stages.ppo
import tasks.stages.reward
import tasks.stages.sft
from rlhf_core.config.model import ModelConfig
from rlhf_core.config.pipeline import PipelineConfig
from tasks.context import STAGE_CACHE, StageContext


@task(name="fetch-base-model", retries=2, retry_delay_seconds=[5, 30])
def fetch_base_model(model_cfg: ModelConfig, model_cache: str) -> str:
    """Resolve the base model to a local HF directory ('tiny' stays 'tiny'). Retried: hub I/O."""
    from rlhf_core.models import materialize

    if model_cfg.base == "tiny":
        materialize(ModelConfig(base=model_cfg.tiny.tokenizer), Path(model_cache))  # its tokenizer
        return "tiny"
    return materialize(model_cfg, Path(model_cache)).location


@task(name="sft", cache_policy=STAGE_CACHE, persist_result=True)
def train_sft_stage(cfg: PipelineConfig, base_dir: str, ctx: StageContext) -> dict[str, str]:
    """Supervised fine-tuning on the curated demonstrations (data-parallel when distributed.num_processes > 1)."""
    with ctx.stage_run("sft") as tracker:
        outputs = tasks.stages.sft.run(cfg, base_dir, ctx.run, tracker, tracking_uri=ctx.tracking_uri)
        ctx.log_checkpoint(tracker, outputs.checkpoint_dir)
        ctx.register(tracker, outputs.model_dir, "sft")
    return ctx.run.record_outputs("sft", outputs.files)


@task(name="reward", cache_policy=STAGE_CACHE, persist_result=True)
def train_reward_stage(cfg: PipelineConfig, policy_dir: str, ctx: StageContext) -> dict[str, str]:
    """Reward model on the curated preference pairs, then its agreement on held-out pairs (a table on the Prefect run page)."""
    with ctx.stage_run("reward") as tracker:
        outputs = tasks.stages.reward.run(cfg, policy_dir, ctx.run, tracker, tracking_uri=ctx.tracking_uri)
        ctx.log_checkpoint(tracker, outputs.checkpoint_dir)
        ctx.register(tracker, outputs.model_dir, "reward")
        ctx.publish_agreement(outputs.metrics, int(outputs.metrics["rm/n_pairs"]), tracker.run_id)
    return ctx.run.record_outputs("reward", outputs.files)


@task(name="ppo", cache_policy=STAGE_CACHE, persist_result=True)
def train_ppo_stage(cfg: PipelineConfig, policy_dir: str, ctx: StageContext) -> dict[str, str]:
    """PPO of the SFT policy against the reward model, KL-penalised towards the SFT model (data-parallel when distributed.num_processes > 1)."""
    with ctx.stage_run("ppo") as tracker:
        outputs = tasks.stages.ppo.run(cfg, policy_dir, ctx.run, tracker, tracking_uri=ctx.tracking_uri)
        ctx.log_checkpoint(tracker, outputs.checkpoint_dir)
        ctx.register(tracker, outputs.model_dir, "policy")
    return ctx.run.record_outputs("ppo", outputs.files)


@task(name="dpo", cache_policy=STAGE_CACHE, persist_result=True)
def train_dpo_stage(cfg: PipelineConfig, policy_dir: str, ctx: StageContext) -> dict[str, str]:
    """DPO (or IPO) on the same preference pairs from the SFT model: the baseline next to PPO (not registered)."""
    with ctx.stage_run("dpo") as tracker:
        outputs = tasks.stages.dpo.run(cfg, policy_dir, ctx.run, tracker, tracking_uri=ctx.tracking_uri)
        ctx.log_checkpoint(tracker, outputs.checkpoint_dir)
    return ctx.run.record_outputs("dpo", outputs.files)
