"""GPU throughput of our own code paths: SFT/RM training MFU, rollout tokens/s (ours, vLLM), PPO steps/s.

    .venv/bin/python bench/gpu.py                                   # Qwen/Qwen2.5-0.5B, bf16, on CUDA
    .venv/bin/python bench/gpu.py --model /path/to/hf-dir --seq-len 2048 --batch-size 4
    .venv/bin/python bench/gpu.py --phases ppo --ppo-engine vllm    # a whole PPO step with vLLM rollouts
    .venv/bin/python bench/gpu.py --allow-cpu --model tiny ...      # CPU check of the script itself

What runs (nothing here re-implements a step; each phase times the functions the stages use):

* **sft**: ``rlhf_core.training.run_training_loop`` with ``rlhf_core.sft.train.sft_step_loss``,
  ``collate_sft`` and ``count_target_tokens``: exactly the call ``train_sft`` makes, minus the
  tokenisation of text rows (the data are fixed-length random token sequences, no padding; the
  first ``--prompt-tokens`` positions carry no label, as a prompt) and the final HF save.
* **rm**: the same loop with ``rlhf_core.reward.train.pair_step_loss`` on a ``RewardModel``, in the
  reward stage's default layout (``reward.share_prompt``): each pair is ONE row
  ``[prompt | chosen | rejected]`` with a 4D mask (``collate_shared_pairs``, ``2T - P`` tokens a
  pair; ``check_pair_layout`` runs first, as in the stage); ``--rm-layout two-rows`` times the
  ``[chosen; rejected]`` rows (``collate_pairs``, ``2T`` tokens a pair) instead.
* **gen**: ``rlhf_core.sampling.sample``, the sampler ``train_ppo`` calls (KV-cache loop,
  temperature sampling), on ``--gen-batch`` random prompts of ``--prompt-tokens`` tokens. EOS is
  ignored by default so every call samples exactly ``--gen-tokens`` tokens per row (vLLM's
  ``ignore_eos`` convention for throughput runs).
* **vllm**: the ``vllm`` rollout engine (``rlhf_core.rollout.vllm_engine.VLLMEngine``, vLLM in its own
  venv and process, what ``ppo.rollout.engine: vllm`` starts) on the same prompts, token budget,
  temperature and EOS rule as ``gen``: the engine's start (weights written, process, first token),
  tokens/s over ``--gen-repeats`` calls after one untimed call (one seed per row, as PPO passes),
  and ``load_weights`` (weights written, reloaded in place) ``--vllm-syncs`` times: what each PPO
  step adds. When the vLLM venv is missing (``make vllm``) or vLLM refuses the model, the phase is
  recorded as skipped, with the reason, and the other phases run. Peak memory is this process's
  (the engine process is not counted). On CPU vLLM's attention kernels need a head size >= 32:
  ``--model tiny --tiny-hidden-size 128 --tiny-heads 2`` (tests/test_vllm_engine.py's shape).
* **ppo**: ``rlhf_core.ppo.trainer.train_ppo`` for a few steps on synthetic chat prompts, with the
  model itself as the reward model's starting point; the generation share is
  ``time/generation / (time/generation + time/scoring + time/update + time/weight_sync)`` over
  the timed steps, from the loop's own timers (EOS is *not* ignored here: the responses end
  where the model stops, as in a real run). ``--ppo-engine vllm`` samples with the vLLM engine
  (``RolloutConfig(engine="vllm")``): its step also pays ``time/weight_sync``, reported on its own
  and in the step's total; a run's last step syncs nothing (no rollout follows), so one more,
  untimed, step runs after the timed ones.
* **ppo-dp**: the same ``train_ppo`` data-parallel (``rlhf_core.distributed.DataParallel``, the
  per-process PPO of ``rlhf_core.ppo.parallel``) in ``--dp-processes`` processes started by
  ``torchrun`` (``python -m torch.distributed.run``, as ``tasks.distributed`` launches the PPO stage;
  nccl on CUDA, one device a process; gloo on CPU), against 1 process at the same global rollout
  batch, both launched the same way as fresh processes of this script (``--dp-worker``). Rank 0
  stamps each step's end (after a device sync, so after the gradient all-reduce); figure: steps/s
  of each, and the scaling efficiency ``t1 / (N * tN)`` (t = seconds per step; 1.0 = N processes
  take 1/N of the time). Skipped, with the reason, when fewer than 2 processes can run (one CUDA
  device). ``--ppo-engine`` applies (one vLLM engine per process).

Timing: a tracker stamps the end of every optimizer step after ``torch.cuda.synchronize()``;
the first ``--warmup`` steps (allocator, cuDNN/cuBLAS heuristics, ``--compile``) are left out
(``--ppo-warmup`` for ppo and ppo-dp).

No figure of the vllm, ppo-dp or ``--ppo-engine vllm`` paths has been measured on a GPU: no GPU
was lent to the sessions that wrote them; they were run on CPU only (bench/README.md).

MFU = achieved model FLOP/s / peak dense bf16 FLOP/s of the GPU (table below, or
``--peak-tflops``). Model FLOPs per optimizer step, forward + backward = 3x forward (PaLM,
Chowdhery et al. 2022, appendix B), counting what our path computes:

* trunk: ``6 * N_layers * tokens`` (N_layers = parameters of the decoder blocks; the input
  embedding is a lookup, no FLOPs);
* attention scores and values: ``12 * L * d_attn * T`` per token (L layers, d_attn = query heads x
  head dim, T = row length: ``2T - P`` for a shared-prefix pair row); the causal mask's skipped half
  is counted, as in PaLM and nanoGPT, so this is *model* FLOPs, not hardware FLOPs;
* LM head: ``6 * V * d`` per *labelled* position only (SFT runs the vocabulary projection only
  where there is a target: ``completion_nll_sum``); the reward model has no LM head, its
  scalar head (``6 * d`` per sequence) is counted too.

tests/test_bench_gpu.py checks this count against ``torch.utils.flop_counter.FlopCounterMode``
on one SFT and one reward-model step (eager attention, which the counter sees): within 1%.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402  (stdlib-only helpers shared by the benchmarks)

ROOT = C.ROOT
sys.path.insert(0, str(ROOT))

DEFAULT_GPU_MODEL = "Qwen/Qwen2.5-0.5B"

# Dense (no 2:4 sparsity) bf16 tensor-core peaks from NVIDIA's data sheets, TFLOP/s. Matched
# against torch.cuda.get_device_name() in order: the first pattern found wins.
PEAK_BF16_TFLOPS: list[tuple[str, float, str]] = [
    ("H200", 989.0, "H200 SXM bf16 dense"),
    ("H100 PCIe", 756.0, "H100 PCIe bf16 dense"),
    ("H100 NVL", 835.0, "H100 NVL bf16 dense"),
    ("H100", 989.0, "H100 SXM bf16 dense"),
    ("GH200", 989.0, "GH200 bf16 dense"),
    ("A100", 312.0, "A100 bf16 dense"),
    ("L40S", 362.0, "L40S bf16 dense"),
    ("L4", 121.0, "L4 bf16 dense"),
]

PHASES = ("sft", "rm", "gen", "vllm", "ppo", "ppo-dp")
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"  # what `make vllm` builds
GEN_TEMPERATURE = 0.7  # the PPO presets' sampling temperature (gen, vllm)


# ----------------------------------------------------------------------------- arguments
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None,
                   help=f"a hub id, a local HF directory, any ModelConfig.base, or 'tiny' (default: {DEFAULT_GPU_MODEL} "
                        "on CUDA, tiny with --allow-cpu)")
    p.add_argument("--cache-dir", type=Path, default=C.MODEL_CACHE, help="model cache (tiny's tokenizer, GGUF conversions)")
    p.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated subset of {','.join(PHASES)}")
    p.add_argument("--precision", choices=["bf16", "autocast", "fp32"], default=None,
                   help="bf16 = bf16 weights and optimizer state (the pipeline's CUDA default, model.dtype auto); "
                        "autocast = fp32 master weights + bf16 autocast (optim.mixed_precision bf16); fp32 = neither. "
                        "Default: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--attn", default="sdpa",
                   help="attention implementation set on the model: sdpa (default; FlashAttention-2 kernels inside "
                        "PyTorch when there is no padding), eager, flash_attention_2 (needs the flash-attn package)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile each decoder block for sft/rm (regional compilation; the warmup steps absorb it)")
    p.add_argument("--seq-len", type=int, default=1024, help="tokens per training sequence (sft, rm)")
    p.add_argument("--prompt-tokens", type=int, default=None,
                   help="unlabelled prompt positions per SFT sequence / shared prompt of a pair / gen prompt length "
                        "(default: seq-len / 4)")
    p.add_argument("--batch-size", type=int, default=8, help="SFT sequences per micro-batch")
    p.add_argument("--rm-batch-size", type=int, default=4, help="RM pairs per micro-batch")
    p.add_argument("--rm-layout", choices=["shared-prefix", "two-rows"], default="shared-prefix",
                   help="RM pair layout: one [prompt | chosen | rejected] row with a 4D mask (the reward stage's "
                        "default, reward.share_prompt) or two rows [chosen; rejected]")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step (sft, rm)")
    p.add_argument("--warmup", type=int, default=3, help="untimed optimizer steps first (>= 1)")
    p.add_argument("--steps", type=int, default=10, help="timed optimizer steps (sft, rm)")
    p.add_argument("--gen-batch", type=int, default=64, help="prompts per rollout call (gen)")
    p.add_argument("--gen-tokens", type=int, default=256, help="new tokens per response (gen, ppo)")
    p.add_argument("--gen-repeats", type=int, default=3, help="timed rollout calls after one untimed call")
    p.add_argument("--no-ignore-eos", action="store_true", help="gen: stop rows at EOS like PPO does")
    p.add_argument("--ppo-batch", type=int, default=64, help="ppo: rollout_batch_size (= one minibatch)")
    p.add_argument("--ppo-micro", type=int, default=16, help="ppo: optim.micro_batch_size")
    p.add_argument("--ppo-epochs", type=int, default=1, help="ppo: PPO epochs per step (demo preset: 1)")
    p.add_argument("--ppo-value-model", choices=["shared", "separate"], default="shared",
                   help="ppo: value head on the policy trunk (demo preset) or a separate critic")
    p.add_argument("--ppo-warmup", type=int, default=1, help="ppo, ppo-dp: untimed steps first")
    p.add_argument("--ppo-steps", type=int, default=3, help="ppo, ppo-dp: timed steps")
    p.add_argument("--ppo-engine", choices=["hf", "vllm"], default="hf",
                   help="ppo, ppo-dp: the rollout engine (ppo.rollout.engine): our sampler, or vLLM (needs `make vllm`)")
    p.add_argument("--dp-processes", type=int, default=None,
                   help="ppo-dp: data-parallel processes (default: the visible CUDA devices; 2 on CPU with --allow-cpu)")
    p.add_argument("--vllm-python", default=str(VLLM_PYTHON), help="vllm, --ppo-engine vllm: the vLLM venv's Python")
    p.add_argument("--vllm-syncs", type=int, default=3, help="vllm: timed weight syncs (load_weights)")
    p.add_argument("--vllm-gpu-memory-utilization", type=float, default=None,
                   help="vllm engines on CUDA: their share of the GPU (default: ppo.rollout's, which leaves the "
                        "rest to the trainer)")
    p.add_argument("--vllm-kv-cache-gib", type=int, default=None,
                   help="vllm engines on CPU: KV cache GiB (default: ppo.rollout's)")
    p.add_argument("--tiny-hidden-size", type=int, default=None,
                   help="--model tiny: width (default: model.tiny's); vLLM on CPU needs hidden/heads >= 32")
    p.add_argument("--tiny-heads", type=int, default=None, help="--model tiny: attention heads (default: model.tiny's)")
    p.add_argument("--peak-tflops", type=float, default=None, help="peak dense TFLOP/s for MFU (overrides the table)")
    p.add_argument("--allow-cpu", action="store_true", help="run on CPU when there is no CUDA (checks the script only)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="result JSON (default bench/results/gpu_<gpu-name>.json)")
    # one process of a ppo-dp run (launched by torchrun from this script): writes its timings to PATH
    p.add_argument("--dp-worker", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what a ppo-dp worker is started with
    args.phases = [x.strip() for x in args.phases.split(",") if x.strip()]
    args.seen = {}  # the model's shapes and attention implementation, from the first load
    unknown = set(args.phases) - set(PHASES)
    if unknown:
        p.error(f"--phases: unknown {', '.join(sorted(unknown))} (choose from {', '.join(PHASES)})")
    if args.warmup < 1:
        p.error("--warmup must be >= 1 (the first step pays for allocation and kernel selection)")
    for name in ("steps", "batch_size", "rm_batch_size", "grad_accum", "gen_batch", "gen_tokens", "gen_repeats",
                 "ppo_batch", "ppo_micro", "ppo_epochs", "ppo_steps", "seq_len", "vllm_syncs"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.dp_processes is not None and args.dp_processes < 1:
        p.error("--dp-processes must be >= 1")
    if args.vllm_kv_cache_gib is not None and args.vllm_kv_cache_gib < 1:
        p.error("--vllm-kv-cache-gib must be >= 1")
    if args.vllm_gpu_memory_utilization is not None and not 0 < args.vllm_gpu_memory_utilization < 1:
        p.error("--vllm-gpu-memory-utilization must be in (0, 1)")
    if "ppo-dp" in args.phases and args.ppo_warmup < 1:
        p.error("--ppo-warmup must be >= 1 for ppo-dp (its clock starts at the end of the first step)")
    if args.ppo_batch % args.ppo_micro:
        p.error("--ppo-batch must be a multiple of --ppo-micro")
    if args.prompt_tokens is None:
        args.prompt_tokens = max(1, args.seq_len // 4)
    if not 1 <= args.prompt_tokens < args.seq_len:
        p.error("--prompt-tokens must be in [1, seq-len)")
    return args


# ----------------------------------------------------------------------------- device
def peak_tflops_for(name: str) -> tuple[float | None, str | None]:
    for pattern, tflops, label in PEAK_BF16_TFLOPS:
        if pattern.lower() in name.lower():
            return tflops, label
    return None, None


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown"


class Device:
    """Where the benchmark runs, how to synchronise with it, and how its peak memory is read."""

    def __init__(self, torch: Any, cuda: bool) -> None:
        self.torch, self.cuda = torch, cuda
        self.type = "cuda" if cuda else "cpu"
        if cuda:
            props = torch.cuda.get_device_properties(0)
            self.name = torch.cuda.get_device_name(0)
            self.info = {"name": self.name, "capability": f"{props.major}.{props.minor}",
                         "memory_gib": round(props.total_memory / 2**30, 1), "count": torch.cuda.device_count(),
                         "cuda": torch.version.cuda}
        else:
            import platform

            self.name = "cpu"
            self.info = {"name": "cpu", "processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count()}

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def free(self) -> None:
        gc.collect()
        if self.cuda:
            self.torch.cuda.empty_cache()

    def reset_peak(self) -> None:
        self.free()
        if self.cuda:
            self.torch.cuda.reset_peak_memory_stats()
        else:
            C.reset_peak_rss()

    def peak_memory_gib(self) -> float:
        if self.cuda:
            return self.torch.cuda.max_memory_allocated() / 2**30
        return C.peak_rss_mib() / 1024

    @property
    def memory_kind(self) -> str:
        return ("torch.cuda.max_memory_allocated per phase" if self.cuda
                else "process peak RSS (VmHWM, reset per phase): weights, activations, optimizer state and Python")


# ----------------------------------------------------------------------------- model
class Shapes:
    """What the FLOP count needs: N_layers, L, d, d_attn, V."""

    def __init__(self, model: Any) -> None:
        config = model.config
        decoder = model.get_decoder() if hasattr(model, "get_decoder") else getattr(model, model.base_model_prefix)
        self.layers = int(config.num_hidden_layers)
        self.hidden = int(config.hidden_size)
        heads = int(config.num_attention_heads)
        head_dim = int(getattr(config, "head_dim", None) or self.hidden // heads)
        self.attn_width = heads * head_dim
        self.vocab = int(model.get_output_embeddings().weight.shape[0])
        self.block_params = sum(p.numel() for p in decoder.layers.parameters())
        self.total_params = sum(p.numel() for p in model.parameters())

    def train_flops(self, *, tokens: int, seq_len: int, lm_head_positions: int = 0, sequences_with_scalar_head: int = 0) -> float:
        """Model FLOPs of forward + backward (see the module docstring)."""
        trunk = 6 * self.block_params * tokens
        attention = 12 * self.layers * self.attn_width * seq_len * tokens
        head = 6 * self.vocab * self.hidden * lm_head_positions + 6 * self.hidden * sequences_with_scalar_head
        return float(trunk + attention + head)

    def to_json(self) -> dict[str, Any]:
        return {"parameters": self.total_params, "block_parameters_N": self.block_params, "layers_L": self.layers,
                "hidden_d": self.hidden, "attn_width_d_attn": self.attn_width, "vocab_V": self.vocab}


def model_config(args: argparse.Namespace, device: str) -> Any:
    """The ModelConfig of ``--model`` on ``device`` in the benchmark's dtype (``--tiny-*`` shape the tiny model)."""
    from rlhf_core.config.model import ModelConfig, TinyModelConfig

    tiny = {k: v for k, v in (("hidden_size", args.tiny_hidden_size), ("num_heads", args.tiny_heads)) if v is not None}
    dtype = "bfloat16" if args.precision == "bf16" else "float32"
    return ModelConfig(base=args.model, device=device, dtype=dtype, tiny=TinyModelConfig(**tiny))


