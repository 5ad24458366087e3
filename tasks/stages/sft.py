"""The SFT stage: supervised fine-tuning of the base model on the curated demonstrations.

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
    from rlhf_core.sft.train import SFTResult


def run(cfg: PipelineConfig, base_dir: str, run: RunDir, tracker: StageTracker, *, tracking_uri: str | None = None) -> StageOutputs:
    """Train the SFT model from ``base_dir`` ('tiny' = a fresh tiny model) into `<run>/sft/`.

    ``tracking_uri``: where data-parallel workers log (rank 0 logs into ``tracker``'s run).
    """
    data = run.require("data")
    tracker.log_params({"sft": cfg.sft.model_dump(mode="json"), "base_model": base_dir})
    log_curated_inputs(tracker, data, ("demonstrations",), context="training")

    if cfg.distributed.enabled:
        result = fit_data_parallel("sft", cfg, base_dir, run, tracker, tracking_uri)
    else:
        result = fit(cfg, base_dir, run, tracker)

    tracker.log_metrics({"sft/wall_seconds": result.wall_seconds, "sft/tokens_per_second": result.tokens_per_second}, step=result.steps)
    return StageOutputs({"model_dir": str(result.model_dir)}, result.model_dir, result.checkpoint_dir)


def fit(cfg: PipelineConfig, base_dir: str, run: RunDir, tracker: Tracker | None, *, dist: DataParallel | None = None,
        progress: bool = True) -> SFTResult:
    """Load the base model and the demonstrations (train split; eval split for the eval loss) and train."""
    import pandas as pd

    from rlhf_core.sft.train import train_sft

    model, tokenizer = load_policy(cfg, base_dir)
    train_rows, eval_rows = split_train_eval(pd.read_parquet(run.require("data")["demonstrations"]))
    return train_sft(
        cfg.sft, model, tokenizer, train_rows, output_dir=run.stage("sft"), tracker=tracker,
        eval_rows=eval_rows if len(eval_rows) else None, seed=cfg.seed, progress=progress, dist=dist,
    )
