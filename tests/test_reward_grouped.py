"""Preference pairs grouped by prompt (InstructGPT's K-wise layout, reward.grouping=prompt): which pairs
land where, the prompt computed once, the K-reply mask, loss equal to Bradley-Terry with one pair per
prompt, a 2-pair prompt by hand, gradients, and short training runs (learning, exact resume)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from rlhf_core.batching import collate_shared_pairs, prompt_ids, tokenize_preference_rows
from rlhf_core.config.model import TinyModelConfig
from rlhf_core.config.optim import OptimConfig
from rlhf_core.config.reward import RewardConfig
from rlhf_core.errors import DataError, TrainingError
from rlhf_core.losses import kwise_ranking_loss
from rlhf_core.models import build_tiny_model
from rlhf_core.reward.grouped import (
    PromptGroup,
    collate_group_rows,
    collate_shared_groups,
    group_preference_rows,
    group_rewards,
    prompts_in_batch,
)
from rlhf_core.reward.model import RewardModel, shared_prefix_layout
from rlhf_core.reward.train import group_step_loss, pair_step_loss, train_reward_model
from rlhf_core.tracking import InMemoryTracker

from .conftest import CrashAt

SMALL = TinyModelConfig(num_layers=1, hidden_size=32, num_heads=2, intermediate_size=64, max_position_embeddings=256)
GOOD, OK, CURT, RUDE = "Boil water, steep the leaves for three minutes.", "Use a tea bag.", "No.", "Figure it out."


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _row(i: str, prompt: str, chosen: str, rejected: str) -> dict:
    return {"id": i, "prompt": prompt, "chosen": chosen, "rejected": rejected}


def _ranked_rows() -> list[dict]:
    """Prompt A: a full ranking of 3 replies (3 pairs, one seen twice), B: one pair, C: two pairs sharing a reply."""
    return [
        _row("a1", "How do I make tea?", GOOD, OK),
        _row("b1", "How do I boil an egg?", "Boil it for eight minutes.", CURT),
        _row("a2", "How do I make tea?", OK, CURT),
        _row("c1", "Say hi.", "Hello there!", RUDE),
        _row("a3", "How do I make tea?", GOOD, CURT),
        _row("c2", "Say hi.", "Hi!", RUDE),
        _row("a4", "How do I make tea?", GOOD, CURT),  # the same comparison again: it counts twice
    ]


def _rm(tokenizer, attn: str = "sdpa", dtype=torch.float32) -> RewardModel:
    model = build_tiny_model(SMALL, tokenizer)
    model.set_attn_implementation(attn)
    return RewardModel.from_model(model, pad_token_id=tokenizer.pad_token_id).to(dtype)


def _groups(tokenizer, rows=None) -> list[PromptGroup]:
    return group_preference_rows(rows or _ranked_rows(), tokenizer, fmt="chat", max_length=96)


def _alone(rm: RewardModel, seq) -> float:
    return float(rm(torch.tensor([list(seq)]), torch.ones(1, len(seq), dtype=torch.long)))


# ----------------------------------------------------------------------------- which pairs land where
def test_rows_group_by_prompt_with_exactly_the_observed_pairs(tiny_tokenizer):
    groups = _groups(tiny_tokenizer)
    assert [g.group_id for g in groups] == ["a1", "b1", "c1"]  # in order of each prompt's first row
    assert [g.row_ids for g in groups] == [("a1", "a2", "a3", "a4"), ("b1",), ("c1", "c2")]
    a, b, c = groups
    assert a.n_replies == 3 and a.pairs == ((0, 1), (1, 2), (0, 2), (0, 2))  # GOOD=0, OK=1, CURT=2
    assert b.n_replies == 2 and b.pairs == ((0, 1),)
    assert c.n_replies == 3 and c.pairs == ((0, 1), (2, 1))  # RUDE (1) is shared by both rows
    for g, rows in zip(groups, ([GOOD, OK, CURT], ["Boil it for eight minutes.", CURT], ["Hello there!", RUDE, "Hi!"])):
        prompt = next(r["prompt"] for r in _ranked_rows() if r["id"] == g.group_id)
        p_ids = prompt_ids(tiny_tokenizer, prompt, "chat")
        for seq, reply in zip(g.sequences, rows, strict=True):
            assert list(seq[: len(p_ids)]) == p_ids  # every sequence is prompt + reply
            assert tiny_tokenizer.decode(seq[len(p_ids):]).startswith(reply)


def test_identical_pairs_are_dropped_with_a_warning_and_all_identical_is_an_error(tiny_tokenizer):
    rows = [*_ranked_rows(), _row("same", "How do I make tea?", OK, OK)]
    with pytest.warns(UserWarning, match=r"dropped 1 pair\(s\) with chosen == rejected \(first: same\)"):
        groups = _groups(tiny_tokenizer, rows)
    assert "same" not in groups[0].row_ids and sum(len(g.pairs) for g in groups) == 7
    with pytest.raises(DataError, match="all 1 preference pairs have chosen == rejected"):
        _groups(tiny_tokenizer, [_row("same", "Q?", OK, OK)])
    with pytest.raises(DataError, match="row x: column 'chosen' must be a string"):
        _groups(tiny_tokenizer, [_row("x", "Q?", None, OK)])


def test_a_truncated_prompt_is_cut_alike_for_every_reply(tiny_tokenizer):
    long_prompt = "Tell me about tea. " * 12
    rows = [_row("t1", long_prompt, GOOD + " " + GOOD, CURT), _row("t2", long_prompt, OK, CURT)]
    (group,) = group_preference_rows(rows, tiny_tokenizer, fmt="chat", max_length=80, truncate=True)
    pairs = tokenize_preference_rows(rows, tiny_tokenizer, fmt="chat", max_length=80, truncate=True)
    assert pairs[0].truncated > pairs[1].truncated > 0  # the rows alone would be cut differently
    assert group.truncated == pairs[0].truncated and group.n_replies == 3  # CURT is one reply, not two
    assert all(len(s) <= 80 for s in group.sequences)
    assert group.sequences[0] == tuple(pairs[0].chosen_ids)


# ----------------------------------------------------------------------------- the prompt counted once, masks
def test_shared_row_holds_the_prompt_once_then_each_reply(tiny_tokenizer):
    groups = _groups(tiny_tokenizer)
    pad = tiny_tokenizer.pad_token_id
    batch = collate_shared_groups(groups, pad)
    assert prompts_in_batch(batch) == 3 and batch["reply_ends"].shape == (3, 3) and batch["compared"].shape == (3, 3, 3)
    for b, g in enumerate(groups):
        P = int(batch["prefix_lengths"][b])
        assert P == g.prefix_length >= len(prompt_ids(tiny_tokenizer, "Say hi.", "chat"))  # the templated prompt at least
        row = batch["input_ids"][b].tolist()
        ends = batch["reply_ends"][b].tolist()
        starts = [P, *ends[:-1]]
        for k, seq in enumerate(g.sequences):
            assert row[:P] + row[starts[k]: ends[k]] == list(seq)  # prefix + reply k's suffix = its sequence
        assert ends[g.n_replies:] == [g.shared_length] * (3 - g.n_replies)  # empty slots end where the row ends
        assert int(batch["attention_mask"][b].sum()) == g.shared_length == g.row_length(True)
        assert row[g.shared_length:] == [pad] * (len(row) - g.shared_length)
        expected = torch.zeros(3, 3, dtype=torch.long)
        for better, worse in g.pairs:
            expected[better, worse] += 1
        assert torch.equal(batch["compared"][b], expected)
    assert batch["compared"][0, 0, 2] == 2  # the comparison seen twice
    # the prompt computed once: fewer tokens than one row per pair (4 + 1 + 2 rows of prompt + 2 replies)
    pairs = tokenize_preference_rows(_ranked_rows(), tiny_tokenizer, fmt="chat", max_length=96)
    assert sum(g.shared_length for g in groups) < 0.5 * sum(p.shared_length for p in pairs)


def test_one_row_per_reply_layout_points_at_each_reply(tiny_tokenizer):
    groups = _groups(tiny_tokenizer)
    batch = collate_group_rows(groups, tiny_tokenizer.pad_token_id)
    assert batch["input_ids"].shape[0] == sum(g.n_replies for g in groups) == 8 and prompts_in_batch(batch) == 3
    for b, g in enumerate(groups):
        for k, seq in enumerate(g.sequences):
            r = int(batch["reply_rows"][b, k])
            assert batch["input_ids"][r, : len(seq)].tolist() == list(seq) and int(batch["attention_mask"][r].sum()) == len(seq)
    assert batch["reply_rows"][1].tolist() == [3, 4, 3]  # prompt B's empty third slot points at its first row


def _naive_allowed(length: int, prefix: int, ends: list[int], T: int) -> torch.Tensor:
    """(T, T) by the definition: causal, real keys, a reply's tokens see the prefix and their own reply."""
    def reply(i: int) -> int:  # padding belongs to the last non-empty reply
        last = max(k for k, e in enumerate(ends) if e > ([prefix, *ends][k]))
        return next((k for k, e in enumerate(ends) if i < e), last)

    allowed = torch.zeros(T, T, dtype=torch.bool)
    for i in range(T):
        for j in range(T):
            allowed[i, j] = j <= i and j < length and (j < prefix or reply(i) == reply(j))
    return allowed


