"""The stage I/O module (rlhf_core.stage_io) round-trips, and the helpers unified with it behave as their old copies."""

from __future__ import annotations

import re
import socket

import numpy as np
import pytest
import torch

from rlhf_core.checkpoint import MANIFEST
from rlhf_core.errors import ModelLoadError
from rlhf_core.stage_io import (
    STAGE_MARKER,
    is_stage_model,
    is_training_checkpoint,
    load_stage_policy,
    read_stage_marker,
    save_stage_model,
)
from rlhf_core.tracking import metric_name


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), name


# ----------------------------------------------------------------------------- stage models
def test_stage_model_round_trips_weights_and_marker(tmp_path, tiny_model, tiny_tokenizer, model_cache):
    from rlhf_core.config.model import ModelConfig

    with torch.no_grad():
        tiny_model.model.norm.weight.add_(0.25)  # not what a fresh tiny model holds
    final = tmp_path / "sft" / "model"
    assert save_stage_model(tiny_model, tiny_tokenizer, final, stage="sft", step=3, lora_merged=False) == final
    assert read_stage_marker(final) == {"stage": "sft", "step": 3, "lora_merged": False}
    assert is_stage_model(final) and not is_training_checkpoint(final)
    assert (final / "model.safetensors").is_file() and (final / "tokenizer.json").is_file()
    assert not list(final.parent.glob(".tmp-*")) and not list(final.parent.glob(".old-*"))

    loaded = load_stage_policy(final, model=ModelConfig(base="tiny", device="cpu"), cache_dir=model_cache,
                               tokenizer=tiny_tokenizer, sft_dir=final)
    _assert_same_weights(_state(tiny_model), _state(loaded))

    # saving again replaces the directory whole: the new marker, no stale files, no leftovers
    (final / "stale.txt").write_text("from an older save")
    save_stage_model(tiny_model, tiny_tokenizer, final, stage="sft", step=4)
    assert read_stage_marker(final) == {"stage": "sft", "step": 4}
    assert not (final / "stale.txt").exists() and not list(final.parent.glob(".tmp-*"))


def test_reward_model_atomic_save_round_trips(tmp_path, tiny_model, tiny_tokenizer):
    from rlhf_core.config.model import ModelConfig
    from rlhf_core.reward.model import RewardModel

    rm = RewardModel.from_model(tiny_model, pad_token_id=tiny_tokenizer.pad_token_id, seed=1)
    final = tmp_path / "reward" / "model"
    rm.save_pretrained(final, tokenizer=tiny_tokenizer, atomic=True, step=2, lora_merged=False)
    assert read_stage_marker(final) == {
        "stage": "reward", "step": 2, "lora_merged": False, "format_version": 1,
        "architecture": "LlamaForSequenceClassification", "pooling": "last attention_mask token",
    }
    assert not list(final.parent.glob(".tmp-*"))
    _assert_same_weights(_state(rm), _state(RewardModel.from_pretrained(final)))
    # a reward model is not a policy
    with pytest.raises(ModelLoadError, match=rf"is a reward model \({STAGE_MARKER} stage='reward'\)"):
        load_stage_policy(final, model=ModelConfig(base="tiny", device="cpu"), cache_dir=tmp_path,
                          tokenizer=tiny_tokenizer, sft_dir=final)


def test_markers_and_checkpoints_are_told_apart(tmp_path):
    (tmp_path / MANIFEST).write_text("{}")
    assert is_training_checkpoint(tmp_path) and not is_stage_model(tmp_path)
    assert read_stage_marker(tmp_path) is None
    (tmp_path / STAGE_MARKER).write_text('["sft"]')
    with pytest.raises(ModelLoadError, match="must be a JSON object with a string 'stage'"):
        read_stage_marker(tmp_path)


# ----------------------------------------------------------------------------- metric names
# The three copies this replaced, as they were: the tracker's final pass, and the two segment cleaners.
def _old_tracker_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_\-. :/]+", "_", name).strip("_") or "_"


