"""PPO stage config."""

from __future__ import annotations

from pydantic import Field

from rlhf_core.config import StrictModel
from rlhf_core.train_config import OptimConfig


class PPOConfig(StrictModel):
    """PPO against the reward model with a KL penalty to the frozen SFT model."""

    enabled: bool = Field(True, description="Run this stage.")
    optim: OptimConfig = Field(default_factory=lambda: OptimConfig(learning_rate=1e-6, max_steps=20))
    kl_coef: float = Field(0.05, ge=0, description="Initial KL penalty coefficient (beta).")
    max_new_tokens: int = Field(48, ge=1, description="Tokens sampled per response.")
