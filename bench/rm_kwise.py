"""K-wise (prompt-grouped) vs pairwise reward-model training, side by side on the demo preferences.

    nice -n 10 .venv/bin/python bench/rm_kwise.py [--preferences CURATED.parquet] [--steps 40] \
        [--pairs-per-step 8] [--threads 2] [--out bench/results/rm_kwise.json]

Same data, seed, base model (SmolLM2-135M-Instruct from the model cache, fp32, CPU, threads pinned),
the demo preset's reward settings (LoRA, learning rate, max length) and the same number of optimizer
steps for every side:

* ``pairs``: ``reward.grouping=pairs``, one shared-prefix row ``[prompt | chosen | rejected]`` per
  pair, ``--pairs-per-step`` pairs per step (the demo preset's 8).
* ``prompt``: ``reward.grouping=prompt`` (InstructGPT's K-wise loss), one row
  ``[prompt | reply 1 | ... | reply K]`` per prompt; prompts per step = pairs per step / the
  mean pairs per prompt, rounded, so both sides see about the same number of pairs.

Data: the curated demo preferences (``--preferences``, e.g. ``<run>/data/preferences.parquet``;
by default the data stage is run once on ``data/demo`` with the demo preset into ``.rlhf/bench``).
Their *training* split is divided by prompt (``--val-fraction``, seeded) into a fit part and a
validation part; both sides train on the fit part and are scored on the validation pairs
(agreement with the annotators' majority, leave-one-out, and with the gold scorer, each pair scored
alone, as the pipeline does). The eval split is never touched.

Before training, a layout measurement: forward + backward over the same ``--layout-prompts``
prompts (no optimizer step) in four layouts: pairs as one shared-prefix row or two rows, prompts as
one shared-prefix row or one row per reply; tokens and CPU seconds per pair. Pairs per CPU-second of
training = pairs the steps saw / CPU seconds of the training call (process CPU, all threads).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._common import SCRATCH, cpu_seconds, machine_info, model_dir, pin_threads, versions, write_json  # noqa: E402
from bench.rm_variants import split_by_prompt  # noqa: E402


def curated_preferences(path: Path | None) -> Path:
    """``path``, or the demo data curated by the data stage (demo preset) once into the bench scratch dir."""
    if path is not None:
        return path
    out = SCRATCH / "rm_kwise-data"
    if not (out / "preferences.parquet").is_file():
        from data_checks.stage import run_data_stage
        from rlhf_core.config.pipeline import load_config
        from rlhf_core.models import load_tokenizer

        cfg = load_config("demo")
        print(f"curating data/demo into {out} (demo preset's data stage) ...", flush=True)
        run_data_stage(cfg.data, out, tokenizer=load_tokenizer(cfg.model, cfg.model_cache))
    return out / "preferences.parquet"


def layout_costs(rm, tokenizer, fit, n_prompts: int, pairs_per_step: int, prompts_per_step: int,
                 max_length: int) -> dict[str, Any]:
    """Forward + backward CPU seconds and tokens of the same prompts' pairs in the four layouts (median of 3)."""
    from rlhf_core.batching import collate_pairs, collate_shared_pairs, resolve_format, tokenize_preference_rows
    from rlhf_core.reward.grouped import collate_group_rows, collate_shared_groups, group_preference_rows
    from rlhf_core.reward.train import group_step_loss, pair_step_loss

    prompts = list(dict.fromkeys(fit["prompt"]))[:n_prompts]
    rows = fit[fit["prompt"].isin(prompts)]
    fmt = resolve_format(tokenizer, "auto")
    pairs = tokenize_preference_rows(rows, tokenizer, fmt=fmt, max_length=max_length)
    groups = group_preference_rows(rows, tokenizer, fmt=fmt, max_length=max_length)
    pad = tokenizer.pad_token_id
    layouts = {
        "pairs, one row per pair [prompt|chosen|rejected]": (pairs, collate_shared_pairs, pair_step_loss(0.0), pairs_per_step),
        "pairs, two rows per pair": (pairs, collate_pairs, pair_step_loss(0.0), pairs_per_step),
        "prompt, one row per prompt [prompt|r1|...|rK]": (groups, collate_shared_groups, group_step_loss(0.0), prompts_per_step),
        "prompt, one row per reply": (groups, collate_group_rows, group_step_loss(0.0), prompts_per_step),
    }
    out = {}
    for name, (items, collate, loss_fn, size) in layouts.items():
        batches = [collate(items[i:i + size], pad) for i in range(0, len(items), size)]
        times = []
        for _ in range(3):
            rm.zero_grad(set_to_none=True)
            c0 = cpu_seconds()
            for batch in batches:
                loss_fn(rm, batch, len(items))[0].backward()
            times.append(cpu_seconds() - c0)
        cpu = statistics.median(times)
        out[name] = {"rows": sum(int(b["input_ids"].shape[0]) for b in batches),
                     "tokens": sum(int(b["attention_mask"].sum()) for b in batches),
                     "padded_tokens": sum(b["input_ids"].numel() for b in batches),
                     "cpu_s": round(cpu, 2), "pairs": len(rows), "pairs_per_cpu_s": round(len(rows) / cpu, 2)}
        print(f"  {name}: {out[name]}", flush=True)
    rm.zero_grad(set_to_none=True)
    return {"prompts": len(prompts), "pairs": len(rows), "layouts": out}


