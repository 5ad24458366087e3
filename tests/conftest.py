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


# Test tiers (ENGINEERING.md principle 7; verl's tests/README.md, TRL's tests/invariant/). Every test
# module belongs to exactly one, the tier of its heaviest tests; select with `-m <tier>`, e.g.
# `pytest -m "unit or invariants"` (seconds to a few minutes) or `pytest -m "not e2e"`.
TIERS: dict[str, tuple[str, ...]] = {
    # (a) functions against hand-computed values or naive references; data contracts on small files
    "unit": (
        "test_agreement", "test_batching", "test_bench_variants", "test_checkpoint", "test_config", "test_data_bad_input",
        "test_data_check", "test_data_conversations", "test_data_curation", "test_data_importers", "test_data_outputs", "test_data_parity",
        "test_data_roundtrip", "test_data_stage", "test_dedup", "test_demo_curation", "test_deploy", "test_gold",
        "test_import_direction", "test_imports", "test_infra_k8s", "test_progress", "test_runtime_env", "test_security",
        "test_tiers", "test_workspace",
        "test_conversation_render", "test_eval_no_gold", "test_ratings", "test_diversity", "test_labeling",
    ),
    # (b) two ways of computing the same thing agree: float64 oracles, padding, accumulation, 2 processes = 1
    "invariants": (
        "test_best_of_n", "test_data_parallel", "test_distributed", "test_distributed_ppo", "test_losses", "test_ppo_functions",
        "test_reward_shared_prefix", "test_rollout_engine",
    ),
    # (c) real transformers models (tiny random ones, the real default model where marked slow) trained/sampled
    "tiny_model": (
        "test_bench_gpu", "test_demo_data", "test_dpo", "test_evaluation", "test_fault_kill", "test_models",
        "test_ppo_loop", "test_ppo_phases", "test_reward_eval", "test_reward_grouped", "test_reward_model",
        "test_stage_io", "test_training_reward", "test_training_sft", "test_vllm_engine",
    ),
    # (d) the flows and the CLI: Prefect's engine (harness or ephemeral API), MLflow sqlite, subprocesses
    "flows": (
        "test_concurrent_runs", "test_config_preflight", "test_flow_pipeline", "test_interrupts", "test_tracking",
        "test_iterate",
    ),
    # (e) real servers (Prefect, MLflow), a worker, a real browser
    "e2e": ("test_crash_reconcile", "test_e2e_ui", "test_label_studio", "test_servers", "test_tracking_outage"),
}
TIER_OF = {module: tier for tier, modules in TIERS.items() for module in modules}


def pytest_collection_modifyitems(config, items):
    for item in items:
        tier = TIER_OF.get(item.module.__name__.rsplit(".", 1)[-1])
        if tier is None:
            raise pytest.UsageError(f"{item.path.name}: no test tier; add it to TIERS in tests/conftest.py")
        item.add_marker(getattr(pytest.mark, tier))


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
