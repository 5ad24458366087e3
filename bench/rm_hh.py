"""Reward model on real human labels (Anthropic HH-RLHF harmless-base): ours vs TRL 1.16's RewardTrainer.

    nice -n 10 .venv/bin/python bench/rm_hh.py                  # SmolLM2-135M, fp32 CPU (see --help for the budget)
    nice -n 10 .venv/bin/python bench/rm_hh.py --quick          # tiny random model, a few pairs: checks the harness
    .venv/bin/python bench/rm_hh.py --threads 1 --concurrent     # both sides at once, one core each

The sample (``--data``, default ``data/hh-rlhf/harmless-base-sample.jsonl.gz``) is read by the
project's own importer, so conversations arrive as chat turns (``prompt_messages``) and rows the
importer quarantines are counted, not used. It is split **by conversation** (every row whose first
human turn is the same goes to the same side; seeded), ``--holdout`` of the conversations held out.
Nothing is tuned on the held-out part: the settings below are fixed before the run.

Both sides train from the same base model directory on the same training pairs, in the same order
budget (``--train-pairs`` pairs, one epoch, ``--batch-size`` pairs per step, AdamW at ``--lr``,
cosine schedule, no warmup, max_length, fp32, threads, no gradient checkpointing: TRL's
``RewardConfig`` turns it on by default and is told not to); pairs longer than ``--max-length`` in our
template rendering are left out up front on both sides (counted), so neither side truncates. Ours gets
the rows as the data stage writes them (prompt turns + final replies, rendered through the chat
template by ``rlhf_core.batching``); TRL gets the same turns as conversational ``chosen``/``rejected``
message lists and renders them with the same template. Ours runs each pair as one shared-prefix row
(``reward.share_prompt``), TRL as two sequences: pairs per CPU-second compares the two trainers as
each is built, and the token counts say how much of the ratio is that layout.

Then each side scores the held-out pairs with its trained model (in the same worker, after the timed
window): agreement = share of held-out pairs where reward(chosen) > reward(rejected), with a 95%
bootstrap interval over pairs; beside it the "prefer the shorter reply" / "prefer the longer reply"
baselines on the same pairs (reply length in template tokens). Writes ``bench/results/rm_hh[_quick].json``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402  (stdlib-only: importable in every venv)

SCRIPT = Path(__file__).resolve()
DEFAULT_DATA = C.ROOT / "data" / "hh-rlhf" / "harmless-base-sample.jsonl.gz"
SIDES = ("ours", "trl")


# ============================================================================ workers
def worker_ours(spec: dict[str, Any], out: Path) -> None:
    from rlhf_core.batching import resolve_format
    from rlhf_core.config.model import ModelConfig
    from rlhf_core.config.optim import OptimConfig
    from rlhf_core.config.reward import RewardConfig
    from rlhf_core.models import load_tokenizer
    from rlhf_core.reward.model import RewardModel
    from rlhf_core.reward.train import score_pairs, train_reward_model

    model_dir = Path(spec["model_dir"])
    tokenizer = load_tokenizer(ModelConfig(base=str(model_dir), dtype="float32", device="cpu"), C.MODEL_CACHE)
    resolve_format(tokenizer, "chat")
    rm = RewardModel.from_causal_lm_dir(model_dir, dtype="float32", pad_token_id=tokenizer.pad_token_id, seed=spec["seed"])
    steps = spec["steps"]
    optim = OptimConfig(learning_rate=spec["lr"], max_steps=steps, micro_batch_size=spec["batch_size"], grad_accum_steps=1,
                        max_length=spec["max_length"], warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
                        checkpoint_every=0, log_every=1, mixed_precision="no", length_bucket_window=32)
    meter = C.StepMeter(0)
    tracker = _MeterTracker(meter)
    workdir = Path(tempfile.mkdtemp(prefix="ours-rmhh-", dir=spec["scratch"]))
    try:
        rss0 = C.reset_peak_rss()
        meter.start()
        train_reward_model(RewardConfig(optim=optim, prompt_format="chat"), rm, tokenizer, spec["rows"],
                           output_dir=workdir, tracker=tracker, resume=False, seed=spec["seed"], progress=False)
        peak = C.peak_rss_mib()
        chosen, rejected = score_pairs(rm, tokenizer, spec["eval_rows"], max_length=spec["max_length"],
                                       prompt_format="chat", batch_size=8)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    _write_result(out, meter, peak, rss0, chosen, rejected, {"side": "ours", "versions": C.versions("torch", "transformers")})


class _MeterTracker:
    """The tracker protocol of rlhf_core's loops, marking the meter at every optimizer step."""

    def __init__(self, meter: C.StepMeter) -> None:
        self.meter = meter

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:  # noqa: ARG002
        if "train/step_seconds" in metrics:  # once per optimizer step, after the update
            self.meter.mark(tokens=round(metrics["train/tokens_per_second"] * metrics["train/step_seconds"]))

    def log_artifact(self, path: Any) -> None:  # noqa: ARG002
        return None

    def log_params(self, params: Any) -> None:  # noqa: ARG002
        return None


