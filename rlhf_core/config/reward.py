"""Reward-model stage config."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from rlhf_core.config.base import StrictModel
from rlhf_core.config.optim import OptimConfig, PromptFormat

# This stage's optimizer defaults; a partial `optim:` section in YAML keeps the ones it does not set.
_REWARD_OPTIM_DEFAULTS: dict[str, Any] = {"learning_rate": 1e-5, "max_steps": 50}


class RewardConfig(StrictModel):
    """Bradley-Terry reward model on preference pairs, initialised from the SFT model."""

    enabled: bool = Field(True, description="Run this stage.")
    init_from: str | None = Field(
        None, min_length=1,
        description="A reward-model stage directory to warm-start from instead of the SFT model (an `rlhf iterate` "
        "round sets it to the champion's reward model).",
    )
    optim: OptimConfig = Field(
        default_factory=lambda: OptimConfig(**_REWARD_OPTIM_DEFAULTS),
        description=(
            "Optimizer, schedule, batching (micro_batch_size counts pairs; prompts with grouping=prompt), "
            "checkpointing and LoRA settings."
        ),
    )
    prompt_format: PromptFormat = Field(
        "auto",
        description="How prompt + response are rendered before scoring (see SFTConfig.prompt_format); must match SFT and PPO.",
    )
    use_margin: bool = Field(
        False,
        description=(
            "Subtract each pair's 'margin' column inside the Bradley-Terry sigmoid (Llama 2); "
            "rows without a margin use 0."
        ),
    )
    center_coef: float = Field(
        0.0,
        ge=0.0,
        description="Weight of the reward-centering penalty mean((r_c + r_r)^2) (Eisenstein et al. 2023); 0 = off.",
    )
    eval_batch_size: int = Field(
        16, ge=1, description="Pairs (prompts with grouping=prompt) per forward pass when evaluating the loss."
    )
    grouping: Literal["pairs", "prompt"] = Field(
        "pairs",
        description=(
            "What one batch element is. 'pairs': one preference row, Bradley-Terry loss. 'prompt': every row of one "
            "prompt (InstructGPT, Ouyang et al. 2022 eq. 1): its K distinct replies are scored in one forward pass "
            "(one row [prompt | reply 1 | ... | reply K] with share_prompt) and the loss is the mean over exactly "
            "its observed pairs, each prompt weighted once; micro_batch_size and eval_batch_size then count "
            "prompts. Not with use_margin."
        ),
    )
    share_prompt: bool = Field(
        True,
        description=(
            "Score each pair as ONE row [prompt | chosen | rejected] with a 4D attention mask (rejected does not "
            "see chosen; its positions restart after the prompt), so the shared prompt is computed once: same "
            "rewards and gradients as two sequences, fewer tokens. Needs a backbone whose attention takes a custom "
            "4D mask (transformers sdpa or eager; checked before training, a ConfigError otherwise); false = "
            "two rows per pair (prompt+chosen, prompt+rejected; one row per reply with grouping=prompt), for "
            "flash/flex attention or models that reject it."
        ),
    )

    @model_validator(mode="after")
    def _grouping_has_no_margin(self) -> RewardConfig:
        if self.grouping == "prompt" and self.use_margin:
            raise ValueError("grouping=prompt does not take use_margin: the K-wise ranking loss has no margin term")
        return self

    @field_validator("optim", mode="before")
    @classmethod
    def _stage_optim_defaults(cls, value: Any) -> Any:
        return {**_REWARD_OPTIM_DEFAULTS, **value} if isinstance(value, dict) else value
