"""Rollout throughput of the two engines (rlhf_core.rollout) at the demo preset's PPO shapes.

    PYTHONPATH=$PWD .venv/bin/python bench/rollout_engines.py [--batches 3] [--out bench/results/rollout_engines.json]

The default model (SmolLM2-135M-Instruct, fp32, from the model cache) with the demo's LoRA
(r=16 on q/k/v/o; B perturbed so the merge matters), 16 chat-rendered RL prompts of the demo
data, 48 new tokens at temperature 0.7 (the demo's ``ppo`` section). Reported separately:

* ``hf``: :class:`~rlhf_core.rollout.hf_engine.HFEngine` as the demo's PPO runs it (log-probs and
  the shared value head's hidden states read off the loop), seconds and response tokens/s per batch;
* ``vllm``: engine start (weights written + process + first token), then the same batches with
  per-row seeds, then ``load_weights`` (LoRA merged into a copy, safetensors written, reloaded in
  place) timed ``--syncs`` times: what one PPO step adds per update; and per batch the largest
  |vLLM - trainer| log-prob of a response token (what PPO logs as ``ppo/logprob_mismatch``).

Response tokens = tokens up to and including each row's first EOS (what PPO trains on).
Requires the vLLM venv (`make vllm`). On a shared machine the figures move with its load (the
load average is recorded with them).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
PROMPTS, NEW_TOKENS, TEMPERATURE = 16, 48, 0.7


def load_policy():
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlhf_core.generation import eos_token_ids

    model_dir = next((ROOT / ".rlhf" / "models").glob("smollm2-135m-instruct-*"))
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    lora = LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    policy = get_peft_model(model, lora)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 1e-3)
    rows = [json.loads(line) for line in (ROOT / "data" / "demo" / "rl_prompts.jsonl").read_text().splitlines()[:PROMPTS]]
    texts = [tok.apply_chat_template([{"role": "user", "content": r["prompt"]}], add_generation_prompt=True, tokenize=False)
             for r in rows]
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    eos = eos_token_ids(tok, model)
    return policy, ids, eos, tok.pad_token_id if tok.pad_token_id is not None else eos[0]


def timed_batches(engine, ids, eos, pad, batches: int, seeded: bool, policy=None) -> list[dict]:
    """``policy`` given: also the largest |engine - trainer| log-prob of each batch's response tokens."""
    from rlhf_core.ppo.logprobs import policy_logprobs

    out = []
    for b in range(batches):
        torch.manual_seed(b)
        seeds = [b * PROMPTS + i for i in range(PROMPTS)] if seeded else None
        t0 = time.perf_counter()
        ro = engine.generate(ids, seeds=seeds, max_new_tokens=NEW_TOKENS, eos_id=eos, pad_id=pad,
                             temperature=TEMPERATURE, top_k=0, top_p=1.0)
        seconds = time.perf_counter() - t0
        tokens = int(ro.response_mask.sum())
        out.append({"seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds})
        if policy is not None:
            with torch.no_grad():
                lp = policy_logprobs(policy, ro.query_response_ids, ro.attention_mask, ro.response_start, TEMPERATURE)
            out[-1]["max_logprob_gap"] = float((ro.logprobs - lp).abs()[ro.response_mask].max())
        print(f"  {type(engine).__name__} batch {b}: {tokens} tokens in {seconds:.1f} s", flush=True)
    return out


def summary(batches: list[dict]) -> dict:
    return {"median_tokens_per_s": statistics.median(b["tokens_per_s"] for b in batches),
            "median_seconds": statistics.median(b["seconds"] for b in batches), "batches": batches}


def main() -> None:
    from rlhf_core.config.ppo import RolloutConfig
    from rlhf_core.rollout.hf_engine import HFEngine
    from rlhf_core.rollout.vllm_engine import VLLMEngine

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--syncs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="torch threads of the trainer side; the vLLM engine gets as many (default: torch's)")
    parser.add_argument("--vllm-python", default=str(ROOT / ".venv-vllm" / "bin" / "python"))
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "rollout_engines.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    policy, ids, eos, pad = load_policy()
    result = {"shapes": {"prompts": PROMPTS, "max_new_tokens": NEW_TOKENS, "temperature": TEMPERATURE,
                         "model": "SmolLM2-135M-Instruct fp32 + LoRA r16 q/k/v/o"},
              "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                          "load_avg_start": os.getloadavg(), "python": platform.python_version()}}
    hf = HFEngine(policy, score_tokens=True, keep_hidden=True)
    result["hf"] = summary(timed_batches(hf, ids, eos, pad, args.batches, seeded=False))
    print("hf  ", json.dumps({k: v for k, v in result["hf"].items() if k != "batches"}), flush=True)
    t0 = time.perf_counter()
    engine = VLLMEngine(policy, RolloutConfig(engine="vllm", vllm_python=args.vllm_python, kv_cache_gib=2,
                                              max_model_len=512))
    try:
        start = time.perf_counter() - t0
        result["vllm"] = {"start_seconds": start, **summary(timed_batches(engine, ids, eos, pad, args.batches, seeded=True,
                                                                                   policy=policy))}
        result["vllm"]["weight_sync_seconds"] = [engine.load_weights(policy) for _ in range(args.syncs)]
    finally:
        engine.close()
    print("vllm", json.dumps({k: v for k, v in result["vllm"].items() if k != "batches"}), flush=True)
    result["machine"]["load_avg_end"] = os.getloadavg()
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