def worker_trl(spec: dict[str, Any], out: Path) -> None:
    import torch
    import transformers
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback

    import trl

    transformers.logging.set_verbosity_error()
    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"])
    if tokenizer.pad_token is None:  # what our loader does
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForSequenceClassification.from_pretrained(spec["model_dir"], num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id
    meter = C.StepMeter(0)

    class Meter(TrainerCallback):
        def on_step_end(self, args, st, control, **kwargs):  # noqa: ANN001, ARG002
            meter.mark()

    args = trl.RewardConfig(
        output_dir=str(Path(spec["scratch"]) / "trl-rmhh-out"), max_steps=spec["steps"],
        per_device_train_batch_size=spec["batch_size"], gradient_accumulation_steps=1, learning_rate=spec["lr"],
        weight_decay=0.0, max_grad_norm=1.0, warmup_steps=0, lr_scheduler_type="cosine", bf16=False, fp16=False,
        use_cpu=True, report_to="none", save_strategy="no", eval_strategy="no", logging_steps=10**6,
        disable_tqdm=True, dataloader_num_workers=0, seed=spec["seed"], data_seed=spec["seed"],
        max_length=spec["max_length"], center_rewards_coefficient=None,
        gradient_checkpointing=False,  # RewardConfig turns it on by default: a second forward pass ours does not run
    )  # fmt: skip
    trainer = trl.RewardTrainer(model=model, args=args, train_dataset=Dataset.from_list(spec["trl_rows"]),
                                processing_class=tokenizer, callbacks=[Meter()])
    ds = trainer.train_dataset
    data = {"rows": len(ds), "tokens": sum(len(a) + len(b) for a, b in zip(ds["chosen_ids"], ds["rejected_ids"]))}
    rss0 = C.reset_peak_rss()
    meter.start()
    trainer.train()
    peak = C.peak_rss_mib()
    # Held-out scoring: the trainer's own tokenisation and collator, then the model's reward logit.
    held = trainer._prepare_dataset(Dataset.from_list(spec["trl_eval_rows"]), tokenizer, args, "held-out")
    if len(held) != len(spec["trl_eval_rows"]):
        raise RuntimeError(f"TRL dropped {len(spec['trl_eval_rows']) - len(held)} held-out pairs over max_length")
    chosen, rejected = [], []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(held), 8):
            batch = trainer.data_collator([held[i] for i in range(start, min(start + 8, len(held)))])
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.squeeze(-1)
            c, r = torch.chunk(logits.float(), 2)
            chosen += c.tolist()
            rejected += r.tolist()
    _write_result(out, meter, peak, rss0, chosen, rejected,
                  {"side": "trl", "data": data, "optim": str(args.optim),
                   "versions": C.versions("torch", "transformers", "trl")})


def _write_result(out: Path, meter: C.StepMeter, peak: float, rss0: float, chosen: list[float], rejected: list[float],
                  extra: dict[str, Any]) -> None:
    summary = meter.summary(("tokens",))
    summary.pop("per_step")
    C.write_json(out, {**summary, **extra, "peak_train_rss_mib": peak, "rss_before_train_mib": rss0,
                       "chosen_rewards": chosen, "rejected_rewards": rejected})


# ============================================================================ parent
def first_user_turn(row: dict[str, Any]) -> str:
    messages = row.get("prompt_messages")
    if isinstance(messages, list) and messages:
        first = next((m["content"] for m in messages if m["role"] == "user"), messages[0]["content"])
    else:
        first = str(row["prompt"])
    return " ".join(first.lower().split())


