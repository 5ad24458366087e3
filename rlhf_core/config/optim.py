"""Optimisation settings shared by every training stage (SFT, reward, PPO, DPO)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from rlhf_core.config.base import StrictModel

# How a (prompt, response) pair becomes text. "chat" renders it through the tokenizer's chat
# template (user turn + assistant turn), which is what an instruction-tuned base model and the
# PPO rollouts see; "plain" is prompt tokens + response tokens + EOS; "auto" = chat when the
# tokenizer has a template. SFT, the reward model and PPO must use the same format.
PromptFormat = Literal["auto", "chat", "plain"]


class LoraConfig(StrictModel):
    """Low-rank adapters via peft; off by default (full fine-tuning)."""

    enabled: bool = Field(False, description="Train LoRA adapters instead of all weights.")
    r: int = Field(8, ge=1, description="Adapter rank.")
    alpha: int = Field(16, ge=1, description="Adapter scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the adapter input.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "v_proj"],
        min_length=1,
        description="Names of the Linear modules that get adapters (peft `target_modules`).",
    )
    top_layers: int | None = Field(
        None,
        ge=1,
        description=(
            "Put adapters in the top N transformer blocks only (peft `layers_to_transform`); "
            "None = every block. The backward pass then stops below them, so a step is cheaper."
        ),
    )


class OptimConfig(StrictModel):
    """AdamW with linear warmup then cosine decay, gradient accumulation and clipping."""

    learning_rate: float = Field(1e-5, gt=0, description="Peak learning rate.")
    min_lr_ratio: float = Field(
        0.0, ge=0.0, le=1.0, description="Cosine decay floor as a fraction of the peak learning rate."
    )
    weight_decay: float = Field(
        0.0, ge=0, description="AdamW decoupled weight decay (applied to matrices only, not biases/norms)."
    )
    adam_beta1: float = Field(0.9, ge=0.0, lt=1.0, description="AdamW beta1.")
    adam_beta2: float = Field(0.999, ge=0.0, lt=1.0, description="AdamW beta2.")
    adam_eps: float = Field(1e-8, gt=0, description="AdamW epsilon.")
    warmup_steps: int = Field(0, ge=0, description="Linear warmup length in optimizer steps.")
    max_steps: int = Field(100, ge=1, description="Optimizer steps (after accumulation).")
    micro_batch_size: int = Field(
        8, ge=1,
        description="Examples per forward/backward pass: sequences (SFT), preference pairs (reward, DPO) or "
        "responses (PPO). An optimizer step takes micro_batch_size * grad_accum_steps of them.",
    )
    grad_accum_steps: int = Field(
        1,
        ge=1,
        description=(
            "Micro-batches per optimizer step. The loss is normalised by the step's total target "
            "tokens (SFT) or pairs (RM), so k micro-batches equal one k-times-larger batch."
        ),
    )
    max_grad_norm: float = Field(1.0, gt=0, description="Global gradient-norm clip.")
    max_length: int = Field(
        256,
        ge=8,
        description=(
            "Tokens per sequence (prompt + response, chat-template tokens included). A longer conversation "
            "first loses whole earliest turns (a leading system message and the final user turn kept); "
            "rows still longer are an error unless truncate_prompt is on."
        ),
    )
    truncate_prompt: bool = Field(
        False,
        description=(
            "Cut over-long rows from the left (oldest prompt/context tokens) instead of failing; "
            "the (final) response is never cut, so a response longer than max_length still fails."
        ),
    )
    length_bucket_window: int = Field(
        32,
        ge=1,
        description=(
            "Optimizer-step batches per shuffled window whose rows are sorted by length before "
            "batching: larger = less padding, less randomness in batch composition."
        ),
    )
    checkpoint_every: int = Field(
        0, ge=0, description="Save a resumable checkpoint every N steps (0 = only at the end)."
    )
    keep_checkpoints: int = Field(2, ge=1, description="Most recent checkpoints kept on disk.")
    log_every: int = Field(1, ge=1, description="Send training metrics to the tracker every N steps.")
    eval_every: int = Field(
        0, ge=0, description="Evaluate on the eval set every N steps (0 = only at the end; needs eval data)."
    )
    mixed_precision: Literal["auto", "no", "bf16"] = Field(
        "auto",
        description=(
            "'auto' = bfloat16 autocast on CUDA when the weights are fp32 (fp32 master weights: "
            "small updates are not rounded away), none on CPU; 'bf16' forces autocast; 'no' disables it."
        ),
    )
    lora: LoraConfig = Field(default_factory=LoraConfig, description="Optional LoRA adapters (peft).")

    @model_validator(mode="after")
    def _warmup_fits(self) -> OptimConfig:
        if self.warmup_steps > self.max_steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) exceeds max_steps ({self.max_steps})")
        return self
