"""Shared-prefix pair layout: one row ``[prompt | chosen suffix | rejected suffix]`` per pair must give
the rewards, loss and gradients of two separate sequences (tiny random Llama, real tokenizer)."""

from __future__ import annotations

import pytest
import torch

from rlhf_core.batching import (
    PairExample,
    collate_pairs,
    collate_shared_pairs,
    pairs_in_batch,
    prompt_ids,
    tokenize_preference_rows,
)
from rlhf_core.config.model import TinyModelConfig
from rlhf_core.config.optim import LoraConfig, OptimConfig
from rlhf_core.config.reward import RewardConfig
from rlhf_core.errors import ConfigError, TrainingError
from rlhf_core.models import build_tiny_model
from rlhf_core.reward.model import RewardModel, shared_prefix_layout
from rlhf_core.reward.train import pair_step_loss, score_pairs, train_reward_model

from .conftest import CrashAt

SMALL = TinyModelConfig(num_layers=2, hidden_size=32, num_heads=4, intermediate_size=64, max_position_embeddings=256)


def _rm(tokenizer, dtype=torch.float32, attn: str = "sdpa") -> RewardModel:
    model = build_tiny_model(SMALL, tokenizer)
    model.set_attn_implementation(attn)
    return RewardModel.from_model(model, pad_token_id=tokenizer.pad_token_id).to(dtype)


def _rows() -> list[dict]:
    """Pairs of different lengths (right padding in any batch), and the prefix edge cases."""
    rows = [
        {"id": f"p{i}", "prompt": f"How do I make tea number {i}?",
         "chosen": "Boil water, steep the leaves for three minutes." + " Really." * i,
         "rejected": "No." if i % 2 else "Figure it out yourself, please.", "margin": float(i % 3)}
        for i in range(4)
    ]
    rows.append({"id": "prefix", "prompt": "Say hi.", "chosen": "Hello", "rejected": "Hello there, friend!", "margin": 0.5})
    rows.append({"id": "reverse", "prompt": "Say bye.", "chosen": "Goodbye, see you soon!", "rejected": "Goodbye",
                 "margin": 1.0})
    return rows


def _pairs(tokenizer, **kw) -> list[PairExample]:
    return tokenize_preference_rows(_rows(), tokenizer, fmt="chat", max_length=96, **kw)


def _layout(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: batch[k] for k in ("prefix_lengths", "chosen_ends")}


def _alone(rm: RewardModel, *seqs: list[int]) -> torch.Tensor:
    """Rewards of each sequence in a batch of its own (no padding, no layout): (len(seqs),)."""
    return torch.cat([rm(torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long)) for s in seqs])


def _naive_allowed(length: int, prefix: int, chosen_end: int, T: int) -> torch.Tensor:
    """(T, T) by the definition: causal, real keys only, rejected queries skip the chosen suffix."""
    allowed = torch.zeros(T, T, dtype=torch.bool)
    for i in range(T):
        for j in range(T):
            chosen_key = prefix <= j < chosen_end
            allowed[i, j] = j <= i and j < length and not (i >= chosen_end and chosen_key)
    return allowed


def test_layout_matches_naive_definition():
    gen = torch.Generator().manual_seed(0)
    B, T = 6, 17
    lengths = torch.randint(3, T + 1, (B,), generator=gen)
    chosen_ends = torch.stack([torch.randint(1, int(n) - 1 + 1, (1,), generator=gen)[0] for n in lengths])
    chosen_ends = torch.minimum(chosen_ends.clamp(min=1), lengths - 1)
    prefixes = torch.stack([torch.randint(0, int(c), (1,), generator=gen)[0] for c in chosen_ends])
    mask = (torch.arange(T)[None] < lengths[:, None]).long()
    ends = torch.stack([chosen_ends, lengths], dim=1)  # a pair: two replies, the rejected one ends the row
    allowed, positions, reward_index, has_reply = shared_prefix_layout(mask, prefixes, ends)
    assert allowed.shape == (B, 1, T, T)
    for b in range(B):
        n, P, C = int(lengths[b]), int(prefixes[b]), int(chosen_ends[b])
        assert torch.equal(allowed[b, 0], _naive_allowed(n, P, C, T)), b
        assert positions[b, :n].tolist() == list(range(C)) + list(range(P, P + n - C))
        assert allowed[b, 0].any(-1).all()  # no fully masked query row (it would give NaN in sdpa)
    assert reward_index.tolist() == (ends - 1).tolist() and has_reply.all()


