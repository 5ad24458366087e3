"""DPO / IPO: losses vs naive float64 references, then a tiny-model training run."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf_core.config.dpo import DPOConfig
from rlhf_core.config.optim import OptimConfig
from rlhf_core.dpo.loss import dpo_loss, sequence_logprobs
from rlhf_core.dpo.trainer import precompute_reference, tokenize_dpo_rows, train_dpo, visited_examples
from rlhf_core.errors import DataError
from rlhf_core.losses import IGNORE_INDEX
from rlhf_core.tracking import InMemoryTracker

from .conftest import CrashAt


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
        optim=OptimConfig(learning_rate=3e-3, max_steps=12, micro_batch_size=3, max_length=64),
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
    cfg = DPOConfig(prompt_format="plain", optim=OptimConfig(max_steps=1, micro_batch_size=1, max_length=16))
    with pytest.raises(DataError, match="chosen == rejected"):
        train_dpo(cfg, tiny_llama(tok), tok, [{"prompt": "a", "chosen": "b", "rejected": "b"}], output_dir=tmp_path)
    with pytest.raises(DataError, match="row q7: prompt\\+response has"):
        train_dpo(cfg, tiny_llama(tok), tok, [{"id": "q7", "prompt": "a" * 30, "chosen": "b", "rejected": "c"}],
                  output_dir=tmp_path)


# ----------------------------------------------------------------------------- reference precompute
def varied_pairs(n: int) -> list[dict[str, str]]:
    """``n`` distinct pairs of varied lengths (so length bucketing reorders them)."""
    return [
        {"id": f"v{i}", "prompt": f"q{i} " + "abc"[i % 3] * (i % 7), "chosen": "yes" + "!" * (i % 4), "rejected": "no"}
        for i in range(n)
    ]


def test_reference_precomputed_only_for_batches_the_loop_visits(tmp_path):
    from tests.test_ppo_loop import char_tokenizer, tiny_llama

    tok = char_tokenizer()
    pairs = varied_pairs(40)
    examples = tokenize_dpo_rows(pairs, tok, fmt="plain", max_length=64)
    index_of = {tuple(e.chosen_ids): i for i, e in enumerate(examples)}
    assert len(index_of) == 40
    policy = tiny_llama(tok)
    seen: dict[bool, list[list[int]]] = {True: [], False: []}  # module.training -> pair indices per forward

    def record(module, args, kwargs):  # every forward, in the test only: chosen rows are the first half
        ids, mask = kwargs["input_ids"], kwargs["attention_mask"]
        chosen = [tuple(row[m.bool()].tolist()) for row, m in zip(ids[: len(ids) // 2], mask[: len(ids) // 2])]
        seen[module.training].append([index_of[c] for c in chosen])

    handle = policy.register_forward_pre_hook(record, with_kwargs=True)
    optim = OptimConfig(learning_rate=1e-3, max_steps=3, micro_batch_size=2, grad_accum_steps=2, max_length=64)
    train_dpo(DPOConfig(prompt_format="plain", optim=optim), policy, tok, pairs, output_dir=tmp_path, seed=0)
    handle.remove()

    trained = {i for batch in seen[True] for i in batch}  # what the loop actually visited
    referenced = [i for batch in seen[False] for i in batch]
    assert len(seen[True]) == 3 * 2 and len(trained) == 3 * 4  # 3 steps x 2 micro-batches, within epoch 0
    assert trained <= set(referenced) and len(referenced) == len(set(referenced))  # each pair once
    # the forwards are the full pass's index-order batches of 2 that hold a visited pair, and no others
    batches = sorted({i // optim.micro_batch_size for i in trained})
    assert seen[False] == [[2 * b, 2 * b + 1] for b in batches]
    assert len(referenced) <= 2 * len(trained) < len(examples)
    assert visited_examples([e.length for e in examples], optim, seed=0) == sorted(trained)


@pytest.mark.parametrize("average", [False, True])
def test_partial_reference_is_bitwise_the_full_pass(average):
    from tests.test_ppo_loop import char_tokenizer, tiny_llama

    tok = char_tokenizer()
    model = tiny_llama(tok)
    examples = tokenize_dpo_rows(varied_pairs(30), tok, fmt="plain", max_length=64)
    pad = tok.pad_token_id
    full = precompute_reference(model, examples, pad, batch_size=4, average=average)
    part = precompute_reference(model, examples, pad, batch_size=4, average=average, indices=[3, 4, 17, 29])
    done = ~part[:, 0].isnan()
    assert done.tolist() == [i < 8 or 16 <= i < 20 or i >= 28 for i in range(30)]  # batches 0, 1, 4, 7 of 4
    assert torch.equal(part[done], full[done]) and not full.isnan().any()
    # once the steps cover an epoch, every pair is visited
    lengths = [e.length for e in examples]
    eight = visited_examples(lengths, OptimConfig(max_steps=8, micro_batch_size=2, grad_accum_steps=2), seed=0)
    assert eight == list(range(30))
    seven = visited_examples(lengths, OptimConfig(max_steps=7, micro_batch_size=2, grad_accum_steps=2), seed=0)
    assert len(seven) in (26, 28)  # all step batches of 4 but one (a full one or the short one of 2)


def test_dpo_partial_reference_trains_and_resumes_bitwise_like_the_full_precompute(tmp_path, monkeypatch):
    from rlhf_core.dpo import trainer
    from tests.test_ppo_loop import char_tokenizer, tiny_llama

    tok = char_tokenizer()
    pairs = varied_pairs(24)  # 6 steps per epoch: 4 steps visit 16 pairs
    cfg = DPOConfig(
        prompt_format="plain", beta=0.5,
        optim=OptimConfig(learning_rate=3e-3, max_steps=4, micro_batch_size=2, grad_accum_steps=2, max_length=64,
                          warmup_steps=1, checkpoint_every=2),
    )
    straight = tiny_llama(tok)
    reference = train_dpo(cfg, straight, tok, pairs, output_dir=tmp_path / "a", seed=3)

    with pytest.raises(KeyboardInterrupt):
        train_dpo(cfg, tiny_llama(tok), tok, pairs, output_dir=tmp_path / "b", tracker=CrashAt(3), seed=3)
    resumed_model = tiny_llama(tok)  # the same starting model: steps 3-4's reference values come from it
    resumed = train_dpo(cfg, resumed_model, tok, pairs, output_dir=tmp_path / "b", seed=3)
    assert resumed.resumed_from_step == 2 and resumed.steps == 4

    with monkeypatch.context() as m:  # the previous behaviour: reference log-probs for every pair
        m.setattr(trainer, "visited_examples", lambda lengths, optim, seed: list(range(len(lengths))))
        everything = tiny_llama(tok)
        full = train_dpo(cfg, everything, tok, pairs, output_dir=tmp_path / "c", seed=3)

    for run in (resumed, full):
        assert [h["dpo/loss"] for h in run.history] == [h["dpo/loss"] for h in reference.history]
    for name, value in straight.state_dict().items():
        assert torch.equal(resumed_model.state_dict()[name], value), name
        assert torch.equal(everything.state_dict()[name], value), name
    assert not torch.equal(tiny_llama(tok).state_dict()["lm_head.weight"], straight.state_dict()["lm_head.weight"])
