"""SFT tokens/s vs TRL's SFTTrainer, reward-model pairs/s vs TRL's RewardTrainer (trl 1.16).

    nice -n 10 .venv/bin/python bench/trl_sft_rm.py --tasks sft   # headline SFT: SmolLM2-135M, fp32 CPU (~6 min here)
    nice -n 10 .venv/bin/python bench/trl_sft_rm.py --tasks rm    # headline reward model (~6 min here)
    nice -n 10 .venv/bin/python bench/trl_sft_rm.py --quick       # tiny random model, both tasks, ~3 min

Same model directory, same rows, batch size, max_length, number of optimizer steps, AdamW
learning rate, gradient accumulation (1), fp32, torch thread count, on both sides. Each
(side, repeat) runs in a fresh subprocess, sides alternating A B / B A / A B; medians are
reported. Ours runs in ``.venv`` (``train_sft`` / ``train_reward_model``), TRL in
``bench/.venv-trl116`` (trl==1.16.0 on our exact torch/transformers pins; ``setup_trl_venvs.sh``).

Timed window: from the end of the last warmup step to the end of the last step (a trainer
callback on TRL's side, the tracker hook on ours), so dataset tokenisation, model loading
and the final save are outside it on both sides and collation between steps is inside it.
Tokens are counted identically from the batches each side actually ran: non-pad tokens
(``attention_mask`` sum), padded tokens (``input_ids.numel()``) and loss tokens
(``labels[:, 1:] != -100``; pairs for the reward model). Our reward model runs each pair as ONE
shared-prefix row ``[prompt | chosen | rejected]`` (``reward.share_prompt``, the default;
``--rm-layout two-rows`` measures the old prompt+chosen / prompt+rejected rows), so for the same
pairs it processes fewer tokens than TRL: compare pairs/s; tokens/s counts what each side computed. Memory: the worker's peak RSS
during training (``VmHWM`` after a reset just before training) and ``ru_maxrss`` of the
whole worker process. CPU seconds (``getrusage``) are the steadier figure on a shared box.

Writes ``bench/results/trl_<tasks>[_quick].json`` (``trl_sft.json``, ``trl_rm.json``, ``trl_sft_rm_quick.json``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402  (stdlib-only: importable in every venv)

SCRIPT = Path(__file__).resolve()
SIDES = {"sft": ("ours_sft", "trl_sft"), "rm": ("ours_rm", "trl_rm")}


# ============================================================================ workers
def _load_spec(spec_path: Path) -> dict[str, Any]:
    spec = json.loads(spec_path.read_text())
    C.pin_threads(spec["threads"])
    return spec


def _finish(meter: C.StepMeter, peak: float, rss0: float, extra: dict[str, Any], out: Path,
            sums: tuple[str, ...]) -> None:
    result = {**meter.summary(sums), "peak_train_rss_mib": peak, "rss_before_train_mib": rss0, **extra}
    C.write_json(out, result)


class _MeterTracker:
    """Our ``Tracker``: marks the meter at each step's ``log_metrics`` (called once per step, after the update)."""

    def __init__(self, meter: C.StepMeter, unit_key: str, total_steps: int) -> None:
        self.meter, self.unit_key, self.total_steps = meter, unit_key, total_steps
        self.peak = float("nan")

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if "train/step_seconds" not in metrics:  # the final evaluation's call (none here)
            return
        tokens = round(metrics["train/tokens_per_second"] * metrics["train/step_seconds"])
        self.meter.mark(tokens=tokens, units=metrics[self.unit_key])
        if step == self.total_steps:
            self.peak = C.peak_rss_mib()  # before the final checkpoint/model save

    def log_artifact(self, path: Any) -> None:
        pass

    def log_params(self, params: Any) -> None:
        pass


def _our_step_batches(sampler_lengths: list[int], spec: dict[str, Any]) -> list[list[int]]:
    """Example indices of every step our loop ran: its sampler is a pure function of (lengths, seed, epoch)."""
    from rlhf_core.batching import LengthBucketedBatches

    sampler = LengthBucketedBatches(sampler_lengths, spec["batch_size"], window=32, seed=spec["seed"])
    out, epoch, order, pos = [], 0, sampler.epoch(0), 0
    for _ in range(spec["warmup"] + spec["steps"]):
        if pos >= len(order):
            epoch, pos, order = epoch + 1, 0, sampler.epoch(epoch + 1)
        out.append(order[pos])
        pos += 1
    return out


