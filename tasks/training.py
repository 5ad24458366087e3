"""Training tasks: fetch the base model, SFT, reward model (+ agreement), PPO, DPO.

Each task reads its inputs from the run directory (`tasks.artifacts.RunDir`), calls
rlhf_core, logs into its own nested MLflow run, records its outputs and returns paths
(never tensors or models), so Prefect can cache it by inputs + source and retry it.
"""

from __future__ import annotations

import json
from pathlib import Path

from prefect import task

from flows.config import PipelineConfig
from rlhf_core.config import ModelConfig
from tasks.context import STAGE_CACHE, StageContext


@task(name="fetch-base-model", retries=2, retry_delay_seconds=[5, 30])
def fetch_base_model(model_cfg: ModelConfig, model_cache: str) -> str:
    """Resolve the base model to a local HF directory ('tiny' stays 'tiny'). Retried: hub I/O."""
    from rlhf_core.models import materialize

    if model_cfg.base == "tiny":
        materialize(ModelConfig(base=model_cfg.tiny.tokenizer), Path(model_cache))  # its tokenizer
        return "tiny"
    return materialize(model_cfg, Path(model_cache)).location


def load_policy(cfg: PipelineConfig, model_dir: str):
    """A causal LM from a stage directory ('tiny' = a fresh tiny model) and the tokenizer."""
    from rlhf_core.models import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(cfg.model, cfg.model_cache)
    path = None if model_dir == "tiny" else model_dir
    model = load_causal_lm(cfg.model, cfg.model_cache, tokenizer, path=path)
    return model, tokenizer


def _split(frame, name: str):
    import pandas as pd

    split = frame["split"].fillna("train") if "split" in frame else pd.Series("train", index=frame.index)
    return frame[split != "eval"], frame[split == "eval"]


@task(name="sft", cache_policy=STAGE_CACHE, persist_result=True)
def train_sft_stage(cfg: PipelineConfig, base_dir: str, run_dir: str, ctx: StageContext) -> dict[str, str]:
    """Supervised fine-tuning on the curated demonstrations."""
    import pandas as pd

    from rlhf_core.sft.train import train_sft

    run = ctx.run
    data = run.require("data")
    model, tokenizer = load_policy(cfg, base_dir)
    train_rows, eval_rows = _split(pd.read_parquet(data["demonstrations"]), "demonstrations")
    with ctx.stage_run("sft") as tracker:
        tracker.log_params({"sft": cfg.sft.model_dump(mode="json"), "base_model": base_dir})
        result = train_sft(
            cfg.sft, model, tokenizer, train_rows, output_dir=run.stage("sft"), tracker=tracker,
            eval_rows=eval_rows if len(eval_rows) else None, seed=cfg.seed,
        )
        tracker.log_metrics({"sft/wall_seconds": result.wall_seconds, "sft/tokens_per_second": result.tokens_per_second}, step=result.steps)
        ctx.register(tracker, result.model_dir, "sft")
    return run.record_outputs("sft", {"model_dir": str(result.model_dir)})


@task(name="reward", cache_policy=STAGE_CACHE, persist_result=True)
def train_reward_stage(cfg: PipelineConfig, policy_dir: str, run_dir: str, ctx: StageContext) -> dict[str, str]:
    """Reward model on the curated preference pairs, then its agreement on held-out pairs."""
    import pandas as pd

    from rlhf_core.gold import gold_score
    from rlhf_core.models import build_tiny_model, load_tokenizer
    from rlhf_core.reward.agreement import reward_model_agreement
    from rlhf_core.reward.model import RewardModel
    from rlhf_core.reward.train import score_pairs, train_reward_model
    from tasks.plots import plot_reliability, plot_reward_distribution

    run = ctx.run
    data = run.require("data")
    tokenizer = load_tokenizer(cfg.model, cfg.model_cache)
    if policy_dir == "tiny":
        reward_model = RewardModel.from_model(build_tiny_model(cfg.model.tiny, tokenizer), seed=cfg.seed)
    else:
        reward_model = RewardModel.from_causal_lm_dir(policy_dir, seed=cfg.seed)
    train_pairs, eval_pairs = _split(pd.read_parquet(data["preferences"]), "preferences")
    out_dir = run.stage("reward")
    with ctx.stage_run("reward") as tracker:
        tracker.log_params({"reward": cfg.reward.model_dump(mode="json"), "init_from": policy_dir})
        result = train_reward_model(
            cfg.reward, reward_model, tokenizer, train_pairs, output_dir=out_dir, tracker=tracker, seed=cfg.seed
        )
        held_out = eval_pairs if len(eval_pairs) else train_pairs
        chosen_r, rejected_r = score_pairs(
            reward_model, tokenizer, held_out, max_length=cfg.reward.optim.max_length,
            prompt_format=cfg.reward.prompt_format, truncate=cfg.reward.optim.truncate_prompt,
        )
        harmful = held_out["harmful"].fillna(False) if "harmful" in held_out else pd.Series(False, index=held_out.index)
        gold_prefers = [
            _gold_preference(gold_score(p, c, harmful=bool(h)), gold_score(p, r, harmful=bool(h)))
            for p, c, r, h in zip(held_out["prompt"], held_out["chosen"], held_out["rejected"], harmful)
        ]
        report = reward_model_agreement(
            chosen_r, rejected_r,
            annotator_labels=held_out["annotator_labels"].tolist() if "annotator_labels" in held_out else None,
            gold_prefers_chosen=gold_prefers,
            topics=held_out["topic"].fillna("unknown").tolist() if "topic" in held_out else None,
        )
        agreement = report.to_dict()
        agreement["held_out"] = "eval split" if len(eval_pairs) else "train split (no eval pairs: optimistic)"
        tracker.log_metrics({**report.metrics(), "rm/wall_seconds": result.wall_seconds}, step=result.steps)
        (out_dir / "agreement.json").write_text(json.dumps(agreement, indent=2, default=float))
        plot_reliability(report, out_dir / "reliability.png")
        plot_reward_distribution(report, out_dir / "reward_distribution.png")
        for name in ("agreement.json", "reliability.png", "reward_distribution.png"):
            tracker.log_artifact(out_dir / name)
        ctx.register(tracker, result.model_dir, "reward")
        ctx.publish_agreement(report.metrics(), len(held_out))
    return run.record_outputs(
        "reward", {"model_dir": str(result.model_dir), "agreement": str(out_dir / "agreement.json")}
    )