def load_model(args: argparse.Namespace, dev: Device, tokenizer: Any, device: str | None = None) -> Any:
    """The causal LM through rlhf_core.models (as every stage loads it), on ``device`` (default: the
    benchmark's), in the benchmark's dtype."""
    from rlhf_core.models import load_causal_lm

    model = load_causal_lm(model_config(args, device or dev.type), args.cache_dir, tokenizer)
    set_attention(model, args.attn)
    if "shapes" not in args.seen:
        args.seen.update(shapes=Shapes(model), attn=model.config._attn_implementation)
    return model


def set_attention(model: Any, attn: str) -> None:
    if getattr(model.config, "_attn_implementation", None) != attn:
        try:
            model.set_attn_implementation(attn)
        except (ImportError, ValueError) as exc:  # e.g. flash_attention_2 without the flash-attn package
            raise SystemExit(f"error: --attn {attn}: {str(exc).splitlines()[0]}") from exc


def compile_blocks(trunk: Any) -> None:
    for block in trunk.layers:
        block.compile()


def token_ids(rng: random.Random, n: int, vocab: int) -> list[int]:
    return [rng.randrange(vocab) for _ in range(n)]


class StepClock:
    """A tracker: stamps the end of each optimizer step (after a device sync) and keeps its metrics."""

    def __init__(self, dev: Device) -> None:
        self.dev = dev
        self.marks: list[float] = []
        self.metrics: list[dict[str, float]] = []

    def log_metrics(self, metrics: Any, step: int) -> None:
        self.dev.sync()
        self.marks.append(time.perf_counter())
        self.metrics.append(dict(metrics))

    def log_artifact(self, path: Any) -> None:
        return None

    def log_params(self, params: Any) -> None:
        return None

    def window(self, warmup: int) -> tuple[float, list[float]]:
        """(seconds of the steps after ``warmup``, per-step seconds)."""
        steps = [b - a for a, b in zip(self.marks[warmup - 1 :], self.marks[warmup:])]
        return self.marks[-1] - self.marks[warmup - 1], steps


