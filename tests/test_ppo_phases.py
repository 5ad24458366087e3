"""Each PPO phase alone: make_experience, Experience slicing, ppo_update, step_metrics (rlhf_core.ppo).

Tiny 2-layer Llama over a character tokenizer (see tests/test_ppo_loop.py), one step each, CPU.
"""

from __future__ import annotations

import math

import pytest
import torch

from rlhf_core.batching import resolve_format
from rlhf_core.errors import TrainingError
from rlhf_core.ppo.experience import Experience, make_experience
from rlhf_core.ppo.parallel import rollout_seeds
from rlhf_core.ppo.trainer import build_models, ppo_update, prepare_inputs, step_metrics
from rlhf_core.training import build_optimizer
from tests.test_ppo_loop import PROMPTS, TokenFractionReward, char_tokenizer, ppo_cfg, tiny_llama


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer()


def setup(tok, cfg, reward=None):
    """(models, prompt items) as train_ppo builds them, with a reference that differs from the policy (KL > 0)."""
    torch.manual_seed(0)
    policy = tiny_llama(tok)
    items, _ = prepare_inputs(cfg, policy, tok, PROMPTS, None, resolve_format(tok, cfg.prompt_format))
    models = build_models(cfg, policy, tok, reward or TokenFractionReward(5, n=8), tok, ref_model=tiny_llama(tok, seed=1),
                          value_model=None, reward_prompt_format=None, seed=0)
    return models, [items[i % len(items)] for i in range(cfg.rollout_size)]


def experience(tok, cfg, *, kl_coef=0.1, reward=None, number=1):
    models, batch = setup(tok, cfg, reward)
    torch.manual_seed(3)
    exp, micro = make_experience(models, cfg, batch, seeds=rollout_seeds(0, number, len(batch)), kl_coef=kl_coef,
                                 number=number, micro=cfg.optim.micro_batch_size)
    return models, exp, micro


# ----------------------------------------------------------------------------- 1-4. make_experience
@pytest.mark.parametrize("rollout_logprobs", ["sampler", "recompute"])
def test_make_experience_shapes_and_finite_tensors(tok, rollout_logprobs):
    cfg = ppo_cfg(rollout_logprobs=rollout_logprobs)
    _, exp, micro = experience(tok, cfg)
    B, P = exp.query_ids.shape
    R = exp.response_ids.shape[1]
    assert B == cfg.rollout_size and micro == cfg.optim.micro_batch_size and 1 <= R <= cfg.max_new_tokens
    for name in ("response_mask", "logprobs", "ref_logprobs", "values", "rewards", "advantages", "returns"):
        assert getattr(exp, name).shape == (B, R), name
    for name in ("has_eos", "raw_scores", "scores", "kl", "rl_scores"):
        assert getattr(exp, name).shape == (B,), name
    assert exp.query_mask.shape == (B, P) and exp.query_response_ids.shape == exp.attention_mask.shape == (B, P + R)
    assert len(exp.texts) == B and exp.gold is None
    m = exp.response_mask
    for name in ("logprobs", "ref_logprobs", "values", "rewards", "advantages", "returns"):
        assert bool(torch.isfinite(getattr(exp, name)[m]).all()), name
    assert bool((exp.logprobs[m] < 0).all()) and exp.mean_kl != 0.0  # a real reference: the policies differ
    assert set(exp.seconds) == {"generation", "scoring", "preparation"}


def test_rewards_are_the_last_token_score_minus_kl_per_token_naive(tok):
    cfg = ppo_cfg(missing_eos_penalty=1.5)
    kl_coef = 0.1
    _, exp, _ = experience(tok, cfg, kl_coef=kl_coef)
    assert exp.kl_coef == kl_coef and torch.equal(exp.rl_scores, exp.scores)  # center_scores off
    lp, ref, mask = exp.logprobs.double(), exp.ref_logprobs.double(), exp.response_mask
    for b in range(exp.batch_size):
        expected_score = float(exp.raw_scores[b]) - (0.0 if bool(exp.has_eos[b]) else 1.5)
        assert math.isclose(float(exp.scores[b]), expected_score, abs_tol=1e-6)
        valid = [t for t in range(mask.shape[1]) if bool(mask[b, t])]
        kl_sum = 0.0
        for t in range(mask.shape[1]):
            k1 = float(lp[b, t] - ref[b, t])
            expected = -kl_coef * k1 if t in valid else 0.0
            if t == valid[-1]:
                expected += expected_score
            kl_sum += k1 if t in valid else 0.0
            assert math.isclose(float(exp.rewards[b, t]), expected, abs_tol=1e-5), (b, t)
        assert math.isclose(float(exp.kl[b]), kl_sum, abs_tol=1e-5)


class NaNAt(TokenFractionReward):
    def __init__(self, row: int) -> None:
        super().__init__(5, n=8)
        self.row = row

    def forward(self, input_ids, attention_mask):
        out = super().forward(input_ids, attention_mask)
        if self.calls == 1:
            out[self.row] = float("inf")
        return out