def _attach_padded(meter: C.StepMeter, batches: list[list[int]], seq_lens: list[list[int]]) -> None:
    """Add padded-token counts per step; the rebuilt non-pad count must equal what the loop reported."""
    for row, batch in zip(meter.extra, batches, strict=True):
        lens = [n for i in batch for n in seq_lens[i]]
        if int(row["tokens"]) != sum(lens):
            raise RuntimeError(f"batch rebuild drifted from the loop: {row['tokens']} vs {sum(lens)} tokens")
        row["padded"] = max(lens) * len(lens)


def _our_optim(spec: dict[str, Any], lr: float):
    from rlhf_core.config.optim import OptimConfig

    return OptimConfig(
        learning_rate=lr, max_steps=spec["warmup"] + spec["steps"], micro_batch_size=spec["batch_size"], grad_accum_steps=1,
        max_length=spec["max_length"], warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, checkpoint_every=0,
        log_every=1, mixed_precision="no", length_bucket_window=32,
    )


def worker_ours(task: str, spec: dict[str, Any], out: Path) -> None:
    from rlhf_core.batching import resolve_format, tokenize_preference_rows, tokenize_sft_rows
    from rlhf_core.config.model import ModelConfig
    from rlhf_core.models import load_causal_lm, load_tokenizer

    model_dir = Path(spec["model_dir"])
    cfg = ModelConfig(base=str(model_dir), dtype="float32", device="cpu")
    tokenizer = load_tokenizer(cfg, C.MODEL_CACHE)
    fmt = resolve_format(tokenizer, "auto")
    meter = C.StepMeter(spec["warmup"])
    total = spec["warmup"] + spec["steps"]
    workdir = Path(tempfile.mkdtemp(prefix=f"ours-{task}-", dir=spec["scratch"]))
    try:
        if task == "sft":
            from rlhf_core.config.sft import SFTConfig
            from rlhf_core.sft.train import train_sft

            model = load_causal_lm(cfg, C.MODEL_CACHE, tokenizer)
            examples = tokenize_sft_rows(spec["rows"], tokenizer, fmt=fmt, max_length=spec["max_length"])
            lengths = [len(e.input_ids) for e in examples]
            tracker = _MeterTracker(meter, "train/tokens", total)
            run_cfg = SFTConfig(optim=_our_optim(spec, spec["lr"]), prompt_format="auto")
            rss0 = C.reset_peak_rss()
            meter.start()
            train_sft(run_cfg, model, tokenizer, spec["rows"], output_dir=workdir, tracker=tracker, resume=False,
                      seed=spec["seed"], progress=False)
        else:
            from rlhf_core.config.reward import RewardConfig
            from rlhf_core.reward.model import RewardModel
            from rlhf_core.reward.train import train_reward_model

            rm = RewardModel.from_causal_lm_dir(model_dir, dtype="float32", pad_token_id=tokenizer.pad_token_id,
                                                seed=spec["seed"])
            pairs = tokenize_preference_rows(spec["rows"], tokenizer, fmt=fmt, max_length=spec["max_length"])
            tracker = _MeterTracker(meter, "train/pairs", total)
            share = spec.get("rm_layout", "shared-prefix") == "shared-prefix"
            run_cfg = RewardConfig(optim=_our_optim(spec, spec["lr"]), prompt_format="auto", share_prompt=share)
            rss0 = C.reset_peak_rss()
            meter.start()
            train_reward_model(run_cfg, rm, tokenizer, spec["rows"], output_dir=workdir, tracker=tracker,
                               resume=False, seed=spec["seed"], progress=False)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    # padded tokens of the batches the loop ran (right padding to the batch's longest row)
    if task == "sft":
        _attach_padded(meter, _our_step_batches(lengths, spec), [[n] for n in lengths])
    else:  # the rows the loop really ran: one shared-prefix row per pair, or chosen and rejected rows
        seq_lens = ([[p.shared_length] for p in pairs] if share
                    else [[len(p.chosen_ids), len(p.rejected_ids)] for p in pairs])
        _attach_padded(meter, _our_step_batches([p.row_length(share) for p in pairs], spec), seq_lens)
    extra = {"side": "ours", "task": task, "optim": "torch.optim.AdamW (default impl)",
             "versions": C.versions("torch", "transformers")}
    if task == "rm":
        extra["rm_layout"] = "shared-prefix" if share else "two-rows"
    _finish(meter, tracker.peak, rss0, extra, out, ("tokens", "units", "padded"))


