"""Every per-step PPO metric of a short PPO stage on one rollout engine, printed as it is logged (issue 20).

    PYTHONPATH=$PWD .venv/bin/python bench/ppo_step_metrics.py --workspace WS --source-run WS/runs/<demo run> \\
        --engine vllm --steps 5 [--seed 0] [--config demo] [--set KEY=VALUE ...]

A diagnostic beside ``bench/engine_quality.py``: the PPO stage runs as ``bench/demo_engines.py`` runs
it (a new run directory under WS/runs whose data, SFT and reward stages are linked from
``--source-run``, tracking off), with the stage's tracker replaced by one that prints each
``log_metrics`` call as a line ``M <step> {json}``: ``ppo/logprob_mismatch`` (how far the engine's
log-probs are from the trainer's), ``ppo/kl``, ``ppo/reward``, the time split, and the rest. The
stage's model directory is removed afterwards.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from demo_engines import ENGINES, REUSED_STAGES, source_run_parser  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = source_run_parser(__doc__)
    p.add_argument("--engine", choices=ENGINES, required=True)
    p.add_argument("--steps", type=int, default=5, help="PPO steps (ppo.optim.max_steps; default 5)")
    p.add_argument("--seed", type=int, default=0, help="the global seed (default 0)")
    args = p.parse_args(argv)
    if not all((args.source_run / s).is_dir() for s in REUSED_STAGES):
        p.error(f"--source-run {args.source_run}: needs a run directory with {', '.join(REUSED_STAGES)} stages")
    if args.steps < 1:
        p.error("--steps: at least 1")

    import rlhf_core.tracking as tracking

    def log_metrics(self, metrics, step: int) -> None:  # noqa: ANN001  (NullTracker's signature)
        print("M", step, json.dumps({k: round(float(v), 6) for k, v in metrics.items()}), flush=True)

    tracking.NullTracker.log_metrics = log_metrics  # the stage's tracker when tracking is off

    from flows.runtime import prepare_environment
    from rlhf_core.config.pipeline import load_config

    cfg = load_config(args.config, [*args.overrides, f"workspace={args.workspace}", f"ppo.rollout.engine={args.engine}",
                                    f"ppo.optim.max_steps={args.steps}", f"seed={args.seed}"])
    prepare_environment(cfg.workspace)
    from tasks.context import StageContext
    from tasks.training import train_ppo_stage

    if cfg.torch_threads:
        import torch

        torch.set_num_threads(cfg.torch_threads)
    run_dir = Path(tempfile.mkdtemp(prefix=f"steps-{args.engine}-", dir=args.workspace / "runs"))
    for stage in REUSED_STAGES:
        (run_dir / stage).symlink_to(args.source_run.resolve() / stage, target_is_directory=True)
    ctx = StageContext(run_dir=str(run_dir), parent_run_id="", experiment_id="", tracking_uri="", register_models=False,
                       tracking_enabled=False, log_checkpoints=False)
    try:
        train_ppo_stage.fn(cfg, ctx.run.require("sft")["model_dir"], ctx)
    finally:
        shutil.rmtree(run_dir / "ppo", ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