def optim_config(args: argparse.Namespace, batch_size: int) -> Any:
    from rlhf_core.config.optim import OptimConfig

    return OptimConfig(
        learning_rate=1e-5, max_steps=args.warmup + args.steps, micro_batch_size=batch_size, grad_accum_steps=args.grad_accum,
        max_length=args.seq_len, checkpoint_every=0, keep_checkpoints=1, log_every=1,
        mixed_precision="bf16" if args.precision == "autocast" else "no",
    )


def training_result(args: argparse.Namespace, dev: Device, clock: StepClock, flops_of_step: Any,
                    peak_tflops: float | None, extra: dict[str, Any]) -> dict[str, Any]:
    seconds, per_step = clock.window(args.warmup)
    timed = clock.metrics[args.warmup :]
    flops = sum(flops_of_step(m) for m in timed)
    tokens = sum(m["train/tokens_per_second"] * m["train/step_seconds"] for m in timed)
    achieved = flops / seconds
    return {
        "steps_timed": len(timed),
        "seconds": seconds,
        "step_seconds_median": statistics.median(per_step),
        "tokens_per_step": round(tokens / len(timed)),
        "tokens_per_s": tokens / seconds,
        "model_flops_per_step": flops / len(timed),
        "achieved_tflops": achieved / 1e12,
        "mfu": achieved / (peak_tflops * 1e12) if peak_tflops else None,
        "micro_batch_size_last": int(timed[-1].get("train/micro_batch_size", 0)) or None,
        "peak_memory_gib": dev.peak_memory_gib(),
        **extra,
    }


