"""Iterated online RLHF (`rlhf iterate`, the `rlhf-iterate` flow): one round's settings."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from rlhf_core.config.base import StrictModel

LABELERS = ("simulated", "file", "label-studio")


class IterateConfig(StrictModel):
    """One round (Bai et al. 2022, sec. 4.5): the champion policy's own replies to fresh RL prompts
    are labelled, the reward model is updated on old + new pairs, PPO goes on from the champion."""

    prompts_per_round: int = Field(
        32, ge=1, description="Fresh RL prompts per round (curated ones no earlier round labelled; in the preference support)."
    )
    replies_per_prompt: int = Field(4, ge=2, description="Replies the champion samples per prompt (K).")
    pairs_per_prompt: int = Field(2, ge=1, description="Comparison tasks drawn per prompt from its distinct replies.")
    labeler: Literal["simulated", "file", "label-studio"] = Field(
        "simulated",
        description=(
            "Who labels: 'simulated' (the demo's annotator panel on the gold score), 'file' (tasks.jsonl out, "
            "labels.jsonl back under label_dir/<batch>/), 'label-studio' (a project in Label Studio; "
            "LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY from the environment)."
        ),
    )
    label_dir: Path | None = Field(None, description="The file labeller's exchange directory (default <workspace>/labels).")
    label_timeout_s: float = Field(
        86400.0, ge=0,
        description="How long a round waits for its batch to be labelled; then it fails, keeping the labels given "
        "(`rlhf iterate --resume RUN` waits again). 0 = look once.",
    )
    poll_interval_s: float = Field(30.0, gt=0, description="Seconds between two looks at the labelling progress.")
    simulated_annotators: int = Field(3, ge=2, description="Annotators of the simulated panel (each labels every task).")
    simulated_agreement: float = Field(
        0.73, gt=0.5, lt=1.0, description="The simulated panel's target pairwise agreement (InstructGPT's ~73%)."
    )