def test_k_reply_layout_matches_naive_definition():
    # rows: 3 replies; 2 replies and an empty slot; 3 replies with no shared prefix
    mask = torch.tensor([[1] * 12 + [0] * 2, [1] * 9 + [0] * 5, [1] * 14])
    prefixes = torch.tensor([4, 6, 0])
    ends = torch.tensor([[6, 7, 12], [7, 9, 9], [5, 6, 14]])
    allowed, positions, reward_index, has_reply = shared_prefix_layout(mask, prefixes, ends)
    for b in range(3):
        n, P, E = int(mask[b].sum()), int(prefixes[b]), ends[b].tolist()
        assert torch.equal(allowed[b, 0], _naive_allowed(n, P, E, 14)), b
        assert allowed[b, 0].any(-1).all()  # no fully masked query row
    assert positions[0].tolist() == [0, 1, 2, 3, 4, 5, 4, 4, 5, 6, 7, 8, 0, 0]  # every reply restarts after the prefix
    assert positions[1].tolist() == [0, 1, 2, 3, 4, 5, 6, 6, 7, 0, 0, 0, 0, 0]
    assert reward_index.tolist() == (ends - 1).tolist()
    assert has_reply.tolist() == [[True] * 3, [True, True, False], [True] * 3]
    with pytest.raises(ValueError, match="empty replies only at the end"):
        shared_prefix_layout(mask[:1], prefixes[:1], torch.tensor([[6, 6, 12]]))


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("collate", [collate_shared_groups, collate_group_rows])
def test_grouped_rewards_equal_each_reply_alone(tiny_tokenizer, attn, collate):
    rm = _rm(tiny_tokenizer, attn).eval()
    rm.check_pair_layout()
    groups = _groups(tiny_tokenizer)
    with torch.no_grad():
        rewards = group_rewards(rm, collate(groups, tiny_tokenizer.pad_token_id))  # (3, 3)
        for b, g in enumerate(groups):
            for k, seq in enumerate(g.sequences):
                assert float(rewards[b, k]) == pytest.approx(_alone(rm, seq), abs=1e-5), (b, k)