def train_and_score(name: str, reward_cfg, base: Path, tokenizer, fit, val, gold_prefers, seed: int) -> dict[str, Any]:
    import shutil

    from rlhf_core.reward.agreement import reward_model_agreement
    from rlhf_core.reward.model import RewardModel
    from rlhf_core.reward.train import score_pairs, train_reward_model

    out_dir = SCRATCH / f"rm_kwise-{name}"
    shutil.rmtree(out_dir, ignore_errors=True)
    model = RewardModel.from_causal_lm_dir(base, seed=seed)
    print(f"[{name}] grouping={reward_cfg.grouping}, micro_batch_size={reward_cfg.optim.micro_batch_size}, "
          f"{reward_cfg.optim.max_steps} steps ...", flush=True)
    t0, c0 = time.perf_counter(), cpu_seconds()
    result = train_reward_model(reward_cfg, model, tokenizer, fit, output_dir=out_dir, seed=seed, progress=False, resume=False)
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    pair_key = "rm/pairs" if reward_cfg.grouping == "prompt" else "train/pairs"
    pairs_seen = int(sum(h[pair_key] for h in result.history))
    c1 = cpu_seconds()
    chosen_r, rejected_r = score_pairs(model, tokenizer, val, max_length=reward_cfg.optim.max_length,
                                       prompt_format=reward_cfg.prompt_format, truncate=reward_cfg.optim.truncate_prompt)
    score_cpu = cpu_seconds() - c1
    report = reward_model_agreement(chosen_r, rejected_r, annotator_labels=val["annotator_labels"].tolist(),
                                    gold_prefers_chosen=gold_prefers)
    metrics = report.metrics()
    keep = ("rm/agreement_majority_loo", "rm/agreement_majority_loo_ci_low", "rm/agreement_majority_loo_ci_high",
            "rm/agreement_ceiling", "rm/agreement_gold", "rm/agreement_gold_ci_low", "rm/agreement_gold_ci_high")
    k = max(1, len(result.history) // 4)
    entry = {
        "side": name, "grouping": reward_cfg.grouping, "micro_batch_size": reward_cfg.optim.micro_batch_size,
        "steps": result.steps, "pairs_seen": pairs_seen, "train_wall_s": round(wall, 1), "train_cpu_s": round(cpu, 1),
        "loop_wall_s": round(result.wall_seconds, 1), "pairs_per_cpu_s": round(pairs_seen / cpu, 3),
        "pairs_per_wall_s": round(pairs_seen / wall, 3), "tokens_per_second": round(result.tokens_per_second, 1),
        "last_quarter_train_accuracy": round(sum(h["rm/accuracy"] for h in result.history[-k:]) / k, 4),
        "validation_score_cpu_s": round(score_cpu, 1),
        "validation": {key: round(v, 4) for key, v in metrics.items() if key in keep},
    }
    v = entry["validation"]
    print(f"    {wall:.0f} s wall, {cpu:.0f} CPU-s, {pairs_seen} pairs: {entry['pairs_per_cpu_s']} pairs/CPU-s; "
          f"majority(loo) {v.get('rm/agreement_majority_loo')} (ceiling {v.get('rm/agreement_ceiling')}), "
          f"gold {v.get('rm/agreement_gold')}", flush=True)
    return entry


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__)
    ap.add_argument("--preferences", type=Path, help="curated preferences (parquet); default: data/demo curated once")
    ap.add_argument("--steps", type=int, default=40, help="optimizer steps per side (the demo preset's 40)")
    ap.add_argument("--pairs-per-step", type=int, default=8, help="pairwise side's pairs per step (demo: 8)")
    ap.add_argument("--layout-prompts", type=int, default=12, help="prompts in the layout measurement (0 = skip)")
    ap.add_argument("--val-fraction", type=float, default=0.2, help="share of training prompts held out for validation")
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "rm_kwise.json")
    args = ap.parse_args(argv)

    import pandas as pd

    from rlhf_core.config.pipeline import load_config
    from rlhf_core.gold import gold_score
    from rlhf_core.models import load_tokenizer
    from rlhf_core.reward.model import RewardModel
    from tasks.stages.common import split_train_eval
    from tasks.stages.reward import gold_preference

    pin_threads(args.threads)
    preferences = curated_preferences(args.preferences)
    train_pairs, _ = split_train_eval(pd.read_parquet(preferences))
    fit, val = split_by_prompt(train_pairs, args.val_fraction, args.split_seed)
    per_prompt = fit.groupby("prompt").size()
    prompts_per_step = max(1, round(args.pairs_per_step / per_prompt.mean()))
    print(f"{len(fit)} fit pairs over {len(per_prompt)} prompts ({per_prompt.mean():.2f} pairs per prompt), "
          f"{len(val)} validation pairs ({val['prompt'].nunique()} prompts); prompt side: {prompts_per_step} prompts/step",
          flush=True)
    gold_prefers = [gold_preference(gold_score(p, c, harmful=bool(h)), gold_score(p, r, harmful=bool(h)))
                    for p, c, r, h in zip(val["prompt"], val["chosen"], val["rejected"], val["harmful"].fillna(False))]
    cfg = load_config("demo", [f"reward.optim.max_steps={args.steps}", f"reward.optim.micro_batch_size={args.pairs_per_step}",
                               "reward.optim.checkpoint_every=0"])
    tokenizer = load_tokenizer(cfg.model, cfg.model_cache)
    base = model_dir(quick=False)

    layouts = None
    if args.layout_prompts:
        from rlhf_core.models import apply_lora

        print(f"layout measurement ({args.layout_prompts} prompts, forward + backward, LoRA as in training):", flush=True)
        rm = RewardModel.from_causal_lm_dir(base, seed=args.seed)
        rm.backbone = apply_lora(rm.backbone, cfg.reward.optim.lora, task_type="SEQ_CLS")
        layouts = layout_costs(rm, tokenizer, fit, args.layout_prompts, args.pairs_per_step, prompts_per_step,
                               cfg.reward.optim.max_length)
        del rm

    sides = {
        "pairs": cfg.reward,
        "prompt": cfg.reward.model_copy(update={
            "grouping": "prompt", "optim": cfg.reward.optim.model_copy(update={"micro_batch_size": prompts_per_step})}),
    }
    results = [train_and_score(name, rc, base, tokenizer, fit, val, gold_prefers, args.seed) for name, rc in sides.items()]
    write_json(args.out, {
        "command": " ".join(["nice -n 10 .venv/bin/python bench/rm_kwise.py", *(argv if argv is not None else sys.argv[1:])]),
        "preferences": str(preferences), "base_model": base.name, "dtype": "float32", "threads": args.threads,
        "reward_settings": {"learning_rate": cfg.reward.optim.learning_rate, "max_length": cfg.reward.optim.max_length,
                            "lora": cfg.reward.optim.lora.model_dump(exclude_none=True), "steps": args.steps},
        "fit_pairs": len(fit), "fit_prompts": int(len(per_prompt)), "pairs_per_prompt": round(float(per_prompt.mean()), 3),
        "validation_pairs": len(val), "validation_prompts": int(val["prompt"].nunique()),
        "val_fraction": args.val_fraction, "split_seed": args.split_seed, "seed": args.seed,
        "layout_measurement": layouts, "sides": results,
        "machine": machine_info(), "versions": versions("torch", "transformers", "peft"),
    })
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
