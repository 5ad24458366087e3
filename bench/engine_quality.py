"""Does training on vLLM rollouts give as good a policy as training on our sampler? (issue 20)

    .venv/bin/python bench/engine_quality.py --workspace WS --source-run WS/runs/<demo run> --seeds 0,1,2

Session 13 found the demo's PPO policy trained on vLLM rollouts weaker than the one trained on our
own sampler (gold delta vs SFT +0.055 against +0.148), on one seed per side. This separates the
engine from seed noise: for each seed (the global ``seed``, from which PPO derives its sampling,
shuffling and LoRA initialisation), the PPO stage is trained once per ``ppo.rollout.engine``, as
``bench/demo_engines.py`` runs it (a fresh process, a new run directory whose data, SFT and reward
stages are linked from ``--source-run``, tracking off), and then **evaluated on the same engine for
every run** (``eval.engine=hf``, ``eval.seed`` fixed: the same held-out prompts, the same SFT and
best-of-N baselines), so that only the training engine differs. Sides alternate per seed.

Reported per run: the gold delta vs SFT (paired, with its bootstrap interval), the gold win rate
vs SFT, the KL to SFT, the reward-model delta; per engine: their mean and spread over the seeds;
and the mean over seeds of the per-seed vllm − hf gold difference. Writes
``bench/results/engine_quality.json`` (``--out``).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402  (stdlib-only)
from demo_engines import ENGINES, REUSED_STAGES, run_engine, source_run_parser  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
FIGURES = ("gold_delta", "gold_delta_ci_low", "gold_delta_ci_high", "gold_win_rate_vs_sft", "kl_to_ref", "rm_delta",
           "mean_gold")


def quality(run_dir: Path) -> dict[str, float]:
    """The primary policy's figures from the run's evaluation (eval/eval.json)."""
    metrics = json.loads((run_dir / "eval" / "eval.json").read_text(encoding="utf-8"))["metrics"]
    return {k: round(metrics[f"eval/{k}"], 4) for k in FIGURES}


def spread(values: list[float]) -> dict[str, float]:
    return {"mean": round(statistics.fmean(values), 4), "sd": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
            "min": round(min(values), 4), "max": round(max(values), 4)}


def main(argv: list[str] | None = None) -> int:
    p = source_run_parser(__doc__)
    p.add_argument("--seeds", default="0,1,2", help="comma-separated global seeds (default 0,1,2)")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "engine_quality.json")
    args = p.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        p.error(f"--seeds: {args.seeds!r} is not a comma-separated list of integers")
    if not seeds:
        p.error("--seeds: give at least one seed")
    if not all((args.source_run / s).is_dir() for s in REUSED_STAGES):
        p.error(f"--source-run {args.source_run}: needs a run directory with {', '.join(REUSED_STAGES)} stages")
    machine = C.machine_info()
    runs: list[dict[str, Any]] = []
    for i, seed in enumerate(seeds):
        for engine in ENGINES if i % 2 == 0 else tuple(reversed(ENGINES)):
            print(f"seed {seed}: train on {engine}, evaluate on hf", flush=True)
            sets = [*args.overrides, f"seed={seed}", "eval.engine=hf"]
            out = run_engine(args.config, sets, engine, args.source_run, args.workspace)
            out |= {"seed": seed} | quality(Path(out["run_dir"]))
            runs.append(out)
            print(f"  {out}", flush=True)
    summary: dict[str, Any] = {e: {k: spread([r[k] for r in runs if r["engine"] == e])
                                   for k in ("gold_delta", "gold_win_rate_vs_sft", "kl_to_ref", "rm_delta")}
                               for e in ENGINES}
    by_seed = {(r["seed"], r["engine"]): r for r in runs}
    summary["vllm_minus_hf_gold_delta"] = spread([by_seed[s, "vllm"]["gold_delta"] - by_seed[s, "hf"]["gold_delta"]
                                                  for s in seeds])
    payload = {
        "benchmark": "engine_quality",
        "command": "python bench/engine_quality.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "config": args.config, "overrides": args.overrides, "seeds": seeds,
        "machine_before": machine, "machine_after": C.machine_info(), "source_run": str(args.source_run),
        "runs": runs, "summary": summary,
    }
    C.write_json(args.out, payload)
    print(json.dumps(summary, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