# ----------------------------------------------------------------------------- the loss
def test_one_pair_per_prompt_equals_the_pairwise_loss_and_gradient(tiny_tokenizer):
    rows = [_row(f"p{i}", f"How do I make tea number {i}?", GOOD + " Really." * i, CURT if i % 2 else RUDE)
            for i in range(5)]
    pad = tiny_tokenizer.pad_token_id
    rm = _rm(tiny_tokenizer, dtype=torch.float64)
    grads = []
    losses = []
    for loss_fn, batch in (
        (pair_step_loss(0.1), collate_shared_pairs(tokenize_preference_rows(rows, tiny_tokenizer, fmt="chat", max_length=96), pad)),
        (group_step_loss(0.1), collate_shared_groups(_groups(tiny_tokenizer, rows), pad)),
    ):
        rm.zero_grad()
        loss, stats = loss_fn(rm, batch, 5)
        loss.backward()
        losses.append((float(loss.detach()), stats["rm/accuracy"], stats["rm/margin"]))
        grads.append({n: p.grad.clone() for n, p in rm.named_parameters()})
    # kwise_ranking_loss and bradley_terry_loss both compute in fp32 (same values up to summation order)
    assert losses[1] == pytest.approx(losses[0], abs=1e-6)
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-5, atol=1e-6, msg=name)


