"""PPO step time: ours vs TRL 0.24's PPOTrainer (its last release with PPO) and TRL 1.16's RLOOTrainer.

    nice -n 10 .venv/bin/python bench/trl_ppo.py            # headline: SmolLM2-135M policy + RM, fp32 CPU
    nice -n 10 .venv/bin/python bench/trl_ppo.py --quick    # tiny random model, seconds

One PPO step = sample a batch of responses, score them with the reward model, KL to the frozen
reference, values + GAE, then ``ppo_epochs`` x minibatches of clipped policy + value updates.
Same on both PPO sides: policy (the model dir), frozen reference (a second copy), reward model
and critic (both a one-label sequence classifier built from the same base, saved once in HF
format and loaded by every side), rollout batch, max new tokens, temperature, PPO epochs, one
minibatch, kl_coef, clip ranges, vf_coef, gamma/lambda, AdamW learning rate, fp32, threads.
RLOO (no critic) runs at the same batch: ``batch`` completions per step (``batch / k`` prompts x
``k`` generations, k=2), one update per step, its default KL to a reference (beta=0.05).

Sides and venvs: ``ours`` (``.venv``, ``rlhf_core.ppo.trainer.train_ppo`` with a separate critic
initialised from the reward model, as TRL's PPO), ``ours_shared`` (the same with the value head
on the policy's backbone, ``ppo.value_model=shared``: no critic transformer), ``trl_ppo``
(``bench/.venv-trl024``: trl 0.24.0 + transformers 4.57), ``trl_rloo`` (``bench/.venv-trl116``).
Each run is a fresh subprocess; order alternates between repeats; medians are reported.
Per step: wall and CPU seconds (step end to step end; the first ``--warmup`` steps untimed),
the generation share (time inside the sampling call / step time), mean response length.
Memory: peak RSS during training (``VmHWM`` after a reset right before training) and the
worker's ``ru_maxrss``.

Writes ``bench/results/trl_ppo.json`` (``trl_ppo_quick.json`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402  (stdlib-only: importable in every venv)

SCRIPT = Path(__file__).resolve()
PYTHONS = {"ours": C.OUR_PYTHON, "ours_shared": C.OUR_PYTHON, "trl_ppo": C.TRL024_PYTHON, "trl_rloo": C.TRL116_PYTHON}
# our sides: the PPOConfig value-model settings each runs with (both read log-probs off the sampler: fp32 'auto')
OUR_SIDES = {"ours": {"value_model": "separate", "value_init": "reward"},
             "ours_shared": {"value_model": "shared", "value_init": "policy"}}


# ============================================================================ workers
class _MeterTracker:
    """Our ``Tracker``: one ``log_metrics`` per PPO step, after the update."""

    def __init__(self, meter: C.StepMeter, total_steps: int) -> None:
        self.meter, self.total_steps = meter, total_steps
        self.peak = float("nan")

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if "time/generation" not in metrics:
            return
        self.meter.mark(generation_s=metrics["time/generation"], scoring_s=metrics["time/scoring"],
                        update_s=metrics["time/update"], response_len=metrics["ppo/response_length"])
        if step == self.total_steps:
            self.peak = C.peak_rss_mib()  # before the final checkpoint and model save

    def log_artifact(self, path: Any) -> None:
        pass

    def log_params(self, params: Any) -> None:
        pass


def worker_ours(spec: dict[str, Any], out: Path, side: str = "ours") -> None:
    from rlhf_core.config.model import ModelConfig
    from rlhf_core.config.optim import OptimConfig
    from rlhf_core.config.ppo import PPOConfig
    from rlhf_core.models import load_causal_lm, load_tokenizer
    from rlhf_core.ppo.trainer import train_ppo
    from rlhf_core.reward.model import RewardModel

    cfg_model = ModelConfig(base=spec["model_dir"], dtype="float32", device="cpu")
    tokenizer = load_tokenizer(cfg_model, C.MODEL_CACHE)
    policy = load_causal_lm(cfg_model, C.MODEL_CACHE, tokenizer)
    reward = RewardModel.from_pretrained(spec["rm_dir"], dtype="float32")
    total = spec["warmup"] + spec["steps"]
    cfg = PPOConfig(
        optim=OptimConfig(learning_rate=spec["lr"], max_steps=total, micro_batch_size=spec["batch"], grad_accum_steps=1,
                          max_length=spec["max_length"], warmup_steps=0, checkpoint_every=0, log_every=1,
                          mixed_precision="no", max_grad_norm=1.0),
        rollout_batch_size=spec["batch"], max_new_tokens=spec["new_tokens"], ppo_epochs=spec["ppo_epochs"],
        temperature=spec["temperature"], kl_coef=spec["kl_coef"], clip_range=0.2, clip_range_value=0.2,
        vf_coef=0.1, gamma=1.0, lam=0.95, whiten_advantages=True, **OUR_SIDES[side],
        prompt_format="auto", max_kl=1e9,  # never stop early: every side runs every step
    )
    meter = C.StepMeter(spec["warmup"])
    tracker = _MeterTracker(meter, total)
    workdir = Path(tempfile.mkdtemp(prefix="ours-ppo-", dir=spec["scratch"]))
    try:
        rss0 = C.reset_peak_rss()
        meter.start()
        result = train_ppo(cfg, policy, tokenizer, reward, tokenizer, spec["rows"], output_dir=workdir,
                           tracker=tracker, seed=spec["seed"], resume=False, progress=False)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if result.stopped_early:
        raise RuntimeError(f"our PPO stopped early: {result.stop_reason}")
    C.write_json(out, {**meter.summary(("generation_s", "scoring_s", "update_s", "response_len")),
                       "peak_train_rss_mib": tracker.peak,
                       "rss_before_train_mib": rss0, "side": side, "ppo_config": OUR_SIDES[side],
                       "versions": C.versions("torch", "transformers")})


def _hf4_load(model_dir: str, kind: str):
    """Load a dir written by transformers 5 under transformers 4.57 (the trl 0.24 venv).

    transformers 4 ignores v5's ``rope_parameters`` (it would silently fall back to rope_theta
    10000 instead of SmolLM2's 100000) and does not know the ``TokenizersBackend`` tokenizer
    class, so both are bridged here: the weights and the vocabulary are the same files.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(model_dir)
    rope = getattr(config, "rope_parameters", None)
    if isinstance(rope, dict) and "rope_theta" in rope:
        config.rope_theta = rope["rope_theta"]
    if kind == "causal":
        return AutoModelForCausalLM.from_pretrained(model_dir, config=config, torch_dtype=torch.float32)
    config.num_labels = 1
    return AutoModelForSequenceClassification.from_pretrained(model_dir, config=config, torch_dtype=torch.float32)


