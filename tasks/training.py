"""Training tasks: fetch the base model, SFT, reward model (+ agreement), PPO, DPO.

Each task reads its inputs from the run directory (`tasks.artifacts.RunDir`), calls
rlhf_core, logs into its own nested MLflow run, records its outputs and returns paths
(never tensors or models), so Prefect can cache it by inputs + source and retry it.
"""

from __future__ import annotations

import json
from pathlib import Path

from prefect import task

from rlhf_core.config.model import ModelConfig
from rlhf_core.config.pipeline import PipelineConfig
from tasks.artifacts import RunDir
from tasks.context import STAGE_CACHE, StageContext
from tasks.data import log_curated_inputs


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


def fit_sft(cfg: PipelineConfig, base_dir: str, run: RunDir, tracker, *, dist=None, progress: bool = True):
    """Load the SFT stage's inputs from ``run`` and train; ``(SFTResult,)``. Also the data-parallel worker's body."""
    import pandas as pd

    from rlhf_core.sft.train import train_sft

    model, tokenizer = load_policy(cfg, base_dir)
    train_rows, eval_rows = _split(pd.read_parquet(run.require("data")["demonstrations"]), "demonstrations")
    result = train_sft(
        cfg.sft, model, tokenizer, train_rows, output_dir=run.stage("sft"), tracker=tracker,
        eval_rows=eval_rows if len(eval_rows) else None, seed=cfg.seed, progress=progress, dist=dist,
    )
    return (result,)


def _fit_distributed(stage: str, cfg: PipelineConfig, model_dir: str, run: RunDir, tracker, tracking_uri: str):
    """The stage trained by ``distributed.num_processes`` processes (see tasks/distributed.py)."""
    from rlhf_core.reward.train import RewardResult
    from rlhf_core.sft.train import SFTResult
    from tasks.distributed import result_from_json, train_distributed

    data = train_distributed(
        stage, cfg, model_dir=model_dir, run_dir=str(run.path), mlflow_run_id=getattr(tracker, "run_id", None),
        tracking_uri=tracking_uri,
    )
    tracker.log_metrics({f"{stage_metric(stage)}/processes": float(data["world_size"])}, step=int(data["steps"]))
    return result_from_json(SFTResult if stage == "sft" else RewardResult, data)


def _one_process_note(cfg: PipelineConfig, stage: str) -> None:
    if cfg.distributed.enabled:
        import logging

        logging.getLogger(__name__).warning(
            "%s trains in one process: distributed.num_processes=%d applies to the SFT and reward-model stages only",
            stage, cfg.distributed.num_processes,
        )


def stage_metric(stage: str) -> str:
    return {"sft": "sft", "reward": "rm"}[stage]


@task(name="sft", cache_policy=STAGE_CACHE, persist_result=True)
def train_sft_stage(cfg: PipelineConfig, base_dir: str, run_dir: str, ctx: StageContext) -> dict[str, str]:
    """Supervised fine-tuning on the curated demonstrations (data-parallel when distributed.num_processes > 1)."""
    run = ctx.run
    data = run.require("data")
    with ctx.stage_run("sft") as tracker:
        tracker.log_params({"sft": cfg.sft.model_dump(mode="json"), "base_model": base_dir})
        log_curated_inputs(tracker, data, ("demonstrations",), context="training")
        if cfg.distributed.enabled:
            result = _fit_distributed("sft", cfg, base_dir, run, tracker, ctx.tracking_uri)
        else:
            (result,) = fit_sft(cfg, base_dir, run, tracker)
        tracker.log_metrics({"sft/wall_seconds": result.wall_seconds, "sft/tokens_per_second": result.tokens_per_second}, step=result.steps)
        ctx.log_checkpoint(tracker, result.checkpoint_dir)
        ctx.register(tracker, result.model_dir, "sft")
    return run.record_outputs("sft", {"model_dir": str(result.model_dir)})


def fit_reward(cfg: PipelineConfig, policy_dir: str, run: RunDir, tracker, *, dist=None, progress: bool = True):
    """Load the reward stage's inputs from ``run`` and train; ``(RewardResult, reward_model, tokenizer)``."""
    import pandas as pd

    from rlhf_core.models import build_tiny_model, load_tokenizer
    from rlhf_core.reward.model import RewardModel
    from rlhf_core.reward.train import train_reward_model

    tokenizer = load_tokenizer(cfg.model, cfg.model_cache)
    if policy_dir == "tiny":
        reward_model = RewardModel.from_model(build_tiny_model(cfg.model.tiny, tokenizer), seed=cfg.seed)
    else:
        reward_model = RewardModel.from_causal_lm_dir(policy_dir, seed=cfg.seed, trust_remote_code=cfg.model.trust_remote_code)
    train_pairs, _ = _split(pd.read_parquet(run.require("data")["preferences"]), "preferences")
    result = train_reward_model(
        cfg.reward, reward_model, tokenizer, train_pairs, output_dir=run.stage("reward"), tracker=tracker,
        seed=cfg.seed, progress=progress, dist=dist,
    )
    return result, reward_model, tokenizer