# ----------------------------------------------------------------------------- phases
def timed_training(args: argparse.Namespace, dev: Device, *, stage: str, model: Any, batch_size: int, **loop: Any) -> StepClock:
    """Our training loop (``rlhf_core.training.run_training_loop``) on ``model``, timed per step, in a scratch dir."""
    from rlhf_core.training import run_training_loop, set_seed

    clock = StepClock(dev)
    out = Path(tempfile.mkdtemp(prefix=f"gpu-bench-{stage}-", dir=_scratch()))
    try:
        set_seed(args.seed)
        run_training_loop(stage=stage, model=model, optim=optim_config(args, batch_size), output_dir=out, tracker=clock,
                          resume=False, seed=args.seed, progress=False, **loop)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return clock


def run_sft(args: argparse.Namespace, dev: Device, tokenizer: Any, peak: float | None) -> dict[str, Any]:
    from rlhf_core.batching import IGNORE_INDEX, SFTExample, collate_sft, count_target_tokens
    from rlhf_core.sft.train import sft_step_loss

    dev.reset_peak()
    model = load_model(args, dev, tokenizer)
    shapes = Shapes(model)
    if args.compile:
        compile_blocks(model.get_decoder())
    rng = random.Random(args.seed)
    vocab = min(len(tokenizer), shapes.vocab)
    T, P = args.seq_len, args.prompt_tokens
    n = args.batch_size * args.grad_accum * (args.warmup + args.steps)
    examples = []
    for i in range(n):
        ids = token_ids(rng, T, vocab)
        examples.append(SFTExample(row_id=str(i), input_ids=ids, labels=[IGNORE_INDEX] * P + ids[P:]))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    clock = timed_training(
        args, dev, stage="sft", model=model, batch_size=args.batch_size, lengths=[T] * n,
        collate=lambda idx: collate_sft([examples[i] for i in idx], pad_id),
        units_of=lambda batch: count_target_tokens(batch["labels"]), loss_fn=sft_step_loss, unit_name="tokens",
    )

    def flops(m: dict[str, float]) -> float:
        tokens = round(m["train/tokens_per_second"] * m["train/step_seconds"])
        return shapes.train_flops(tokens=tokens, seq_len=T, lm_head_positions=int(m["train/tokens"]))

    result = training_result(args, dev, clock, flops, peak, {
        "sequences_per_step": args.batch_size * args.grad_accum, "seq_len": T, "labelled_positions_per_step":
        int(clock.metrics[-1]["train/tokens"]), "loss_last": clock.metrics[-1].get("sft/loss")})
    del model, examples
    dev.free()
    return result


def run_rm(args: argparse.Namespace, dev: Device, tokenizer: Any, peak: float | None) -> dict[str, Any]:
    from rlhf_core.batching import PairExample, pairs_in_batch
    from rlhf_core.reward.model import RewardModel
    from rlhf_core.reward.train import collate_for, pair_step_loss

    dev.reset_peak()
    causal = load_model(args, dev, tokenizer)
    shapes = Shapes(causal)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rm = RewardModel.from_model(causal, pad_token_id=pad_id, seed=args.seed)
    del causal
    dev.free()
    set_attention(rm.transformers_model, args.attn)
    shared = args.rm_layout == "shared-prefix"
    if shared:
        rm.check_pair_layout()  # as the reward stage does before training
    if args.compile:
        compile_blocks(rm.trunk)
    rng = random.Random(args.seed + 1)
    vocab = min(len(tokenizer), shapes.vocab)
    T, P = args.seq_len, args.prompt_tokens
    row = 2 * T - P if shared else T  # tokens per row: one pair, or one of its two sequences
    n = args.rm_batch_size * args.grad_accum * (args.warmup + args.steps)
    pairs = []
    for i in range(n):
        prompt = token_ids(rng, P, vocab)
        pairs.append(PairExample(row_id=str(i), chosen_ids=prompt + token_ids(rng, T - P, vocab),
                                 rejected_ids=prompt + token_ids(rng, T - P, vocab)))
    collate = collate_for(shared)
    clock = timed_training(
        args, dev, stage="reward", model=rm, batch_size=args.rm_batch_size, lengths=[row] * n,
        collate=lambda idx: collate([pairs[i] for i in idx], pad_id),
        units_of=pairs_in_batch, loss_fn=pair_step_loss(0.0), unit_name="pairs",
    )

    def flops(m: dict[str, float]) -> float:
        tokens = round(m["train/tokens_per_second"] * m["train/step_seconds"])
        return shapes.train_flops(tokens=tokens, seq_len=row, sequences_with_scalar_head=2 * int(m["train/pairs"]))

    result = training_result(args, dev, clock, flops, peak, {
        "pairs_per_step": args.rm_batch_size * args.grad_accum, "seq_len": T, "layout": args.rm_layout,
        "row_tokens": row, "loss_last": clock.metrics[-1].get("rm/loss")})
    result["pairs_per_s"] = result["pairs_per_step"] * result["steps_timed"] / result["seconds"]
    del rm, pairs
    dev.free()
    return result


def rollout_inputs(args: argparse.Namespace, tokenizer: Any, model: Any) -> tuple[list[list[int]], list[int], int]:
    """The gen and vllm phases' prompts (``--gen-batch`` random rows of ``--prompt-tokens``), EOS ids and pad id."""
    from rlhf_core.generation import eos_token_ids

    vocab = min(len(tokenizer), Shapes(model).vocab)
    rng = random.Random(args.seed + 2)
    queries = [token_ids(rng, args.prompt_tokens, vocab) for _ in range(args.gen_batch)]
    # -1 is no token id: no row ever finishes early, so every call samples B x G tokens
    eos = eos_token_ids(tokenizer, model) if args.no_ignore_eos else [-1]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return queries, eos, pad_id


