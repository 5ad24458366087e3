"""Training tasks: fetch the base model, SFT, reward model (+ agreement evaluation).

Each task loads its inputs from paths, calls rlhf_core, logs to its nested MLflow run
and returns paths (never tensors or models), so Prefect can cache and retry it.
"""

from __future__ import annotations

import json
from pathlib import Path

from prefect import task

from flows.config import PipelineConfig
from rlhf_core.config import ModelConfig
from tasks.data import StageContext


@task(name="fetch-base-model", retries=2, retry_delay_seconds=[5, 30])
def fetch_base_model(model_cfg: ModelConfig, model_cache: str) -> str:
    """Resolve the base model to a local HF directory ('tiny' stays 'tiny'). Retried: hub I/O."""
    from rlhf_core.models import materialize

    if model_cfg.base == "tiny":
        materialize(ModelConfig(base=model_cfg.tiny.tokenizer), Path(model_cache))  # its tokenizer
        return "tiny"
    return materialize(model_cfg, Path(model_cache)).location


def _load_policy(cfg: PipelineConfig, model_dir: str):
    from rlhf_core.models import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(cfg.model, cfg.model_cache)
    path = None if model_dir == "tiny" else model_dir
    model = load_causal_lm(cfg.model, cfg.model_cache, tokenizer, path=path)
    return model, tokenizer


@task(name="sft")
def train_sft_stage(cfg: PipelineConfig, base_dir: str, data: dict, ctx: StageContext) -> dict:
    """Supervised fine-tuning on the curated demonstrations; returns the model directory."""
    import pandas as pd

    from rlhf_core.sft.train import train_sft

    model, tokenizer = _load_policy(cfg, base_dir)
    rows = pd.read_parquet(data["demonstrations"])
    train_rows = rows[rows["split"].fillna("train") != "eval"] if "split" in rows else rows
    eval_rows = rows[rows["split"] == "eval"] if "split" in rows else None
    out_dir = ctx.run.stage("sft")
    with ctx.stage_run("sft") as tracker:
        tracker.log_params({"sft": cfg.sft.model_dump(mode="json"), "base_model": base_dir})
        result = train_sft(
            cfg.sft, model, tokenizer, train_rows, output_dir=out_dir, tracker=tracker,
            eval_rows=eval_rows if eval_rows is not None and len(eval_rows) else None, seed=cfg.seed,
        )
        tracker.log_metrics({"sft/wall_seconds": result.wall_seconds}, step=0)
    return {"model_dir": str(result.model_dir)}


@task(name="reward")
def train_reward_stage(cfg: PipelineConfig, policy_dir: str, data: dict, ctx: StageContext) -> dict:
    """Reward model on the curated preference pairs, then its agreement on held-out pairs."""
    import pandas as pd

    from rlhf_core.reward.agreement import reward_model_agreement
    from rlhf_core.reward.model import RewardModel
    from rlhf_core.reward.train import score_pairs, train_reward_model
    from rlhf_core.gold import gold_score
    from rlhf_core.models import load_tokenizer
    from tasks.plots import plot_reliability, plot_reward_distribution

    tokenizer = load_tokenizer(cfg.model, cfg.model_cache)
    if policy_dir == "tiny":
        from rlhf_core.models import build_tiny_model

        reward_model = RewardModel.from_model(build_tiny_model(cfg.model.tiny, tokenizer))
    else:
        reward_model = RewardModel.from_causal_lm_dir(policy_dir)
    pairs = pd.read_parquet(data["preferences"])
    split = pairs["split"].fillna("train") if "split" in pairs else pd.Series("train", index=pairs.index)
    train_pairs, eval_pairs = pairs[split != "eval"], pairs[split == "eval"]
    out_dir = ctx.run.stage("reward")
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
        gold_prefers = [
            _gold_preference(gold_score(p, c, harmful=bool(h)), gold_score(p, r, harmful=bool(h)))
            for p, c, r, h in zip(held_out["prompt"], held_out["chosen"], held_out["rejected"],
                                  held_out.get("harmful", pd.Series(False, index=held_out.index)).fillna(False))
        ]
        labels = held_out["annotator_labels"].tolist() if "annotator_labels" in held_out else None
        report = reward_model_agreement(
            chosen_r, rejected_r, annotator_labels=labels, gold_prefers_chosen=gold_prefers,
            topics=held_out["topic"].fillna("unknown").tolist() if "topic" in held_out else None,
        )
        tracker.log_metrics(report.metrics(), step=result.steps)
        agreement_path = out_dir / "agreement.json"
        agreement_path.write_text(json.dumps(report.to_dict(), indent=2, default=float))
        plot_reliability(report, out_dir / "reliability.png")
        plot_reward_distribution(report, out_dir / "reward_distribution.png")
        for name in ("agreement.json", "reliability.png", "reward_distribution.png"):
            tracker.log_artifact(out_dir / name)
    return {"model_dir": str(result.model_dir), "agreement": str(agreement_path)}


def _gold_preference(chosen: float, rejected: float) -> bool | None:
    """True if the gold scorer prefers `chosen`; None for a tie (left out of gold agreement)."""
    return None if chosen == rejected else chosen > rejected
