"""Best-of-N: (a) selection and the analytic KL against hand-computed values; (b) padding invariance of
reward scoring; (c) sampling and best-of-N on tiny random models (real tokenizer, real RewardModel)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rlhf_core.best_of_n import (
    Candidates,
    best_of_n,
    best_of_n_candidates,
    best_of_n_kl,
    reward_model_scores,
    reward_model_scores_ids,
    sample_responses,
    select_best,
    tokenize_prompts,
)

PROMPTS = ["How do I boil an egg?", "Give me tips for growing tomatoes.", "Why is the sky blue?"]


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    # tiny models run several times faster single-threaded on a loaded 2-core box
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tok():
    from rlhf_core.config.model import ModelConfig
    from rlhf_core.models import load_tokenizer

    from .conftest import MODEL_CACHE

    return load_tokenizer(ModelConfig(base="tiny"), MODEL_CACHE)


@pytest.fixture(scope="module")
def sft(tok):
    from rlhf_core.config.model import TinyModelConfig
    from rlhf_core.models import build_tiny_model

    return build_tiny_model(TinyModelConfig(seed=0), tok)


@pytest.fixture(scope="module")
def rm(tok):
    from rlhf_core.config.model import TinyModelConfig
    from rlhf_core.models import build_tiny_model
    from rlhf_core.reward.model import RewardModel

    return RewardModel.from_model(build_tiny_model(TinyModelConfig(seed=7), tok), pad_token_id=tok.pad_token_id)


# ----------------------------------------------------------------------------- tier a
def test_select_best_hand_computed():
    scores = np.array([[0.0, 3.0, 1.0, 5.0], [2.0, 2.0, 1.0, 0.0]])
    assert select_best(scores, 1).tolist() == [0, 0]
    assert select_best(scores, 2).tolist() == [1, 0]  # the tie in row 1 goes to the first candidate
    assert select_best(scores, 4).tolist() == [3, 0]
    with pytest.raises(ValueError, match="outside"):
        select_best(scores, 5)


def test_best_of_more_never_scores_below_best_of_fewer():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(50, 16))
    texts = [[f"{i}-{j}" for j in range(16)] for i in range(50)]
    cand = Candidates(prompts=[str(i) for i in range(50)], texts=texts, scores=scores, token_lengths=[[1] * 16] * 50)
    previous = None
    for n in (1, 2, 4, 8, 16):
        chosen, best, idx = cand.best(n)
        assert np.array_equal(best, scores[np.arange(50), idx])
        assert [t.split("-")[1] for t in chosen] == [str(j) for j in idx]
        if previous is not None:
            assert (best >= previous).all()
        previous = best
    assert np.array_equal(previous, scores.max(axis=1))


def test_best_of_n_kl_formula_and_exact_discrete_limit():
    assert best_of_n_kl(1) == 0.0
    assert best_of_n_kl(2) == pytest.approx(math.log(2) - 0.5)
    assert best_of_n_kl(16) == pytest.approx(math.log(16) - 15 / 16)
    # Exact KL of best-of-N over M equally likely outcomes with distinct rewards: the k-th worst is
    # picked with probability (k/M)^N - ((k-1)/M)^N; as M grows this tends to log N - (N-1)/N.
    M = 20000
    k = np.arange(1, M + 1)
    for n in (2, 4, 16):
        p = (k / M) ** n - ((k - 1) / M) ** n
        exact = float(np.sum(p * np.log(p * M)))
        assert exact == pytest.approx(best_of_n_kl(n), abs=2e-3)
        assert exact <= best_of_n_kl(n) + 1e-9  # the formula is an upper bound
    with pytest.raises(ValueError):
        best_of_n_kl(0)


# ----------------------------------------------------------------------------- tier b
def test_reward_scores_do_not_depend_on_padding(tok, rm):
    short = tok("hello there", add_special_tokens=False)["input_ids"]
    long = tok("a much longer sequence of words that forces padding of the short one", add_special_tokens=False)["input_ids"]
    alone = reward_model_scores_ids(rm, [short], pad_id=tok.pad_token_id)
    together = reward_model_scores_ids(rm, [long, short], pad_id=tok.pad_token_id, batch_size=2)
    assert together.shape == (2,)
    assert together[1] == pytest.approx(alone[0], abs=1e-5)


# ----------------------------------------------------------------------------- tier c
def test_sample_responses_deterministic_by_seed_and_leaves_global_rng_alone(tok, sft):
    ids = tokenize_prompts(sft, tok, PROMPTS, fmt="chat", max_new_tokens=6)
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = sample_responses(sft, tok, ids, n=2, max_new_tokens=6, temperature=0.7, seed=5, batch_size=4)
    assert torch.equal(torch.rand(3), expected_next)  # the caller's RNG stream is untouched
    b = sample_responses(sft, tok, ids, n=2, max_new_tokens=6, temperature=0.7, seed=5, batch_size=4)
    c = sample_responses(sft, tok, ids, n=2, max_new_tokens=6, temperature=0.7, seed=6, batch_size=4)
    assert len(a.texts) == 6 and len(a.grouped()) == 3 and all(len(g) == 2 for g in a.grouped())
    assert a.texts == b.texts and a.token_lengths == b.token_lengths
    assert a.texts != c.texts
    assert all(1 <= n <= 6 for n in a.token_lengths)
    assert a.kl is None
    assert [len(r) for r in a.response_ids] == a.token_lengths
    assert a.prompt_ids[0] == a.prompt_ids[1] == ids[0]  # prompt-major repeats


def test_best_of_n_picks_the_reward_models_favourite(tok, sft, rm):
    kwargs = dict(n=4, max_new_tokens=6, temperature=1.0, seed=3, batch_size=8)
    cand = best_of_n_candidates(sft, tok, rm, tok, PROMPTS, **kwargs)
    assert cand.scores.shape == (3, 4) and np.isfinite(cand.scores).all()
    chosen, best4, _ = cand.best(4)
    _, best1, idx1 = cand.best(1)
    assert (idx1 == 0).all()
    assert (best4 >= best1).all()  # a max over a superset of the same samples
    assert np.array_equal(best4, cand.scores.max(axis=1))
    assert len(set(cand.scores[0])) > 1  # the samples differ, so the choice is a real one
    # the public one-liner returns the same choice (deterministic by seed)
    assert best_of_n(sft, tok, rm, tok, PROMPTS, **kwargs) == chosen


def test_text_scoring_survives_responses_that_merge_with_the_chat_header(tok, rm):
    # a sampled response starting with "\r\n" tokenises together with the assistant header's "\n"
    scores = reward_model_scores(rm, tok, ["hi", "hi"], ["\r\r\n   odd start", "normal reply."], fmt="chat")
    assert scores.shape == (2,) and np.isfinite(scores).all()


def test_over_long_prompt_is_refused_naming_it(tok, sft):
    from rlhf_core.errors import DataError

    with pytest.raises(DataError, match="prompt #1 has .* tokens"):
        tokenize_prompts(sft, tok, ["short", "word " * 600], fmt="chat", max_new_tokens=8)


def test_text_scoring_renders_a_conversation_as_its_turns(tok, rm):
    history = [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello."},
               {"role": "user", "content": "How do I boil an egg?"}]
    scores = reward_model_scores(rm, tok, ["readable", "Why?"], ["Nine minutes.", "Because."], fmt="chat",
                                 contexts=[history, None])
    rendered = [
        tok.apply_chat_template([*history, {"role": "assistant", "content": "Nine minutes."}], tokenize=False),
        tok.apply_chat_template([{"role": "user", "content": "Why?"}, {"role": "assistant", "content": "Because."}],
                                tokenize=False),
    ]
    ids = [tok(text, add_special_tokens=False)["input_ids"] for text in rendered]
    assert scores.tolist() == reward_model_scores_ids(rm, ids, pad_id=tok.pad_token_id).tolist()
    with pytest.raises(ValueError, match="2 prompts, 1 contexts"):
        reward_model_scores(rm, tok, ["a", "b"], ["x", "y"], fmt="chat", contexts=[None])