def timed_calls(args: argparse.Namespace, dev: Device, generate: Any) -> list[tuple[float, int, int]]:
    """(seconds, sampled positions, valid response tokens) of ``--gen-repeats`` calls ``generate(i)`` after one untimed."""

    def call(i: int) -> tuple[float, int, int]:
        dev.sync()
        t0 = time.perf_counter()
        ro = generate(i)
        dev.sync()
        return time.perf_counter() - t0, int(ro.response_ids.numel()), int(ro.response_mask.sum())

    call(0)  # warmup: allocator, kernels
    return [call(i) for i in range(1, args.gen_repeats + 1)]


def run_gen(args: argparse.Namespace, dev: Device, tokenizer: Any) -> dict[str, Any]:
    import torch

    from rlhf_core.sampling import sample

    dev.reset_peak()
    model = load_model(args, dev, tokenizer).eval()
    queries, eos, pad_id = rollout_inputs(args, tokenizer, model)
    B, P, G = args.gen_batch, args.prompt_tokens, args.gen_tokens
    torch.manual_seed(args.seed)
    runs = timed_calls(args, dev, lambda i: sample(model, queries, device=model.device, max_new_tokens=G, eos_id=eos,
                                                   pad_id=pad_id, temperature=GEN_TEMPERATURE))
    seconds = sum(r[0] for r in runs)
    sampled = sum(r[1] for r in runs)
    result = {
        "batch": B, "prompt_tokens": P, "new_tokens_max": G, "ignore_eos": not args.no_ignore_eos,
        "calls_timed": len(runs), "seconds_per_call_median": statistics.median(r[0] for r in runs),
        "sampled_tokens": sampled, "valid_tokens": sum(r[2] for r in runs),
        "tokens_per_s": sampled / seconds,
        "ms_per_decode_step": 1000 * seconds / (sampled / B),
        "peak_memory_gib": dev.peak_memory_gib(),
    }
    del model
    dev.free()
    return result


def rollout_config(args: argparse.Namespace, engine: str, max_model_len: int) -> Any:
    """``ppo.rollout`` for ``engine`` with the ``--vllm-*`` settings (RolloutConfig's defaults otherwise)."""
    from rlhf_core.config.ppo import RolloutConfig

    given = {"kv_cache_gib": args.vllm_kv_cache_gib, "gpu_memory_utilization": args.vllm_gpu_memory_utilization}
    return RolloutConfig(engine=engine, vllm_python=args.vllm_python, max_model_len=max_model_len,
                         **{k: v for k, v in given.items() if v is not None})


def vllm_version(python: str) -> str | None:
    """The vllm distribution's version in the venv of ``python``, read off its dist-info (importing vllm takes seconds)."""
    venv = Path(python).expanduser().absolute().parent.parent
    for info in sorted(venv.glob("lib/python*/site-packages/vllm*.dist-info")):
        name, _, version = info.name.removesuffix(".dist-info").partition("-")
        return f"{name} {version}"
    return None


def skipped(phase: str, reason: str) -> dict[str, Any]:
    print(f"warning: {phase} skipped: {reason}", file=sys.stderr)
    return {"skipped": reason}


def run_vllm(args: argparse.Namespace, dev: Device, tokenizer: Any) -> dict[str, Any]:
    from rlhf_core.errors import ModelLoadError
    from rlhf_core.rollout import vllm_venv_problem
    from rlhf_core.rollout.vllm_engine import VLLMEngine

    B, P, G = args.gen_batch, args.prompt_tokens, args.gen_tokens
    cfg = rollout_config(args, "vllm", max_model_len=max(16, P + G))
    if problem := vllm_venv_problem(cfg):
        return skipped("vllm", problem)
    dev.reset_peak()
    model = load_model(args, dev, tokenizer).eval()
    queries, eos, pad_id = rollout_inputs(args, tokenizer, model)
    if not args.no_ignore_eos:
        # vLLM refuses an out-of-vocabulary stop id such as gen's -1 and the engine has no ignore-EOS switch:
        # stop on an id no text encodes (past the tokenizer's ids, where the embedding is padded, as Qwen2.5's
        # is), else the vocabulary's last id; tokens/s counts the tokens actually sampled either way
        vocab = Shapes(model).vocab
        eos = [len(tokenizer) if len(tokenizer) < vocab else vocab - 1]
    log_path = _scratch() / "gpu-vllm-engine.log"
    log_path.unlink(missing_ok=True)  # the engine appends
    t0 = time.perf_counter()
    try:
        engine = VLLMEngine(model, cfg, device=model.device, log_path=log_path)
    except ModelLoadError as exc:  # e.g. a head size vLLM's kernels lack: the other phases still run
        del model
        dev.free()
        return skipped("vllm", str(exc))
    try:
        start_wall = time.perf_counter() - t0
        # one seed per row, as PPO passes them (rlhf_core.ppo.parallel.rollout_seeds); other seeds each call
        runs = timed_calls(args, dev, lambda i: engine.generate(
            queries, seeds=[i * B + r for r in range(B)], max_new_tokens=G, eos_id=eos, pad_id=pad_id,
            temperature=GEN_TEMPERATURE, top_k=0, top_p=1.0))
        syncs = [engine.load_weights(model) for _ in range(args.vllm_syncs)]
    finally:
        engine.close()
    seconds = sum(r[0] for r in runs)
    valid = sum(r[2] for r in runs)
    result = {
        "engine": vllm_version(args.vllm_python), "vllm_python": args.vllm_python,
        "kv_cache": (f"gpu_memory_utilization {cfg.gpu_memory_utilization}" if dev.cuda
                     else f"{cfg.kv_cache_gib} GiB (VLLM_CPU_KVCACHE_SPACE)"),
        "batch": B, "prompt_tokens": P, "new_tokens_max": G, "ignore_eos": not args.no_ignore_eos,
        "start_seconds": engine.start_seconds, "start_wall_seconds": start_wall,
        "calls_timed": len(runs), "seconds_per_call_median": statistics.median(r[0] for r in runs),
        # vLLM computes no position past a row's end: its tokens are the valid ones (= B x G without EOS)
        "valid_tokens": valid, "tokens_per_s": valid / seconds, "stop_ids": eos,
        "tokens_short_of_budget": B * G * len(runs) - valid,  # rows that drew a stop id before G tokens
        "weight_sync_seconds": syncs, "weight_sync_seconds_median": statistics.median(syncs),
        "peak_memory_gib": dev.peak_memory_gib(),
        "peak_memory_note": "this process only (the policy copy the weights are written from); not the engine process",
        "engine_log": str(log_path),
    }
    del model
    dev.free()
    return result