@task(name="reward", cache_policy=STAGE_CACHE, persist_result=True)
def train_reward_stage(cfg: PipelineConfig, policy_dir: str, run_dir: str, ctx: StageContext) -> dict[str, str]:
    """Reward model on the curated preference pairs, then its agreement on held-out pairs."""
    import pandas as pd

    from rlhf_core.gold import gold_score
    from rlhf_core.models import load_tokenizer
    from rlhf_core.reward.agreement import reward_model_agreement
    from rlhf_core.reward.model import RewardModel
    from rlhf_core.reward.train import score_pairs
    from tasks.plots import plot_reliability, plot_reward_distribution

    run = ctx.run
    data = run.require("data")
    train_pairs, eval_pairs = _split(pd.read_parquet(data["preferences"]), "preferences")
    out_dir = run.stage("reward")
    with ctx.stage_run("reward") as tracker:
        tracker.log_params({"reward": cfg.reward.model_dump(mode="json"), "init_from": policy_dir})
        # its train split trains the model; its eval split measures the agreement
        log_curated_inputs(tracker, data, ("preferences",), context="training")
        if cfg.distributed.enabled:
            result = _fit_distributed("reward", cfg, policy_dir, run, tracker, ctx.tracking_uri)
            reward_model = RewardModel.from_pretrained(result.model_dir, trust_remote_code=cfg.model.trust_remote_code)
            tokenizer = load_tokenizer(cfg.model, cfg.model_cache)
        else:
            result, reward_model, tokenizer = fit_reward(cfg, policy_dir, run, tracker)
        held_out = eval_pairs if len(eval_pairs) else train_pairs
        chosen_r, rejected_r = score_pairs(
            reward_model, tokenizer, held_out, max_length=cfg.reward.optim.max_length,
            prompt_format=cfg.reward.prompt_format, truncate=cfg.reward.optim.truncate_prompt,
            share_prompt=cfg.reward.share_prompt,
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
        agreement["metrics"] = report.metrics()  # as logged: the pipeline summary reads them back (tasks/summary.py)
        tracker.log_metrics({**report.metrics(), "rm/wall_seconds": result.wall_seconds}, step=result.steps)
        (out_dir / "agreement.json").write_text(json.dumps(agreement, indent=2, default=float))
        plot_reliability(report, out_dir / "reliability.png")
        plot_reward_distribution(report, out_dir / "reward_distribution.png")
        for name in ("agreement.json", "reliability.png", "reward_distribution.png"):
            tracker.log_artifact(out_dir / name)
        ctx.log_checkpoint(tracker, result.checkpoint_dir)
        ctx.register(tracker, result.model_dir, "reward")
        ctx.publish_agreement(report.metrics(), len(held_out), tracker.run_id)
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
    _one_process_note(cfg, "ppo")
    data, reward = run.require("data"), run.require("reward")
    policy, tokenizer = load_policy(cfg, policy_dir)
    reward_model = RewardModel.from_pretrained(reward["model_dir"], trust_remote_code=cfg.model.trust_remote_code)
    prompts = pd.read_parquet(data["rl_prompts"])
    harmful = dict(zip(prompts["prompt"], prompts["harmful"].fillna(False))) if "harmful" in prompts else {}
    with ctx.stage_run("ppo") as tracker:
        tracker.log_params({"ppo": cfg.ppo.model_dump(mode="json"), "policy_init": policy_dir})
        log_curated_inputs(tracker, data, ("rl_prompts",), context="training")
        result = train_ppo(
            cfg.ppo, policy, tokenizer, reward_model, tokenizer, prompts,
            output_dir=run.stage("ppo"), tracker=tracker, seed=cfg.seed,
            gold_fn=lambda p, r: gold_score(p, r, harmful=bool(harmful.get(p, False))),
            reward_prompt_format=cfg.reward.prompt_format, progress=True,  # as SFT's and the reward model's
        )
        tracker.log_metrics({"ppo/wall_seconds": result.wall_seconds, "ppo/stopped_early": float(result.stopped_early)}, step=result.steps)
        if result.stopped_early:
            tracker.set_tags({"ppo.stop_reason": result.stop_reason})
        ctx.log_checkpoint(tracker, result.checkpoint_dir)
        ctx.register(tracker, result.model_dir, "policy")
    return run.record_outputs("ppo", {"model_dir": str(result.model_dir)})


@task(name="dpo", cache_policy=STAGE_CACHE, persist_result=True)
def train_dpo_stage(cfg: PipelineConfig, policy_dir: str, run_dir: str, ctx: StageContext) -> dict[str, str]:
    """DPO (or IPO) on the same preference pairs from the SFT model: the baseline next to PPO."""
    import pandas as pd

    from rlhf_core.dpo.trainer import train_dpo

    run = ctx.run
    _one_process_note(cfg, "dpo")
    data = run.require("data")
    policy, tokenizer = load_policy(cfg, policy_dir)
    train_pairs, _ = _split(pd.read_parquet(data["preferences"]), "preferences")
    with ctx.stage_run("dpo") as tracker:
        tracker.log_params({"dpo": cfg.dpo.model_dump(mode="json"), "policy_init": policy_dir})
        log_curated_inputs(tracker, data, ("preferences",), context="training")
        result = train_dpo(cfg.dpo, policy, tokenizer, train_pairs, output_dir=run.stage("dpo"), tracker=tracker, seed=cfg.seed, progress=True)
        tracker.log_metrics({"dpo/wall_seconds": result.wall_seconds}, step=result.steps)
        ctx.log_checkpoint(tracker, result.checkpoint_dir)
    return run.record_outputs("dpo", {"model_dir": str(result.model_dir)})
