"""The reward-model stage: a reward model from the SFT model on the curated preference pairs, then
its agreement with the annotators and the gold scorer on held-out pairs.

``run`` is the stage as the pipeline runs it; ``fit`` loads the inputs and trains, and is also
what each data-parallel worker runs (tasks/distributed_worker.py). Files in `<run>/reward/`:
the model, ``agreement.json``, ``reliability.png``, ``reward_distribution.png``.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from rlhf_core.config.pipeline import PipelineConfig
from rlhf_core.tracking import Tracker
from tasks.artifacts import RunDir
from tasks.distributed import fit_data_parallel
from tasks.stages.common import StageOutputs, StageTracker, log_curated_inputs, split_train_eval

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from transformers import PreTrainedTokenizerBase

    from rlhf_core.distributed import DataParallel
    from rlhf_core.reward.agreement import AgreementReport
    from rlhf_core.reward.model import RewardModel
    from rlhf_core.reward.train import RewardResult


def run(cfg: PipelineConfig, policy_dir: str, run: RunDir, tracker: StageTracker, *, tracking_uri: str | None = None) -> StageOutputs:
    """Train the reward model from ``policy_dir`` into `<run>/reward/` and measure its agreement.

    The preference pairs' train split trains the model, their eval split measures the agreement
    (the train split when there is none: optimistic, and ``agreement.json`` says so).
    """
    import pandas as pd

    from rlhf_core.models import load_tokenizer
    from rlhf_core.reward.model import RewardModel
    from tasks.plots import plot_reliability, plot_reward_distribution

    data = run.require("data")
    train_pairs, eval_pairs = split_train_eval(pd.read_parquet(data["preferences"]))
    out_dir = run.stage("reward")
    tracker.log_params({"reward": cfg.reward.model_dump(mode="json"), "init_from": cfg.reward.init_from or policy_dir})
    log_curated_inputs(tracker, data, ("preferences",), context="training")

    if cfg.distributed.enabled:
        result = fit_data_parallel("reward", cfg, policy_dir, run, tracker, tracking_uri)
        reward_model = RewardModel.from_pretrained(result.model_dir, trust_remote_code=cfg.model.trust_remote_code)
        tokenizer = load_tokenizer(cfg.model, cfg.model_cache)
    else:
        result, reward_model, tokenizer = fit(cfg, policy_dir, run, tracker)

    held_out = eval_pairs if len(eval_pairs) else train_pairs
    report = agreement_on(reward_model, tokenizer, held_out, cfg)
    agreement = report.to_dict()
    agreement["held_out"] = "eval split" if len(eval_pairs) else "train split (no eval pairs: optimistic)"
    agreement["metrics"] = report.metrics()  # as logged: the pipeline summary reads them back (tasks/summary.py)
    tracker.log_metrics({**report.metrics(), "rm/wall_seconds": result.wall_seconds}, step=result.steps)
    (out_dir / "agreement.json").write_text(json.dumps(agreement, indent=2, default=float))
    plot_reliability(report, out_dir / "reliability.png")
    plot_reward_distribution(report, out_dir / "reward_distribution.png")
    for name in ("agreement.json", "reliability.png", "reward_distribution.png"):
        tracker.log_artifact(out_dir / name)
    return StageOutputs(
        {"model_dir": str(result.model_dir), "agreement": str(out_dir / "agreement.json")},
        result.model_dir, result.checkpoint_dir, metrics=report.metrics(),
    )


def fit(cfg: PipelineConfig, policy_dir: str, run: RunDir, tracker: Tracker | None, *, dist: DataParallel | None = None,
        progress: bool = True) -> tuple[RewardResult, RewardModel, PreTrainedTokenizerBase]:
    """Build the reward model on ``policy_dir`` ('tiny' = a fresh tiny backbone) and train it on the
    preference pairs' train split; ``(result, reward_model, tokenizer)``."""
    import pandas as pd

    from rlhf_core.models import build_tiny_model, load_tokenizer
    from rlhf_core.reward.model import RewardModel
    from rlhf_core.reward.train import train_reward_model

    tokenizer = load_tokenizer(cfg.model, cfg.model_cache)
    if cfg.reward.init_from:  # warm start (an `rlhf iterate` round: the champion's reward model)
        reward_model = RewardModel.from_pretrained(cfg.reward.init_from, trust_remote_code=cfg.model.trust_remote_code)
    elif policy_dir == "tiny":
        reward_model = RewardModel.from_model(build_tiny_model(cfg.model.tiny, tokenizer), seed=cfg.seed)
    else:
        reward_model = RewardModel.from_causal_lm_dir(policy_dir, seed=cfg.seed, trust_remote_code=cfg.model.trust_remote_code)
    train_pairs, _ = split_train_eval(pd.read_parquet(run.require("data")["preferences"]))
    result = train_reward_model(
        cfg.reward, reward_model, tokenizer, train_pairs, output_dir=run.stage("reward"), tracker=tracker,
        seed=cfg.seed, progress=progress, dist=dist,
    )
    return result, reward_model, tokenizer


def agreement_on(reward_model: RewardModel, tokenizer: PreTrainedTokenizerBase, pairs: pd.DataFrame, cfg: PipelineConfig) -> AgreementReport:
    """How often the reward model prefers ``chosen`` on ``pairs``, beside the annotators and the gold scorer
    (not with ``eval.gold`` false: real data has no gold scorer)."""
    import pandas as pd

    from rlhf_core.gold import gold_score
    from rlhf_core.reward.agreement import reward_model_agreement
    from rlhf_core.reward.train import score_pairs

    chosen_r, rejected_r = score_pairs(
        reward_model, tokenizer, pairs, max_length=cfg.reward.optim.max_length,
        prompt_format=cfg.reward.prompt_format, truncate=cfg.reward.optim.truncate_prompt,
        share_prompt=cfg.reward.share_prompt,
    )
    harmful = pairs["harmful"].fillna(False) if "harmful" in pairs else pd.Series(False, index=pairs.index)
    gold_prefers = [
        gold_preference(gold_score(p, c, harmful=bool(h)), gold_score(p, r, harmful=bool(h)))
        for p, c, r, h in zip(pairs["prompt"], pairs["chosen"], pairs["rejected"], harmful)
    ] if cfg.eval.gold else None
    return reward_model_agreement(
        chosen_r, rejected_r,
        annotator_labels=pairs["annotator_labels"].tolist() if "annotator_labels" in pairs else None,
        gold_prefers_chosen=gold_prefers,
        topics=pairs["topic"].fillna("unknown").tolist() if "topic" in pairs else None,
    )


def gold_preference(chosen: float, rejected: float) -> bool | None:
    """True if the gold scorer prefers `chosen`; None for a tie (left out of gold agreement)."""
    return None if chosen == rejected else chosen > rejected