def test_a_non_finite_score_raises_the_one_finiteness_error(tok):
    with pytest.raises(TrainingError, match=r"ppo: reward model score is not finite at step 7 \(1 of 8 values"):
        experience(tok, ppo_cfg(), reward=NaNAt(row=2), number=7)


# ----------------------------------------------------------------------------- minibatches
def test_minibatches_cover_each_row_exactly_once_per_epoch(tok):
    cfg = ppo_cfg(rollout_batch_size=8)
    _, exp, _ = experience(tok, cfg)
    orders = []
    for _ in range(3):
        mbs = exp.minibatch_indices(cfg.minibatch_size)
        assert [len(mb) for mb in mbs] == [cfg.minibatch_size] * (8 // cfg.minibatch_size)
        rows = torch.cat(mbs)
        assert sorted(rows.tolist()) == list(range(8))
        orders.append(rows.tolist())
    assert len({tuple(o) for o in orders}) > 1  # shuffled afresh each epoch
    rows = exp.minibatch_indices(cfg.minibatch_size)[0]
    part = exp.select(rows)
    assert isinstance(part, Experience) and part.batch_size == len(rows)
    assert torch.equal(part.advantages, exp.advantages[rows]) and torch.equal(part.kl, exp.kl[rows])
    assert torch.equal(part.query_response_ids, exp.query_response_ids[rows])
    assert part.texts == [exp.texts[i] for i in rows.tolist()] and part.kl_coef == exp.kl_coef


# ----------------------------------------------------------------------------- 5. ppo_update
def params_of(model):
    return {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}


@pytest.mark.parametrize("lr", [0.0, 3e-3])
def test_ppo_update_moves_the_weights_only_with_a_learning_rate(tok, lr):
    cfg = ppo_cfg(optim={"weight_decay": 0.1}, ppo_epochs=2)
    models, exp, micro = experience(tok, cfg)
    before = params_of(models.model)
    optimizer = build_optimizer(models.model, cfg.optim)
    for group in optimizer.param_groups:  # the config insists on lr > 0
        group["lr"] = lr
    update, micro_after = ppo_update(models, optimizer, exp, cfg, number=1, micro=micro)
    after = params_of(models.model)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert (changed == []) if lr == 0 else len(changed) > 0
    updates = cfg.ppo_epochs * exp.batch_size // cfg.minibatch_size
    assert len(update.grad_norms) == len(update.minibatches) == updates and micro_after == micro
    assert all(g > 0 and math.isfinite(g) for g in update.grad_norms)
    assert len(update.mismatch) == cfg.minibatch_size // micro  # the first minibatch's micro-batches only
    assert all({"ppo/policy_loss", "ppo/value_loss", "ppo/clipfrac"} <= set(s) for s in update.minibatches)


# ----------------------------------------------------------------------------- 6. step_metrics
def test_step_metrics_keys_and_values(tok):
    cfg = ppo_cfg()
    models, exp, micro = experience(tok, cfg)
    update, _ = ppo_update(models, build_optimizer(models.model, cfg.optim), exp, cfg, number=1, micro=micro)
    metrics = step_metrics(exp, update, lr=1e-3, update_seconds=0.5)
    head = ["ppo/reward", "ppo/score", "ppo/kl", "ppo/kl_coef", "ppo/non_score_reward", "ppo/explained_variance",
            "ppo/response_length", "ppo/no_eos_rate", "ppo/refusal_rate", "ppo/value_mean", "ppo/logprob_mismatch",
            "ppo/return_mean"]
    tail = ["train/lr", "train/grad_norm", "time/generation", "time/scoring", "time/update"]
    keys = list(metrics)
    assert keys[: len(head)] == head and keys[-len(tail):] == tail
    middle = keys[len(head) : -len(tail)]
    assert middle == sorted(middle) and {"ppo/entropy", "ppo/clipfrac", "ppo/approx_kl", "ppo/value_loss",
                                         "ppo/policy_loss"} <= set(middle)
    assert metrics["ppo/reward"] == float(exp.raw_scores.mean()) and metrics["ppo/kl"] == float(exp.kl.mean())
    assert metrics["ppo/kl_coef"] == exp.kl_coef and metrics["train/lr"] == 1e-3
    assert metrics["time/update"] == exp.seconds["preparation"] + 0.5
    assert metrics["ppo/response_length"] == float(exp.response_mask.sum(-1).float().mean())
    assert metrics["train/grad_norm"] == pytest.approx(sum(update.grad_norms) / len(update.grad_norms))
    assert "ppo/gold" not in metrics
    exp.gold = [1.0, 0.0] * 4
    assert step_metrics(exp, update, lr=1e-3, update_seconds=0.5)["ppo/gold"] == 0.5