def _gold_preference(chosen: float, rejected: float) -> bool | None:
    """True if the gold scorer prefers `chosen`; None for a tie (left out of gold agreement)."""
    return None if chosen == rejected else chosen > rejected


@task(name="ppo", cache_policy=STAGE_CACHE, persist_result=True)
def train_ppo_stage(cfg: PipelineConfig, policy_dir: str, run_dir: str, ctx: StageContext) -> dict[str, str]:
    """PPO of the SFT policy against the reward model, KL-penalised towards the SFT model."""
    import pandas as pd

    from rlhf_core.gold import gold_score
    from rlhf_core.reward.model import RewardModel

    from rlhf_core.ppo.trainer import train_ppo

    run = ctx.run
    data, reward = run.require("data"), run.require("reward")
    policy, tokenizer = load_policy(cfg, policy_dir)
    reward_model = RewardModel.from_pretrained(reward["model_dir"])
    prompts = pd.read_parquet(data["rl_prompts"])
    harmful = dict(zip(prompts["prompt"], prompts["harmful"].fillna(False))) if "harmful" in prompts else {}
    with ctx.stage_run("ppo") as tracker:
        tracker.log_params({"ppo": cfg.ppo.model_dump(mode="json"), "policy_init": policy_dir})
        result = train_ppo(
            cfg.ppo, policy, tokenizer, reward_model, tokenizer, prompts,
            output_dir=run.stage("ppo"), tracker=tracker, seed=cfg.seed,
            gold_fn=lambda p, r: gold_score(p, r, harmful=bool(harmful.get(p, False))),
            reward_prompt_format=cfg.reward.prompt_format,
        )
        tracker.log_metrics({"ppo/wall_seconds": result.wall_seconds, "ppo/stopped_early": float(result.stopped_early)}, step=result.steps)
        if result.stopped_early:
            tracker.set_tags({"ppo.stop_reason": result.stop_reason})
        ctx.register(tracker, result.model_dir, "policy")
    return run.record_outputs("ppo", {"model_dir": str(result.model_dir)})


@task(name="dpo", cache_policy=STAGE_CACHE, persist_result=True)
def train_dpo_stage(cfg: PipelineConfig, policy_dir: str, run_dir: str, ctx: StageContext) -> dict[str, str]:
    """DPO (or IPO) on the same preference pairs from the SFT model: the baseline next to PPO."""
    import pandas as pd

    from rlhf_core.dpo.trainer import train_dpo

    run = ctx.run
    data = run.require("data")
    policy, tokenizer = load_policy(cfg, policy_dir)
    train_pairs, _ = _split(pd.read_parquet(data["preferences"]), "preferences")
    with ctx.stage_run("dpo") as tracker:
        tracker.log_params({"dpo": cfg.dpo.model_dump(mode="json"), "policy_init": policy_dir})
        result = train_dpo(cfg.dpo, policy, tokenizer, train_pairs, output_dir=run.stage("dpo"), tracker=tracker, seed=cfg.seed)
        tracker.log_metrics({"dpo/wall_seconds": result.wall_seconds}, step=result.steps)
    return run.record_outputs("dpo", {"model_dir": str(result.model_dir)})