def split_by_conversation(rows: list[dict[str, Any]], holdout: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices (train, held-out): whole conversations (grouped by first human turn) go to one side."""
    groups: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(first_user_turn(row), []).append(i)
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    target, held = holdout * len(rows), []
    for key in keys:
        if len(held) >= target:
            break
        held.extend(groups[key])
    held_set = set(held)
    return [i for i in range(len(rows)) if i not in held_set], sorted(held)


def _messages(row: dict[str, Any]) -> list[dict[str, str]]:
    messages = row.get("prompt_messages")
    if isinstance(messages, list) and messages:
        return [{"role": m["role"], "content": m["content"]} for m in messages]
    return [{"role": "user", "content": row["prompt"]}]


def trl_row(row: dict[str, Any]) -> dict[str, Any]:
    """The same conversation as TRL's conversational preference row (implicit prompt: full chosen/rejected turns)."""
    prompt = _messages(row)
    return {"chosen": prompt + [{"role": "assistant", "content": row["chosen"]}],
            "rejected": prompt + [{"role": "assistant", "content": row["rejected"]}]}


def load_rows(path: Path, tokenizer: Any, max_length: int) -> tuple[list[dict[str, Any]], list[Any], dict[str, Any]]:
    """Usable pairs as our trainer takes them, their tokenised examples, and what was left out (by reason)."""
    from data_checks.importers import load_dataset_file
    from rlhf_core.batching import resolve_format, tokenize_preference_row
    from rlhf_core.errors import DataError

    frame, quarantined = load_dataset_file(path, "preferences")
    fmt = resolve_format(tokenizer, "chat")
    left_out: dict[str, int] = {}
    for q in quarantined:
        left_out[f"import: {q.rule}"] = left_out.get(f"import: {q.rule}", 0) + 1
    rows, examples = [], []
    keys = [c for c in ("id", "prompt", "prompt_messages", "chosen", "rejected") if c in frame.columns]
    for record in frame[keys].to_dict("records"):
        messages = record.get("prompt_messages")
        record["prompt_messages"] = None if messages is None or (isinstance(messages, float) and math.isnan(messages)) \
            else [dict(m) for m in messages]
        if not all(isinstance(record[k], str) and record[k].strip() for k in ("chosen", "rejected")):
            left_out["empty reply"] = left_out.get("empty reply", 0) + 1
            continue
        if record["chosen"] == record["rejected"]:
            left_out["chosen == rejected"] = left_out.get("chosen == rejected", 0) + 1
            continue
        try:
            ex = tokenize_preference_row(record, tokenizer, fmt=fmt, max_length=max_length, index=len(rows))
        except DataError:
            ex = None
        if ex is None or ex.truncated:  # TRL would drop it whole: both sides get only conversations that fit
            left_out[f"over {max_length} tokens"] = left_out.get(f"over {max_length} tokens", 0) + 1
            continue
        rows.append(record)
        examples.append(ex)
    return rows, examples, {"rows_read": len(frame) + len(quarantined), "usable": len(rows), "left_out": left_out}


def agreement(chosen: list[float], rejected: list[float], seed: int) -> dict[str, Any]:
    """Share of pairs the model orders as people did (ties count half), with its bootstrap interval."""
    import numpy as np

    from rlhf_core.reward.agreement import preference_score
    from rlhf_core.stats import estimate

    return estimate(preference_score(np.asarray(chosen), np.asarray(rejected)), n_boot=2000, seed=seed).to_dict()


def length_baselines(examples: list[Any], seed: int) -> dict[str, Any]:
    """'Prefer the shorter reply' and 'prefer the longer reply' (same prompt: the reply's tokens decide)."""
    from rlhf_core.reward.evaluate import length_rule_scores
    from rlhf_core.stats import estimate

    chosen, rejected = [len(ex.chosen_ids) for ex in examples], [len(ex.rejected_ids) for ex in examples]
    return {f"prefer_{rule}": estimate(length_rule_scores(chosen, rejected, prefer=rule), n_boot=2000, seed=seed).to_dict()
            for rule in ("shorter", "longer")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny random model and 32 pairs: checks the harness")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="HH-RLHF preference file (any importer layout)")
    ap.add_argument("--holdout", type=float, default=0.2, help="share of conversations held out")
    ap.add_argument("--train-pairs", type=int, default=480, help="training pairs (one epoch; sampled from the train split)")
    ap.add_argument("--batch-size", type=int, default=8, help="pairs per optimizer step")
    ap.add_argument("--max-length", type=int, default=320, help="tokens per rendered conversation")
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads on both sides")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per worker before it is killed")
    ap.add_argument("--concurrent", action="store_true",
                    help="run both sides at the same time, each pinned to its own core with --threads 1 "
                         "(same machine state for both; half the wall time)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.concurrent and (args.threads != 1 or len(os.sched_getaffinity(0)) < 2):
        ap.error("--concurrent needs --threads 1 and at least 2 usable cores (one per side)")

    from rlhf_core.config.model import ModelConfig
    from rlhf_core.models import load_tokenizer

    model_dir = C.model_dir(args.quick)
    tokenizer = load_tokenizer(ModelConfig(base=str(model_dir), dtype="float32", device="cpu"), C.MODEL_CACHE)
    rows, examples, data_stats = load_rows(args.data, tokenizer, args.max_length)
    train_idx, held_idx = split_by_conversation(rows, args.holdout, args.seed)
    n_train = 32 if args.quick else args.train_pairs
    train_idx = sorted(random.Random(args.seed).sample(train_idx, min(n_train, len(train_idx))))
    if args.quick:
        held_idx = held_idx[:32]
    train, held = [rows[i] for i in train_idx], [rows[i] for i in held_idx]
    overlap = {first_user_turn(r) for r in train} & {first_user_turn(r) for r in held}
    assert not overlap, f"{len(overlap)} conversations on both sides of the split"
    steps = math.ceil(len(train) / args.batch_size)
    C.SCRATCH.mkdir(parents=True, exist_ok=True)
    spec = {"model_dir": str(model_dir), "rows": train, "eval_rows": held, "trl_rows": [trl_row(r) for r in train],
            "trl_eval_rows": [trl_row(r) for r in held], "batch_size": args.batch_size, "max_length": args.max_length,
            "steps": steps, "lr": args.lr, "threads": args.threads, "seed": args.seed, "scratch": str(C.SCRATCH)}
    spec_path = C.SCRATCH / "spec-rmhh.json"
    spec_path.write_text(json.dumps(spec))
    turns = [sum(m["role"] == "user" for m in _messages(r)) for r in held]
    report: dict[str, Any] = {
        "benchmark": "rm_hh", "command": "python bench/rm_hh.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "data": str(args.data), "data_stats": data_stats, "model_dir": str(model_dir),
        "model": "tiny random Llama" if args.quick else "SmolLM2-135M-Instruct (fp32)",
        "settings": {"holdout": args.holdout, "train_pairs": len(train), "held_out_pairs": len(held), "steps": steps,
                     "batch_size": args.batch_size, "max_length": args.max_length, "lr": args.lr, "threads": args.threads,
                     "schedule": "cosine, no warmup", "epochs": 1, "seed": args.seed},
        "held_out_turns": {str(k): turns.count(k) for k in sorted(set(turns))},
        "machine_before": C.machine_info(), "sides": {},
    }
    held_examples = [examples[i] for i in held_idx]
    report["baselines"] = length_baselines(held_examples, args.seed)
    cores = sorted(os.sched_getaffinity(0))[:2] if args.concurrent else None
    report["settings"]["concurrent"] = bool(args.concurrent)

    def run_side(side: str) -> dict[str, Any]:
        python = C.OUR_PYTHON if side == "ours" else C.TRL116_PYTHON
        res_path = C.SCRATCH / f"result-rmhh-{side}.json"
        res_path.unlink(missing_ok=True)
        core = None if cores is None else [cores[SIDES.index(side)]]
        print(f"{side}: training on {len(train)} pairs ({steps} steps), scoring {len(held)} held-out"
              f"{'' if core is None else f' (core {core[0]})'} ...", flush=True)
        return C.run_worker(python, SCRIPT, side, spec_path, res_path, threads=args.threads, timeout=args.timeout,
                            log_path=C.SCRATCH / f"log-rmhh-{side}.txt", cpus=core)

    if args.concurrent:
        with concurrent.futures.ThreadPoolExecutor(len(SIDES)) as pool:
            results = dict(zip(SIDES, pool.map(run_side, SIDES), strict=True))
    else:
        results = {side: run_side(side) for side in SIDES}
    for side in SIDES:
        res = results[side]
        res["pairs_per_cpu_s"] = len(train) / res["cpu_s"]
        res["pairs_per_s_wall"] = len(train) / res["wall_s"]
        res["agreement"] = agreement(res.pop("chosen_rewards"), res.pop("rejected_rewards"), args.seed)
        report["sides"][side] = res
        a = res["agreement"]
        print(f"{side}: agreement {a['value']:.3f} [{a['ci_low']:.3f}, {a['ci_high']:.3f}], "
              f"{res['pairs_per_cpu_s']:.3f} pairs/cpu-s, {res['wall_s']:.0f} s wall", flush=True)
    ours, trl = report["sides"]["ours"], report["sides"]["trl"]
    report["speedup_cpu"] = ours["pairs_per_cpu_s"] / trl["pairs_per_cpu_s"]
    report["speedup_wall"] = ours["pairs_per_s_wall"] / trl["pairs_per_s_wall"]
    report["machine_after"] = C.machine_info()
    out_path = args.out or C.RESULTS / ("rm_hh_quick.json" if args.quick else "rm_hh.json")
    C.write_json(out_path, report)
    b = report["baselines"]["prefer_shorter"]
    print(f"held-out: {len(held)} pairs; prefer-shorter baseline {b['value']:.3f} [{b['ci_low']:.3f}, {b['ci_high']:.3f}]")
    print(f"ours/trl pairs per CPU-second: {report['speedup_cpu']:.2f}x (wall {report['speedup_wall']:.2f}x)")
    print(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    worker = C.worker_argv()
    if worker is not None:
        side_name, spec_file, out_file = worker
        spec_data = json.loads(spec_file.read_text())
        C.pin_threads(spec_data["threads"])
        (worker_ours if side_name == "ours" else worker_trl)(spec_data, out_file)
        sys.exit(0)
    sys.exit(main())
