"""DPO stage config."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rlhf_core.config.base import StrictModel
from rlhf_core.config.optim import OptimConfig, PromptFormat


class DPOConfig(StrictModel):
    """DPO / IPO on the preference pairs, starting from (and regularised towards) the SFT model."""

    enabled: bool = Field(False, description="Run this stage (a baseline next to PPO).")
    optim: OptimConfig = Field(
        default_factory=lambda: OptimConfig(learning_rate=5e-7, max_steps=50),
        description="Optimizer, schedule, batching (micro_batch_size = preference pairs), checkpointing and LoRA.",
    )
    beta: float = Field(
        0.1, gt=0, description="Strength of the KL regularisation to the reference (DPO's beta; IPO's tau)."
    )
    loss_type: Literal["sigmoid", "ipo"] = Field(
        "sigmoid", description="'sigmoid' = DPO (Rafailov et al. 2023, eq. 7); 'ipo' = (h - 1/(2 beta))^2 (Azar et al. 2023)."
    )
    label_smoothing: float = Field(
        0.0, ge=0.0, lt=0.5, description="Assumed preference-label noise for the sigmoid loss (conservative DPO); 0 = off."
    )
    ipo_length_normalize: bool = Field(
        True, description="IPO only: use per-token average log-probs (as TRL does), not sums."
    )
    prompt_format: PromptFormat = Field(
        "auto", description="How prompt/response pairs are rendered ('chat', 'plain', 'auto'); must match SFT's."
    )