def _hf4_tokenizer(model_dir: str):
    from transformers import PreTrainedTokenizerFast

    d = Path(model_dir)
    tok_cfg = json.loads((d / "tokenizer_config.json").read_text())
    tok = PreTrainedTokenizerFast(
        tokenizer_file=str(d / "tokenizer.json"),
        **{k: tok_cfg[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token") if tok_cfg.get(k)},
    )
    if (d / "chat_template.jinja").is_file():
        tok.chat_template = (d / "chat_template.jinja").read_text()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _step_meter(meter: Any, gen: dict[str, float], state: dict[str, float], total: int) -> Any:
    """A TRL trainer callback: per step, the generation seconds and response length; the peak RSS at the end."""
    from transformers import TrainerCallback

    class Meter(TrainerCallback):
        def on_step_end(self, args, st, control, **kwargs):  # noqa: ANN001
            meter.mark(generation_s=gen["s"], response_len=state["len"])
            gen["s"] = 0.0
            if st.global_step == total:
                state["peak"] = C.peak_rss_mib()

    return Meter()


def worker_trl_ppo(spec: dict[str, Any], out: Path) -> None:
    import os

    os.environ["TRL_EXPERIMENTAL_SILENCE"] = "1"
    import transformers
    from datasets import Dataset

    import trl
    import trl.trainer.ppo_trainer as ppo_mod

    transformers.logging.set_verbosity_error()
    tokenizer = _hf4_tokenizer(spec["model_dir"])
    tokenizer.padding_side = "left"  # prompts are left-padded for generation (TRL's PPO examples do this)
    policy = _hf4_load(spec["model_dir"], "causal")
    ref = _hf4_load(spec["model_dir"], "causal")
    value = _hf4_load(spec["rm_dir"], "seqcls")
    reward = _hf4_load(spec["rm_dir"], "seqcls")
    for m in (value, reward):
        m.config.pad_token_id = tokenizer.pad_token_id
    total = spec["warmup"] + spec["steps"]
    meter = C.StepMeter(spec["warmup"])
    gen = {"s": 0.0}
    state = {"peak": float("nan"), "len": 0.0}

    original = ppo_mod.batch_generation

    def timed_generation(model, queries, *args, **kwargs):  # noqa: ANN001
        t0 = time.perf_counter()
        query_responses, logits = original(model, queries, *args, **kwargs)
        gen["s"] += time.perf_counter() - t0
        responses = query_responses[:, queries.shape[1]:]
        # response length up to and including the first EOS (what ours reports)
        is_eos = responses == tokenizer.eos_token_id
        lengths = [int(r.nonzero()[0]) + 1 if bool(r.any()) else responses.shape[1] for r in is_eos]
        state["len"] = sum(lengths) / len(lengths)
        return query_responses, logits

    ppo_mod.batch_generation = timed_generation

    train = Dataset.from_dict({"input_ids": [r["ids"] for r in spec["rows"]]})
    args = trl.PPOConfig(
        output_dir=str(Path(spec["scratch"]) / "trl-ppo-out"), per_device_train_batch_size=spec["batch"],
        gradient_accumulation_steps=1, num_mini_batches=1, local_rollout_forward_batch_size=spec["batch"],
        total_episodes=total * spec["batch"], num_ppo_epochs=spec["ppo_epochs"], response_length=spec["new_tokens"],
        temperature=spec["temperature"], stop_token="eos", kl_coef=spec["kl_coef"], kl_estimator="k1",
        cliprange=0.2, cliprange_value=0.2, vf_coef=0.1, gamma=1.0, lam=0.95, whiten_rewards=False,
        missing_eos_penalty=None, learning_rate=spec["lr"], num_sample_generations=0, bf16=False, fp16=False,
        use_cpu=True, gradient_checkpointing=False, report_to="none", save_strategy="no", logging_steps=10**6,
        disable_tqdm=True, seed=spec["seed"], dataloader_num_workers=0,
    )
    trainer = trl.PPOTrainer(args=args, processing_class=tokenizer, model=policy, ref_model=ref, reward_model=reward,
                             value_model=value, train_dataset=train, eval_dataset=train.select(range(spec["batch"])),
                             callbacks=[_step_meter(meter, gen, state, total)])
    rss0 = C.reset_peak_rss()
    meter.start()
    trainer.train()
    C.write_json(out, {**meter.summary(("generation_s", "response_len")), "peak_train_rss_mib": state["peak"],
                       "rss_before_train_mib": rss0, "side": "trl_ppo", "optim": str(args.optim),
                       "versions": C.versions("torch", "transformers", "trl")})


def worker_trl_rloo(spec: dict[str, Any], out: Path) -> None:
    import torch
    import transformers
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    import trl

    transformers.logging.set_verbosity_error()
    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"])
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    policy = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=torch.float32)
    reward = AutoModelForSequenceClassification.from_pretrained(spec["rm_dir"], num_labels=1, dtype=torch.float32)
    reward.config.pad_token_id = tokenizer.pad_token_id
    total = spec["warmup"] + spec["steps"]
    meter = C.StepMeter(spec["warmup"])
    gen = {"s": 0.0}
    state = {"peak": float("nan"), "len": 0.0}

    train = Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}]} for r in spec["rows"]])
    k = 2
    args = trl.RLOOConfig(
        output_dir=str(Path(spec["scratch"]) / "trl-rloo-out"), per_device_train_batch_size=spec["batch"],
        gradient_accumulation_steps=1, num_generations=k, max_completion_length=spec["new_tokens"],
        temperature=spec["temperature"], top_p=1.0, top_k=0, num_iterations=spec["ppo_epochs"],
        beta=spec["kl_coef"], learning_rate=spec["lr"], max_steps=total, bf16=False, fp16=False, use_cpu=True,
        gradient_checkpointing=False, report_to="none", save_strategy="no", logging_steps=10**6, disable_tqdm=True,
        seed=spec["seed"], dataloader_num_workers=0, log_completions=False,
    )

    trainer = trl.RLOOTrainer(model=policy, reward_funcs=reward, args=args, train_dataset=train,
                              processing_class=tokenizer, reward_processing_classes=tokenizer,
                              callbacks=[_step_meter(meter, gen, state, total)])
    original = trainer._generate_single_turn

    def timed_generation(*a, **kw):  # noqa: ANN002
        t0 = time.perf_counter()
        completion_ids = original(*a, **kw)
        gen["s"] += time.perf_counter() - t0
        state["len"] = sum(len(c) for c in completion_ids) / max(1, len(completion_ids))
        return completion_ids

    trainer._generate_single_turn = timed_generation
    rss0 = C.reset_peak_rss()
    meter.start()
    trainer.train()
    C.write_json(out, {**meter.summary(("generation_s", "response_len")), "peak_train_rss_mib": state["peak"],
                       "rss_before_train_mib": rss0, "side": "trl_rloo", "optim": str(args.optim),
                       "generations_per_prompt": k, "versions": C.versions("torch", "transformers", "trl")})