def ppo_config(args: argparse.Namespace) -> Any:
    """The ppo and ppo-dp phases' PPOConfig: one minibatch of ``--ppo-batch`` rollouts a step, ``--ppo-engine``."""
    from rlhf_core.config.optim import OptimConfig
    from rlhf_core.config.ppo import PPOConfig

    # a run's last step syncs no weights (nothing samples after it): with vllm, one more untimed step
    steps = args.ppo_warmup + args.ppo_steps + int(args.ppo_engine == "vllm")
    max_length = 256 + args.gen_tokens
    shared = args.ppo_value_model == "shared"
    return PPOConfig(
        optim=OptimConfig(learning_rate=1e-6, max_steps=steps, micro_batch_size=args.ppo_micro,
                          grad_accum_steps=args.ppo_batch // args.ppo_micro, max_length=max_length,
                          truncate_prompt=True, checkpoint_every=0, keep_checkpoints=1, log_every=1,
                          mixed_precision="bf16" if args.precision == "autocast" else "no"),
        max_new_tokens=args.gen_tokens, rollout_batch_size=args.ppo_batch, ppo_epochs=args.ppo_epochs,
        value_model=args.ppo_value_model, value_init="policy" if shared else "reward",
        rollout=rollout_config(args, args.ppo_engine, max_model_len=max_length),
    )


def timed_ppo(args: argparse.Namespace, dev: Device, tokenizer: Any, *, output_dir: Path, device: str | None = None,
              dist: Any = None) -> StepClock:
    """``train_ppo`` on synthetic chat prompts, the model itself as the reward model's start; the step clock
    (rank 0's under ``dist``: the other processes track nothing)."""
    from rlhf_core.ppo.trainer import train_ppo
    from rlhf_core.reward.model import RewardModel

    policy = load_model(args, dev, tokenizer, device)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    reward = RewardModel.from_model(load_model(args, dev, tokenizer, device), pad_token_id=pad_id, seed=args.seed)
    set_attention(reward.transformers_model, args.attn)
    cfg = ppo_config(args)
    prompts = C.synth_prompts(args.ppo_batch * cfg.optim.max_steps, args.seed)
    clock = StepClock(dev)
    train_ppo(cfg, policy, tokenizer, reward, tokenizer, prompts, output_dir=output_dir, tracker=clock,
              seed=args.seed, resume=False, progress=False, dist=dist)
    del policy, reward
    return clock


def ppo_timers(args: argparse.Namespace, metrics: list[dict[str, float]]) -> dict[str, Any]:
    """The loop's own timers summed over the timed steps (after ``--ppo-warmup``, ``--ppo-steps`` of them)."""
    timed = metrics[args.ppo_warmup : args.ppo_warmup + args.ppo_steps]
    sums = {part: sum(m.get(f"time/{part}", 0.0) for m in timed) for part in ("generation", "scoring", "update", "weight_sync")}
    total = sum(sums.values())
    result = {
        "steps_timed": len(timed), "engine": args.ppo_engine,
        "response_length_mean": statistics.fmean(m["ppo/response_length"] for m in timed),
        "generation_s": sums["generation"], "scoring_s": sums["scoring"], "update_s": sums["update"],
        "weight_sync_s": sums["weight_sync"] if args.ppo_engine == "vllm" else None,
        "step_seconds_median": statistics.median(
            sum(m.get(f"time/{part}", 0.0) for part in ("generation", "scoring", "update", "weight_sync")) for m in timed),
        "generation_share": sums["generation"] / total,
        # response tokens (up to and including EOS) per second of generation; our sampler runs
        # until the longest row of the batch ends, so it computes more positions than this
        "generation_tokens_per_s_valid": sum(m["ppo/response_length"] * args.ppo_batch for m in timed) / sums["generation"],
    }
    if args.ppo_engine == "vllm":
        result["weight_sync_share"] = sums["weight_sync"] / total
        result["logprob_mismatch_max"] = max(m["ppo/logprob_mismatch"] for m in timed)  # |vLLM - trainer|, nats
    return result


def run_ppo(args: argparse.Namespace, dev: Device, tokenizer: Any) -> dict[str, Any]:
    from rlhf_core.rollout import vllm_venv_problem

    cfg = ppo_config(args)
    if problem := vllm_venv_problem(cfg.rollout):
        return skipped("ppo", problem)
    dev.reset_peak()
    out = Path(tempfile.mkdtemp(prefix="gpu-bench-ppo-", dir=_scratch()))
    try:
        clock = timed_ppo(args, dev, tokenizer, output_dir=out)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    result = {
        "rollout_batch": args.ppo_batch, "micro_batch": args.ppo_micro, "ppo_epochs": args.ppo_epochs,
        "value_model": args.ppo_value_model, "max_new_tokens": args.gen_tokens,
        **ppo_timers(args, clock.metrics),
        "peak_memory_gib": dev.peak_memory_gib(),
    }
    if args.ppo_engine == "vllm":
        result["peak_memory_note"] = "this process only; not the vLLM engine process"
    dev.free()
    return result


# ----------------------------------------------------------------------------- ppo-dp
def dp_processes(args: argparse.Namespace, dev: Device) -> int:
    """``--dp-processes``, else one process per visible CUDA device (2 on CPU)."""
    if args.dp_processes is not None:
        return args.dp_processes
    return int(dev.info["count"]) if dev.cuda else 2


def scaling_efficiency(t1: float, tn: float, n: int) -> float:
    """Strong-scaling efficiency at equal global batch: ``t1 / (n * tn)`` (t = seconds per step); 1.0 = linear."""
    return t1 / (n * tn)


def step_window(marks: list[float], warmup: int, steps: int) -> list[float]:
    """Seconds of steps ``warmup + 1 .. warmup + steps`` from the stamps at each step's end (``warmup`` >= 1)."""
    return [b - a for a, b in zip(marks[warmup - 1 : warmup + steps - 1], marks[warmup : warmup + steps])]


def dp_worker(args: argparse.Namespace, dev: Device, tokenizer: Any) -> int:
    """One process of a ppo-dp run, started by torchrun (``run_ppo_dp``); rank 0 writes its clock to ``--dp-worker``."""
    import torch

    world, local = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("LOCAL_RANK", "0"))
    device = None
    if dev.cuda:  # one device a process (nccl)
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    dist = None
    if world > 1:
        from rlhf_core.distributed import DataParallel

        dist = DataParallel.from_launcher()
    try:
        dev.reset_peak()
        clock = timed_ppo(args, dev, tokenizer, output_dir=args.dp_worker.parent / "ppo", device=device, dist=dist)
        if dist is None or dist.is_main:
            C.write_json(args.dp_worker, {"world_size": world, "marks": clock.marks, "metrics": clock.metrics,
                                          "peak_memory_gib": dev.peak_memory_gib()})
        if dist is not None:
            dist.barrier()
    finally:
        if dist is not None:
            dist.close()
    return 0


