"""PPO settings side by side on one finished run's data, SFT model and reward model.

    .venv/bin/python bench/ppo_variants.py --from-run RUN_DIR --config demo \
        --variant base --variant "lr3e-4:ppo.optim.learning_rate=3e-4" \
        --variant "steps16:ppo.optim.max_steps=16" [--out bench/results/ppo_variants.json]

Each variant is ``NAME`` or ``NAME:key=value,key=value`` (``--set`` overrides of the config).
For each one, in a fresh run directory under ``<workspace>/runs`` that points at RUN_DIR's
finished ``data``, ``sft`` and ``reward`` outputs, it runs the PPO stage and then the eval stage
(the stage task bodies, tracking off, as ``bench/orchestration_overhead.py``'s bare run does),
and reports:

* ``train``: from the PPO history (the RL *training* prompts): the gold score, reward and KL of
  the first and last quarter of the steps. Pick settings on this, not on ``eval``: the held-out
  evaluation is the figure a preset is judged by, and choosing among variants by it would
  overfit it.
* ``eval``: the eval stage's PPO-vs-SFT figures on the held-out prompts (gold delta with its
  paired-bootstrap 95% interval, gold win rate, KL to the SFT model).
* ``ppo_wall_s`` / ``eval_wall_s``.

``--skip-eval`` runs PPO only (the ``train`` figures); evaluate the chosen setting afterwards.

``--fixed-prompts N`` is a diagnostic: PPO trains on the first N benign RL prompts only (with
``ppo.samples_per_prompt`` and a rollout batch of N x that, every step samples the same prompts),
so the per-step ``ppo/reward`` history shows whether PPO raises the reward model's score at all.

``--select-on train`` runs the eval stage on the RL *training* prompts instead of the held-out
ones (``eval`` is then labelled ``select``): the same paired PPO-vs-SFT figures, with fresh
samples, on prompts a preset may be tuned on. With ``--set eval.n_prompts=96`` it is far less
noisy than the per-step history (16 samples a step), and the held-out prompts stay unseen.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from collections.abc import Sequence
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SHARED_STAGES = ("data", "sft", "reward")


def parse_variant(text: str) -> tuple[str, list[str]]:
    """``NAME`` or ``NAME:k=v,k=v`` -> (name, ["k=v", ...])."""
    name, _, rest = text.partition(":")
    if not name or "/" in name:
        raise SystemExit(f"--variant {text!r}: needs a plain NAME before the ':'")
    overrides = [item for item in rest.split(",") if item] if rest else []
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise SystemExit(f"--variant {text!r}: overrides must be key=value, got {bad}")
    return name, overrides


def open_base_run(from_run: Path, stages: Sequence[str], variant_args: list[str]):
    """(RunDir of ``from_run``, [(name, overrides)]): ``stages`` must have finished there, names must differ."""
    from tasks.artifacts import RunDir

    base = RunDir(from_run.resolve())
    missing = [s for s in stages if base.outputs(s) is None]
    if missing:
        raise SystemExit(f"--from-run {base.path}: stages {missing} have not finished there")
    variants = [parse_variant(v) for v in variant_args]
    names = [n for n, _ in variants]
    if len(set(names)) != len(names):
        raise SystemExit(f"--variant names must differ: {names}")
    return base, variants


def variant_config(config: str, base, overrides: list[str]):
    """The variant's config, its workspace the base run's (variants live beside it), environment and threads set."""
    from flows.runtime import prepare_environment
    from rlhf_core.config.pipeline import load_config

    cfg = load_config(config, [f"workspace={base.path.parent.parent}", *overrides])
    prepare_environment(cfg.workspace)
    if cfg.torch_threads:
        import torch

        torch.set_num_threads(cfg.torch_threads)
    return cfg


def quarter_means(history: list[dict[str, float]], key: str) -> dict[str, float]:
    """Mean of ``key`` over the first and the last quarter of the steps (at least one step each)."""
    values = [h[key] for h in history if key in h]
    if not values:
        return {}
    k = max(1, len(values) // 4)
    return {"first": sum(values[:k]) / k, "last": sum(values[-k:]) / k}


def final_history(checkpoints: Path) -> list[dict[str, float]]:
    """The per-step metrics the PPO trainer keeps in its newest checkpoint's trainer state."""
    from rlhf_core.checkpoint import TRAINER_STATE

    steps = sorted(checkpoints.glob("step-*"), key=lambda p: int(p.name.split("-")[-1]))
    if not steps:
        raise SystemExit(f"{checkpoints}: no PPO checkpoint to read the history from")
    return json.loads((steps[-1] / TRAINER_STATE).read_text())["history"]


