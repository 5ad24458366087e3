"""Shared fixtures. Models: tiny random ones built from the real SmolLM2 tokenizer.

The tokenizer (and the real default model, for the slow tests) come from the repo's
model cache `.rlhf/models`, which `make test` fills (`rlhf model fetch`) before pytest.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MODEL_CACHE = Path(os.environ.get("RLHF_TEST_MODEL_CACHE", REPO / ".rlhf" / "models"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class CrashAt:
    """A tracker that dies at a given step, as a killed process would (after earlier checkpoints)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def log_metrics(self, metrics, step):
        if step == self.step:
            raise KeyboardInterrupt(f"simulated kill at step {step}")

    def log_artifact(self, path):
        pass

    def log_params(self, params):
        pass


def pytest_configure(config):
    # The suite's models are tiny: on 2 cores one thread is several times faster than torch's
    # default (threads spin against each other on small matmuls). RLHF_TEST_TORCH_THREADS overrides.
    import torch

    torch.set_num_threads(int(os.environ.get("RLHF_TEST_TORCH_THREADS", "1")))


@pytest.fixture(scope="session")
def model_cache() -> Path:
    return MODEL_CACHE


@pytest.fixture(scope="session")
def tiny_tokenizer(model_cache):
    from rlhf_core.config.model import ModelConfig
    from rlhf_core.models import load_tokenizer

    return load_tokenizer(ModelConfig(base="tiny"), model_cache)


@pytest.fixture()
def tiny_model(tiny_tokenizer):
    from rlhf_core.config.model import TinyModelConfig
    from rlhf_core.models import build_tiny_model

    return build_tiny_model(TinyModelConfig(), tiny_tokenizer)
