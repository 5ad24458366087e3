"""Evaluation stage config: held-out prompts, sampling settings, baselines and bootstrap."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from rlhf_core.config.base import StrictModel


class EvalConfig(StrictModel):
    """Held-out evaluation: sampling settings, baselines and bootstrap."""

    enabled: bool = Field(True, description="Run the evaluation stage at the end of the pipeline.")
    n_prompts: int | None = Field(
        64, ge=1,
        description="Evaluate at most this many held-out prompts (a seeded subset keeping the harmful share); None = all.",
    )
    best_of_n: list[int] = Field(
        default_factory=lambda: [1, 4, 16],
        description="Best-of-N baselines from the SFT model (N samples, the reward model picks); [] = none.",
    )
    ppo_checkpoints: bool = Field(
        True, description="Also evaluate the kept intermediate PPO checkpoints (points of the gold-vs-sqrt(KL) plot)."
    )
    max_new_tokens: int = Field(48, ge=1, description="Tokens sampled per response (use PPO's).")
    temperature: float = Field(0.7, gt=0, description="Sampling temperature (use PPO's: the KL is measured at it).")
    top_p: float = Field(1.0, gt=0, le=1.0, description="Nucleus sampling mass (1.0 = off, which keeps the KL exact).")
    top_k: int = Field(0, ge=0, description="Sample only from the k most likely tokens (0 = off).")
    batch_size: int = Field(16, ge=1, description="Responses sampled / scored per forward batch.")
    diversity_samples: int = Field(
        4, ge=0,
        description="Output diversity (RLHF narrows what a model says): sample this many responses per prompt from the "
        "SFT model and each final policy, and report distinct-1/2 and the samples' pairwise similarity, policy vs SFT, "
        "with intervals (rlhf_core/diversity.py). 0 = off; otherwise >= 2.",
    )
    diversity_prompts: int | None = Field(
        16, ge=1, description="Measure diversity on the first this many evaluation prompts (None = all of them).",
    )
    engine: Literal["hf", "vllm"] | None = Field(
        None,
        description="Which engine samples the evaluation's responses (SFT, best-of-N, every policy): 'hf' (the "
        "trainer's sampler) or 'vllm' (with ppo.rollout's vLLM settings; no top_k/top_p). None = the PPO stage's, "
        "ppo.rollout.engine.",
    )
    n_boot: int = Field(1000, ge=1, description="Bootstrap resamples per interval.")
    confidence: float = Field(0.95, gt=0, lt=1, description="Confidence level of the bootstrap intervals.")
    seed: int = Field(0, description="Seed of the prompt subset, the sampling and the bootstrap.")
    gold: bool = Field(
        True,
        description="Judge responses with the gold scorer (rlhf_core/gold.py), the demo data's stand-in for human "
        "judgement. false for real data, which has none: no gold figure anywhere (evaluation, the reward model's "
        "agreement, PPO's logs); the evaluation reports reward-model score, KL, refusals, length, finished replies "
        "and the reward model's held-out human agreement beside the shorter-reply baseline, says there is no gold "
        "score, and the registry never promotes the policy on its own (`champion` is moved by hand).",
    )

    @field_validator("diversity_samples")
    @classmethod
    def _two_or_none(cls, value: int) -> int:
        if value == 1:
            raise ValueError("diversity needs 2 or more samples per prompt (0 = off)")
        return value

    @field_validator("best_of_n")
    @classmethod
    def _positive_sorted(cls, value: list[int]) -> list[int]:
        if any(n < 1 for n in value):
            raise ValueError(f"every N must be >= 1, got {value}")
        return sorted(set(value))
