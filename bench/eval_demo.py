"""Issue 5's quality measurement: PPO vs SFT vs best-of-{1,4,16} vs DPO on the held-out prompts of a run.

    python bench/eval_demo.py --run-dir .rlhf/runs/<id>
    # options: --n-prompts 64 --best-of-n 1,4,16 --max-new-tokens 48 --temperature 0.7
    #          --n-boot 1000 --seed 0 --batch-size 16 --no-ppo-checkpoints --threads 2
    #          --out bench/results/eval_demo.json
    #          --train-dpo [--set dpo.optim.learning_rate=5e-4 ...]   (train the DPO baseline first)

Reads the finished pipeline run (its resolved ``config.yaml`` and each stage's recorded outputs),
runs ``tasks.stages.eval.run_evaluation`` (the same code as the pipeline's eval step; settings from
the run's ``eval`` config unless overridden here), prints the comparison table and writes the figures
to ``--out``. The per-sample rows, the Markdown table and the gold-vs-sqrt(KL) plot go to
``<run>/eval-demo/``. The quality bar (issue 5): PPO's gold delta vs SFT has a 95% interval above 0,
gold win rate >= 0.60, KL within ``ppo.max_kl``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def stage_dir(run: Path, stage: str, key: str = "model_dir") -> str | None:
    """A finished stage's recorded output (``<stage>/outputs.json``), else its conventional path, else None."""
    from tasks.artifacts import RunDir

    outputs = RunDir(run).outputs(stage) if hasattr(RunDir, "outputs") else None
    if outputs and outputs.get(key):
        return outputs[key]
    fallback = run / stage / ("model" if key == "model_dir" else f"{key}.parquet")
    return str(fallback) if fallback.exists() else None


def train_dpo(cfg, run: Path, sft_dir: str) -> float:
    """The pipeline's DPO stage body (tracking off) into ``run``; its wall seconds."""
    from flows.runtime import prepare_environment
    from tasks.context import StageContext
    from tasks.training import train_dpo_stage

    prepare_environment(cfg.workspace)
    ctx = StageContext(run_dir=str(run), parent_run_id="", experiment_id="", tracking_uri="",
                       register_models=False, tracking_enabled=False)
    print(f"training the DPO baseline ({cfg.dpo.loss_type}, {cfg.dpo.optim.max_steps} steps) ...", flush=True)
    started = time.perf_counter()
    train_dpo_stage.fn(cfg, sft_dir, ctx)
    return round(time.perf_counter() - started, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", required=True, type=Path, help="a finished pipeline run, .rlhf/runs/<id>")
    parser.add_argument("--n-prompts", type=int, help="cap on held-out prompts (default: the run's eval.n_prompts)")
    parser.add_argument("--best-of-n", help="comma-separated N, e.g. 1,4,16 ('' = none)")
    parser.add_argument("--max-new-tokens", type=int)
    parser.add_argument("--temperature", type=float)
    parser.add_argument("--n-boot", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--no-ppo-checkpoints", action="store_true", help="skip intermediate PPO checkpoints")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--train-dpo", action="store_true",
                        help="first train the DPO baseline into the run when it has none (the run's dpo config + --set)")
    parser.add_argument("--set", action="append", default=[], dest="overrides",
                        help="config override for --train-dpo, e.g. dpo.optim.learning_rate=5e-4 (repeatable)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "eval_demo.json")
    args = parser.parse_args(argv)

    from rlhf_core.config.eval import EvalConfig
    from rlhf_core.config.pipeline import load_config
    from rlhf_core.errors import UserError
    from tasks.stages.eval import run_evaluation

    run = args.run_dir.resolve()
    try:
        if not (run / "config.yaml").is_file():
            raise UserError(f"{run}: not a pipeline run directory (no config.yaml)")
        cfg = load_config(run / "config.yaml", args.overrides)
        ecfg = getattr(cfg, "eval", None) or EvalConfig()
        overrides = {
            "n_prompts": args.n_prompts, "max_new_tokens": args.max_new_tokens, "temperature": args.temperature,
            "n_boot": args.n_boot, "seed": args.seed, "batch_size": args.batch_size,
        }
        if args.best_of_n is not None:
            overrides["best_of_n"] = [int(n) for n in args.best_of_n.split(",") if n.strip()]
        if args.no_ppo_checkpoints:
            overrides["ppo_checkpoints"] = False
        ecfg = ecfg.model_copy(update={k: v for k, v in overrides.items() if v is not None})
        ecfg = EvalConfig.model_validate(ecfg.model_dump())  # validate the overrides
        sft, reward = stage_dir(run, "sft"), stage_dir(run, "reward")
        prompts = stage_dir(run, "data", "eval_prompts")
        missing = [n for n, v in (("sft", sft), ("reward", reward), ("data eval_prompts", prompts)) if v is None]
        if missing:
            raise UserError(f"{run}: the run has no finished {', '.join(missing)} stage output(s)")
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        dpo_wall = None
        if args.train_dpo and stage_dir(run, "dpo") is None:
            dpo_wall = train_dpo(cfg, run, sft)
        policies = {name: d for name in ("ppo", "dpo") if (d := stage_dir(run, name)) is not None}
        started = time.perf_counter()
        result = run_evaluation(cfg, sft, policies, reward, prompts, run / "eval-demo", eval_cfg=ecfg)
        wall = time.perf_counter() - started
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    report = json.loads(Path(result["eval_json"]).read_text())
    primary = report["metrics"]
    ppo = report["reports"].get("ppo")
    bar = None
    if ppo is not None:
        est = ppo["estimates"]
        bar = {
            "gold_delta_ci_excludes_zero": (est["gold_delta"]["ci_low"] or 0) > 0,
            "gold_win_rate_at_least_0.60": (est["gold_win_rate_vs_sft"]["value"] or 0) >= 0.60,
            "kl_within_max_kl": (est["kl_to_ref"]["value"] or 0) <= cfg.ppo.max_kl,
            "max_kl": cfg.ppo.max_kl,
        }
    figures = {
        "run_dir": str(run),
        "policies": report["policy_dirs"],
        "settings": report["settings"],
        "wall_seconds": round(wall, 1),
        "dpo_train_wall_seconds": dpo_wall, "dpo_config": cfg.dpo.model_dump(mode="json") if "dpo" in policies else None,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "quality_bar": bar,
        "primary": report["primary"],
        "primary_metrics": primary,
        "table": report["table"],
        "rm_gold_agreement_on_policy": report.get("rm_gold_agreement_on_policy"),
        "gold_vs_sqrt_kl": report["gold_vs_sqrt_kl"],
        "artifacts": {k: result[k] for k in ("eval_json", "comparison_md", "samples", "plot")},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    print(Path(result["comparison_md"]).read_text())
    if bar is not None:
        print("quality bar (PPO vs SFT):", json.dumps(bar))
    print(f"wall time {wall:.1f} s; figures in {args.out}; samples and plot in {run / 'eval-demo'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