def launch_ppo(args: argparse.Namespace, processes: int) -> dict[str, Any]:
    """``processes`` copies of this script's ppo-dp worker under torchrun; rank 0's clock and timers."""
    import subprocess

    from rlhf_core.errors import TrainingError
    from rlhf_core.processes import free_port, guarded, stop_tree
    from tasks.distributed import worker_error

    work = Path(tempfile.mkdtemp(prefix=f"gpu-bench-ppo-dp{processes}-", dir=_scratch()))
    result, log_path = work / "result.json", work / "torchrun.log"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--master_addr=127.0.0.1", f"--master_port={free_port()}",
                f"--nproc_per_node={processes}"]
    # the parent's resolved model and precision, so that every process loads what the parent would
    worker = [str(Path(__file__).resolve()), *args.argv, "--model", args.model, "--precision", args.precision,
              "--dp-worker", str(result)]
    started = time.perf_counter()
    with open(log_path, "w") as log:
        log.write(f"$ {' '.join(torchrun + worker)}\n")
        log.flush()
        # guarded: a SIGKILL of this process stops torchrun, which stops its workers (as tasks.distributed does)
        proc = subprocess.Popen(guarded([*torchrun, *worker]), stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            proc.wait()
        except BaseException:
            stop_tree(proc)
            raise
    if proc.returncode != 0 or not result.is_file():
        text = log_path.read_text(errors="replace")
        # a worker's one-line error (main's "error: ..."), else the first exception a worker raised
        cause = next((ln.strip() for ln in text.splitlines() if ln.startswith("error: ")), None) or worker_error(text)
        raise TrainingError(f"ppo-dp: the {processes}-process run exited with code {proc.returncode}: "
                            f"{cause.strip()}; full log: {log_path}")
    data = json.loads(result.read_text())
    shutil.rmtree(work, ignore_errors=True)
    per_step = step_window(data["marks"], args.ppo_warmup, args.ppo_steps)
    seconds = sum(per_step)
    timers = ppo_timers(args, data["metrics"])
    return {
        "processes": int(data["world_size"]), "rows_per_process": args.ppo_batch // processes,
        "seconds": seconds, "steps_per_s": len(per_step) / seconds,
        "responses_per_s": len(per_step) * args.ppo_batch / seconds,
        "step_seconds_median": statistics.median(per_step),  # rank 0's wall clock, not the sum of its timers
        **{k: v for k, v in timers.items() if k != "step_seconds_median"},
        "peak_memory_gib": data["peak_memory_gib"], "launch_wall_s": time.perf_counter() - started,
    }


def run_ppo_dp(args: argparse.Namespace, dev: Device) -> dict[str, Any]:
    from rlhf_core.config.distributed import DistributedConfig
    from rlhf_core.distributed import check_distributed
    from rlhf_core.errors import ConfigError
    from rlhf_core.rollout import vllm_venv_problem

    n = dp_processes(args, dev)
    if n < 2:
        return skipped("ppo-dp", f"needs 2 or more processes, this run has {n} ({dev.info.get('count', 0)} CUDA "
                                 "device(s) visible; nccl takes one a process): nothing to scale")
    backend = "nccl" if dev.cuda else "gloo"
    try:
        check_distributed(DistributedConfig(num_processes=n, backend=backend))
    except ConfigError as exc:
        return skipped("ppo-dp", str(exc))
    if problem := vllm_venv_problem(ppo_config(args).rollout):
        return skipped("ppo-dp", problem)
    one = launch_ppo(args, 1)
    many = launch_ppo(args, n)
    t1, tn = one["seconds"] / one["steps_timed"], many["seconds"] / many["steps_timed"]
    return {
        "processes": n, "backend": backend, "launcher": "torchrun", "engine": args.ppo_engine,
        "rollout_batch": args.ppo_batch, "micro_batch": args.ppo_micro, "ppo_epochs": args.ppo_epochs,
        "value_model": args.ppo_value_model, "max_new_tokens": args.gen_tokens,
        "steps_per_s_1": one["steps_per_s"], "steps_per_s_n": many["steps_per_s"],
        "speedup": t1 / tn, "scaling_efficiency": scaling_efficiency(t1, tn, n),
        "one_process": one, "n_processes": many,
        "peak_memory_gib": max(one["peak_memory_gib"], many["peak_memory_gib"]),
        "peak_memory_note": "rank 0's, per process",
    }


def _scratch() -> Path:
    path = ROOT / ".rlhf" / "bench"
    path.mkdir(parents=True, exist_ok=True)
    return path


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from rlhf_core.errors import UserError

    cuda = torch.cuda.is_available()
    if not cuda and not args.allow_cpu:
        print(f"error: bench/gpu.py measures GPU throughput and no CUDA device is visible "
              f"(torch {torch.__version__}, torch.cuda.is_available() is False); run it on a CUDA machine, "
              "or pass --allow-cpu --model tiny to check the script on CPU (its figures mean nothing)", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model is None:
        args.model = DEFAULT_GPU_MODEL if cuda else "tiny"
    if args.precision is None:
        args.precision = "bf16" if cuda else "fp32"
    if args.precision in ("bf16", "autocast") and cuda and not torch.cuda.is_bf16_supported():
        print("error: this GPU has no bf16 support; pass --precision fp32", file=sys.stderr)
        return 2
    dev = Device(torch, cuda)
    if args.peak_tflops is not None:
        peak, peak_source = args.peak_tflops, "--peak-tflops"
    elif cuda:
        peak, peak_source = peak_tflops_for(dev.name)
        if args.precision == "fp32":  # the table holds bf16 tensor-core peaks
            peak, peak_source = None, None
    else:
        peak, peak_source = None, None
    if peak is None:
        print(f"warning: no peak FLOP/s known for '{dev.name}' at {args.precision}; MFU is left empty "
              "(pass --peak-tflops)", file=sys.stderr)

    try:
        return _run(args, dev, peak, peak_source)
    except UserError as exc:  # a model that cannot be loaded, a bad setting: one line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace, dev: Device, peak: float | None, peak_source: str | None) -> int:
    from rlhf_core.config.model import ModelConfig
    from rlhf_core.models import load_tokenizer

    tokenizer = load_tokenizer(ModelConfig(base=args.model), args.cache_dir)
    if args.dp_worker is not None:
        return dp_worker(args, dev, tokenizer)
    if "ppo" in args.phases or "ppo-dp" in args.phases:
        cfg = ppo_config(args)  # a bad PPO setting fails here, before any phase runs
        if "ppo-dp" in args.phases:
            cfg.check_processes(dp_processes(args, dev))
    started = time.perf_counter()
    results: dict[str, Any] = {}
    for phase in args.phases:
        t0 = time.perf_counter()
        print(f"[gpu-bench] {phase} ...", file=sys.stderr, flush=True)
        if phase == "sft":
            results["sft"] = run_sft(args, dev, tokenizer, peak)
        elif phase == "rm":
            results["rm"] = run_rm(args, dev, tokenizer, peak)
        elif phase == "gen":
            results["gen"] = run_gen(args, dev, tokenizer)
        elif phase == "vllm":
            results["vllm"] = run_vllm(args, dev, tokenizer)
        elif phase == "ppo":
            results["ppo"] = run_ppo(args, dev, tokenizer)
        elif phase == "ppo-dp":
            results["ppo-dp"] = run_ppo_dp(args, dev)
        results[phase]["phase_wall_s"] = time.perf_counter() - t0
    if "shapes" not in args.seen:  # only skipped phases, or ppo-dp (its processes loaded the model)
        load_model(args, dev, tokenizer)  # fills args.seen; dropped at once
        dev.free()
    shapes, attn = args.seen["shapes"], args.seen["attn"]
    summary = summarize(results)
    payload = {
        "benchmark": "bench/gpu.py",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": [sys.executable, *sys.argv],
        "device": {**dev.info, "type": dev.type, "peak_tflops": peak, "peak_source": peak_source},
        "machine": C.machine_info(),
        "versions": C.versions("torch", "transformers", "peft"),
        "model": {"source": args.model, "precision": args.precision, "attn_implementation": attn,
                  "compiled_blocks": args.compile, **shapes.to_json()},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "seen"},
        "flops_formula": (
            "per optimizer step: 6*N_layers*tokens + 12*L*d_attn*T*tokens + 6*V*d*labelled_positions (SFT) "
            "or + 6*d*sequences (RM scalar head); forward+backward = 3x forward (PaLM appendix B), causal "
            "half of attention counted (model FLOPs)"),
        "memory": dev.memory_kind,
        "summary": summary,
        **results,
        "wall_s": time.perf_counter() - started,
    }
    out = args.out or (C.RESULTS / f"gpu_{slug(dev.name)}.json")
    C.write_json(out, payload)
    _print_table(payload, out)
    return 0


def summarize(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The headline figures of each phase that ran (None for a phase not run or skipped)."""

    def get(phase: str, key: str) -> Any:
        return results.get(phase, {}).get(key)

    gen, vllm = get("gen", "tokens_per_s"), get("vllm", "tokens_per_s")
    same_tokens = get("gen", "ignore_eos") and get("vllm", "ignore_eos")  # both sampled B x G tokens a call
    return {
        "sft_tokens_per_s": get("sft", "tokens_per_s"),
        "sft_mfu": get("sft", "mfu"),
        "rm_tokens_per_s": get("rm", "tokens_per_s"),
        "rm_mfu": get("rm", "mfu"),
        "generation_tokens_per_s": gen,
        "vllm_tokens_per_s": vllm,
        "vllm_vs_gen_tokens_per_s": vllm / gen if gen and vllm and same_tokens else None,
        "vllm_start_seconds": get("vllm", "start_seconds"),
        "vllm_weight_sync_seconds": get("vllm", "weight_sync_seconds_median"),
        "ppo_engine": get("ppo", "engine"),
        "ppo_generation_share": get("ppo", "generation_share"),
        "ppo_weight_sync_share": get("ppo", "weight_sync_share"),
        "ppo_dp_processes": get("ppo-dp", "processes"),
        "ppo_dp_steps_per_s_1": get("ppo-dp", "steps_per_s_1"),
        "ppo_dp_steps_per_s_n": get("ppo-dp", "steps_per_s_n"),
        "ppo_dp_scaling_efficiency": get("ppo-dp", "scaling_efficiency"),
        "skipped": {phase: r["skipped"] for phase, r in results.items() if "skipped" in r},
        "peak_memory_gib": max((r["peak_memory_gib"] for r in results.values() if "peak_memory_gib" in r), default=None),
    }


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _print_table(payload: dict[str, Any], out: Path) -> None:
    dev, model = payload["device"], payload["model"]
    print(f"{dev['name']} | {model['source']} ({model['parameters'] / 1e6:.0f}M params, {model['precision']}, "
          f"{model['attn_implementation']}) | peak {_fmt(dev['peak_tflops'], 'g')} TFLOP/s")
    print("| phase | tokens/s | MFU | achieved TFLOP/s | step s (median) | peak mem GiB |")
    print("|---|---|---|---|---|---|")
    for phase in ("sft", "rm"):
        if phase in payload:
            r = payload[phase]
            print(f"| {phase} | {r['tokens_per_s']:,.0f} | {_fmt(r['mfu'], '.1%')} | {r['achieved_tflops']:.2f} | "
                  f"{r['step_seconds_median']:.3f} | {r['peak_memory_gib']:.2f} |")
    if "gen" in payload:
        r = payload["gen"]
        print(f"| gen (rollout) | {r['tokens_per_s']:,.0f} | - | - | {r['seconds_per_call_median']:.3f} per call | "
              f"{r['peak_memory_gib']:.2f} |")
    for phase, r in payload.items():
        if phase in PHASES and "skipped" in r:
            print(f"| {phase} | skipped: {r['skipped']} | - | - | - | - |")
    if "skipped" not in payload.get("vllm", {"skipped": True}):
        r = payload["vllm"]
        print(f"| vllm (rollout) | {r['tokens_per_s']:,.0f} | - | - | {r['seconds_per_call_median']:.3f} per call; "
              f"start {r['start_seconds']:.1f} s; weight sync {r['weight_sync_seconds_median']:.2f} s | "
              f"{r['peak_memory_gib']:.2f} (this process) |")
    if "skipped" not in payload.get("ppo", {"skipped": True}):
        r = payload["ppo"]
        sync = f", weight sync {r['weight_sync_share']:.1%}" if r["engine"] == "vllm" else ""
        print(f"| ppo step ({r['engine']}) | generation share {r['generation_share']:.1%}{sync} | - | - | "
              f"{r['step_seconds_median']:.3f} | {r['peak_memory_gib']:.2f} |")
    if "skipped" not in payload.get("ppo-dp", {"skipped": True}):
        r = payload["ppo-dp"]
        print(f"| ppo-dp ({r['engine']}, {r['backend']}) | steps/s {r['steps_per_s_1']:.3f} (1 process) -> "
              f"{r['steps_per_s_n']:.3f} ({r['processes']}); scaling efficiency {r['scaling_efficiency']:.1%} | - | - | "
              f"{r['n_processes']['step_seconds_median']:.3f} | {r['peak_memory_gib']:.2f} (rank 0) |")
    print(f"-> {out}")


if __name__ == "__main__":
    sys.exit(main())
