"""One training stage on a tiny random model, resumable: the process ``fault_report.py`` kills.

    python -m bench.fault_worker --stage sft|reward|ppo --out DIR --steps N [--seed S]

Calls the real ``train_sft`` / ``train_reward_model`` / ``train_ppo`` with ``resume=True`` and
``checkpoint_every=1`` on a random Llama (1 layer, width 32) with the cached SmolLM2 tokenizer,
built exactly as the tests build theirs (``tests/conftest.py``). SFT trains LoRA adapters with
dropout and the reward model all weights, both with mid-run evaluation; PPO samples from the
policy with an adaptive KL controller. So a resume must restore the RNG, the data position,
the optimizer/scheduler and the KL controller to end where an uninterrupted run ends.

Stdout (flushed, for the parent to time kills): ``ready`` just before training starts,
``step N`` for every optimizer step (through the tracker protocol), ``done`` when training
returned. At the end ``<out>/fault_result.json`` (written atomically) holds sha256 digests of
the final model's state_dict, of the final checkpoint's trainable weights and optimizer state,
and the metric history without wall-clock timings (the only values that legitimately differ).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MODEL_CACHE = Path(os.environ.get("RLHF_TEST_MODEL_CACHE", ROOT / ".rlhf" / "models"))
RESULT = "fault_result.json"
STAGES = ("sft", "reward", "ppo")


def is_timing(key: str) -> bool:
    """Metrics that measure wall-clock time: they differ between any two runs."""
    return key.startswith("time/") or key.endswith(("_seconds", "per_second"))


def digest(obj: Any, h: Any = None) -> str:
    """sha256 over a nested structure of tensors, mappings (sorted keys), sequences and scalars."""
    import torch

    top = h is None
    h = h or hashlib.sha256()
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, Mapping):
        for key in sorted(obj, key=str):
            h.update(f"K{key!r}".encode())
            digest(obj[key], h)
    elif isinstance(obj, (list, tuple)):
        h.update(f"L{len(obj)}".encode())
        for item in obj:
            digest(item, h)
    else:
        h.update(f"V{obj!r}".encode())
    return h.hexdigest() if top else ""


class StepPrinter:
    """A :class:`rlhf_core.tracking.Tracker` that prints ``step N`` per logged step."""

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        if any(not is_timing(k) and not k.split("/", 1)[-1].startswith("eval_") for k in metrics):
            print(f"step {step}", flush=True)

    def log_artifact(self, path: Any) -> None:
        return None

    def log_params(self, params: Mapping[str, Any]) -> None:
        return None


def _sft_rows(n: int) -> list[dict]:
    return [{"id": f"r{i}", "prompt": f"What is {i} plus {i}?", "response": f"It is {2 * i}, of course."} for i in range(n)]


def _pairs(n: int) -> list[dict]:
    return [
        {"id": f"p{i}", "prompt": f"How do I make tea number {i}?",
         "chosen": "Boil water, steep the leaves for three minutes, then enjoy." + " Really." * (i % 3),
         "rejected": "No." if i % 2 else "Figure it out.", "margin": float(i % 3)}
        for i in range(n)
    ]


def train_stage(stage: str, out: Path, steps: int, seed: int = 0) -> dict[str, Any]:
    """Train ``stage`` into ``out`` (resuming from its newest checkpoint); return the result record."""
    import torch

    from rlhf_core.checkpoint import OPTIMIZER, WEIGHTS
    from rlhf_core.config.model import ModelConfig, TinyModelConfig
    from rlhf_core.config.optim import LoraConfig, OptimConfig
    from rlhf_core.models import build_tiny_model, load_tokenizer
    from rlhf_core.reward.model import RewardModel

    tokenizer = load_tokenizer(ModelConfig(base="tiny"), MODEL_CACHE)
    tiny = TinyModelConfig(num_layers=1, hidden_size=32, num_heads=2, intermediate_size=64, max_position_embeddings=256)
    common = {"max_steps": steps, "checkpoint_every": 1, "max_length": 64, "warmup_steps": 2}
    kw = {"output_dir": out, "tracker": StepPrinter(), "resume": True, "seed": seed, "progress": False}
    if stage == "sft":
        from rlhf_core.config.sft import SFTConfig
        from rlhf_core.sft.train import train_sft

        model = build_tiny_model(tiny, tokenizer)
        cfg = SFTConfig(optim=OptimConfig(learning_rate=1e-2, micro_batch_size=2, grad_accum_steps=2, eval_every=3,
                                          lora=LoraConfig(enabled=True, r=4, dropout=0.2), **common))
        rows = _sft_rows(14)
        print("ready", flush=True)
        result = train_sft(cfg, model, tokenizer, rows, eval_rows=rows[:4], **kw)
    elif stage == "reward":
        from rlhf_core.config.reward import RewardConfig
        from rlhf_core.reward.train import train_reward_model

        model = RewardModel.from_model(build_tiny_model(tiny, tokenizer), pad_token_id=tokenizer.pad_token_id)
        cfg = RewardConfig(optim=OptimConfig(learning_rate=5e-3, micro_batch_size=2, grad_accum_steps=2, eval_every=3, **common))
        pairs = _pairs(14)
        print("ready", flush=True)
        result = train_reward_model(cfg, model, tokenizer, pairs, eval_pairs=pairs[:4], **kw)
    elif stage == "ppo":
        from rlhf_core.config.ppo import PPOConfig
        from rlhf_core.gold import gold_score
        from rlhf_core.ppo.trainer import train_ppo

        model = build_tiny_model(tiny, tokenizer)
        reward = RewardModel.from_model(build_tiny_model(tiny.model_copy(update={"seed": 1}), tokenizer),
                                        pad_token_id=tokenizer.pad_token_id, seed=1)
        cfg = PPOConfig(optim=OptimConfig(learning_rate=1e-3, micro_batch_size=2, **common), rollout_batch_size=4,
                        max_new_tokens=6, ppo_epochs=2, prompt_format="plain", temperature=1.0, adaptive_kl=True,
                        kl_target=1.0, kl_horizon=40, max_kl=1e6)
        prompts = [f"Tell me fact number {i}." for i in range(6)]
        print("ready", flush=True)
        result = train_ppo(cfg, model, tokenizer, reward, tokenizer, prompts, gold_fn=gold_score, **kw)
    else:
        raise SystemExit(f"unknown stage {stage!r} (expected one of {', '.join(STAGES)})")
    print("done", flush=True)

    ckpt = Path(result.checkpoint_dir)
    from safetensors.torch import load_file

    record = {
        "stage": stage,
        "steps": result.steps,
        "resumed_from_step": result.resumed_from_step,
        "checkpoint": ckpt.name,
        "model_sha256": digest(model.state_dict()),
        "checkpoint_weights_sha256": digest(load_file(str(ckpt / WEIGHTS))),
        "optimizer_sha256": digest(torch.load(ckpt / OPTIMIZER, weights_only=True)),
        "history": [{k: v for k, v in row.items() if not is_timing(k)} for row in result.history],
        "metrics": {k: v for k, v in result.metrics.items() if not is_timing(k)},
    }
    tmp = out / f".{RESULT}.tmp"
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(out / RESULT)
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", choices=STAGES, required=True)
    parser.add_argument("--out", type=Path, required=True, help="training output dir (checkpoints/, model/, result)")
    parser.add_argument("--steps", type=int, default=8, help="optimizer (PPO) steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (bitwise results need the same)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    train_stage(args.stage, args.out, args.steps, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
