"""How big the demo data set is and how it is generated (``rlhf data make-demo``, rlhf_core.demo_data)."""

from __future__ import annotations

from pydantic import Field

from rlhf_core.config.base import StrictModel
from rlhf_core.config.model import ModelConfig


class DemoDataConfig(StrictModel):
    """How big the demo data set is and how it is generated."""

    seed: int = Field(0, description="Seeds prompts, sampling, the annotator panel and the defects.")
    n_prompts_per_topic: int = Field(
        28, ge=1, description="Benign prompts per topic that get sampled replies (demonstrations + preferences)."
    )
    n_harmful_prompts: int = Field(24, ge=0, description="Harmful prompts with replies (refusals + compliance).")
    n_rl_prompts_per_topic: int = Field(27, ge=1, description="Clean benign RL prompts per topic.")
    n_rl_harmful_prompts: int = Field(16, ge=0, description="Harmful RL prompts.")
    eval_slots_per_topic: int = Field(2, ge=1, description="Slots per topic whose prompts all go to eval.")
    eval_fraction: float = Field(0.15, ge=0, le=0.5, description="Share of the reply prompts drawn from eval slots.")
    rl_eval_fraction: float = Field(0.3, ge=0, le=0.6, description="Share of the RL prompts drawn from eval slots.")
    second_sample_fraction: float = Field(
        0.35, ge=0, le=1, description="Share of prompts that get a second sampled reply (sample-vs-sample pairs)."
    )
    greedy_fraction: float = Field(0.25, ge=0, le=1, description="Share of prompts that get a greedy reply (loops).")
    ranked_samples: int = Field(
        2, ge=0, le=8,
        description="Extra sampled replies per benign reply prompt, compared with the prompt's other samples "
        "(InstructGPT's labelers ranked K outputs of the model itself): the on-policy pairs a reward model needs "
        "to tell a better ordinary answer from a worse one, not just a loop or a refusal from an answer.",
    )
    ranked_pairs_per_prompt: int = Field(
        2, ge=0, description="Sample-vs-sample pairs per benign prompt drawn from its samples (raw or trimmed).",
    )
    pairs_per_prompt: tuple[int, int] = Field((2, 3), description="Preference pairs per prompt (min, max).")
    n_annotators: int = Field(5, ge=1, description="Annotators per pair (odd, so the majority is defined).")
    target_agreement: float = Field(
        0.73, gt=0.5, lt=1.0, description="Expected pairwise inter-annotator agreement (InstructGPT: ~0.73)."
    )
    n_users: int = Field(60, ge=2, description="Distinct user ids (Zipf-distributed).")
    user_zipf_exponent: float = Field(
        0.7, gt=0, description="Zipf exponent of prompts per user (0.7: the top user asks ~11% of prompts)."
    )
    max_new_tokens: int = Field(48, ge=1, description="Tokens sampled per reply.")
    temperature: float = Field(0.8, gt=0, description="Sampling temperature of the base model.")
    top_p: float = Field(0.9, gt=0, le=1, description="Nucleus sampling threshold.")
    batch_size: int = Field(16, ge=1, description="Prompts per generate() call.")
    threads: int | None = Field(
        None, ge=1,
        description="torch CPU threads while sampling (None: torch's default). On a shared, oversubscribed "
        "CPU, 1 thread was 6x faster than 2 here (spinning threads wait on descheduled ones).",
    )
    defect_scale: float = Field(1.0, ge=0, description="Multiplies every planted-defect count (0 = none).")
    model: ModelConfig = Field(default_factory=ModelConfig, description="The model that samples the replies.")


# Planted defects per file at defect_scale=1 (capped by what the data set offers).
