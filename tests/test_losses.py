"""Tier (a)/(b) tests of rlhf_core.losses: optimized functions vs naive float64 python loops
on fresh random inputs (random seeds, shapes and masks), plus invariants."""

from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F

from rlhf_core.losses import (
    IGNORE_INDEX,
    bradley_terry_loss,
    count_loss_tokens,
    gather_logprobs,
    kwise_ranking_loss,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
    sft_loss,
    sft_loss_sum,
)

SEEDS = [0, 1, 2, 3, 4]


def _rand_shape(rng: random.Random) -> tuple[int, int]:
    return rng.randint(1, 5), rng.randint(2, 9)


def _rand_mask(g: torch.Generator, shape: tuple[int, ...], *, at_least: int = 1) -> torch.Tensor:
    mask = torch.rand(shape, generator=g) < 0.6
    flat = mask.view(-1)
    flat[torch.randperm(flat.numel(), generator=g)[:at_least]] = True  # never (too) empty
    return mask


# ---------------------------------------------------------------------------- naive references
def ref_log_softmax_at(row: list[float], idx: int) -> float:
    m = max(row)
    return row[idx] - (m + math.log(sum(math.exp(x - m) for x in row)))


def ref_log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def ref_masked(values: list[list[float]], mask: list[list[bool]]) -> list[float]:
    return [v for vr, mr in zip(values, mask) for v, m in zip(vr, mr) if m]


# ---------------------------------------------------------------------------- reductions
@pytest.mark.parametrize("seed", SEEDS)
def test_masked_reductions_match_python_loops(seed: int) -> None:
    rng, g = random.Random(seed), torch.Generator().manual_seed(seed)
    B, T = _rand_shape(rng)
    values = torch.randn(B, T, generator=g, dtype=torch.float64)
    mask = _rand_mask(g, (B, T), at_least=2)
    sel = ref_masked(values.tolist(), mask.tolist())
    mean = sum(sel) / len(sel)
    var = sum((x - mean) ** 2 for x in sel) / (len(sel) - 1)
    assert masked_sum(values, mask).item() == pytest.approx(sum(sel), abs=1e-12)
    assert masked_mean(values, mask).item() == pytest.approx(mean, abs=1e-12)
    assert masked_var(values, mask).item() == pytest.approx(var, abs=1e-12)
    assert masked_var(values, mask, unbiased=False).item() == pytest.approx(var * (len(sel) - 1) / len(sel), abs=1e-12)
    assert masked_var(values, mask, dim=(0, 1)).item() == pytest.approx(var, abs=1e-12)
    assert masked_mean(values, mask, dim=(0, 1)).item() == pytest.approx(mean, abs=1e-12)
    # per-row reductions (dim=1)
    row_sums = masked_sum(values, mask, dim=1)
    row_means = masked_mean(values, mask, dim=1)
    for b in range(B):
        row = [v for v, m in zip(values[b].tolist(), mask[b].tolist()) if m]
        assert row_sums[b].item() == pytest.approx(sum(row), abs=1e-12)
        if row:
            assert row_means[b].item() == pytest.approx(sum(row) / len(row), abs=1e-12)
            if len(row) > 1:
                rv = sum((x - sum(row) / len(row)) ** 2 for x in row) / (len(row) - 1)
                assert masked_var(values, mask, dim=1)[b].item() == pytest.approx(rv, abs=1e-12)
        else:
            assert math.isnan(row_means[b].item())  # mean over nothing is undefined, not 0


