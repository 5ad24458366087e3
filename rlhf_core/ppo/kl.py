"""Recipe step 3: KL-penalised rewards, the KL coefficient controllers, and reference log-probs.

Per-token KL estimators for samples ``x ~ p`` (the policy), ``log r = log q - log p`` with
``q`` the frozen reference (Schulman, "Approximating KL divergence", 2020):

* ``k1 = -log r = log p - log q``          unbiased, high variance, can be negative;
* ``k2 = (log r)^2 / 2``                    biased, low variance, >= 0;
* ``k3 = (r - 1) - log r``                  unbiased, low variance, >= 0 (since log r <= r - 1).

Shapes: ``B`` responses, ``T`` response tokens.
"""

from __future__ import annotations

import contextlib
from typing import Any, Literal

import torch

from rlhf_core.errors import ConfigError

KLEstimator = Literal["k1", "k2", "k3"]


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: KLEstimator = "k1") -> torch.Tensor:
    """Per-token KL(p || q) estimate from log p (policy) and log q (reference): (B, T), (B, T) -> (B, T)."""
    log_ratio = ref_logprobs - logprobs  # log r = log q - log p, (B, T)
    if estimator == "k1":
        return -log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio.pow(2)
    if estimator == "k3":
        return torch.expm1(log_ratio) - log_ratio  # expm1: accurate when r is close to 1
    raise ValueError(f"unknown KL estimator '{estimator}' (use k1, k2 or k3)")


def last_valid_index(mask: torch.Tensor) -> torch.Tensor:
    """(B, T) mask -> (B,) index of the last True position; ValueError if a row has none."""
    mask = mask.bool()
    if not bool(mask.any(-1).all()):
        raise ValueError("a response has no valid token (empty mask row)")
    T = mask.shape[-1]
    return (T - 1) - mask.flip(-1).int().argmax(-1)


def kl_penalized_rewards(
    score: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
    estimator: KLEstimator = "k1",
) -> torch.Tensor:
    """Per-token rewards: ``-kl_coef * kl_t`` everywhere, plus the score at the LAST valid token.

    score: (B,); logprobs, ref_logprobs, mask: (B, T) -> rewards (B, T), 0 on masked positions
    (Ziegler et al. 2019, eq. 2: R(x, y) = r(x, y) - beta * log(pi(y|x) / rho(y|x))).
    """
    mask = mask.bool()
    kl = kl_estimate(logprobs, ref_logprobs, estimator)  # (B, T)
    rewards = torch.where(mask, -kl_coef * kl, torch.zeros((), dtype=kl.dtype, device=kl.device))  # (B, T)
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    last = last_valid_index(mask)  # (B,)
    rewards[rows, last] = rewards[rows, last] + score.to(rewards.dtype)
    return rewards


# ----------------------------------------------------------------------------- controllers
class FixedKLController:
    """A constant KL coefficient beta."""

    def __init__(self, kl_coef: float) -> None:
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """Ziegler et al. 2019 (sec. 2.2): steer the observed KL towards ``target``.

    ``e = clip(KL / target - 1, -0.2, 0.2)``; ``beta <- beta * (1 + e * n_steps / horizon)``,
    where ``n_steps`` is the number of samples (responses) the KL was measured on.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: int) -> None:
        if target <= 0 or horizon <= 0:
            raise ValueError(f"AdaptiveKLController: target ({target}) and horizon ({horizon}) must be > 0")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = int(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        proportional_error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + proportional_error * n_steps / self.horizon

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])


KLController = FixedKLController | AdaptiveKLController


# ----------------------------------------------------------------------------- reference
def is_peft_model(model: torch.nn.Module) -> bool:
    return callable(getattr(model, "disable_adapter", None)) and callable(getattr(model, "get_base_model", None))


@contextlib.contextmanager
def reference_context(policy: torch.nn.Module, ref_model: torch.nn.Module | None):
    """Yields the module that computes reference log-probs.

    ``ref_model`` given: that (frozen) model. Otherwise the policy must be a peft model, and
    the reference is the policy with its adapters disabled: the base weights, no second copy
    in memory.
    """
    if ref_model is not None:
        yield ref_model
    elif is_peft_model(policy):
        with policy.disable_adapter():
            yield policy
    else:
        raise ConfigError(
            "no reference model: pass ref_model (the frozen SFT model) or train the policy with LoRA "
            "(optim.lora.enabled=true) so the reference is the policy with adapters disabled"
        )


@torch.no_grad()
def reference_logprobs(
    policy: torch.nn.Module,
    ref_model: torch.nn.Module | None,
    query_response_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_start: int,
    temperature: float,
) -> torch.Tensor:
    """log q(response token) under the reference -> (B, R); see :func:`reference_context`."""
    from rlhf_core.ppo.logprobs import policy_logprobs

    with reference_context(policy, ref_model) as ref:
        return policy_logprobs(ref, query_response_ids, attention_mask, response_start, temperature)


def check_reference_matches(policy: torch.nn.Module, ref_model: torch.nn.Module) -> None:
    """ConfigError unless ``ref_model`` has the policy's architecture (same parameter names and shapes).

    A reference that is not the policy's base (another model, another vocabulary) makes every
    KL figure meaningless; this catches the structural mismatch. (Whether it holds the same
    *weights* shows at the first step: the KL of an untrained policy to its base is ~0.)
    """
    inner = policy.get_base_model() if is_peft_model(policy) else policy
    mine = {n.replace(".base_layer", ""): p.shape for n, p in inner.named_parameters() if "lora_" not in n}
    theirs = {n: p.shape for n, p in ref_model.named_parameters()}
    if mine != theirs:
        diff = sorted(set(mine.items()) ^ set(theirs.items()), key=str)[:2]
        raise ConfigError(
            f"ref_model does not have the policy's architecture ({len(theirs)} vs {len(mine)} parameters; "
            f"first differences: {diff}): the reference must be the policy's starting (SFT) model"
        )
