"""One data-parallel training process, as launched by :func:`tasks.distributed.train_distributed`.

``torchrun`` / ``accelerate launch`` start ``distributed.num_processes`` copies of this module
(``python -m tasks.distributed_worker``). Each runs the stage body's ``fit`` (``tasks.stages.sft``
/ ``tasks.stages.reward``: the same inputs and training the in-process stage runs) with a
:class:`~rlhf_core.distributed.DataParallel`; rank 0 writes the result JSON the launcher reads.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tasks.distributed import STAGES, result_to_json


def _worker(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.distributed_worker", description="One data-parallel training process.")
    parser.add_argument("--stage", choices=STAGES, required=True)
    parser.add_argument("--config", type=Path, required=True, help="the resolved PipelineConfig as JSON")
    parser.add_argument("--model-dir", required=True, help="the stage's starting model ('tiny' = a fresh tiny model)")
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--result", type=Path, required=True, help="where rank 0 writes the TrainResult JSON")
    parser.add_argument("--mlflow-run-id")
    parser.add_argument("--tracking-uri")
    args = parser.parse_args(argv)

    import torch

    from rlhf_core.config.pipeline import PipelineConfig
    from rlhf_core.distributed import DataParallel
    from tasks.artifacts import RunDir
    from tasks.stages import ppo, reward, sft

    cfg = PipelineConfig.model_validate_json(args.config.read_text())
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    dist = DataParallel.from_launcher()
    run = RunDir(args.run_dir)
    tracker = None
    if args.mlflow_run_id and dist.is_main:  # rank 0 logs into the stage's MLflow run, through its own spool
        from tasks.tracking import SPOOL_DIR, MlflowTracker

        spool = run.path / SPOOL_DIR / f"{args.stage}-{args.mlflow_run_id}-rank0.jsonl"
        tracker = MlflowTracker(args.mlflow_run_id, args.tracking_uri, spool=spool, stage=args.stage)
    try:
        if args.stage == "sft":
            result = sft.fit(cfg, args.model_dir, run, tracker, dist=dist, progress=False)
        elif args.stage == "ppo":
            result = ppo.fit(cfg, args.model_dir, run, tracker, dist=dist, progress=False)
        else:
            result, _, _ = reward.fit(cfg, args.model_dir, run, tracker, dist=dist, progress=False)
        if tracker is not None:  # an outage: the task's stage run reports it, naming this spool too
            tracker.flush(cfg.tracking.flush_timeout_s)
        if dist.is_main:
            tmp = args.result.with_suffix(".tmp")
            tmp.write_text(json.dumps({**result_to_json(result), "world_size": dist.world_size}))
            tmp.replace(args.result)
        dist.barrier()
    finally:
        dist.close()
    return 0


if __name__ == "__main__":
    sys.exit(_worker())