def _old_agreement_segment(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_\-. ]", "_", name) or "_"


def _old_eval_segment(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", name)


def test_metric_name_is_the_old_tracker_pass():
    for name in ("data/rows_dropped/validate/x/labels_in(0,1)", "rm/agreement_topic/home repair", "ppo@10",
                 "train/grad_norm", "eval/best-of-4/mean_gold", "(none)", "日本", "", "a::b /c"):
        assert metric_name(name) == _old_tracker_name(name), name


TOPICS = ["career", "cleaning", "cooking", "fitness", "gardening", "harmful", "home_repair", "personal_finance",
          "pets", "photography", "sleep_health", "study_skills", "travel",  # the demo data's
          "unknown", "home repair", "Q&A", "health/fitness", "café", "", None, "C++"]


def test_topic_metric_names_as_logged_before():
    from rlhf_core.reward.agreement import reward_model_agreement

    n = len(TOPICS)
    report = reward_model_agreement(np.linspace(0, 1, n), np.zeros(n), gold_prefers_chosen=[True] * n,
                                    topics=TOPICS, n_boot=10)
    names = [k for k in report.metrics() if "_topic/" in k]
    assert all(metric_name(k) == k for k in names)  # already what the tracker sends
    before = {
        _old_tracker_name(f"{prefix}/{_old_agreement_segment(t.topic)}")
        for t in report.topics
        for prefix in ("rm/agreement_topic", "rm/n_topic", "rm/agreement_gold_topic")
    }
    assert set(names) == before


def test_eval_method_metric_names_as_logged_before():
    from rlhf_core.eval_report import MethodComparison

    class Report:  # what MethodComparison.metrics reads of an EvalReport
        def metrics(self, prefix: str = "eval") -> dict[str, float]:
            return {f"{prefix}/mean_gold": 0.5, f"{prefix}/gold_delta_ci_low": 0.1}

    methods = ["sft", "best-of-1", "best-of-16", "ppo", "ppo-step-000010", "dpo", "ppo@10", "my policy"]
    logged = MethodComparison(reports={m: Report() for m in methods}).metrics()
    before = {_old_tracker_name(f"eval/{_old_eval_segment(m)}/{k}") for m in methods
              for k in ("mean_gold", "gold_delta_ci_low")}
    assert set(logged) == before


# ----------------------------------------------------------------------------- estimates
def _old_agreement_estimate(values, n_boot: int, seed: int):
    from rlhf_core.stats import bootstrap_ci

    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return None
    low, high = bootstrap_ci(arr, n_boot=n_boot, seed=seed)
    return (float(arr.mean()), low, high, int(arr.size))


def test_one_estimate_serves_agreement_and_evaluation():
    from rlhf_core import evaluation
    from rlhf_core.reward import agreement
    from rlhf_core.stats import Estimate

    assert evaluation.Estimate is agreement.Estimate is Estimate
    rng = np.random.default_rng(0)
    for size in (0, 1, 7, 50):
        values = rng.random(size).tolist()
        new = agreement._estimate(values, 200, size)
        old = _old_agreement_estimate(values, 200, size)
        assert (None if new is None else (new.value, new.ci_low, new.ci_high, new.n)) == old
    assert Estimate(float("nan"), 0.0, 1.0, 0).to_dict() == {"value": None, "ci_low": 0.0, "ci_high": 1.0, "n": 0}


# ----------------------------------------------------------------------------- small helpers
def test_unwrap_peft(tiny_model):
    import peft

    from rlhf_core.models import unwrap_peft

    assert unwrap_peft(tiny_model) is tiny_model
    wrapped = peft.get_peft_model(tiny_model, peft.LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    assert unwrap_peft(wrapped) is wrapped.get_base_model() is not wrapped


def test_free_port_is_bindable():
    from rlhf_core.processes import free_port

    port = free_port()
    assert isinstance(port, int) and 0 < port < 65536
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))  # still free: nothing kept it
