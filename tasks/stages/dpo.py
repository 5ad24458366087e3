"""The DPO stage: DPO (or IPO) from the SFT model on the same preference pairs as the reward model,
the baseline next to PPO. The loss and loop are rlhf_core/dpo/.

``run`` is the stage as the pipeline runs it (in this process, or data-parallel when
``distributed.num_processes > 1``); ``fit`` loads the inputs and trains, and is also what each
data-parallel worker runs (tasks/distributed_worker.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rlhf_core.config.pipeline import PipelineConfig
from rlhf_core.tracking import Tracker
from tasks.artifacts import RunDir
from tasks.distributed import fit_data_parallel
from tasks.stages.common import StageOutputs, StageTracker, load_policy, log_curated_inputs, split_train_eval

if TYPE_CHECKING:  # pragma: no cover
    from rlhf_core.distributed import DataParallel
    from rlhf_core.training import TrainResult


def run(cfg: PipelineConfig, policy_dir: str, run: RunDir, tracker: StageTracker, *, tracking_uri: str | None = None) -> StageOutputs:
    """Train the policy from ``policy_dir`` into `<run>/dpo/` on the preference pairs' train split.

    ``tracking_uri``: where data-parallel workers log (rank 0 logs into ``tracker``'s run).
    """
    data = run.require("data")
    tracker.log_params({"dpo": cfg.dpo.model_dump(mode="json"), "policy_init": policy_dir})
    log_curated_inputs(tracker, data, ("preferences",), context="training")

    if cfg.distributed.enabled:
        result = fit_data_parallel("dpo", cfg, policy_dir, run, tracker, tracking_uri)
    else:
        result = fit(cfg, policy_dir, run, tracker)

    tracker.log_metrics({"dpo/wall_seconds": result.wall_seconds}, step=result.steps)
    return StageOutputs({"model_dir": str(result.model_dir)}, result.model_dir, result.checkpoint_dir)


def fit(cfg: PipelineConfig, policy_dir: str, run: RunDir, tracker: Tracker | None, *, dist: DataParallel | None = None,
        progress: bool = True) -> TrainResult:
    """Load the policy and the preference pairs' train split and train it with DPO."""
    import pandas as pd

    from rlhf_core.dpo.trainer import train_dpo

    policy, tokenizer = load_policy(cfg, policy_dir)
    train_pairs, _ = split_train_eval(pd.read_parquet(run.require("data")["preferences"]))
    return train_dpo(
        cfg.dpo, policy, tokenizer, train_pairs, output_dir=run.stage("dpo"), tracker=tracker, seed=cfg.seed,
        progress=progress, dist=dist,
    )
