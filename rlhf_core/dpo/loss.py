"""DPO / IPO losses and sequence log-probabilities. ``B`` pairs, ``T`` tokens, ``V`` vocabulary."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from rlhf_core.losses import IGNORE_INDEX, gather_logprobs, masked_sum


def sequence_logprobs(
    logits: torch.Tensor, labels: torch.Tensor, *, average: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed (or mean) log-prob of the completion tokens of each sequence.

    logits: (B, T, V); labels: (B, T) aligned with the input ids, ``IGNORE_INDEX`` on prompt
    and padding (the completion mask). Logits at ``t`` score the label at ``t+1``.
    Returns ``(logps (B,), n_tokens (B,))``.
    """
    shift_logits, shift_labels = logits[:, :-1, :], labels[:, 1:]  # (B, T-1, V), (B, T-1)
    mask = shift_labels != IGNORE_INDEX  # (B, T-1)
    logps = masked_sum(gather_logprobs(shift_logits, shift_labels), mask, dim=-1)  # (B,)
    n = mask.sum(-1)  # (B,)
    if bool((n == 0).any()):
        raise ValueError("sequence_logprobs: a sequence has no completion tokens")
    return (logps / n.to(logps.dtype) if average else logps), n


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float,
    loss_type: Literal["sigmoid", "ipo"] = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """DPO (Rafailov et al. 2023, eq. 7) or IPO (Azar et al. 2023, eq. 17); all inputs (B,).

    ``h = (log pi(y_w) - log pi(y_l)) - (log ref(y_w) - log ref(y_l))``.
    sigmoid: ``-(1 - ls) * log sigmoid(beta h) - ls * log sigmoid(-beta h)`` (ls = label
    smoothing, the conservative-DPO noise model); ipo: ``(h - 1 / (2 beta))^2``. Mean over pairs.
    Stats: ``dpo/loss``, ``dpo/accuracy`` (implicit reward of chosen > rejected),
    ``dpo/margin``, ``dpo/chosen_reward``, ``dpo/rejected_reward`` (implicit rewards
    ``beta * (log pi - log ref)``).
    """
    shapes = {t.shape for t in (policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)}
    if len(shapes) != 1 or policy_chosen_logps.dim() != 1:
        raise ValueError(f"dpo_loss: expected four (B,) tensors, got shapes {sorted(map(tuple, shapes))}")
    h = (policy_chosen_logps - policy_rejected_logps) - (ref_chosen_logps - ref_rejected_logps)  # (B,)
    if loss_type == "sigmoid":
        losses = -(1.0 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    elif loss_type == "ipo":
        losses = (h - 1.0 / (2.0 * beta)) ** 2
    else:
        raise ValueError(f"dpo_loss: unknown loss_type '{loss_type}' (use sigmoid or ipo)")
    loss = losses.mean()
    chosen_reward = beta * (policy_chosen_logps - ref_chosen_logps).detach()  # (B,)
    rejected_reward = beta * (policy_rejected_logps - ref_rejected_logps).detach()  # (B,)
    stats = {
        "dpo/loss": float(loss.detach()),
        "dpo/accuracy": float((chosen_reward > rejected_reward).to(chosen_reward.dtype).mean()),
        "dpo/margin": float((chosen_reward - rejected_reward).mean()),
        "dpo/chosen_reward": float(chosen_reward.mean()),
        "dpo/rejected_reward": float(rejected_reward.mean()),
    }
    return loss, stats
