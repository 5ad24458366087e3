"""The PPO stage: the policy (the SFT model) trained against the reward model, KL-penalised
towards the SFT model, on the curated RL prompts. The PPO recipe itself is rlhf_core/ppo/trainer.py."""

from __future__ import annotations

from rlhf_core.config.pipeline import PipelineConfig
from tasks.artifacts import RunDir
from tasks.stages.common import StageOutputs, StageTracker, load_policy, log_curated_inputs, one_process_note


def run(cfg: PipelineConfig, policy_dir: str, run: RunDir, tracker: StageTracker) -> StageOutputs:
    """Train the policy from ``policy_dir`` into `<run>/ppo/`, scored by the reward stage's model."""
    import pandas as pd

    from rlhf_core.gold import gold_score
    from rlhf_core.ppo.trainer import train_ppo
    from rlhf_core.reward.model import RewardModel

    one_process_note(cfg, "ppo")
    data, reward = run.require("data"), run.require("reward")
    policy, tokenizer = load_policy(cfg, policy_dir)
    reward_model = RewardModel.from_pretrained(reward["model_dir"], trust_remote_code=cfg.model.trust_remote_code)
    prompts = pd.read_parquet(data["rl_prompts"])
    # the gold scorer judges a response to a harmful prompt by whether it refuses (real data: none, eval.gold false)
    harmful = dict(zip(prompts["prompt"], prompts["harmful"].fillna(False))) if "harmful" in prompts else {}
    tracker.log_params({"ppo": cfg.ppo.model_dump(mode="json"), "policy_init": policy_dir})
    log_curated_inputs(tracker, data, ("rl_prompts",), context="training")

    result = train_ppo(
        cfg.ppo, policy, tokenizer, reward_model, tokenizer, prompts,
        output_dir=run.stage("ppo"), tracker=tracker, seed=cfg.seed,
        gold_fn=(lambda p, r: gold_score(p, r, harmful=bool(harmful.get(p, False)))) if cfg.eval.gold else None,
        reward_prompt_format=cfg.reward.prompt_format, progress=True,  # as SFT's and the reward model's
    )

    tracker.log_metrics({"ppo/wall_seconds": result.wall_seconds, "ppo/stopped_early": float(result.stopped_early)}, step=result.steps)
    if result.stopped_early:
        tracker.set_tags({"ppo.stop_reason": result.stop_reason})
    return StageOutputs({"model_dir": str(result.model_dir)}, result.model_dir, result.checkpoint_dir)