@pytest.mark.parametrize("seed", SEEDS)
def test_masked_whiten_matches_reference(seed: int) -> None:
    rng, g = random.Random(seed), torch.Generator().manual_seed(seed)
    B, T = _rand_shape(rng)
    values = 3.0 + 2.0 * torch.randn(B, T, generator=g, dtype=torch.float64)
    mask = _rand_mask(g, (B, T), at_least=2)
    sel = ref_masked(values.tolist(), mask.tolist())
    mean = sum(sel) / len(sel)
    std = math.sqrt(sum((x - mean) ** 2 for x in sel) / (len(sel) - 1) + 1e-8)
    for shift_mean in (True, False):
        out = masked_whiten(values, mask, shift_mean=shift_mean)
        for b in range(B):
            for t in range(T):
                if mask[b, t]:
                    expect = (values[b, t].item() - mean) / std + (0.0 if shift_mean else mean)
                    assert out[b, t].item() == pytest.approx(expect, abs=1e-9)
                else:
                    assert out[b, t].item() == 0.0
    whitened = masked_whiten(values, mask)
    if len(sel) > 2:
        assert masked_mean(whitened, mask).item() == pytest.approx(0.0, abs=1e-9)
        assert masked_var(whitened, mask).item() == pytest.approx(1.0, abs=1e-6)


def test_masked_ops_ignore_nan_in_padding() -> None:
    values = torch.tensor([[1.0, 2.0, float("nan")], [3.0, float("inf"), 5.0]])
    mask = torch.tensor([[True, True, False], [True, False, True]])
    assert masked_sum(values, mask).item() == 11.0
    assert masked_mean(values, mask).item() == 11.0 / 4
    assert torch.isfinite(masked_whiten(values, mask)).all()


def test_masked_var_refuses_fewer_than_two_elements() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        masked_var(torch.randn(2, 3), torch.tensor([[True, False, False], [False, False, False]]))