def test_layout_refuses_bad_rows():
    mask = torch.tensor([[1, 1, 1, 0]])
    rule = r"0 <= prefix_length < reply_end\[0\] < reply_end\[1\]"
    with pytest.raises(ValueError, match=rule):
        shared_prefix_layout(mask, torch.tensor([2]), torch.tensor([[2, 3]]))  # empty chosen suffix
    with pytest.raises(ValueError, match=rule):
        shared_prefix_layout(mask, torch.tensor([0]), torch.tensor([[3, 3]]))  # empty rejected suffix
    with pytest.raises(ValueError, match=rule):
        shared_prefix_layout(mask, torch.tensor([0]), torch.tensor([[1, 2]]))  # the last reply must end the row
    with pytest.raises(ValueError, match="right-padded"):
        shared_prefix_layout(torch.tensor([[0, 1, 1, 1]]), torch.tensor([0]), torch.tensor([[2, 4]]))


def test_prefix_is_longest_common_token_prefix_leaving_each_suffix_a_token(tiny_tokenizer):
    assert PairExample("a", [1, 2, 3, 4], [1, 2, 5]).prefix_length == 2
    assert PairExample("b", [1, 2, 3], [1, 2, 3, 4, 5]).prefix_length == 2  # chosen is a token-prefix of rejected
    assert PairExample("c", [1, 2, 3, 4, 5], [1, 2, 3]).prefix_length == 2
    assert PairExample("d", [7, 2], [8, 2]).prefix_length == 0
    pairs = _pairs(tiny_tokenizer, use_margin=True)
    batch = collate_shared_pairs(pairs, tiny_tokenizer.pad_token_id)
    assert pairs_in_batch(batch) == len(pairs) == pairs_in_batch(collate_pairs(pairs, 0)) and "margin" in batch
    for i, p in enumerate(pairs):
        P, C = int(batch["prefix_lengths"][i]), int(batch["chosen_ends"][i])
        assert p.chosen_ids[:P] == p.rejected_ids[:P] and C == len(p.chosen_ids)
        row = batch["input_ids"][i, : p.shared_length].tolist()
        assert row == p.chosen_ids + p.rejected_ids[P:]
        assert int(batch["attention_mask"][i].sum()) == p.shared_length == p.row_length(True)
        # the chat-templated prompt (system prompt and assistant header included) is shared
        assert P >= len(prompt_ids(tiny_tokenizer, _rows()[i]["prompt"], "chat"))
    assert sum(p.shared_length for p in pairs) < 0.75 * sum(len(p.chosen_ids) + len(p.rejected_ids) for p in pairs)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("lora", [False, True])
def test_shared_rewards_equal_two_separate_forwards(tiny_tokenizer, attn, lora):
    rm = _rm(tiny_tokenizer, attn=attn)
    if lora:
        from rlhf_core.models import apply_lora

        rm.backbone = apply_lora(rm.backbone, LoraConfig(enabled=True, r=4), task_type="SEQ_CLS")
        with torch.no_grad():  # peft starts B at 0 (a no-op adapter); make the adapters matter
            for name, p in rm.named_parameters():
                if "lora_B" in name:
                    p.normal_(0.0, 0.5)
    rm.eval()
    pairs = _pairs(tiny_tokenizer)
    pad = tiny_tokenizer.pad_token_id
    with torch.no_grad():
        alone = torch.stack([_alone(rm, p.chosen_ids, p.rejected_ids) for p in pairs])  # (N, 2)
        batch = collate_shared_pairs(pairs, pad, pad_to_multiple_of=16)  # right padding on every row
        shared = rm.forward_pairs(batch["input_ids"], batch["attention_mask"], **_layout(batch))  # (2N,)
        via_forward = rm(batch["input_ids"], batch["attention_mask"], **_layout(batch))
    n = len(pairs)
    torch.testing.assert_close(shared[:n], alone[:, 0], rtol=0, atol=1e-5)
    torch.testing.assert_close(shared[n:], alone[:, 1], rtol=0, atol=1e-5)
    assert torch.equal(shared, via_forward)

    # the test can fail: a plain causal mask over the same rows lets rejected tokens see chosen ones
    ids, mask = batch["input_ids"], batch["attention_mask"]
    rows = torch.arange(n)
    with torch.no_grad():
        leaky = rm.head(rm.trunk(input_ids=ids, attention_mask=mask).last_hidden_state[rows, mask.sum(-1) - 1]).squeeze(-1)
    assert (leaky - alone[:, 1]).abs().max() > 1e-3


