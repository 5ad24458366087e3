"""The vLLM rollout process: run by the vLLM venv's Python, spoken to in JSON lines on stdin/stdout.

Started by :class:`rlhf_core.rollout.vllm_engine.VLLMEngine` as
``<vllm venv>/bin/python vllm_server.py --model DIR --dtype float32 --max-model-len N``; it
imports only the standard library, torch and vllm (the venv holds neither our package nor its
other dependencies). vLLM's own logs go to stderr; stdout carries only the protocol:

- first line: ``{"ready": true, "seconds": s}`` once the engine has sampled a first token, or
  ``{"error": "..."}`` (then the process exits 1);
- request ``{"op": "generate", "prompts": [[id, ...], ...], "seeds": [int, ...], "max_new_tokens": n,
  "stop_ids": [id, ...], "temperature": t, "top_k": k, "top_p": p}`` -> ``{"tokens": [[id, ...], ...],
  "logprobs": [[float, ...], ...]}``: per prompt the sampled ids (ending with the stop id when one
  was drawn) and each one's log-prob under log-softmax(logits / temperature) (vLLM's
  ``processed_logprobs``; unfiltered only while top_k/top_p are off, which the client enforces);
- request ``{"op": "load_weights", "path": DIR}`` -> ``{"seconds": s}``: reload every weight in
  place from ``DIR``'s safetensors (vLLM's ``reload_weights``);
- request ``{"op": "close"}`` -> ``{"closed": true}``, then exit 0.

A request that fails answers ``{"error": "..."}`` and the process goes on serving.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def reply(out, message: dict) -> None:
    out.write(json.dumps(message) + "\n")
    out.flush()


# On CPU, a whole prompt per scheduler step: vLLM rewinds a seeded request's generator after a partial
# (chunked) prefill with Generator.set_offset, which CPU generators lack ("CPU Generator does not use
# offset"), so chunked prefill is off and a step may hold this many tokens (>= the context length).
CPU_MAX_BATCHED_TOKENS = 16384


def build_llm(args: argparse.Namespace):
    import torch
    from vllm import LLM

    cpu = {} if torch.cuda.is_available() else {
        "enable_chunked_prefill": False, "max_num_batched_tokens": max(args.max_model_len, CPU_MAX_BATCHED_TOKENS),
    }
    return LLM(
        model=args.model, dtype=args.dtype, max_model_len=args.max_model_len, enforce_eager=True,
        skip_tokenizer_init=True,  # prompts and outputs are token ids: no tokenizer, no detokenizing
        generation_config="vllm",  # the model dir's generation_config.json must not change the sampling
        logprobs_mode="processed_logprobs",  # after temperature (and top-k/top-p when set)
        seed=0,
        **({"gpu_memory_utilization": args.gpu_memory_utilization} if args.gpu_memory_utilization else {}),
        **cpu,
    )


def repack_tied_head(model) -> None:
    """Rebuild a tied LM head's CPU kernel from the reloaded input embeddings.

    On CPU vLLM keeps a packed copy of the LM head for its matmul. A tied checkpoint has no
    ``lm_head.weight``, so the in-place reload refills ``embed_tokens`` (the head's weight too)
    but puts the head's old packed copy back ("ParallelLMHead: Failed to load weights"): without
    this the engine would keep sampling through the first weights' output layer
    (tests/test_vllm_engine.py catches it).
    """
    head = getattr(model, "lm_head", None)
    if getattr(getattr(model, "config", None), "tie_word_embeddings", False) and hasattr(head, "quant_method"):
        head.quant_method.process_weights_after_loading(head)


def generate(llm, request: dict) -> dict:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = [
        SamplingParams(
            n=1, seed=seed, max_tokens=request["max_new_tokens"], temperature=request["temperature"],
            top_k=request["top_k"] or -1, top_p=request["top_p"], stop_token_ids=request["stop_ids"],
            logprobs=0, detokenize=False,
        )
        for seed in request["seeds"]
    ]
    prompts = [TokensPrompt(prompt_token_ids=ids) for ids in request["prompts"]]
    outputs = llm.generate(prompts, params, use_tqdm=False)
    tokens, logprobs = [], []
    for out in outputs:
        completion = out.outputs[0]
        ids = list(completion.token_ids)
        tokens.append(ids)
        logprobs.append([float(step[tok].logprob) for tok, step in zip(ids, completion.logprobs, strict=True)])
    return {"tokens": tokens, "logprobs": logprobs}


def serve(llm, requests, out) -> None:
    for line in requests:
        if not line.strip():
            continue
        request = json.loads(line)
        op = request.get("op")
        try:
            if op == "generate":
                reply(out, generate(llm, request))
            elif op == "load_weights":
                t0 = time.perf_counter()
                llm.collective_rpc("reload_weights", kwargs={"weights_path": request["path"]})
                llm.apply_model(repack_tied_head)
                # cached prompt blocks hold keys/values of the old weights
                if not llm.reset_prefix_cache():
                    raise RuntimeError("vLLM refused to reset its prefix cache after the weight reload")
                reply(out, {"seconds": time.perf_counter() - t0})
            elif op == "close":
                reply(out, {"closed": True})
                return
            else:
                reply(out, {"error": f"unknown op {op!r}"})
        except Exception as exc:  # the client names the request; the engine keeps serving
            reply(out, {"error": f"{type(exc).__name__}: {exc}"})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="HF-format model directory (config.json + safetensors)")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--max-model-len", type=int, default=1024)
    parser.add_argument("--gpu-memory-utilization", type=float, default=None, help="CUDA only: vLLM's share of the GPU")
    args = parser.parse_args()
    # The protocol owns the real stdout; everything printed by vLLM (and its libraries) goes to stderr.
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    t0 = time.perf_counter()
    try:
        llm = build_llm(args)
        # One token first: some models load but cannot run (e.g. an attention head size the CPU kernels lack).
        generate(llm, {"prompts": [[0]], "seeds": [0], "max_new_tokens": 1, "stop_ids": [], "temperature": 1.0,
                       "top_k": 0, "top_p": 1.0})
    except Exception as exc:
        reply(out, {"error": f"{type(exc).__name__}: {exc}"})
        return 1
    reply(out, {"ready": True, "seconds": time.perf_counter() - t0})
    serve(llm, sys.stdin, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
