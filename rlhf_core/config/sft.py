"""SFT stage config."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from rlhf_core.config.base import StrictModel
from rlhf_core.config.optim import OptimConfig, PromptFormat

# This stage's optimizer defaults; a partial `optim:` section in YAML keeps the ones it does not set.
_SFT_OPTIM_DEFAULTS: dict[str, Any] = {"learning_rate": 2e-5, "max_steps": 50}


class SFTConfig(StrictModel):
    """Supervised fine-tuning on the scrubbed demonstrations (loss on response tokens only)."""

    enabled: bool = Field(True, description="Run this stage.")
    optim: OptimConfig = Field(
        default_factory=lambda: OptimConfig(**_SFT_OPTIM_DEFAULTS),
        description="Optimizer, schedule, batching, checkpointing and LoRA settings.",
    )
    prompt_format: PromptFormat = Field(
        "auto",
        description=(
            "How prompt/response rows become text: 'chat' (the tokenizer's chat template, user + "
            "assistant turn), 'plain' (prompt + response + EOS) or 'auto' (chat when the tokenizer "
            "has a template). Rows with 'messages' always use the chat template; a prompt_messages "
            "conversation is rendered as its turns (plain: 'User: ...\\n\\nAssistant: ...'). Must match "
            "the reward model's and PPO's format."
        ),
    )
    eval_batch_size: int = Field(16, ge=1, description="Sequences per forward pass when computing the eval loss.")

    @field_validator("optim", mode="before")
    @classmethod
    def _stage_optim_defaults(cls, value: Any) -> Any:
        return {**_SFT_OPTIM_DEFAULTS, **value} if isinstance(value, dict) else value
