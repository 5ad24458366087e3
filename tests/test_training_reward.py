"""Reward-model loop on a tiny random backbone: one forward pass per pair batch, padding and
accumulation invariants (accumulation in both pair layouts; tests/test_reward_shared_prefix.py
compares the layouts), learning, exact resume, wrong-stage and bad-input refusals, LoRA."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from rlhf_core.batching import collate_pairs, collate_shared_pairs, tokenize_preference_rows
from rlhf_core.checkpoint import WEIGHTS, latest_checkpoint
from rlhf_core.config.model import TinyModelConfig
from rlhf_core.config.optim import LoraConfig, OptimConfig
from rlhf_core.config.reward import RewardConfig
from rlhf_core.config.sft import SFTConfig
from rlhf_core.errors import DataError, TrainingError
from rlhf_core.models import build_tiny_model
from rlhf_core.reward.model import RewardModel
from rlhf_core.reward.train import pair_step_loss, score_pairs, train_reward_model
from rlhf_core.sft.train import train_sft
from rlhf_core.tracking import InMemoryTracker

from .conftest import CrashAt

SMALL = TinyModelConfig(num_layers=1, hidden_size=32, num_heads=2, intermediate_size=64, max_position_embeddings=256)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _pairs(n: int = 12) -> list[dict]:
    # learnable signal: the chosen answer is long and helpful, the rejected one curt
    return [
        {
            "id": f"p{i}",
            "prompt": f"How do I make tea number {i}?",
            "chosen": "Boil water, steep the leaves for three minutes, then enjoy." + " Really." * (i % 3),
            "rejected": "No." if i % 2 else "Figure it out.",
            "margin": float(i % 3),
        }
        for i in range(n)
    ]


def _rm(tokenizer, dtype=torch.float32) -> RewardModel:
    return RewardModel.from_model(build_tiny_model(SMALL, tokenizer), pad_token_id=tokenizer.pad_token_id).to(dtype)


def _cfg(**optim) -> RewardConfig:
    base = {"learning_rate": 5e-3, "max_steps": 6, "micro_batch_size": 4, "max_length": 64}
    return RewardConfig(optim=OptimConfig(**{**base, **optim}))


def _params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_padding_does_not_change_rewards(tiny_tokenizer):
    rm = _rm(tiny_tokenizer).eval()
    pairs = tokenize_preference_rows(_pairs(4), tiny_tokenizer, fmt="chat", max_length=64)
    pad = tiny_tokenizer.pad_token_id
    with torch.no_grad():
        alone = [rm(**{k: v for k, v in collate_pairs([p], pad).items() if k != "margin"}) for p in pairs]  # (2,) each
        batch = collate_pairs(pairs, pad, pad_to_multiple_of=32)
        together = rm(batch["input_ids"], batch["attention_mask"])  # (8,): 4 chosen then 4 rejected
    for i, pair_rewards in enumerate(alone):
        torch.testing.assert_close(together[[i, 4 + i]], pair_rewards, rtol=1e-5, atol=1e-5)


# bradley_terry_loss computes in fp32 by design, so with centering (a square of rewards) the
# fp64 comparison is only as exact as fp32; without it every term is elementwise and exact.
@pytest.mark.parametrize("collate", [collate_pairs, collate_shared_pairs])
@pytest.mark.parametrize(("center_coef", "atol"), [(0.0, 1e-10), (0.1, 1e-5)])
def test_pair_grad_accumulation_equals_one_big_batch_fp64(tiny_tokenizer, center_coef, atol, collate):
    rm = _rm(tiny_tokenizer, torch.float64)
    pairs = tokenize_preference_rows(_pairs(5), tiny_tokenizer, fmt="chat", max_length=64, use_margin=True)
    pad = tiny_tokenizer.pad_token_id
    loss_fn = pair_step_loss(center_coef=center_coef)

    def to64(batch):
        return {k: (v.double() if v.is_floating_point() else v) for k, v in batch.items()}

    rm.zero_grad()
    loss_fn(rm, to64(collate(pairs, pad)), 5)[0].backward()
    expected = {n: p.grad.clone() for n, p in rm.named_parameters()}
    rm.zero_grad()
    for chunk in (pairs[:2], pairs[2:4], pairs[4:]):  # 2 + 2 + 1 pairs
        loss_fn(rm, to64(collate(chunk, pad)), 5)[0].backward()
    for n, p in rm.named_parameters():
        torch.testing.assert_close(p.grad, expected[n], rtol=0, atol=atol, msg=n)


def test_reward_model_learns_and_is_saved(tiny_tokenizer, tmp_path):
    rm = _rm(tiny_tokenizer)
    before = _params(rm)
    tracker = InMemoryTracker()
    pairs = _pairs()
    result = train_reward_model(_cfg(max_steps=8), rm, tiny_tokenizer, pairs, output_dir=tmp_path, tracker=tracker,
                                eval_pairs=pairs[:4], progress=False)

    losses = [v for _, v in tracker.series("rm/loss")]
    accuracy = [v for _, v in tracker.series("rm/accuracy")]
    assert len(losses) == 8 and losses[-1] < 0.5 * losses[0]
    assert accuracy[-1] == 1.0 and result.metrics["rm/eval_accuracy"] == 1.0
    assert result.metrics["rm/chosen_reward"] > result.metrics["rm/rejected_reward"]
    assert all(not torch.equal(before[k], v) for k, v in _params(rm).items())
    assert result.pairs_per_second > 0 and result.examples == 12

    assert json.loads((result.model_dir / "rlhf_stage.json").read_text())["stage"] == "reward"
    reloaded = RewardModel.from_pretrained(result.model_dir)
    batch = collate_pairs(tokenize_preference_rows(pairs[:2], tiny_tokenizer, fmt="chat", max_length=64), tiny_tokenizer.pad_token_id)
    with torch.no_grad():
        direct = rm.eval()(batch["input_ids"], batch["attention_mask"])  # (4,): chosen 0, 1, rejected 0, 1
        torch.testing.assert_close(reloaded(batch["input_ids"], batch["attention_mask"]), direct)

    # scoring for the agreement evaluation: row order kept, identical pairs kept (and tied)
    tie = {"id": "tie", "prompt": "Q", "chosen": "Same answer.", "rejected": "Same answer."}
    chosen_r, rejected_r = score_pairs(rm, tiny_tokenizer, [*pairs[:2], tie, *pairs[2:5]], max_length=64, batch_size=2)
    assert len(chosen_r) == len(rejected_r) == 6
    assert chosen_r[2] == pytest.approx(rejected_r[2], abs=1e-5)
    assert [chosen_r[0], chosen_r[1], rejected_r[0], rejected_r[1]] == pytest.approx(direct.tolist(), abs=1e-5)
    assert all(c > r for i, (c, r) in enumerate(zip(chosen_r, rejected_r, strict=True)) if i != 2)


def test_reward_resume_is_bitwise(tiny_tokenizer, tmp_path):
    cfg = _cfg(max_steps=5, micro_batch_size=2, grad_accum_steps=2, checkpoint_every=3, warmup_steps=1)
    reference = _rm(tiny_tokenizer)
    train_reward_model(cfg, reference, tiny_tokenizer, _pairs(), output_dir=tmp_path / "a", seed=1, progress=False)
    with pytest.raises(KeyboardInterrupt):
        train_reward_model(cfg, _rm(tiny_tokenizer), tiny_tokenizer, _pairs(), output_dir=tmp_path / "b",
                           tracker=CrashAt(4), seed=1, progress=False)
    resumed = _rm(tiny_tokenizer)
    result = train_reward_model(cfg, resumed, tiny_tokenizer, _pairs(), output_dir=tmp_path / "b", seed=1, progress=False)
    assert result.resumed_from_step == 3
    for name, value in _params(reference).items():
        assert torch.equal(_params(resumed)[name], value), name


def test_checkpoint_of_another_stage_is_refused(tiny_tokenizer, tmp_path):
    sft_cfg = SFTConfig(optim=OptimConfig(max_steps=1, micro_batch_size=2, max_length=64))
    rows = [{"id": "d1", "prompt": "Hi", "response": "Hello!"}, {"id": "d2", "prompt": "Bye", "response": "See you."}]
    train_sft(sft_cfg, build_tiny_model(SMALL, tiny_tokenizer), tiny_tokenizer, rows, output_dir=tmp_path, progress=False)
    with pytest.raises(TrainingError, match=rf"output directory {tmp_path} holds a 'sft' model"):
        train_reward_model(_cfg(), _rm(tiny_tokenizer), tiny_tokenizer, _pairs(), output_dir=tmp_path, progress=False)
    shutil.rmtree(tmp_path / "model")  # only the SFT checkpoints remain: still refused
    with pytest.raises(TrainingError, match=r"checkpoint .*step-000001 was written by stage 'sft', not 'reward'"):
        train_reward_model(_cfg(), _rm(tiny_tokenizer), tiny_tokenizer, _pairs(), output_dir=tmp_path, progress=False)
    with pytest.raises(TrainingError, match=r"holds checkpoints of stage 'sft', not 'reward'"):  # not deleted either
        train_reward_model(_cfg(), _rm(tiny_tokenizer), tiny_tokenizer, _pairs(), output_dir=tmp_path, resume=False,
                           progress=False)
    assert latest_checkpoint(tmp_path / "checkpoints") is not None


def test_empty_or_all_identical_pairs_fail_before_training(tiny_tokenizer, tmp_path):
    with pytest.raises(DataError, match=r"reward train data: dataset is empty"):
        train_reward_model(_cfg(), _rm(tiny_tokenizer), tiny_tokenizer, [], output_dir=tmp_path, progress=False)
    same = [{"id": f"s{i}", "prompt": "Q", "chosen": "A", "rejected": "A"} for i in range(3)]
    with pytest.raises(DataError, match=r"all 3 preference pairs have chosen == rejected"):
        train_reward_model(_cfg(), _rm(tiny_tokenizer), tiny_tokenizer, same, output_dir=tmp_path, progress=False)
    assert not any(tmp_path.iterdir())


def test_lora_reward_model_trains_adapters_and_head_only(tiny_tokenizer, tmp_path):
    from safetensors.torch import load_file

    rm = _rm(tiny_tokenizer)
    before = _params(rm)
    cfg = _cfg(max_steps=3, lora=LoraConfig(enabled=True, r=4))
    result = train_reward_model(cfg, rm, tiny_tokenizer, _pairs(), output_dir=tmp_path, progress=False)
    stored = load_file(str(latest_checkpoint(tmp_path / "checkpoints") / WEIGHTS))
    assert stored and all("lora_" in n or "score" in n for n in stored)
    merged = RewardModel.from_pretrained(result.model_dir)
    after = {k: v for k, v in merged.state_dict().items()}
    for name, value in before.items():
        changed = not torch.equal(after[name], value)
        assert changed == any(t in name for t in ("q_proj", "v_proj", "score")), name
