"""DPO / IPO: losses vs naive float64 references, then a tiny-model training run."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf_core.dpo.config import DPOConfig
from rlhf_core.dpo.loss import dpo_loss, sequence_logprobs
from rlhf_core.dpo.trainer import train_dpo
from rlhf_core.errors import DataError
from rlhf_core.losses import IGNORE_INDEX
from rlhf_core.tracking import InMemoryTracker
from rlhf_core.train_config import OptimConfig


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models on a shared 2-core box, see test_ppo_loop.py
    yield
    torch.set_num_threads(threads)


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("loss_type,smoothing", [("sigmoid", 0.0), ("sigmoid", 0.2), ("ipo", 0.0)])
def test_dpo_loss_matches_naive(seed, loss_type, smoothing):
    gen = torch.Generator().manual_seed(seed)
    pc, pr, rc, rr = (torch.randn(6, generator=gen, dtype=torch.float64) * 3 for _ in range(4))
    beta = 0.3
    loss, stats = dpo_loss(pc, pr, rc, rr, beta=beta, loss_type=loss_type, label_smoothing=smoothing)
    total, correct, margins = 0.0, 0, []
    for i in range(6):
        h = (float(pc[i]) - float(pr[i])) - (float(rc[i]) - float(rr[i]))
        if loss_type == "sigmoid":
            total += -(1 - smoothing) * log_sigmoid(beta * h) - smoothing * log_sigmoid(-beta * h)
        else:
            total += (h - 1 / (2 * beta)) ** 2
        chosen_r, rejected_r = beta * (float(pc[i]) - float(rc[i])), beta * (float(pr[i]) - float(rr[i]))
        correct += chosen_r > rejected_r
        margins.append(chosen_r - rejected_r)
    assert math.isclose(float(loss), total / 6, rel_tol=1e-10)
    assert math.isclose(stats["dpo/accuracy"], correct / 6, rel_tol=1e-9)
    assert math.isclose(stats["dpo/margin"], sum(margins) / 6, rel_tol=1e-9, abs_tol=1e-12)
    inputs = tuple(t.clone().requires_grad_(True) for t in (pc, pr))
    assert torch.autograd.gradcheck(
        lambda a, b: dpo_loss(a, b, rc, rr, beta=beta, loss_type=loss_type, label_smoothing=smoothing)[0], inputs
    )


def test_dpo_loss_at_reference_is_log2():
    lp = torch.randn(5, dtype=torch.float64)
    loss, stats = dpo_loss(lp, lp - 1, lp, lp - 1, beta=0.1)
    assert math.isclose(float(loss), math.log(2), rel_tol=1e-12)
    assert stats["dpo/margin"] == 0.0 and stats["dpo/accuracy"] == 0.0
    with pytest.raises(ValueError, match="loss_type"):
        dpo_loss(lp, lp, lp, lp, beta=0.1, loss_type="hinge")


@pytest.mark.parametrize("seed", [0, 1])
def test_sequence_logprobs_matches_naive(seed):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 6, 9, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 9, (3, 6), generator=gen)
    labels[:, :2] = IGNORE_INDEX  # prompt
    labels[1, 4:] = IGNORE_INDEX  # padding
    total, n = sequence_logprobs(logits, labels)
    mean, _ = sequence_logprobs(logits, labels, average=True)
    for b in range(3):
        acc, count = 0.0, 0
        for t in range(1, 6):
            if labels[b, t] != IGNORE_INDEX:
                row = logits[b, t - 1]
                acc += float(row[labels[b, t]] - torch.logsumexp(row, -1))
                count += 1
        assert math.isclose(float(total[b]), acc, rel_tol=1e-10) and int(n[b]) == count
        assert math.isclose(float(mean[b]), acc / count, rel_tol=1e-10)


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_train_dpo_tiny_learns_preference(tmp_path, loss_type):
    from tests.test_ppo_loop import char_tokenizer, tiny_llama

    tok = char_tokenizer()
    prompts = ["hello", "how are you", "tell me", "a question", "say it", "why not"]
    pairs = [{"id": f"p{i}", "prompt": p, "chosen": "yes yes", "rejected": "no no"} for i, p in enumerate(prompts)]
    policy = tiny_llama(tok)
    cfg = DPOConfig(
        enabled=True, beta=0.5, loss_type=loss_type, prompt_format="plain",
        optim=OptimConfig(learning_rate=3e-3, max_steps=12, batch_size=3, max_length=64),
    )
    tracker = InMemoryTracker()
    result = train_dpo(cfg, policy, tok, pairs, output_dir=tmp_path, tracker=tracker, seed=0)
    margins = [v for _, v in tracker.series("dpo/margin")]
    losses = [v for _, v in tracker.series("dpo/loss")]
    assert margins[0] < margins[-1] and margins[-1] > 0
    assert losses[-1] < losses[0]
    assert tracker.series("dpo/accuracy")[-1][1] == 1.0
    assert result.steps == 12 and (result.model_dir / "rlhf_stage.json").is_file()


def test_train_dpo_rejects_degenerate_pairs(tmp_path):
    from tests.test_ppo_loop import char_tokenizer, tiny_llama

    tok = char_tokenizer()
    cfg = DPOConfig(prompt_format="plain", optim=OptimConfig(max_steps=1, batch_size=1, max_length=16))
    with pytest.raises(DataError, match="chosen == rejected"):
        train_dpo(cfg, tiny_llama(tok), tok, [{"prompt": "a", "chosen": "b", "rejected": "b"}], output_dir=tmp_path)
    with pytest.raises(DataError, match="row q7: prompt\\+response has"):
        train_dpo(cfg, tiny_llama(tok), tok, [{"id": "q7", "prompt": "a" * 30, "chosen": "b", "rejected": "c"}],
                  output_dir=tmp_path)