# The forward pass is exact in fp64, but Llama's RMSNorm (and eager softmax) compute in fp32: a
# prompt token's gradient is ONE sum of both branches here and two separate ones in the two-row
# layout, so gradients agree to fp32 rounding (~1e-8 of 0.3 seen); a masking bug moves them by ~1e-2.
@pytest.mark.parametrize(("center_coef", "atol"), [(0.0, 1e-10), (0.1, 1e-5)])
def test_loss_and_gradients_match_two_row_layout_fp64(tiny_tokenizer, center_coef, atol):
    rm = _rm(tiny_tokenizer, torch.float64)
    pairs = _pairs(tiny_tokenizer, use_margin=True)
    pad = tiny_tokenizer.pad_token_id
    loss_fn = pair_step_loss(center_coef=center_coef)

    def to64(batch):
        return {k: (v.double() if v.is_floating_point() else v) for k, v in batch.items()}

    results = []
    for collate in (collate_pairs, collate_shared_pairs):
        rm.zero_grad()
        loss, stats = loss_fn(rm, to64(collate(pairs, pad)), len(pairs))
        loss.backward()
        results.append((loss.detach(), stats, {n: p.grad.clone() for n, p in rm.named_parameters()}))
    (loss_two, stats_two, grads_two), (loss_shared, stats_shared, grads_shared) = results
    torch.testing.assert_close(loss_shared, loss_two, rtol=0, atol=atol)
    assert stats_shared == pytest.approx(stats_two, abs=1e-5)
    for name, grad in grads_two.items():
        assert grad.abs().max() > 0, name
        torch.testing.assert_close(grads_shared[name], grad, rtol=0, atol=1e-6, msg=name)


def test_score_pairs_same_in_both_layouts(tiny_tokenizer):
    rm = _rm(tiny_tokenizer)
    rows = [*_rows(), {"id": "tie", "prompt": "Q", "chosen": "Same answer.", "rejected": "Same answer."}]
    shared = score_pairs(rm, tiny_tokenizer, rows, max_length=96, batch_size=3)
    two_rows = score_pairs(rm, tiny_tokenizer, rows, max_length=96, batch_size=3, share_prompt=False)
    for a, b in zip(shared, two_rows, strict=True):
        assert a == pytest.approx(b, abs=1e-5)
    assert shared[0][-1] == pytest.approx(shared[1][-1], abs=1e-5)  # chosen == rejected: one prefix, equal rewards


def _cfg(**kw) -> RewardConfig:
    optim = {"learning_rate": 5e-3, "max_steps": 4, "micro_batch_size": 2, "max_length": 96, "checkpoint_every": 2}
    return RewardConfig(optim=OptimConfig(**optim), **kw)