def fixed_prompts(rl_prompts: Path, n: int, run_dir: Path) -> str:
    """The first ``n`` benign prompts of ``rl_prompts``, written into ``run_dir``; their path."""
    import pandas as pd

    if n < 1:
        raise SystemExit(f"--fixed-prompts {n}: needs at least 1 prompt")
    frame = pd.read_parquet(rl_prompts)
    if "harmful" in frame:
        frame = frame[~frame["harmful"].fillna(False).astype(bool)]
    if len(frame) < n:
        raise SystemExit(f"--fixed-prompts {n}: {rl_prompts} has only {len(frame)} benign prompts")
    run_dir.mkdir(parents=True, exist_ok=True)
    out = run_dir / f"rl_prompts_first{n}.parquet"
    frame.head(n).to_parquet(out)
    return str(out)


def add_variant_arguments(ap: argparse.ArgumentParser, stages: str) -> None:
    """--from-run (whose ``stages`` finished), --config, --set and --variant: the options both variant scripts take."""
    ap.add_argument("--from-run", type=Path, required=True, help=f"a run directory whose {stages} stages finished")
    ap.add_argument("--config", default="demo", help="preset or YAML the variants start from (default demo)")
    ap.add_argument("--set", action="append", default=[], help="override for every variant (repeatable)")
    ap.add_argument("--variant", action="append", required=True, help="NAME or NAME:key=value,key=value (repeatable)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__)
    add_variant_arguments(ap, "data, sft and reward")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "ppo_variants.json")
    ap.add_argument("--skip-eval", action="store_true",
                    help="run PPO only and report the training-prompt figures (the eval stage costs ~1 min per variant)")
    ap.add_argument("--fixed-prompts", type=int, default=None, metavar="N",
                    help="a diagnostic: PPO trains on the first N benign RL prompts only, so every step revisits "
                         "them and the per-step reward history is comparable (does PPO raise the RM score at all?)")
    ap.add_argument("--select-on", choices=("eval", "train"), default="eval",
                    help="prompts the eval stage runs on: the held-out eval prompts (default) or the RL training "
                         "prompts, for choosing settings without looking at the held-out set")
    args = ap.parse_args(argv)

    from tasks.artifacts import RunDir

    base, variants = open_base_run(args.from_run, SHARED_STAGES, args.variant)
    eval_key = "eval" if args.select_on == "eval" else "select"  # the figures' prompts, named in the JSON
    results: list[dict[str, Any]] = []
    for name, overrides in variants:
        cfg = variant_config(args.config, base, [*args.set, *overrides])
        # after variant_config: prepare_environment must precede the first `import prefect`
        from tasks.context import StageContext
        from tasks.evaluation import evaluate_stage
        from tasks.training import train_ppo_stage

        run = RunDir(base.path.parent / f"{base.run_id}--{name}")
        if run.path.exists():
            shutil.rmtree(run.path)
        for stage in SHARED_STAGES:  # absolute paths into the base run (outside this one: kept absolute)
            outputs = dict(base.outputs(stage))
            if stage == "data" and args.select_on == "train":
                outputs["eval_prompts"] = outputs["rl_prompts"]
            if stage == "data" and args.fixed_prompts:
                outputs["rl_prompts"] = fixed_prompts(Path(outputs["rl_prompts"]), args.fixed_prompts, run.path)
            run.record_outputs(stage, outputs)
        ctx = StageContext(run_dir=str(run.path), parent_run_id="", experiment_id="", tracking_uri="",
                           register_models=False, tracking_enabled=False)
        sft_dir = base.outputs("sft")["model_dir"]
        print(f"[{name}] PPO {' '.join(overrides) or '(preset)'} ...", flush=True)
        t0 = time.perf_counter()
        train_ppo_stage.fn(cfg, sft_dir, ctx)
        ppo_wall = time.perf_counter() - t0
        eval_wall, eval_json = 0.0, {}
        if not args.skip_eval:
            t0 = time.perf_counter()
            evaluate_stage.fn(cfg, ctx)
            eval_wall = time.perf_counter() - t0
            eval_json = json.loads(Path(run.outputs("eval")["eval_json"]).read_text())
        history = final_history(run.checkpoints("ppo"))
        entry = {
            "variant": name, "overrides": overrides, "run_dir": str(run.path),
            "ppo_wall_s": round(ppo_wall, 1), "eval_wall_s": round(eval_wall, 1),
            "train": {k: quarter_means(history, k) for k in ("ppo/gold", "ppo/reward", "ppo/kl", "ppo/response_length")},
            "reward_per_step": [round(h["ppo/reward"], 4) for h in history if "ppo/reward" in h],
            "kl_per_step": [round(h["ppo/kl"], 4) for h in history if "ppo/kl" in h],
            eval_key: {k: v for k, v in eval_json.get("metrics", {}).items() if k.startswith("eval/")},
        }
        results.append(entry)
        e = entry[eval_key]
        print(f"    ppo {ppo_wall:.0f} s, train gold {entry['train']['ppo/gold']}, "
              f"eval gold delta CI low {e.get('eval/gold_delta_ci_low')}, win {e.get('eval/gold_win_rate_vs_sft')}", flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"from_run": str(base.path), "config": args.config, "set": args.set,
                                        "select_on": args.select_on,
                                        "variants": results}, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