def worker_trl(task: str, spec: dict[str, Any], out: Path) -> None:
    import torch
    import transformers
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback

    import trl

    transformers.logging.set_verbosity_error()
    model_dir = spec["model_dir"]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:  # what our loader does
        tokenizer.pad_token = tokenizer.eos_token
    meter = C.StepMeter(spec["warmup"])
    counts = {"tokens": 0, "units": 0, "padded": 0}
    state: dict[str, float] = {"peak": float("nan")}
    total = spec["warmup"] + spec["steps"]

    class Meter(TrainerCallback):
        def on_step_end(self, args, st, control, **kwargs):  # noqa: ANN001
            meter.mark(**counts)
            for key in counts:
                counts[key] = 0
            if st.global_step == total:
                state["peak"] = C.peak_rss_mib()

    common = dict(
        output_dir=str(Path(spec["scratch"]) / f"trl-{task}-out"), max_steps=total,
        per_device_train_batch_size=spec["batch_size"], gradient_accumulation_steps=1, learning_rate=spec["lr"],
        weight_decay=0.0, max_grad_norm=1.0, warmup_steps=0, lr_scheduler_type="cosine",
        bf16=False, fp16=False, use_cpu=True, gradient_checkpointing=False,
        report_to="none", save_strategy="no", eval_strategy="no", logging_steps=10**6, disable_tqdm=True,
        dataloader_num_workers=0, seed=spec["seed"], data_seed=spec["seed"], max_length=spec["max_length"],
        train_sampling_strategy="group_by_length",  # the closest thing TRL has to our length bucketing
    )
    if task == "sft":
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)

        class Counting(trl.SFTTrainer):
            def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001
                counts["tokens"] += int(inputs["attention_mask"].sum())
                counts["padded"] += int(inputs["input_ids"].numel())
                counts["units"] += int((inputs["labels"][:, 1:] != -100).sum())
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

        args = trl.SFTConfig(**common, packing=False, padding_free=False, completion_only_loss=True)
        trainer = Counting(model=model, args=args, train_dataset=Dataset.from_list(spec["trl_rows"]),
                           processing_class=tokenizer, callbacks=[Meter()])
        ds = trainer.train_dataset
        data_stats = {"rows": len(ds), "tokens": sum(len(x) for x in ds["input_ids"]),
                      "loss_tokens": sum(sum(1 for t in lab[1:] if t != -100) for lab in ds["labels"])}
    else:
        model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1, dtype=torch.float32)
        model.config.pad_token_id = tokenizer.pad_token_id

        class Counting(trl.RewardTrainer):
            def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001
                counts["tokens"] += int(inputs["attention_mask"].sum())
                counts["padded"] += int(inputs["input_ids"].numel())
                counts["units"] += int(inputs["input_ids"].shape[0] // 2)
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

            def _set_signature_columns_if_needed(self):
                super()._set_signature_columns_if_needed()
                if "length" not in self._signature_columns:  # keep the column group_by_length reads
                    self._signature_columns = [*self._signature_columns, "length"]

        args = trl.RewardConfig(**common, center_rewards_coefficient=None)
        trainer = Counting(model=model, args=args, train_dataset=Dataset.from_list(spec["trl_rows"]),
                           processing_class=tokenizer, callbacks=[Meter()])
        ds = trainer.train_dataset
        data_stats = {"rows": len(ds), "tokens": sum(len(a) + len(b) for a, b in zip(ds["chosen_ids"], ds["rejected_ids"]))}
        # group_by_length needs a length per row; the pair's longer side, as our sampler uses
        trainer.train_dataset = ds.add_column("length", [max(len(a), len(b)) for a, b in zip(ds["chosen_ids"], ds["rejected_ids"])])
    optimizer_name = str(args.optim)
    rss0 = C.reset_peak_rss()
    meter.start()
    trainer.train()
    _finish(meter, state["peak"], rss0, {"side": "trl", "task": task, "optim": optimizer_name, "data": data_stats,
                                         "versions": C.versions("torch", "transformers", "trl")},
            out, ("tokens", "units", "padded"))


# ============================================================================ parent
def _rows(task: str, n: int, seed: int, max_length: int, tokenizer: Any, words: tuple[int, int]) -> tuple[list[dict], str, dict]:
    """Rows both sides train on: data/demo when present, else deterministic synthetic rows; only rows that fit max_length.

    Rows longer than max_length are dropped up front (ours refuses them, TRL would cut them from the right),
    so no truncation happens on either side and both see the same token sequences.
    """
    from rlhf_core.batching import resolve_format, tokenize_preference_row, tokenize_sft_row
    from rlhf_core.errors import DataError

    name = "demonstrations" if task == "sft" else "preferences"
    demo = C.demo_rows(name)
    if demo is not None:
        need = ("prompt", "response") if task == "sft" else ("prompt", "chosen", "rejected")
        source = f"data/demo/{name}.jsonl"
        rows = [r for r in demo if all(isinstance(r.get(k), str) and r[k].strip() for k in need)]
        if task == "rm":
            rows = [r for r in rows if r["chosen"] != r["rejected"]]
    else:
        source = f"synthetic (seed {seed}, {words[0]}-{words[1]} words per response)"
        make = C.synth_demonstrations if task == "sft" else C.synth_preferences
        rows = make(n, seed, min_words=words[0], max_words=words[1])
    fmt = resolve_format(tokenizer, "auto")
    kept, lengths, loss_tokens, shared_tokens = [], [], 0, 0
    for i, row in enumerate(rows):
        try:
            if task == "sft":
                ex = tokenize_sft_row(row, tokenizer, fmt=fmt, max_length=max_length, index=i)
                lengths.append(len(ex.input_ids))
                loss_tokens += sum(1 for t in ex.labels[1:] if t != -100)
            else:
                ex = tokenize_preference_row(row, tokenizer, fmt=fmt, max_length=max_length, index=i)
                lengths.append(len(ex.chosen_ids) + len(ex.rejected_ids))
                shared_tokens += ex.shared_length
        except DataError:
            continue
        kept.append({k: row[k] for k in ("id", "prompt", "response", "chosen", "rejected") if k in row})
        if len(kept) >= n:
            break
    stats = {"rows": len(kept), "tokens": sum(lengths), "min_len": min(lengths), "max_len": max(lengths)}
    if task == "sft":
        stats["loss_tokens"] = loss_tokens
    else:  # what our shared-prefix layout feeds the model for the same pairs (the prompt once per pair)
        stats["tokens_as_shared_prefix_rows"] = shared_tokens
    return kept, source, stats


def _summarise(task: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    unit = "tokens" if task == "sft" else "pairs"
    out: dict[str, Any] = {}
    for side in ("ours", "trl"):
        rs = [r for r in runs if r["side"] == side]
        for r in rs:
            r["tokens_per_s_wall"] = r["tokens"] / r["wall_s"]
            r["tokens_per_s_cpu"] = r["tokens"] / r["cpu_s"]
            r["units_per_s_wall"] = r["units"] / r["wall_s"]
            r["units_per_cpu_s"] = r["units"] / r["cpu_s"]
        out[side] = {
            "runs": len(rs),
            "tokens_per_s_wall": C.median_of(rs, "tokens_per_s_wall"),
            "tokens_per_cpu_s": C.median_of(rs, "tokens_per_s_cpu"),
            f"{'loss_tokens' if task == 'sft' else 'pairs'}_per_s_wall": C.median_of(rs, "units_per_s_wall"),
            f"{'loss_tokens' if task == 'sft' else 'pairs'}_per_cpu_s": C.median_of(rs, "units_per_cpu_s"),
            "step_wall_s_median": C.median_of(rs, "step_wall_s_median"),
            "step_cpu_s_median": C.median_of(rs, "step_cpu_s_median"),
            "tokens_per_step": C.median_of(rs, "tokens") / rs[0]["steps_measured"],
            "padded_tokens_per_step": C.median_of(rs, "padded") / rs[0]["steps_measured"],
            f"{unit}_measured": C.median_of(rs, "units"),
            "peak_train_rss_mib": C.median_of(rs, "peak_train_rss_mib"),
            "process_maxrss_mib": C.median_of(rs, "child_maxrss_mib"),
        }
    key_wall = "tokens_per_s_wall" if task == "sft" else "pairs_per_s_wall"
    key_cpu = "tokens_per_cpu_s" if task == "sft" else "pairs_per_cpu_s"
    out["speedup_wall"] = out["ours"][key_wall] / out["trl"][key_wall]
    out["speedup_cpu"] = out["ours"][key_cpu] / out["trl"][key_cpu]
    out["memory_ratio_peak_train"] = out["ours"]["peak_train_rss_mib"] / out["trl"]["peak_train_rss_mib"]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny random model: checks the harness in seconds")
    ap.add_argument("--tasks", default="sft,rm", help="comma list of sft, rm")
    ap.add_argument("--repeats", type=int, default=2, help="runs per side (alternating order A B, B A, ...)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads on both sides")
    ap.add_argument("--batch-size", type=int, default=None, help="SFT sequences per step (default 8)")
    ap.add_argument("--rm-batch-size", type=int, default=None, help="preference pairs per step (default 4)")
    ap.add_argument("--max-length", type=int, default=None, help="tokens per sequence (default 192; quick 256)")
    ap.add_argument("--steps", type=int, default=None, help="measured optimizer steps after warmup (default 4; quick 10)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed optimizer steps first")
    ap.add_argument("--rows", type=int, default=256, help="rows per dataset")
    ap.add_argument("--rm-layout", choices=("shared-prefix", "two-rows"), default="shared-prefix",
                    help="our reward model's pair layout (reward.share_prompt true / false)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=900, help="seconds per worker before it is killed")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    quick = args.quick
    batch = args.batch_size or 8
    rm_batch = args.rm_batch_size or 4
    max_length = args.max_length or (256 if quick else 192)
    steps = args.steps or (10 if quick else 4)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not tasks or set(tasks) - set(SIDES):
        ap.error(f"--tasks: pick from {', '.join(SIDES)}")
    name = "trl_" + "_".join(tasks) + ("_quick" if quick else "")  # trl_sft_rm.json, trl_sft.json, trl_rm.json
    out_path = args.out or C.RESULTS / f"{name}.json"
    C.SCRATCH.mkdir(parents=True, exist_ok=True)

    from transformers import AutoTokenizer

    model_dir = C.model_dir(quick)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    machine_before = C.machine_info()
    report: dict[str, Any] = {
        "benchmark": "trl_sft_rm",
        "command": "python bench/trl_sft_rm.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "model_dir": str(model_dir),
        "model": "tiny random Llama (2 layers, hidden 64)" if quick else "SmolLM2-135M-Instruct (fp32)",
        "threads": args.threads,
        "machine_before": machine_before,
        "settings": {"warmup_steps": args.warmup, "measured_steps": steps, "repeats_per_side": args.repeats,
                     "max_length": max_length, "sft_batch_size": batch, "rm_batch_size_pairs": rm_batch,
                     "grad_accum_steps": 1, "dtype": "float32", "gradient_checkpointing": False,
                     "ours_rm_layout": args.rm_layout},
        "tasks": {},
    }
    # ~50 words of response per 64 tokens of budget: rows spread over the whole length range
    words = (max(4, max_length // 10), max(8, int(max_length * 0.55)))
    for task in tasks:
        n_rows = max(args.rows, (args.warmup + steps) * (batch if task == "sft" else rm_batch))
        rows, source, data_stats = _rows(task, n_rows, args.seed, max_length,
                                         tokenizer, words if task == "sft" else (words[0] // 2, words[1] // 2))
        trl_rows = [C.trl_sft_row(r) if task == "sft" else C.trl_preference_row(r) for r in rows]
        spec = {
            "task": task, "model_dir": str(model_dir), "rows": rows, "trl_rows": trl_rows,
            "batch_size": batch if task == "sft" else rm_batch, "max_length": max_length, "steps": steps,
            "warmup": args.warmup, "lr": 2e-5 if task == "sft" else 1e-5, "threads": args.threads, "seed": args.seed,
            "scratch": str(C.SCRATCH), "rm_layout": args.rm_layout,
        }
        spec_path = C.SCRATCH / f"spec-{task}.json"
        spec_path.write_text(json.dumps(spec))
        runs = []
        for repeat, side in C.alternating(SIDES[task], args.repeats):
            python = C.OUR_PYTHON if side.startswith("ours") else C.TRL116_PYTHON
            res_path = C.SCRATCH / f"result-{side}-{repeat}.json"
            res_path.unlink(missing_ok=True)
            print(f"[{task}] repeat {repeat + 1}/{args.repeats}: {side} ...", flush=True)
            res = C.run_worker(python, SCRIPT, side, spec_path, res_path, threads=args.threads, timeout=args.timeout,
                               log_path=C.SCRATCH / f"log-{side}-{repeat}.txt")
            res["repeat"] = repeat
            runs.append(res)
            unit = "tok" if task == "sft" else "pairs"
            print(f"    {res['units' if task == 'rm' else 'tokens'] / res['cpu_s']:.1f} {unit}/cpu-s, "
                  f"{res['step_wall_s_median']:.2f} s/step wall, peak {res['peak_train_rss_mib']:.0f} MiB", flush=True)
        trl_data = runs[[r["side"] for r in runs].index("trl")].get("data", {})
        summary = _summarise(task, runs)
        report["tasks"][task] = {
            "data_source": source,
            "data_ours": data_stats,
            "data_trl": trl_data,
            "same_tokens": trl_data.get("tokens") == data_stats["tokens"]
            and trl_data.get("loss_tokens", None) == data_stats.get("loss_tokens", None),
            "summary": summary,
            "runs": runs,
            "trl_optimizer": runs[[r["side"] for r in runs].index("trl")].get("optim"),
        }
        _print_table(task, summary)
    report["machine_after"] = C.machine_info()
    C.write_json(out_path, report)
    print(f"wrote {out_path}")
    return 0


def _print_table(task: str, s: dict[str, Any]) -> None:
    unit = "tokens" if task == "sft" else "pairs"
    k_wall = "tokens_per_s_wall" if task == "sft" else "pairs_per_s_wall"
    k_cpu = "tokens_per_cpu_s" if task == "sft" else "pairs_per_cpu_s"
    print(f"\n{task}: medians ({unit})")
    print(f"{'side':6} {unit + '/s wall':>16} {unit + '/cpu-s':>16} {'s/step wall':>12} {'s/step cpu':>11} "
          f"{'tok/step':>9} {'padded/step':>12} {'peak MiB':>9} {'maxrss MiB':>11}")
    for side in ("ours", "trl"):
        r = s[side]
        print(f"{side:6} {r[k_wall]:16.2f} {r[k_cpu]:16.2f} {r['step_wall_s_median']:12.2f} {r['step_cpu_s_median']:11.2f} "
              f"{r['tokens_per_step']:9.0f} {r['padded_tokens_per_step']:12.0f} {r['peak_train_rss_mib']:9.0f} "
              f"{r['process_maxrss_mib']:11.0f}")
    print(f"speedup ours/trl: {s['speedup_wall']:.2f}x wall, {s['speedup_cpu']:.2f}x cpu; "
          f"peak-train memory ratio {s['memory_ratio_peak_train']:.2f}")


if __name__ == "__main__":
    worker = C.worker_argv()
    if worker is not None:
        side, spec_file, out_file = worker
        spec_data = _load_spec(spec_file)
        task_name = spec_data["task"]
        (worker_ours if side.startswith("ours") else worker_trl)(task_name, spec_data, out_file)
        sys.exit(0)
    sys.exit(main())