def _causal_only(module, query, key, value, attention_mask, **kwargs):
    """An attention kernel that ignores custom masks (as flash kernels and some remote-code models do)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(module, query, key, value, None, is_causal=True, **kwargs)


def test_kernel_that_ignores_the_mask_is_caught_by_the_check(tiny_tokenizer, monkeypatch, tmp_path):
    from transformers import AttentionInterface

    rm = _rm(tiny_tokenizer)
    monkeypatch.setitem(AttentionInterface._global_mapping, "sdpa", _causal_only)  # a real kernel under the name
    with pytest.raises(ConfigError, match=r"hidden states differ from two separate sequences.*share_prompt=false"):
        rm.check_pair_layout()
    with pytest.raises(ConfigError, match="share_prompt"):
        train_reward_model(_cfg(), rm, tiny_tokenizer, _rows(), output_dir=tmp_path, progress=False)
    monkeypatch.undo()
    rm.check_pair_layout()  # the real sdpa kernel passes


def test_backbone_without_4d_masks_is_refused_before_training(tiny_tokenizer, tmp_path):
    from transformers import AttentionInterface

    AttentionInterface.register("causal_only_test", _causal_only)
    rm = _rm(tiny_tokenizer)
    rm.transformers_model.set_attn_implementation("causal_only_test")
    with pytest.raises(ConfigError, match=r"reward\.share_prompt: .*'causal_only_test'.*set reward\.share_prompt=false"):
        train_reward_model(_cfg(), rm, tiny_tokenizer, _rows(), output_dir=tmp_path / "a", progress=False)
    assert not (tmp_path / "a").exists()
    with pytest.raises(ConfigError, match="share_prompt"):
        score_pairs(rm, tiny_tokenizer, _rows(), max_length=96)
    result = train_reward_model(_cfg(share_prompt=False), rm, tiny_tokenizer, _rows(), output_dir=tmp_path / "b",
                                progress=False)
    assert result.steps == 4 and result.extra["pair_layout"] == "two-rows"


def test_shared_layout_trains_and_resume_refuses_a_layout_switch(tiny_tokenizer, tmp_path):
    rm = _rm(tiny_tokenizer)
    before = {k: v.clone() for k, v in rm.state_dict().items()}
    with pytest.raises(KeyboardInterrupt):
        train_reward_model(_cfg(), rm, tiny_tokenizer, _rows(), output_dir=tmp_path, tracker=CrashAt(3), progress=False)
    with pytest.raises(TrainingError, match=r"pair_layout: checkpoint 'shared-prefix' vs now None"):
        train_reward_model(_cfg(share_prompt=False), _rm(tiny_tokenizer), tiny_tokenizer, _rows(), output_dir=tmp_path,
                           progress=False)
    resumed = _rm(tiny_tokenizer)
    result = train_reward_model(_cfg(), resumed, tiny_tokenizer, _rows(), output_dir=tmp_path, progress=False)
    assert result.resumed_from_step == 2 and result.extra["pair_layout"] == "shared-prefix"
    assert any(not torch.equal(before[k], v) for k, v in resumed.state_dict().items())
    # tokens/s counts the tokens the shared rows really hold (the prompt once per pair)
    assert result.metrics["train/pairs"] == 2


@pytest.mark.parametrize("sliding", [False, True])
def test_qwen2_backbone_and_its_sliding_window(sliding):
    """Another architecture (Qwen2, tiny random); a 4D mask would override a sliding window, so rows must fit."""
    from transformers import AutoModelForSequenceClassification, Qwen2Config

    config = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, use_sliding_window=sliding, sliding_window=8, max_window_layers=0,
                         num_labels=1)
    torch.manual_seed(0)
    rm = RewardModel(AutoModelForSequenceClassification.from_config(config)).eval()
    rm.check_pair_layout()  # its probe rows fit in the window
    short = PairExample("short", [1, 2, 3, 4], [1, 2, 5])  # row of 5 tokens
    long = PairExample("long", list(range(1, 8)), [1, 2, 3, 9, 10])  # row of 9 tokens
    with torch.no_grad():
        batch = collate_shared_pairs([short], 0)
        shared = rm(batch["input_ids"], batch["attention_mask"], **_layout(batch))
        torch.testing.assert_close(shared, _alone(rm, short.chosen_ids, short.rejected_ids), rtol=0, atol=1e-5)
        batch = collate_shared_pairs([short, long], 0)
        if sliding:
            with pytest.raises(ConfigError, match=r"row of 9 tokens is longer than its sliding window \(8\)"):
                rm(batch["input_ids"], batch["attention_mask"], **_layout(batch))
        else:
            assert rm(batch["input_ids"], batch["attention_mask"], **_layout(batch)).shape == (4,)
