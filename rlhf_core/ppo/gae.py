"""Recipe step 4b: generalised advantage estimation (Schulman et al. 2016) over response tokens.

``values[t]`` estimates the return from the state *before* response token ``t`` is emitted,
``rewards[t]`` is what emitting it earned (KL penalty, plus the score on the last token).
A masked position ends the episode: the last valid token bootstraps from a next value of 0.
"""

from __future__ import annotations

import torch


def compute_gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, *, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """rewards, values, mask: (B, T) -> (advantages (B, T), returns (B, T)), both 0 where masked.

    ``delta_t = r_t + gamma * V_{t+1} - V_t``; ``A_t = delta_t + gamma * lam * A_{t+1}``;
    ``returns = A + V`` (the value-function targets, before any advantage whitening).
    Values and rewards at masked positions are never read (padding may hold garbage or NaN).
    """
    if not (rewards.shape == values.shape == mask.shape) or rewards.dim() != 2:
        raise ValueError(
            f"compute_gae: rewards {tuple(rewards.shape)}, values {tuple(values.shape)}, mask {tuple(mask.shape)} must all be (B, T)"
        )
    mask = mask.bool()
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    r = torch.where(mask, rewards.to(values.dtype), zero)  # (B, T)
    v = torch.where(mask, values, zero)  # (B, T)
    next_value = torch.zeros_like(v[:, 0])  # (B,)
    next_adv = torch.zeros_like(v[:, 0])  # (B,)
    advantages = torch.zeros_like(v)  # (B, T)
    for t in reversed(range(v.shape[1])):
        delta = r[:, t] + gamma * next_value - v[:, t]  # (B,)
        adv = torch.where(mask[:, t], delta + gamma * lam * next_adv, zero)  # (B,)
        advantages[:, t] = adv
        next_adv, next_value = adv, v[:, t]  # both 0 at a masked t: the episode ended there
    returns = torch.where(mask, advantages + v, zero)
    return advantages, returns
