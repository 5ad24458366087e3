"""Reward-model settings side by side on one finished run's data and SFT model, chosen on a validation split.

    .venv/bin/python bench/rm_variants.py --from-run RUN_DIR --config demo \
        --variant base --variant "epoch:reward.optim.max_steps=76" \
        --variant "top10:reward.optim.lora.top_layers=10" [--out bench/results/rm_variants.json]

Each variant is ``NAME`` or ``NAME:key=value,key=value`` (``--set`` overrides of the config).
The run's *training* preference pairs are split by prompt (``--val-fraction`` of the prompts,
seeded) into a fit part and a validation part; every variant trains the reward model from RUN_DIR's
SFT model on the fit part only and is scored on the validation part: agreement with the annotators'
majority (leave-one-out, as the pipeline reports it, beside the annotators' own ceiling on the same
pairs) and with the gold scorer, plus the training wall and CPU time. The run's held-out ``eval``
pairs are never touched: they judge the preset once it is chosen (``rlhf run``), and picking a
variant by them would overfit them.

Note the fit part is smaller than the pipeline's training set (by ``--val-fraction``), so an
epoch here is fewer steps than an epoch in the pipeline.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._common import cpu_seconds  # noqa: E402
from bench.ppo_variants import add_variant_arguments, open_base_run, variant_config  # noqa: E402


def split_by_prompt(frame, fraction: float, seed: int):
    """(fit, validation) rows of ``frame``, all pairs of one prompt on the same side."""
    import numpy as np

    prompts = sorted(frame["prompt"].unique())
    rng = np.random.default_rng(seed)
    val_prompts = set(rng.choice(prompts, size=max(1, round(fraction * len(prompts))), replace=False).tolist())
    is_val = frame["prompt"].isin(val_prompts)
    return frame[~is_val].reset_index(drop=True), frame[is_val].reset_index(drop=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__)
    add_variant_arguments(ap, "data and sft")
    ap.add_argument("--val-fraction", type=float, default=0.2, help="share of training prompts held out for validation")
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "rm_variants.json")
    args = ap.parse_args(argv)
    if not 0 < args.val_fraction < 1:
        raise SystemExit(f"--val-fraction {args.val_fraction}: must be in (0, 1)")

    import pandas as pd

    from rlhf_core.gold import gold_score
    from rlhf_core.models import load_tokenizer
    from rlhf_core.reward.agreement import reward_model_agreement
    from rlhf_core.reward.model import RewardModel
    from rlhf_core.reward.train import score_pairs, train_reward_model
    from tasks.stages.common import split_train_eval
    from tasks.stages.reward import gold_preference

    base, variants = open_base_run(args.from_run, ("data", "sft"), args.variant)
    train_pairs, _ = split_train_eval(pd.read_parquet(base.outputs("data")["preferences"]))
    fit, val = split_by_prompt(train_pairs, args.val_fraction, args.split_seed)
    print(f"{len(fit)} fit pairs, {len(val)} validation pairs ({val['prompt'].nunique()} prompts)", flush=True)
    harmful = val["harmful"].fillna(False) if "harmful" in val else pd.Series(False, index=val.index)
    gold_prefers = [
        gold_preference(gold_score(p, c, harmful=bool(h)), gold_score(p, r, harmful=bool(h)))
        for p, c, r, h in zip(val["prompt"], val["chosen"], val["rejected"], harmful)
    ]
    sft_dir = base.outputs("sft")["model_dir"]
    results: list[dict[str, Any]] = []
    for name, overrides in variants:
        cfg = variant_config(args.config, base, [*args.set, *overrides])
        out_dir = base.path.parent / f"{base.run_id}--rm-{name}"
        tokenizer = load_tokenizer(cfg.model, cfg.model_cache)
        model = RewardModel.from_causal_lm_dir(sft_dir, seed=cfg.seed, trust_remote_code=cfg.model.trust_remote_code)
        print(f"[{name}] reward model {' '.join(overrides) or '(preset)'} ...", flush=True)
        t0, c0 = time.perf_counter(), cpu_seconds()
        result = train_reward_model(cfg.reward, model, tokenizer, fit, output_dir=out_dir, seed=cfg.seed, progress=False)
        wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
        chosen_r, rejected_r = score_pairs(
            model, tokenizer, val, max_length=cfg.reward.optim.max_length, prompt_format=cfg.reward.prompt_format,
            truncate=cfg.reward.optim.truncate_prompt, share_prompt=cfg.reward.share_prompt,
        )
        report = reward_model_agreement(
            chosen_r, rejected_r, annotator_labels=val["annotator_labels"].tolist(), gold_prefers_chosen=gold_prefers,
            topics=val["topic"].fillna("unknown").tolist(),
        )
        metrics = report.metrics()
        keep = ("rm/ceiling_gap", "rm/agreement_majority_loo", "rm/agreement_ceiling", "rm/agreement_gold", "rm/agreement_gold_ci_low",
                "rm/agreement_gold_ci_high", "rm/agreement_majority_loo_ci_low", "rm/agreement_majority_loo_ci_high")
        entry = {
            "variant": name, "overrides": overrides, "steps": result.steps, "pairs_seen": result.steps * cfg.reward.optim.micro_batch_size
            * cfg.reward.optim.grad_accum_steps, "train_wall_s": round(wall, 1), "train_cpu_s": round(cpu, 1),
            "last_quarter_loss": round(sum(h["rm/loss"] for h in result.history[-max(1, len(result.history) // 4):])
                                       / max(1, len(result.history) // 4), 4),
            "validation": {k: round(v, 4) for k, v in metrics.items() if k in keep},
        }
        results.append(entry)
        v = entry["validation"]
        print(f"    {wall:.0f} s wall, {cpu:.0f} CPU-s; majority(loo) {v.get('rm/agreement_majority_loo')} "
              f"(ceiling {v.get('rm/agreement_ceiling')}), gold {v.get('rm/agreement_gold')}", flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({
            "from_run": str(base.path), "config": args.config, "set": args.set, "val_fraction": args.val_fraction,
            "split_seed": args.split_seed, "fit_pairs": len(fit), "validation_pairs": len(val), "variants": results,
        }, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
