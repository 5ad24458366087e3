"""Which base model every stage starts from, and how it is loaded."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from rlhf_core.config.base import StrictModel

DEFAULT_BASE_MODEL = "smollm2-135m-instruct"


class TinyModelConfig(StrictModel):
    """A randomly initialised Llama-style model for tests and smoke runs."""

    num_layers: int = Field(2, ge=1, description="Transformer blocks.")
    hidden_size: int = Field(64, ge=8, description="Model width.")
    num_heads: int = Field(4, ge=1, description="Attention heads (must divide hidden_size).")
    intermediate_size: int = Field(128, ge=8, description="MLP width.")
    max_position_embeddings: int = Field(512, ge=16, description="Context length.")
    seed: int = Field(0, description="Seed of the random initialisation.")
    tokenizer: str = Field(
        DEFAULT_BASE_MODEL,
        description="Where the tokenizer comes from (any model source, see ModelConfig.base).",
    )


class ModelConfig(StrictModel):
    """Which base model every stage starts from, and how it is loaded.

    A private or gated hub model needs an access token: it comes from the environment
    (``HF_TOKEN``, or ``hf auth login``), never from this config, which is logged and sent
    to Prefect as a parameter (see ``rlhf_core.redact``).
    """

    base: str = Field(
        DEFAULT_BASE_MODEL,
        description=(
            f"'{DEFAULT_BASE_MODEL}' (the default, shipped on PyPI as a GGUF file), 'tiny' "
            "(random model, see `tiny`), a hub id ('org/name'), a local HF directory, "
            "or a path to a .gguf file."
        ),
    )
    gguf_file: str | None = Field(
        None, description="GGUF file name inside `base` when `base` is a directory or hub repo."
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    trust_remote_code: bool = Field(
        False,
        description=(
            "Per-model opt-in to run the Python code a hub repo ships with its weights (custom architectures). "
            "Off by default: that code runs with your permissions; turn it on only for a source you trust."
        ),
    )
    device: str = Field("auto", description="'auto' (cuda if present, else cpu), 'cpu', 'cuda', 'cuda:1', 'mps'.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="'auto' = bfloat16 on CUDA, float32 otherwise."
    )
    cache_dir: Path | None = Field(
        None, description="Where dequantized/converted models are cached (default: <workspace>/models)."
    )
    tiny: TinyModelConfig = Field(default_factory=TinyModelConfig)
