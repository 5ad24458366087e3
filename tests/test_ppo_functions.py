"""Tier (a)/(b): each PPO recipe function against a naive float64 python-loop reference."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf_core.ppo.gae import compute_gae
from rlhf_core.ppo.kl import AdaptiveKLController, FixedKLController, kl_estimate, kl_penalized_rewards
from rlhf_core.ppo.loss import entropy_from_logits, explained_variance, ppo_policy_loss, ppo_value_loss
from rlhf_core.sampling import filter_logits, truncate_after_eos

SEEDS = [0, 1, 2]
SHAPES = [(1, 1), (3, 7), (5, 16)]


def right_padded_mask(gen: torch.Generator, B: int, T: int) -> torch.Tensor:
    """(B, T) bool: each row valid for a random length in [1, T] (what truncate_after_eos produces)."""
    lengths = torch.randint(1, T + 1, (B,), generator=gen)
    return torch.arange(T)[None, :] < lengths[:, None]


def random_mask(gen: torch.Generator, B: int, T: int) -> torch.Tensor:
    mask = torch.rand(B, T, generator=gen) < 0.6
    mask[:, 0] = True  # every row has a valid token
    return mask


# ----------------------------------------------------------------------------- truncate_after_eos
@pytest.mark.parametrize("seed", SEEDS)
def test_truncate_after_eos_matches_loop(seed):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 6, (6, 9), generator=gen)  # small vocab: EOS (ids 1, 2) appear often
    for eos in (1, [1, 2]):
        eos_set = {eos} if isinstance(eos, int) else set(eos)
        out, mask = truncate_after_eos(ids, eos, pad_id=0)
        for b in range(ids.shape[0]):
            seen = False
            for t in range(ids.shape[1]):
                expected_valid = not seen
                assert bool(mask[b, t]) == expected_valid
                assert int(out[b, t]) == (int(ids[b, t]) if expected_valid else 0)
                seen = seen or int(ids[b, t]) in eos_set


def test_truncate_after_eos_keeps_rows_without_eos():
    ids = torch.tensor([[5, 6, 7], [2, 5, 6]])
    out, mask = truncate_after_eos(ids, 2, pad_id=9)
    assert mask.tolist() == [[True, True, True], [True, False, False]]
    assert out.tolist() == [[5, 6, 7], [2, 9, 9]]


# ----------------------------------------------------------------------------- sampling filters
@pytest.mark.parametrize("seed", SEEDS)
def test_filter_logits_matches_naive(seed):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(4, 12, generator=gen, dtype=torch.float64)
    for top_k, top_p in [(0, 1.0), (3, 1.0), (0, 0.5), (5, 0.8)]:
        out = filter_logits(logits, top_k=top_k, top_p=top_p)
        for b in range(4):
            row = logits[b].tolist()
            keep = set(range(12))
            if top_k:
                kth = sorted(row, reverse=True)[top_k - 1]
                keep = {i for i in keep if row[i] >= kth}
            if top_p < 1.0:
                z = [math.exp(row[i]) if i in keep else 0.0 for i in range(12)]
                probs = [v / sum(z) for v in z]
                order = sorted(range(12), key=lambda i: -probs[i])
                mass, kept = 0.0, set()
                for i in order:
                    if mass >= top_p:
                        break
                    kept.add(i)
                    mass += probs[i]
                keep &= kept
            for i in range(12):
                assert (out[b, i] == -math.inf) == (i not in keep)


# ----------------------------------------------------------------------------- GAE
def naive_gae(rewards, values, mask, gamma, lam):
    B, T = len(rewards), len(rewards[0])
    adv = [[0.0] * T for _ in range(B)]
    ret = [[0.0] * T for _ in range(B)]
    for b in range(B):
        for t in range(T):
            if not mask[b][t]:
                continue
            # sum over the episode that continues while the mask stays True
            total, k = 0.0, t
            while k < T and mask[b][k]:
                next_v = values[b][k + 1] if k + 1 < T and mask[b][k + 1] else 0.0
                delta = rewards[b][k] + gamma * next_v - values[b][k]
                total += (gamma * lam) ** (k - t) * delta
                k += 1
            adv[b][t] = total
            ret[b][t] = total + values[b][t]
    return adv, ret


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("make_mask", [right_padded_mask, random_mask])
def test_gae_matches_naive(seed, shape, make_mask):
    gen = torch.Generator().manual_seed(seed)
    B, T = shape
    rewards = torch.randn(B, T, generator=gen, dtype=torch.float64)
    values = torch.randn(B, T, generator=gen, dtype=torch.float64)
    mask = make_mask(gen, B, T)
    values_with_garbage = torch.where(mask, values, torch.full_like(values, float("nan")))
    for gamma, lam in [(1.0, 0.95), (0.9, 1.0), (0.99, 0.0)]:
        adv, ret = compute_gae(rewards, values_with_garbage, mask, gamma=gamma, lam=lam)
        exp_adv, exp_ret = naive_gae(rewards.tolist(), values.tolist(), mask.tolist(), gamma, lam)
        torch.testing.assert_close(adv, torch.tensor(exp_adv, dtype=torch.float64), rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(ret, torch.tensor(exp_ret, dtype=torch.float64), rtol=1e-10, atol=1e-10)


def test_gae_last_token_bootstraps_from_zero():
    # one valid token: advantage = reward - value exactly, whatever follows in padding
    adv, ret = compute_gae(
        torch.tensor([[2.0, 100.0]]), torch.tensor([[0.5, 100.0]]), torch.tensor([[True, False]]), gamma=1.0, lam=1.0
    )
    assert adv.tolist() == [[1.5, 0.0]] and ret.tolist() == [[2.0, 0.0]]


# ----------------------------------------------------------------------------- KL
@pytest.mark.parametrize("seed", SEEDS)
def test_kl_estimators_exact_formulas(seed):
    gen = torch.Generator().manual_seed(seed)
    logp = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    logq = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    k1, k2, k3 = (kl_estimate(logp, logq, e) for e in ("k1", "k2", "k3"))
    for b in range(4):
        for t in range(6):
            p, q = float(logp[b, t]), float(logq[b, t])
            assert math.isclose(float(k1[b, t]), p - q, rel_tol=1e-12, abs_tol=1e-12)
            assert math.isclose(float(k2[b, t]), 0.5 * (p - q) ** 2, rel_tol=1e-12, abs_tol=1e-12)
            assert math.isclose(float(k3[b, t]), (math.exp(q - p) - 1) - (q - p), rel_tol=1e-10, abs_tol=1e-12)
    assert bool((k3 >= 0).all()) and bool((k2 >= 0).all())
    with pytest.raises(ValueError, match="k4"):
        kl_estimate(logp, logq, "k4")


def test_k1_k3_unbiased_by_monte_carlo():
    gen = torch.Generator().manual_seed(0)
    p = torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.float64)
    q = torch.tensor([0.25, 0.25, 0.25, 0.25], dtype=torch.float64)
    true_kl = float((p * (p / q).log()).sum())
    x = torch.multinomial(p, 200_000, replacement=True, generator=gen)
    logp, logq = p.log()[x], q.log()[x]
    for estimator in ("k1", "k3"):
        est = kl_estimate(logp, logq, estimator)
        stderr = float(est.std()) / math.sqrt(x.numel())
        assert abs(float(est.mean()) - true_kl) < 4 * stderr, estimator
    # k3's variance is lower than k1's here (Schulman's point)
    assert float(kl_estimate(logp, logq, "k3").var()) < float(kl_estimate(logp, logq, "k1").var())


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_kl_penalized_rewards_matches_naive(seed, estimator):
    gen = torch.Generator().manual_seed(seed)
    B, T = 4, 7
    score = torch.randn(B, generator=gen, dtype=torch.float64)
    logp = torch.randn(B, T, generator=gen, dtype=torch.float64)
    logq = torch.randn(B, T, generator=gen, dtype=torch.float64)
    mask = right_padded_mask(gen, B, T)
    rewards = kl_penalized_rewards(score, logp, logq, mask, 0.3, estimator)
    for b in range(B):
        last = max(t for t in range(T) if mask[b, t])
        for t in range(T):
            p, q = float(logp[b, t]), float(logq[b, t])
            kl = {"k1": p - q, "k2": 0.5 * (p - q) ** 2, "k3": math.exp(q - p) - 1 - (q - p)}[estimator]
            expected = (-0.3 * kl + (float(score[b]) if t == last else 0.0)) if mask[b, t] else 0.0
            assert math.isclose(float(rewards[b, t]), expected, rel_tol=1e-10, abs_tol=1e-10)


def test_kl_penalized_rewards_rejects_empty_row():
    with pytest.raises(ValueError, match="no valid token"):
        kl_penalized_rewards(torch.zeros(1), torch.zeros(1, 3), torch.zeros(1, 3), torch.zeros(1, 3, dtype=torch.bool), 0.1)


def test_adaptive_kl_controller_trajectory():
    ctl = AdaptiveKLController(0.2, target=6.0, horizon=100)
    value = 0.2
    for kl in [1.0, 6.0, 7.0, 20.0, 0.0, 6.6]:
        ctl.update(kl, n_steps=8)
        error = min(max(kl / 6.0 - 1.0, -0.2), 0.2)
        value *= 1 + error * 8 / 100
        assert math.isclose(ctl.value, value, rel_tol=1e-12)
    restored = AdaptiveKLController(0.2, target=6.0, horizon=100)
    restored.load_state_dict(ctl.state_dict())
    assert restored.value == ctl.value
    fixed = FixedKLController(0.05)
    fixed.update(100.0, 8)
    assert fixed.value == 0.05


# ----------------------------------------------------------------------------- losses
def naive_policy_loss(new, old, adv, mask, clip):
    num = den = 0.0
    clipped_count = 0
    for b in range(len(new)):
        for t in range(len(new[0])):
            if not mask[b][t]:
                continue
            ratio = math.exp(new[b][t] - old[b][t])
            l1 = -adv[b][t] * ratio
            l2 = -adv[b][t] * min(max(ratio, 1 - clip), 1 + clip)
            num += max(l1, l2)
            clipped_count += l2 > l1
            den += 1
    return num / den, clipped_count / den


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape", SHAPES[1:])
def test_ppo_policy_loss_matches_naive_and_gradient(seed, shape):
    gen = torch.Generator().manual_seed(seed)
    B, T = shape
    old = torch.randn(B, T, generator=gen, dtype=torch.float64)
    new = (old + 0.4 * torch.randn(B, T, generator=gen, dtype=torch.float64)).requires_grad_(True)
    adv = torch.randn(B, T, generator=gen, dtype=torch.float64)
    mask = right_padded_mask(gen, B, T)
    loss, stats = ppo_policy_loss(new, old, adv, mask, clip_range=0.2)
    exp_loss, exp_clipfrac = naive_policy_loss(new.tolist(), old.tolist(), adv.tolist(), mask.tolist(), 0.2)
    assert math.isclose(float(loss.detach()), exp_loss, rel_tol=1e-10, abs_tol=1e-12)
    assert math.isclose(stats["ppo/clipfrac"], exp_clipfrac, rel_tol=1e-9)
    # analytic gradient: d/dnew of -A*ratio where the unclipped term is active, 0 where clipped wins
    loss.backward()
    n = int(mask.sum())
    for b in range(B):
        for t in range(T):
            r = math.exp(float(new.detach()[b, t] - old[b, t]))
            a = float(adv[b, t])
            l1, l2 = -a * r, -a * min(max(r, 0.8), 1.2)
            g = (-a * r / n) if (mask[b, t] and l1 >= l2) else 0.0
            assert math.isclose(float(new.grad[b, t]), g, rel_tol=1e-9, abs_tol=1e-12)
    assert torch.autograd.gradcheck(
        lambda x: ppo_policy_loss(x, old, adv, mask, clip_range=0.2)[0], (new.detach().clone().requires_grad_(True),)
    )


def test_ppo_policy_loss_ratio_one_and_approx_kl():
    gen = torch.Generator().manual_seed(0)
    lp = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    adv = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    mask = torch.ones(3, 5, dtype=torch.bool)
    loss, stats = ppo_policy_loss(lp, lp, adv, mask, clip_range=0.2)
    assert stats["ppo/ratio"] == 1.0 and stats["ppo/clipfrac"] == 0.0 and stats["ppo/approx_kl"] == 0.0
    assert math.isclose(float(loss), -float(adv.mean()), rel_tol=1e-12)
    new = lp + 0.3
    _, stats = ppo_policy_loss(new, lp, adv, mask, clip_range=0.2)
    assert math.isclose(stats["ppo/approx_kl"], math.exp(0.3) - 1 - 0.3, rel_tol=1e-9)


@pytest.mark.parametrize("seed", SEEDS)
def test_ppo_value_loss_matches_naive_and_gradient(seed):
    gen = torch.Generator().manual_seed(seed)
    B, T = 4, 6
    old = torch.randn(B, T, generator=gen, dtype=torch.float64)
    new = (old + 0.5 * torch.randn(B, T, generator=gen, dtype=torch.float64)).requires_grad_(True)
    ret = torch.randn(B, T, generator=gen, dtype=torch.float64)
    mask = right_padded_mask(gen, B, T)
    loss, stats = ppo_value_loss(new, old, ret, mask, clip_range_value=0.2)
    num = den = 0.0
    for b in range(B):
        for t in range(T):
            if mask[b, t]:
                v, vo, r = float(new[b, t]), float(old[b, t]), float(ret[b, t])
                vc = vo + min(max(v - vo, -0.2), 0.2)
                num += max((v - r) ** 2, (vc - r) ** 2)
                den += 1
    assert math.isclose(float(loss.detach()), 0.5 * num / den, rel_tol=1e-10)
    assert 0.0 <= stats["ppo/value_clipfrac"] <= 1.0
    assert torch.autograd.gradcheck(
        lambda x: ppo_value_loss(x, old, ret, mask, clip_range_value=0.2)[0], (new.detach().clone().requires_grad_(True),)
    )


@pytest.mark.parametrize("seed", SEEDS)
def test_entropy_from_logits_matches_naive(seed):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 4, 11, generator=gen, dtype=torch.float64) * 3
    mask = right_padded_mask(gen, 3, 4)
    ent = entropy_from_logits(logits, mask)
    for b in range(3):
        for t in range(4):
            z = [math.exp(v) for v in logits[b, t].tolist()]
            p = [v / sum(z) for v in z]
            expected = -sum(pi * math.log(pi) for pi in p) if mask[b, t] else 0.0
            assert math.isclose(float(ent[b, t]), expected, rel_tol=1e-10, abs_tol=1e-12)
    assert torch.autograd.gradcheck(
        lambda x: entropy_from_logits(x, mask).sum(), (logits.clone().requires_grad_(True),)
    )


def test_explained_variance():
    gen = torch.Generator().manual_seed(0)
    ret = torch.randn(4, 5, generator=gen, dtype=torch.float64)
    mask = right_padded_mask(gen, 4, 5)
    assert explained_variance(ret, ret, mask) == 1.0
    values = ret + 0.3 * torch.randn(4, 5, generator=gen, dtype=torch.float64)
    r, v = ret[mask].numpy(), values[mask].numpy()
    assert math.isclose(explained_variance(values, ret, mask), 1 - (r - v).var() / r.var(), rel_tol=1e-9)


def test_sample_from_probs_matches_distribution():
    from rlhf_core.sampling import sample_from_probs

    torch.manual_seed(0)
    probs = torch.tensor([0.1, 0.0, 0.6, 0.3, 0.0])
    n = 200_000
    draws = sample_from_probs(probs.repeat(n, 1))
    freq = torch.bincount(draws, minlength=5).double() / n
    assert freq[1] == 0 and freq[4] == 0  # zero-probability (filtered) tokens are never drawn
    for k in (0, 2, 3):
        stderr = math.sqrt(float(probs[k]) * (1 - float(probs[k])) / n)
        assert abs(float(freq[k]) - float(probs[k])) < 4 * stderr


def test_missing_eos_penalty():
    from rlhf_core.ppo.score import apply_missing_eos_penalty

    scores = torch.tensor([1.0, 2.0, 3.0])
    has_eos = torch.tensor([True, False, True])
    assert apply_missing_eos_penalty(scores, has_eos, 0.5).tolist() == [1.0, 1.5, 3.0]
    assert apply_missing_eos_penalty(scores, has_eos, None).tolist() == [1.0, 2.0, 3.0]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("k", [1, 2, 4])
def test_center_scores_matches_naive_leave_one_out(seed, k):
    from rlhf_core.ppo.score import center_scores

    gen = torch.Generator().manual_seed(seed)
    scores = torch.randn(8, generator=gen, dtype=torch.float64) * 3 + 5
    got = center_scores(scores, k)
    s = scores.tolist()
    if k == 1:
        want = [x - sum(s) / len(s) for x in s]
    else:  # groups of k consecutive samples; the baseline is the mean of the k - 1 others
        want = []
        for i, x in enumerate(s):
            group = s[i - i % k : i - i % k + k]
            want.append(x - (sum(group) - x) / (k - 1))
    assert got.tolist() == pytest.approx(want, abs=1e-12)
    # a per-prompt offset cancels with k > 1 (and only a global one with k == 1)
    offsets = torch.arange(8, dtype=torch.float64).div(k, rounding_mode="floor") * 10 if k > 1 else torch.full((8,), 7.0)
    assert center_scores(scores + offsets, k).tolist() == pytest.approx(got.tolist(), abs=1e-9)


def test_center_scores_rejects_bad_groups():
    from rlhf_core.ppo.score import center_scores

    with pytest.raises(ValueError, match="groups of 3 samples per prompt"):
        center_scores(torch.zeros(8), 3)
    with pytest.raises(ValueError, match=r"shape \(B,\)"):
        center_scores(torch.zeros(2, 4), 2)


# ----------------------------------------------------------------------------- retokenize
# Sampled text can start with whitespace; with the SmolLM2 chat template "\n\n..." merges with the
# assistant header's trailing "\n" into one token, so the prompt's ids are not a prefix of the exchange's.
LEADING_WHITESPACE = ["\n\nHello", "\r\r\n", "  two spaces", "\t\ttab", "\n", " "]


def test_retokenize_scores_responses_that_start_with_whitespace(tiny_tokenizer):
    from rlhf_core.batching import prompt_response_ids
    from rlhf_core.errors import DataError
    from rlhf_core.ppo.score import retokenize

    tok = tiny_tokenizer
    with pytest.raises(DataError, match="not prefix-stable"):  # the split the old retokenize used
        prompt_response_ids(tok, "Say hi", "\n\nHello", "chat")
    prompts = ["Say hi"] * len(LEADING_WHITESPACE)
    ids, mask = retokenize(prompts, LEADING_WHITESPACE, tok, "chat")
    assert ids.shape == mask.shape and ids.shape[0] == len(LEADING_WHITESPACE)
    for row, m, response in zip(ids, mask, LEADING_WHITESPACE):
        text = tok.decode(row[m.bool()])
        # the response is scored verbatim (not stripped), inside the closed assistant turn
        assert text.endswith("<|im_start|>assistant\n" + response + "<|im_end|>\n"), repr(text)
        assert text.startswith(tok.apply_chat_template([{"role": "user", "content": "Say hi"}], tokenize=False))
        assert bool((row[~m.bool()] == tok.pad_token_id).all())


def test_retokenize_equals_the_training_split_where_it_is_stable(tiny_tokenizer):
    from rlhf_core.batching import prompt_response_ids
    from rlhf_core.ppo.score import retokenize

    prompts, responses = ["Say hi", "What is 2+2?", "Name a colour"], ["Hello there!", "4", "Blue.\r\n"]
    for fmt in ("chat", "plain"):
        ids, mask = retokenize(prompts, responses, tiny_tokenizer, fmt)
        for row, m, prompt, response in zip(ids, mask, prompts, responses):
            p_ids, r_ids = prompt_response_ids(tiny_tokenizer, prompt, response, fmt)
            assert row[m.bool()].tolist() == p_ids + r_ids  # what the reward model was trained on
        short, _ = retokenize(prompts, responses, tiny_tokenizer, fmt, max_length=5)
        assert short.shape[1] == 5
        assert short[0].tolist() == ids[0, : int(mask[0].sum())].tolist()[-5:]  # keeps the last tokens
