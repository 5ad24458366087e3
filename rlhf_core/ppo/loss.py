"""Recipe step 5: the PPO losses (Schulman et al. 2017), entropy, PPO-ptx, explained variance.

Free functions returning ``(loss, stats)``; ``B`` responses, ``T`` response tokens, ``V``
vocabulary. Means are token-means over the mask (``masked_mean``): a long response weighs
more than a short one, as in TRL's PPO and OpenRLHF.
"""

from __future__ import annotations

import torch

from rlhf_core.losses import masked_mean, masked_sum, masked_var, sft_loss


def ppo_policy_loss(
    new_logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_range: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped surrogate ``mean(max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps)))``.

    new_logprobs (with grad), old_logprobs, advantages, mask: (B, T). Stats:
    ``ppo/policy_loss``; ``ppo/clipfrac`` (share of tokens where the clipped term wins);
    ``ppo/approx_kl`` (k3 estimate of KL(old || new): ``mean((ratio - 1) - log ratio)``);
    ``ppo/ratio`` (mean ratio), ``ppo/ratio_max``.
    """
    mask = mask.bool()
    log_ratio = new_logprobs - old_logprobs  # (B, T)
    ratio = torch.exp(log_ratio)  # (B, T)
    unclipped = -advantages * ratio  # (B, T)
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)  # (B, T)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        lr_ = log_ratio.detach()
        r = ratio.detach()
        stats = {
            "ppo/policy_loss": float(loss.detach()),
            "ppo/clipfrac": float(masked_mean((clipped.detach() > unclipped.detach()).to(r.dtype), mask)),
            "ppo/approx_kl": float(masked_mean(torch.expm1(lr_) - lr_, mask)),
            "ppo/ratio": float(masked_mean(r, mask)),
            "ppo/ratio_max": float(torch.where(mask, r, torch.zeros_like(r)).max()),
        }
    return loss, stats


def ppo_value_loss(
    new_values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_range_value: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped value loss ``0.5 * mean(max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2))``.

    All (B, T). Stats: ``ppo/value_loss``, ``ppo/value_clipfrac``.
    """
    mask = mask.bool()
    clipped_values = old_values + torch.clamp(new_values - old_values, -clip_range_value, clip_range_value)  # (B, T)
    loss_unclipped = (new_values - returns).pow(2)  # (B, T)
    loss_clipped = (clipped_values - returns).pow(2)  # (B, T)
    loss = 0.5 * masked_mean(torch.maximum(loss_unclipped, loss_clipped), mask)
    stats = {
        "ppo/value_loss": float(loss.detach()),
        "ppo/value_clipfrac": float(masked_mean((loss_clipped.detach() > loss_unclipped.detach()).to(loss_clipped.dtype), mask)),
    }
    return loss, stats


def entropy_from_logits(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token entropy of softmax(logits): (B, T, V), (B, T) -> (B, T), 0 where masked.

    ``H = logsumexp(l) - sum(softmax(l) * l)``, one batch row at a time so the temporaries are
    (T, V) rather than (B, T, V). Differentiable (for an entropy bonus).
    """
    mask = mask.bool()
    rows = []
    for row in logits:  # (T, V)
        row = row.float() if row.dtype in (torch.float16, torch.bfloat16) else row
        probs = torch.softmax(row, dim=-1)
        rows.append(torch.logsumexp(row, dim=-1) - (probs * row).sum(-1))  # (T,)
    entropy = torch.stack(rows)  # (B, T)
    return torch.where(mask, entropy, torch.zeros((), dtype=entropy.dtype, device=entropy.device))


def ptx_loss(logits: torch.Tensor, labels: torch.Tensor, *, coef: float) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO-ptx (Ouyang et al. 2022, eq. 2): ``coef`` times the SFT loss on demonstration batches.

    logits: (B, T, V); labels: (B, T) with -100 where no loss is taken. Stats: ``ppo/ptx_loss`` (unscaled).
    """
    loss, stats = sft_loss(logits, labels)
    return coef * loss, {"ppo/ptx_loss": stats["sft/loss"]}


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """``1 - Var(returns - values) / Var(returns)`` over the mask; 1 = perfect critic, <= 0 = useless.

    NaN when the returns are constant (undefined).
    """
    mask = mask.bool()
    var_returns = masked_var(returns.double(), mask, unbiased=False)
    var_residual = masked_var((returns - values).double(), mask, unbiased=False)
    return float(1.0 - var_residual / var_returns) if float(var_returns) > 0 else float("nan")


def token_sum(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-row sum over valid tokens: (B, T) -> (B,) (e.g. sequence KL)."""
    return masked_sum(values, mask, dim=-1)