def test_two_pair_prompt_against_hand_computed_value():
    lp = lambda x: math.log1p(math.exp(-x))  # noqa: E731  -log sigmoid(x)
    rewards = torch.tensor([[1.0, 0.0, -0.5], [2.0, 0.5, 0.0]], requires_grad=True)
    compared = torch.zeros(2, 3, 3, dtype=torch.long)
    compared[0, 0, 1] = compared[0, 2, 1] = 1  # prompt 0: reply 0 > reply 1, reply 2 > reply 1
    compared[1, 1, 0] = 1  # prompt 1: one pair, reply 1 > reply 0 (reply 2 unused)
    loss, stats = kwise_ranking_loss(rewards, compared=compared)
    p0 = (lp(1.0 - 0.0) + lp(-0.5 - 0.0)) / 2  # each prompt weighs one element, whatever its pairs
    p1 = lp(0.5 - 2.0)
    assert float(loss) == pytest.approx((p0 + p1) / 2, abs=1e-6)
    assert stats["rm/pairs"] == 3 and stats["rm/accuracy"] == pytest.approx((1.0 + 0.0) / 2 / 2)
    (grad,) = torch.autograd.grad(loss, rewards)
    assert grad[1, 2] == 0 and grad[0, 0] < 0 < grad[0, 1]  # the unused reply gets nothing; winners pushed up
    compared[0, 0, 1] = 2  # a comparison observed twice counts twice within its prompt
    assert float(kwise_ranking_loss(rewards, compared=compared)[0]) == pytest.approx(
        ((2 * lp(1.0) + lp(-0.5)) / 3 + p1) / 2, abs=1e-6)
    with pytest.raises(ValueError, match="either valid .* or compared"):
        kwise_ranking_loss(rewards, valid=torch.ones(2, 3, dtype=torch.bool), compared=compared)


def test_gradient_reaches_every_parameter_and_grad_accumulation_is_one_big_batch(tiny_tokenizer):
    rm = _rm(tiny_tokenizer, dtype=torch.float64)
    groups = _groups(tiny_tokenizer)
    pad = tiny_tokenizer.pad_token_id
    loss_fn = group_step_loss(0.0)
    rm.zero_grad()
    loss_fn(rm, collate_shared_groups(groups, pad), 3)[0].backward()
    whole = {n: p.grad.clone() for n, p in rm.named_parameters()}
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in whole.values())
    rm.zero_grad()
    for chunk in (groups[:1], groups[1:]):  # 1 + 2 prompts: each micro-batch weighs its prompts / 3
        loss_fn(rm, collate_shared_groups(chunk, pad), 3)[0].backward()
    for n, p in rm.named_parameters():
        torch.testing.assert_close(p.grad, whole[n], rtol=0, atol=1e-10, msg=n)


