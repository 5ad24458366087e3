"""The DPO stage: DPO (or IPO) from the SFT model on the same preference pairs as the reward model,
the baseline next to PPO. The loss and loop are rlhf_core/dpo/."""

from __future__ import annotations

from rlhf_core.config.pipeline import PipelineConfig
from tasks.artifacts import RunDir
from tasks.stages.common import StageOutputs, StageTracker, load_policy, log_curated_inputs, one_process_note, split_train_eval


def run(cfg: PipelineConfig, policy_dir: str, run: RunDir, tracker: StageTracker) -> StageOutputs:
    """Train the policy from ``policy_dir`` into `<run>/dpo/` on the preference pairs' train split."""
    import pandas as pd

    from rlhf_core.dpo.trainer import train_dpo

    one_process_note(cfg, "dpo")
    data = run.require("data")
    policy, tokenizer = load_policy(cfg, policy_dir)
    train_pairs, _ = split_train_eval(pd.read_parquet(data["preferences"]))
    tracker.log_params({"dpo": cfg.dpo.model_dump(mode="json"), "policy_init": policy_dir})
    log_curated_inputs(tracker, data, ("preferences",), context="training")

    result = train_dpo(cfg.dpo, policy, tokenizer, train_pairs, output_dir=run.stage("dpo"), tracker=tracker, seed=cfg.seed, progress=True)

    tracker.log_metrics({"dpo/wall_seconds": result.wall_seconds}, step=result.steps)
    return StageOutputs({"model_dir": str(result.model_dir)}, result.model_dir, result.checkpoint_dir)