# ============================================================================ parent
def _reward_dir(model_dir: Path, seed: int) -> Path:
    """A one-label sequence classifier from the same base (fresh head, seeded), saved once in HF format."""
    target = C.SCRATCH / f"rm-{model_dir.name}-seed{seed}"
    if (target / "config.json").is_file():
        return target
    from transformers import AutoTokenizer

    from rlhf_core.reward.model import RewardModel

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    rm = RewardModel.from_causal_lm_dir(model_dir, dtype="float32", pad_token_id=tokenizer.pad_token_id, seed=seed)
    tmp = Path(tempfile.mkdtemp(prefix=".rm-", dir=C.SCRATCH))
    rm.save_pretrained(tmp, tokenizer=tokenizer, base=str(model_dir))
    tmp.rename(target)
    return target


def _prompts(n: int, seed: int, tokenizer: Any, max_prompt_tokens: int) -> tuple[list[dict[str, Any]], str]:
    """Prompt rows (``id, prompt``) + their chat-formatted ids: data/demo/rl_prompts.jsonl (train) or synthetic."""
    from rlhf_core.batching import prompt_ids, resolve_format

    demo = C.demo_rows("rl_prompts")
    if demo is not None:
        source = "data/demo/rl_prompts.jsonl (train split, string prompts)"
        rows = [r for r in demo if isinstance(r.get("prompt"), str) and r["prompt"].strip()]
    else:
        source = f"synthetic (seed {seed})"
        rows = C.synth_prompts(n, seed)
    fmt = resolve_format(tokenizer, "auto")
    out = []
    for r in rows:
        ids = prompt_ids(tokenizer, r["prompt"], fmt)
        if len(ids) <= max_prompt_tokens:
            out.append({"id": str(r["id"]), "prompt": r["prompt"], "ids": ids})
        if len(out) >= n:
            break
    return out, source


