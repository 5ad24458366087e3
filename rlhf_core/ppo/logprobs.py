"""Log-probabilities (and hidden states) of sampled response tokens under a policy: one forward pass.

Shapes: ``B`` rows, ``P`` prompt tokens (left-padded), ``R`` response tokens, ``V`` vocabulary.

Log-probabilities for PPO come from one of two places (``PPOConfig.rollout_logprobs``):

* ``recompute``: one full forward pass over prompt + response after sampling
  (:func:`policy_forward`; TRL, InstructGPT). The PPO ratio is then exactly 1 on the first minibatch.
* ``sampler``: read off the logits the sampling loop computed anyway
  (:func:`rlhf_core.sampling.sample` with ``score_tokens=True``), and, for a value head sharing the
  policy's backbone, the values off its final hidden states (``keep_hidden=True``). This
  skips a whole forward pass of the policy per step. The incremental KV-cache pass rounds
  differently from a full pass: in fp32 the two differ by float rounding only (figures in
  bench/README.md; the trainer logs the largest difference it sees as
  ``ppo/logprob_mismatch``). bf16 keeps ~3 significant digits, so there the two passes can
  differ by far more, which is why ``auto`` recomputes in half precision.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhf_core.losses import gather_logprobs
from rlhf_core.sampling import position_ids_from_mask


@dataclass
class PolicyOutput:
    logprobs: torch.Tensor  # (B, R) log pi(response token t | prefix), logits / temperature
    logits: torch.Tensor | None  # (B, R, V) tempered logits at the response positions (when kept)
    hidden: torch.Tensor | None  # (B, R, H) last hidden state at the positions that emit response tokens


def policy_forward(
    model: torch.nn.Module,
    query_response_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_start: int,
    temperature: float,
    *,
    keep_logits: bool = False,
    output_hidden: bool = False,
) -> PolicyOutput:
    """One forward pass over prompt+response; everything PPO needs at the response positions.

    query_response_ids, attention_mask: (B, P+R); ``response_start`` = P. The logits at
    position ``t`` predict token ``t+1``, so response token ``i`` is scored by the logits at
    ``P-1+i``: only those R positions go through the LM head (``logits_to_keep``). Logits are
    divided by ``temperature`` (the distribution the tokens were sampled from).
    ``output_hidden`` returns the final hidden state at the same R positions (for a value
    head sharing the policy's backbone).
    """
    if response_start < 1 or response_start >= query_response_ids.shape[1]:
        raise ValueError(f"policy_forward: response_start {response_start} outside (0, {query_response_ids.shape[1]})")
    R = query_response_ids.shape[1] - response_start
    out = model(
        input_ids=query_response_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        logits_to_keep=R + 1,
        output_hidden_states=output_hidden,
        use_cache=False,
    )
    logits = out.logits[:, :-1, :]  # (B, R, V)
    if temperature != 1.0:  # skip a (B, R, V) copy when it changes nothing
        logits = logits / temperature
    labels = query_response_ids[:, response_start:]  # (B, R)
    logprobs = gather_logprobs(logits, labels)  # (B, R)
    hidden = out.hidden_states[-1][:, response_start - 1 : -1, :] if output_hidden else None  # (B, R, H)
    return PolicyOutput(logprobs=logprobs, logits=logits if keep_logits else None, hidden=hidden)


def policy_logprobs(
    model: torch.nn.Module,
    query_response_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_start: int,
    temperature: float,
) -> torch.Tensor:
    """Per-token log-probs of the response tokens under ``model`` in ONE forward pass -> (B, R)."""
    return policy_forward(model, query_response_ids, attention_mask, response_start, temperature).logprobs