# ---------------------------------------------------------------------------- gather_logprobs
@pytest.mark.parametrize("seed", SEEDS)
def test_gather_logprobs_vs_python_loop_and_log_softmax(seed: int) -> None:
    rng, g = random.Random(seed), torch.Generator().manual_seed(seed)
    B, T = _rand_shape(rng)
    V = rng.randint(3, 40)
    logits = 4 * torch.randn(B, T, V, generator=g, dtype=torch.float64)
    labels = torch.randint(0, V, (B, T), generator=g)
    out = gather_logprobs(logits, labels)
    assert out.shape == (B, T)
    rows = logits.tolist()
    for b in range(B):
        for t in range(T):
            assert out[b, t].item() == pytest.approx(ref_log_softmax_at(rows[b][t], labels[b, t].item()), abs=1e-10)
    # fp32 path vs the full log_softmax + gather it replaces
    logits32 = logits.float()
    expect32 = logits32.log_softmax(-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(gather_logprobs(logits32, labels), expect32, atol=1e-5, rtol=1e-5)


def test_gather_logprobs_half_precision_and_ignore_index() -> None:
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(3, 6, 50, generator=g)
    labels = torch.randint(0, 50, (3, 6), generator=g)
    expect = logits.log_softmax(-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    out_bf16 = gather_logprobs(logits.bfloat16(), labels)
    assert out_bf16.dtype == torch.float32
    # bf16 logits carry ~3 significant digits; the fp32 log_softmax inside keeps it at that
    torch.testing.assert_close(out_bf16, expect, atol=0.05, rtol=0.02)
    labels_ignored = labels.clone()
    labels_ignored[:, :2] = IGNORE_INDEX
    out = gather_logprobs(logits, labels_ignored)  # must not raise on -100
    torch.testing.assert_close(out[:, 2:], expect[:, 2:])


def test_gather_logprobs_gradient_matches_log_softmax() -> None:
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 5, 11, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 11, (2, 5), generator=g)
    w = torch.randn(2, 5, generator=g, dtype=torch.float64)
    (grad_fast,) = torch.autograd.grad((gather_logprobs(logits, labels) * w).sum(), logits)
    ref = logits.log_softmax(-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    (grad_ref,) = torch.autograd.grad((ref * w).sum(), logits)
    torch.testing.assert_close(grad_fast, grad_ref)


# ---------------------------------------------------------------------------- SFT
def _rand_sft_batch(seed: int, dtype=torch.float64):
    rng, g = random.Random(seed), torch.Generator().manual_seed(seed)
    B, T = rng.randint(1, 5), rng.randint(3, 10)
    V = rng.randint(3, 30)
    logits = 3 * torch.randn(B, T, V, generator=g, dtype=dtype)
    labels = torch.randint(0, V, (B, T), generator=g)
    for b in range(B):  # completion-only: a random prompt prefix and right padding are -100
        prompt = rng.randint(0, T - 2)
        pad = rng.randint(0, T - prompt - 2)
        labels[b, :prompt] = IGNORE_INDEX
        if pad:
            labels[b, T - pad :] = IGNORE_INDEX
    return logits, labels


def ref_sft(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, int]:
    rows, labs = logits.tolist(), labels.tolist()
    total, n = 0.0, 0
    for b in range(len(labs)):
        for t in range(len(labs[b]) - 1):
            y = labs[b][t + 1]
            if y != IGNORE_INDEX:
                total -= ref_log_softmax_at(rows[b][t], y)
                n += 1
    return total, n


@pytest.mark.parametrize("seed", SEEDS)
def test_sft_loss_vs_python_loop_and_cross_entropy(seed: int) -> None:
    logits, labels = _rand_sft_batch(seed)
    total, n = ref_sft(logits, labels)
    loss, stats = sft_loss(logits, labels)
    assert loss.item() == pytest.approx(total / n, abs=1e-10)
    assert stats["sft/tokens"] == n == count_loss_tokens(labels)
    assert stats["sft/loss"] == pytest.approx(total / n, abs=1e-10)
    ce = F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX
    )
    loss32, _ = sft_loss(logits.float(), labels)
    torch.testing.assert_close(loss32, ce, atol=1e-5, rtol=1e-5)
    s, n2 = sft_loss_sum(logits, labels)
    assert (s.item(), n2) == (pytest.approx(total, abs=1e-9), n)


def test_sft_loss_agrees_with_gather_logprobs_path_and_bf16() -> None:
    logits, labels = _rand_sft_batch(5, dtype=torch.float32)
    mask = labels[:, 1:] != IGNORE_INDEX
    via_gather = masked_mean(-gather_logprobs(logits[:, :-1], labels[:, 1:]), mask)
    loss, _ = sft_loss(logits, labels)
    torch.testing.assert_close(loss, via_gather, atol=1e-5, rtol=1e-5)
    loss_bf16, _ = sft_loss(logits.bfloat16(), labels)
    assert loss_bf16.dtype == torch.float32
    assert loss_bf16.item() == pytest.approx(loss.item(), rel=0.02)  # bf16 logits, fp32 reduction


def test_sft_loss_gradient_matches_cross_entropy() -> None:
    logits, labels = _rand_sft_batch(11)
    logits = logits.float().requires_grad_(True)
    (g_fast,) = torch.autograd.grad(sft_loss(logits, labels)[0], logits)
    ce = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX)
    (g_ref,) = torch.autograd.grad(ce, logits)
    torch.testing.assert_close(g_fast, g_ref, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("seed", SEEDS)
def test_sft_loss_padding_invariance(seed: int) -> None:
    """Extra padded positions (label -100, arbitrary even non-finite logits) change nothing."""
    logits, labels = _rand_sft_batch(seed)
    loss, stats = sft_loss(logits, labels)
    B, T, V = logits.shape
    extra = random.Random(seed).randint(1, 4)
    padded_logits = torch.cat([logits, torch.full((B, extra, V), float("nan"), dtype=logits.dtype)], dim=1)
    padded_labels = torch.cat([labels, torch.full((B, extra), IGNORE_INDEX)], dim=1)
    # a whole padding row in the batch too
    padded_logits = torch.cat([padded_logits, 100 * torch.randn(1, T + extra, V, dtype=logits.dtype)], dim=0)
    padded_labels = torch.cat([padded_labels, torch.full((1, T + extra), IGNORE_INDEX)], dim=0)
    loss_p, stats_p = sft_loss(padded_logits, padded_labels)
    assert loss_p.item() == pytest.approx(loss.item(), abs=1e-12)
    assert stats_p["sft/tokens"] == stats["sft/tokens"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sft_grad_accumulation_equals_one_big_batch(seed: int) -> None:
    """Summing sft_loss_sum / total tokens over micro-batches reproduces the big-batch gradient."""
    g = torch.Generator().manual_seed(seed)
    logits, labels = _rand_sft_batch(seed + 100)
    while logits.shape[0] < 3:
        more_l, more_y = _rand_sft_batch(int(torch.randint(0, 10**6, (1,), generator=g)))
        T = min(logits.shape[1], more_l.shape[1])
        V = min(logits.shape[2], more_l.shape[2])
        logits = torch.cat([logits[:, :T, :V], more_l[:, :T, :V]])
        labels = torch.cat([labels[:, :T].clamp(max=V - 1), more_y[:, :T].clamp(max=V - 1)])
        labels[labels < 0] = IGNORE_INDEX
    logits = logits.requires_grad_(True)
    (g_big,) = torch.autograd.grad(sft_loss(logits, labels)[0], logits)
    chunks = [slice(0, 1), slice(1, logits.shape[0])]
    n_total = sum(count_loss_tokens(labels[c]) for c in chunks)
    grad = torch.zeros_like(logits)
    for c in chunks:
        s, _ = sft_loss_sum(logits[c], labels[c])
        (gc,) = torch.autograd.grad(s / n_total, logits)
        grad += gc
    torch.testing.assert_close(grad, g_big, atol=1e-12, rtol=1e-10)


def test_sft_loss_refuses_batch_without_labels() -> None:
    with pytest.raises(ValueError, match="no completion tokens"):
        sft_loss(torch.randn(2, 4, 5), torch.full((2, 4), IGNORE_INDEX))
    assert sft_loss_sum(torch.randn(2, 4, 5), torch.full((2, 4), IGNORE_INDEX))[1] == 0


# ---------------------------------------------------------------------------- Bradley-Terry
def ref_bt(rc: list[float], rr: list[float], margin: list[float] | None, center_coef: float) -> float:
    m = margin or [0.0] * len(rc)
    bt = -sum(ref_log_sigmoid(c - r - mm) for c, r, mm in zip(rc, rr, m)) / len(rc)
    return bt + center_coef * sum((c + r) ** 2 for c, r in zip(rc, rr)) / len(rc)


@pytest.mark.parametrize("seed", SEEDS)
def test_bradley_terry_vs_reference_with_gradient(seed: int) -> None:
    rng, g = random.Random(seed), torch.Generator().manual_seed(seed)
    B = rng.randint(1, 12)
    rc = (2 * torch.randn(B, generator=g, dtype=torch.float64)).requires_grad_(True)
    rr = (2 * torch.randn(B, generator=g, dtype=torch.float64)).requires_grad_(True)
    margin = torch.rand(B, generator=g, dtype=torch.float64) if seed % 2 else None
    coef = rng.choice([0.0, 0.01, 0.5])
    loss, stats = bradley_terry_loss(rc, rr, margin=margin, center_coef=coef)
    expect = ref_bt(rc.tolist(), rr.tolist(), None if margin is None else margin.tolist(), coef)
    assert loss.dtype == torch.float64  # fp64 rewards are not rounded to fp32
    assert loss.item() == pytest.approx(expect, abs=1e-12)
    assert stats["rm/loss"] == pytest.approx(expect, abs=1e-12)
    c, r = rc.tolist(), rr.tolist()
    assert stats["rm/accuracy"] == pytest.approx(sum(ci > ri for ci, ri in zip(c, r)) / B)
    assert stats["rm/margin"] == pytest.approx(sum(ci - ri for ci, ri in zip(c, r)) / B, abs=1e-6)
    assert stats["rm/chosen_reward"] == pytest.approx(sum(c) / B, abs=1e-6)
    assert stats["rm/rejected_reward"] == pytest.approx(sum(r) / B, abs=1e-6)
    # gradient vs autograd through the naive float64 formula
    gc, gr = torch.autograd.grad(loss, (rc, rr))
    m = torch.zeros(B, dtype=torch.float64) if margin is None else margin
    ref = -F.logsigmoid(rc - rr - m).mean() + coef * ((rc + rr) ** 2).mean()
    rgc, rgr = torch.autograd.grad(ref, (rc, rr))
    torch.testing.assert_close(gc, rgc, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(gr, rgr, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(
    ("dtype", "computed_in"),
    [(torch.bfloat16, torch.float32), (torch.float16, torch.float32), (torch.float32, torch.float32),
     (torch.float64, torch.float64)],
)
def test_bradley_terry_upcasts_only_half_precision(dtype, computed_in) -> None:
    rc = torch.tensor([0.5, -1.25, 2.0], dtype=dtype, requires_grad=True)
    rr = torch.tensor([0.25, 0.5, -0.75], dtype=dtype, requires_grad=True)
    margin = torch.tensor([0.0, 0.5, 1.0])  # fp32, as collate_pairs makes it
    loss, stats = bradley_terry_loss(rc, rr, margin=margin, center_coef=0.1)
    assert loss.dtype == computed_in
    # these values are exact in every dtype, so every dtype gives the same figures
    expect = ref_bt(rc.tolist(), rr.tolist(), margin.tolist(), 0.1)
    assert loss.item() == pytest.approx(expect, abs=1e-12 if dtype == torch.float64 else 1e-6)
    assert stats["rm/margin"] == pytest.approx((0.25 - 1.75 + 2.75) / 3)
    gc, gr = torch.autograd.grad(loss, (rc, rr))
    assert gc.dtype == dtype and gr.dtype == dtype and torch.isfinite(gc).all()


def test_bradley_terry_fp64_keeps_differences_fp32_cannot_represent() -> None:
    # 1e8 + 1 rounds to 1e8 in fp32 (24-bit mantissa): a downcast would see a tie (loss log 2)
    rc = torch.tensor([1e8 + 1.0], dtype=torch.float64)
    rr = torch.tensor([1e8], dtype=torch.float64)
    loss, stats = bradley_terry_loss(rc, rr)
    assert loss.item() == pytest.approx(-ref_log_sigmoid(1.0), rel=1e-12)
    assert stats["rm/margin"] == 1.0 and stats["rm/accuracy"] == 1.0


def test_bradley_terry_centering_term_and_ties() -> None:
    rc, rr = torch.tensor([3.0, 1.0]), torch.tensor([1.0, 1.0])
    plain, _ = bradley_terry_loss(rc, rr)
    centered, stats = bradley_terry_loss(rc, rr, center_coef=0.1)
    penalty = ((3 + 1) ** 2 + (1 + 1) ** 2) / 2
    assert stats["rm/center_penalty"] == pytest.approx(penalty)
    assert centered.item() == pytest.approx(plain.item() + 0.1 * penalty, abs=1e-6)
    assert stats["rm/accuracy"] == pytest.approx(0.75)  # one win, one tie (counts half)
    # centering pulls the pair mean toward zero without changing the difference's gradient sign
    shift = torch.zeros(2, requires_grad=True)
    (g,) = torch.autograd.grad(bradley_terry_loss(rc + shift, rr + shift, center_coef=0.1)[0], shift)
    assert (g > 0).all()  # moving both rewards up increases the loss (pair sums are positive)


# ---------------------------------------------------------------------------- K-wise
def ref_kwise(rewards: list[list[float]], valid: list[list[bool]], coef: float) -> tuple[float, float, int]:
    losses, accs, n_pairs = [], [], 0
    for r, v in zip(rewards, valid):
        idx = [i for i, ok in enumerate(v) if ok]
        pairs = [(idx[a], idx[b]) for a in range(len(idx)) for b in range(a + 1, len(idx))]
        if not pairs:
            continue
        n_pairs += len(pairs)
        lp = [-ref_log_sigmoid(r[i] - r[j]) + coef * (r[i] + r[j]) ** 2 for i, j in pairs]
        losses.append(sum(lp) / len(pairs))  # the 1/C(K,2) of InstructGPT eq. 1
        accs.append(sum((r[i] > r[j]) + 0.5 * (r[i] == r[j]) for i, j in pairs) / len(pairs))
    return sum(losses) / len(losses), sum(accs) / len(accs), n_pairs


@pytest.mark.parametrize("seed", SEEDS)
def test_kwise_vs_reference_ragged(seed: int) -> None:
    rng, g = random.Random(seed), torch.Generator().manual_seed(seed)
    B, K = rng.randint(1, 6), rng.randint(2, 7)
    rewards = (2 * torch.randn(B, K, generator=g, dtype=torch.float64)).requires_grad_(True)
    valid = torch.zeros(B, K, dtype=torch.bool)
    for b in range(B):
        valid[b, : rng.randint(2 if b == 0 else 0, K)] = True  # ragged K (row 0 always has a pair)
    coef = rng.choice([0.0, 0.05])
    loss, stats = kwise_ranking_loss(rewards, valid=valid, center_coef=coef)
    exp_loss, exp_acc, exp_pairs = ref_kwise(rewards.tolist(), valid.tolist(), coef)
    assert loss.item() == pytest.approx(exp_loss, abs=1e-5)
    assert stats["rm/accuracy"] == pytest.approx(exp_acc, abs=1e-6)
    assert stats["rm/pairs"] == exp_pairs
    # padding slots (invalid) carry garbage without effect, and their gradient is exactly 0
    (grad,) = torch.autograd.grad(loss, rewards)
    assert (grad[~valid] == 0).all()
    garbage = rewards.detach().clone()
    garbage[~valid] = float("nan")
    assert kwise_ranking_loss(garbage, valid=valid, center_coef=coef)[0].item() == pytest.approx(loss.item(), abs=1e-6)


@pytest.mark.parametrize("seed", SEEDS)
def test_kwise_with_k2_equals_bradley_terry(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    B = 1 + seed
    rc, rr = torch.randn(B, generator=g), torch.randn(B, generator=g)
    kw, kstats = kwise_ranking_loss(torch.stack([rc, rr], dim=1), center_coef=0.2)
    bt, bstats = bradley_terry_loss(rc, rr, center_coef=0.2)
    assert kw.item() == pytest.approx(bt.item(), abs=1e-6)
    for key in ("rm/accuracy", "rm/margin", "rm/center_penalty"):
        assert kstats[key] == pytest.approx(bstats[key], abs=1e-6)


def test_kwise_is_per_prompt_average_not_per_pair() -> None:
    """A K=4 prompt (6 pairs) weighs the same as a K=2 prompt (1 pair): InstructGPT's 1/C(K,2)."""
    rewards = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0]])
    valid = torch.tensor([[True, True, True, True], [True, True, False, False]])
    loss, _ = kwise_ranking_loss(rewards, valid=valid)
    lp = lambda x: -ref_log_sigmoid(x)  # noqa: E731
    p0 = (3 * lp(1.0) + 3 * lp(0.0)) / 6
    p1 = lp(-2.0)
    assert loss.item() == pytest.approx((p0 + p1) / 2, abs=1e-6)


def test_kwise_refuses_batch_without_pairs() -> None:
    with pytest.raises(ValueError, match="two valid responses"):
        kwise_ranking_loss(torch.randn(2, 3), valid=torch.tensor([[True, False, False], [False, False, False]]))