def _summarise(runs: list[dict[str, Any]], sides: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for side in sides:
        rs = [r for r in runs if r["side"] == side]
        for r in rs:
            r["generation_share"] = r["generation_s"] / r["wall_s"]
            r["response_len_mean"] = r["response_len"] / r["steps_measured"]
        out[side] = {
            "runs": len(rs),
            "step_wall_s": C.median_of(rs, "step_wall_s_median"),
            "step_cpu_s": C.median_of(rs, "step_cpu_s_median"),
            "generation_share": C.median_of(rs, "generation_share"),
            "response_len_mean": C.median_of(rs, "response_len_mean"),
            "peak_train_rss_mib": C.median_of(rs, "peak_train_rss_mib"),
            "process_maxrss_mib": C.median_of(rs, "child_maxrss_mib"),
        }
    for ours in [s for s in sides if s in OUR_SIDES]:
        prefix = "" if ours == "ours" else f"{ours}_"
        for peer in [s for s in sides if s not in OUR_SIDES]:
            out[f"{prefix}speedup_vs_{peer}_wall"] = out[peer]["step_wall_s"] / out[ours]["step_wall_s"]
            out[f"{prefix}speedup_vs_{peer}_cpu"] = out[peer]["step_cpu_s"] / out[ours]["step_cpu_s"]
            out[f"{prefix}memory_ratio_vs_{peer}"] = out[ours]["peak_train_rss_mib"] / out[peer]["peak_train_rss_mib"]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny random model: checks the harness in seconds")
    ap.add_argument("--sides", default="ours,ours_shared,trl_ppo,trl_rloo",
                    help="comma list of ours, ours_shared, trl_ppo, trl_rloo")
    ap.add_argument("--repeats", type=int, default=1, help="runs per side (alternating order)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads on every side")
    ap.add_argument("--batch", type=int, default=8, help="responses per PPO step (rollout batch)")
    ap.add_argument("--new-tokens", type=int, default=32, help="max new tokens per response")
    ap.add_argument("--ppo-epochs", type=int, default=1, help="PPO epochs per step (RLOO: num_iterations)")
    ap.add_argument("--steps", type=int, default=None, help="measured PPO steps (default 3; quick 5)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=900, help="seconds per worker before it is killed")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    quick = args.quick
    steps = args.steps or (5 if quick else 3)
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    out_path = args.out or C.RESULTS / ("trl_ppo_quick.json" if quick else "trl_ppo.json")
    C.SCRATCH.mkdir(parents=True, exist_ok=True)

    from transformers import AutoTokenizer

    model_dir = C.model_dir(quick)
    rm_dir = _reward_dir(model_dir, args.seed)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    max_length = 256
    rows, source = _prompts(max(64, (args.warmup + steps) * args.batch), args.seed, tokenizer,
                            max_length - args.new_tokens)
    spec = {
        "model_dir": str(model_dir), "rm_dir": str(rm_dir), "rows": rows, "batch": args.batch,
        "new_tokens": args.new_tokens, "ppo_epochs": args.ppo_epochs, "steps": steps, "warmup": args.warmup,
        "lr": 1e-6, "temperature": 0.7, "kl_coef": 0.05, "max_length": max_length, "threads": args.threads,
        "seed": args.seed, "scratch": str(C.SCRATCH),
    }
    spec_path = C.SCRATCH / "spec-ppo.json"
    spec_path.write_text(json.dumps(spec))
    report: dict[str, Any] = {
        "benchmark": "trl_ppo",
        "command": "python bench/trl_ppo.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "model": "tiny random Llama (2 layers, hidden 64)" if quick else "SmolLM2-135M-Instruct (fp32)",
        "model_dir": str(model_dir), "reward_model_dir": str(rm_dir), "prompts": source, "threads": args.threads,
        "settings": {k: spec[k] for k in ("batch", "new_tokens", "ppo_epochs", "steps", "warmup", "lr", "temperature",
                                          "kl_coef", "max_length")} | {"minibatches": 1, "repeats_per_side": args.repeats},
        "machine_before": C.machine_info(),
    }
    runs = []
    for repeat, side in C.alternating(sides, args.repeats):
        res_path = C.SCRATCH / f"result-{side}-{repeat}.json"
        res_path.unlink(missing_ok=True)
        print(f"[ppo] repeat {repeat + 1}/{args.repeats}: {side} ...", flush=True)
        res = C.run_worker(PYTHONS[side], SCRIPT, side, spec_path, res_path, threads=args.threads,
                           timeout=args.timeout, log_path=C.SCRATCH / f"log-{side}-{repeat}.txt")
        res["repeat"] = repeat
        runs.append(res)
        print(f"    {res['step_wall_s_median']:.2f} s/step wall, {res['step_cpu_s_median']:.2f} s/step cpu, "
              f"gen {res['generation_s'] / res['wall_s']:.0%}, peak {res['peak_train_rss_mib']:.0f} MiB", flush=True)
    summary = _summarise(runs, sides)
    report.update({"summary": summary, "runs": runs, "machine_after": C.machine_info()})
    C.write_json(out_path, report)
    _print_table(summary, sides)
    print(f"wrote {out_path}")
    return 0


def _print_table(s: dict[str, Any], sides: list[str]) -> None:
    print(f"\n{'side':11} {'s/step wall':>12} {'s/step cpu':>11} {'gen share':>10} {'resp len':>9} {'peak MiB':>9} {'maxrss MiB':>11}")
    for side in sides:
        r = s[side]
        print(f"{side:11} {r['step_wall_s']:12.2f} {r['step_cpu_s']:11.2f} {r['generation_share']:10.0%} "
              f"{r['response_len_mean']:9.1f} {r['peak_train_rss_mib']:9.0f} {r['process_maxrss_mib']:11.0f}")
    for ours in [x for x in sides if x in OUR_SIDES]:
        prefix = "" if ours == "ours" else f"{ours}_"
        for peer in [x for x in sides if x not in OUR_SIDES]:
            print(f"{ours} vs {peer}: {s[f'{prefix}speedup_vs_{peer}_wall']:.2f}x faster (wall), "
                  f"{s[f'{prefix}speedup_vs_{peer}_cpu']:.2f}x (cpu); "
                  f"peak memory ratio {s[f'{prefix}memory_ratio_vs_{peer}']:.2f}")


if __name__ == "__main__":
    worker = C.worker_argv()
    if worker is not None:
        side_name, spec_file, out_file = worker
        spec_data = json.loads(spec_file.read_text())
        C.pin_threads(spec_data["threads"])
        if side_name in OUR_SIDES:
            worker_ours(spec_data, out_file, side_name)
        else:
            {"trl_ppo": worker_trl_ppo, "trl_rloo": worker_trl_rloo}[side_name](spec_data, out_file)
        sys.exit(0)
    sys.exit(main())