# ----------------------------------------------------------------------------- training runs
def _train_rows() -> list[dict]:
    rows = []
    for i in range(6):  # 6 prompts, 3 replies ranked long > short > rude, every pair observed
        prompt, replies = f"How do I make tea number {i}?", [GOOD + " Really." * (i % 3), OK, RUDE]
        rows += [_row(f"p{i}-{a}{b}", prompt, replies[a], replies[b]) for a, b in ((0, 1), (1, 2), (0, 2))]
    return rows


def _cfg(**optim) -> RewardConfig:
    base = {"learning_rate": 5e-3, "max_steps": 6, "micro_batch_size": 2, "max_length": 64}
    return RewardConfig(grouping="prompt", optim=OptimConfig(**{**base, **optim}))


def test_grouped_training_learns(tiny_tokenizer, tmp_path):
    rm = _rm(tiny_tokenizer)
    tracker = InMemoryTracker()
    result = train_reward_model(_cfg(), rm, tiny_tokenizer, _train_rows(), output_dir=tmp_path, tracker=tracker,
                                eval_pairs=_train_rows()[:6], progress=False)
    losses = [v for _, v in tracker.series("rm/loss")]
    assert len(losses) == 6 and losses[-1] < 0.5 * losses[0]
    assert [v for _, v in tracker.series("rm/pairs")] == [6.0] * 6  # 2 prompts x 3 pairs per step
    assert [v for _, v in tracker.series("train/prompts")] == [2.0] * 6
    assert result.metrics["rm/eval_prompts"] == 2 and result.metrics["rm/eval_pairs"] == 6
    assert result.metrics["rm/eval_accuracy"] == 1.0
    assert result.examples == 18 and result.extra["grouping"] == "prompt"
    assert result.pairs_per_second == pytest.approx(36 / result.wall_seconds)
    assert RewardModel.from_pretrained(result.model_dir) is not None


def test_grouped_resume_is_bitwise_and_a_pairs_checkpoint_is_refused(tiny_tokenizer, tmp_path):
    cfg = _cfg(max_steps=5, micro_batch_size=1, grad_accum_steps=2, checkpoint_every=3, warmup_steps=1)
    reference = _rm(tiny_tokenizer)
    train_reward_model(cfg, reference, tiny_tokenizer, _train_rows(), output_dir=tmp_path / "a", seed=1, progress=False)
    with pytest.raises(KeyboardInterrupt):
        train_reward_model(cfg, _rm(tiny_tokenizer), tiny_tokenizer, _train_rows(), output_dir=tmp_path / "b",
                           tracker=CrashAt(4), seed=1, progress=False)
    resumed = _rm(tiny_tokenizer)
    result = train_reward_model(cfg, resumed, tiny_tokenizer, _train_rows(), output_dir=tmp_path / "b", seed=1,
                                progress=False)
    assert result.resumed_from_step == 3
    assert result.pairs_per_second == pytest.approx(2 * 2 * 3 / result.wall_seconds)  # steps 4-5 only
    reference_params = reference.state_dict()
    for name, value in resumed.state_dict().items():
        assert torch.equal(value, reference_params[name]), name
    # a checkpoint of the pairwise layout has another data order: resuming it grouped is refused
    pairs_cfg = RewardConfig(optim=cfg.optim)
    with pytest.raises(KeyboardInterrupt):
        train_reward_model(pairs_cfg, _rm(tiny_tokenizer), tiny_tokenizer, _train_rows(), output_dir=tmp_path / "c",
                           tracker=CrashAt(4), seed=1, progress=False)
    with pytest.raises(TrainingError, match=r"grouping: checkpoint None vs now 'prompt'"):
        train_reward_model(cfg, _rm(tiny_tokenizer), tiny_tokenizer, _train_rows(), output_dir=tmp_path / "c", seed=1,
                           progress=False)


def test_grouping_config():
    assert RewardConfig().grouping == "pairs"
    with pytest.raises(ValueError, match="grouping=prompt does not take use_margin"):
        RewardConfig(grouping="prompt", use_margin=True)
    with pytest.raises(ValueError):
        RewardConfig(grouping="ranking")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        RewardConfig(grouping="prompt", share_prompt=False)
