"""The PPO stage: the policy (the SFT model) trained against the reward model, KL-penalised
towards the SFT model, on the curated RL prompts. The PPO recipe itself is rlhf_core/ppo/trainer.py.

``run`` is the stage as the pipeline runs it (in this process, or data-parallel when
``distributed.num_processes > 1``); ``fit`` loads the inputs (policy, reward model, prompts) and
trains, and is also what each data-parallel worker runs (tasks/distributed_worker.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rlhf_core.config.pipeline import PipelineConfig
from rlhf_core.tracking import Tracker
from tasks.artifacts import RunDir
from tasks.distributed import fit_data_parallel
from tasks.stages.common import StageOutputs, StageTracker, load_policy, log_curated_inputs

if TYPE_CHECKING:  # pragma: no cover
    from rlhf_core.distributed import DataParallel
    from rlhf_core.ppo.trainer import PPOResult


def run(cfg: PipelineConfig, policy_dir: str, run: RunDir, tracker: StageTracker, *, tracking_uri: str | None = None) -> StageOutputs:
    """Train the policy from ``policy_dir`` into `<run>/ppo/`, scored by the reward stage's model.

    ``tracking_uri``: where data-parallel workers log (rank 0 logs into ``tracker``'s run).
    """
    cfg.ppo.check_processes(cfg.distributed.num_processes, cfg.distributed.strategy)  # before anything starts
    data = run.require("data")
    tracker.log_params({"ppo": cfg.ppo.model_dump(mode="json"), "policy_init": policy_dir})
    log_curated_inputs(tracker, data, ("rl_prompts",), context="training")

    if cfg.ppo.init_from:
        tracker.set_tags({"ppo.init_from": cfg.ppo.init_from})
    if cfg.distributed.enabled:
        result = fit_data_parallel("ppo", cfg, policy_dir, run, tracker, tracking_uri)
    else:
        result = fit(cfg, policy_dir, run, tracker)
    if cfg.ppo.init_from:
        merge_onto_start(cfg, policy_dir, result.model_dir)

    tracker.log_metrics({"ppo/wall_seconds": result.wall_seconds, "ppo/stopped_early": float(result.stopped_early)}, step=result.steps)
    if result.stopped_early:
        tracker.set_tags({"ppo.stop_reason": result.stop_reason})
    return StageOutputs({"model_dir": str(result.model_dir)}, result.model_dir, result.checkpoint_dir)


def fit(cfg: PipelineConfig, policy_dir: str, run: RunDir, tracker: Tracker | None, *, dist: DataParallel | None = None,
        progress: bool = True) -> PPOResult:
    """Load the policy, the reward stage's model and the RL prompts, and train with PPO."""
    import pandas as pd

    from rlhf_core.gold import gold_score
    from rlhf_core.ppo.trainer import train_ppo
    from rlhf_core.reward.model import RewardModel

    policy, tokenizer = load_policy(cfg, policy_dir)
    ref_model = None
    if cfg.ppo.init_from:  # from the champion; the KL reference stays the SFT model (``policy_dir``)
        policy, ref_model = start_policy(cfg, policy_dir, tokenizer), policy
    reward_model = RewardModel.from_pretrained(run.require("reward")["model_dir"], trust_remote_code=cfg.model.trust_remote_code)
    if dist is not None:  # each process on its own device
        policy, reward_model = policy.to(dist.device), reward_model.to(dist.device)
    prompts = pd.read_parquet(run.require("data")["rl_prompts"])
    # the gold scorer judges a response to a harmful prompt by whether it refuses (real data: none, eval.gold false)
    harmful = dict(zip(prompts["prompt"], prompts["harmful"].fillna(False))) if "harmful" in prompts else {}
    return train_ppo(
        cfg.ppo, policy, tokenizer, reward_model, tokenizer, prompts,
        ref_model=ref_model, output_dir=run.stage("ppo"), tracker=tracker, seed=cfg.seed,
        gold_fn=(lambda p, r: gold_score(p, r, harmful=bool(harmful.get(p, False)))) if cfg.eval.gold else None,
        reward_prompt_format=cfg.reward.prompt_format, progress=progress, dist=dist,
    )


def start_policy(cfg: PipelineConfig, sft_dir: str, tokenizer):
    """The policy ``ppo.init_from`` names (an adapter directory: its adapters merged into the SFT
    weights), as a plain model PPO can put new LoRA adapters on."""
    from rlhf_core.ppo.kl import is_peft_model
    from rlhf_core.stage_io import load_stage_policy

    policy = load_stage_policy(cfg.ppo.init_from, model=cfg.model, cache_dir=cfg.model_cache, tokenizer=tokenizer,
                               sft_dir=sft_dir, lora=cfg.ppo.optim.lora)
    return policy.merge_and_unload() if is_peft_model(policy) else policy


def merge_onto_start(cfg: PipelineConfig, sft_dir: str, model_dir) -> None:
    """A policy trained from ``ppo.init_from`` with LoRA is saved as adapters on *that* policy; every
    reader loads adapters onto the SFT model, so the final directory is rewritten as full weights."""
    from pathlib import Path

    import peft

    from rlhf_core.models import load_tokenizer
    from rlhf_core.stage_io import read_stage_marker, save_stage_model

    model_dir = Path(model_dir)
    if not (model_dir / "adapter_config.json").is_file():
        return
    tokenizer = load_tokenizer(cfg.model, cfg.model_cache)
    marker = read_stage_marker(model_dir) or {}
    merged = peft.PeftModel.from_pretrained(start_policy(cfg, sft_dir, tokenizer), str(model_dir)).merge_and_unload()
    extra = {k: v for k, v in marker.items() if k not in ("stage", "lora", "init_from")}
    save_stage_model(merged, tokenizer, model_dir, stage=marker.get("stage", "ppo"), **extra, lora=False,
                     init_from=cfg.ppo.init_from)
