"""Tier (b)/(c): rollout and log-probs on a tiny Llama, then the whole PPO loop on a toy reward.

The policy is a 2-layer Llama over a 97-symbol character tokenizer (vocab 128), so a single
target token starts at ~1% probability and a trivially learnable reward visibly rises within
a few dozen PPO steps on CPU.
"""

from __future__ import annotations

import math

import pytest
import torch

from rlhf_core.config.optim import OptimConfig
from rlhf_core.config.ppo import PPOConfig
from rlhf_core.errors import ConfigError, DataError, TrainingError
from rlhf_core.ppo.logprobs import policy_forward, policy_logprobs
from rlhf_core.ppo.trainer import train_ppo
from rlhf_core.sampling import left_pad, sample, sample_tokens, truncate_after_eos
from rlhf_core.tracking import InMemoryTracker

PROMPTS = ["hello there", "how are you", "tell me a story", "what is two plus two", "name a colour",
           "say something", "good morning", "why is the sky blue"]
TARGET = "z"  # absent from every prompt


def char_tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, **{chr(c): i + 2 for i, c in enumerate(range(32, 127))}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tk.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>")


def tiny_llama(tokenizer, seed: int = 0, vocab: int = 128):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=128, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


class TokenFractionReward(torch.nn.Module):
    """RewardModel interface: reward = share of the last ``n`` real tokens equal to ``token_id``."""

    def __init__(self, token_id: int, n: int, fail_at_call: int | None = None) -> None:
        super().__init__()
        self.token_id, self.n, self.fail_at_call, self.calls = token_id, n, fail_at_call, 0

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        hits = ((input_ids == self.token_id) & attention_mask.bool()).sum(-1).float()  # (B,)
        out = hits / self.n
        if self.fail_at_call is not None and self.calls >= self.fail_at_call:
            out = out * float("nan")
        return out


def ppo_cfg(**overrides) -> PPOConfig:
    optim = {"learning_rate": 3e-3, "max_steps": 4, "micro_batch_size": 4, "max_length": 64, **overrides.pop("optim", {})}
    base = {
        "optim": OptimConfig(**optim), "rollout_batch_size": 8, "max_new_tokens": 8, "ppo_epochs": 2,
        "prompt_format": "plain", "temperature": 1.0, "kl_coef": 0.02, "value_init": "policy",
    }
    return PPOConfig(**{**base, **overrides})


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # tiny models: one intra-op thread is faster, and on a shared 2-core box torch's spinning
    # worker threads make a step many times slower (bench/README.md)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer()


def params_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


# ----------------------------------------------------------------------------- rollout pieces
def test_policy_logprobs_match_unpadded_naive(tok):
    model = tiny_llama(tok).eval()
    queries = [tok(p, add_special_tokens=False)["input_ids"] for p in PROMPTS[:3]]
    torch.manual_seed(1)
    ro = sample(model, queries, max_new_tokens=6, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id, temperature=1.0)
    lp = policy_logprobs(model, ro.query_response_ids, ro.attention_mask, ro.response_start, temperature=0.7)
    assert lp.shape == ro.response_ids.shape
    model64 = tiny_llama(tok).double().eval()
    for b, query in enumerate(queries):
        resp = ro.response_ids[b][ro.response_mask[b]].tolist()
        with torch.no_grad():
            logits = model64(torch.tensor([query + resp])).logits[0]  # unpadded, float64
        for i, token in enumerate(resp):
            row = logits[len(query) - 1 + i] / 0.7
            expected = float(row[token] - torch.logsumexp(row, -1))
            assert math.isclose(float(lp[b, i].detach()), expected, abs_tol=1e-4)


def test_greedy_sampling_matches_generate(tok):
    model = tiny_llama(tok, seed=3).eval()
    q_ids, q_mask = left_pad([tok(p, add_special_tokens=False)["input_ids"] for p in PROMPTS[:4]], tok.pad_token_id)
    ours = sample_tokens(model, q_ids, q_mask, max_new_tokens=7, eos_id=-1, pad_id=0, temperature=0).tokens
    with torch.no_grad():
        ref = model.generate(
            input_ids=q_ids, attention_mask=q_mask, max_new_tokens=7, min_new_tokens=7, do_sample=False,
            pad_token_id=0, eos_token_id=None,
        )[:, q_ids.shape[1]:]
    assert torch.equal(ours, ref)


def test_sampling_respects_top_k(tok):
    model = tiny_llama(tok).eval()
    q_ids, q_mask = left_pad([tok("hi", add_special_tokens=False)["input_ids"]] * 16, tok.pad_token_id)
    torch.manual_seed(0)
    out = sample_tokens(model, q_ids, q_mask, max_new_tokens=1, eos_id=1, pad_id=0, temperature=1.0, top_k=1).tokens
    assert out.unique().numel() == 1  # top-1 is greedy whatever the temperature


@pytest.mark.parametrize("top_k,top_p", [(0, 1.0), (5, 0.9)])
def test_sampler_logprobs_and_hidden_equal_a_full_forward_pass(tok, top_k, top_p):
    """What the sampling loop reads off (log-probs under the tempered, unfiltered distribution; the final
    hidden state before each token) is what one full forward pass over prompt + response computes."""
    model = tiny_llama(tok, seed=2).eval()
    queries = [tok(p, add_special_tokens=False)["input_ids"] for p in PROMPTS[:5]]
    kwargs = {"max_new_tokens": 9, "eos_id": tok.eos_token_id, "pad_id": tok.pad_token_id, "temperature": 0.8,
              "top_k": top_k, "top_p": top_p}
    torch.manual_seed(4)
    plain = sample(model, queries, **kwargs)
    torch.manual_seed(4)
    ro = sample(model, queries, score_tokens=True, keep_hidden=True, **kwargs)
    assert torch.equal(plain.response_ids, ro.response_ids)  # scoring draws nothing from the RNG
    assert plain.logprobs is None and plain.hidden is None
    full = policy_forward(model, ro.query_response_ids, ro.attention_mask, ro.response_start, 0.8, output_hidden=True)
    m = ro.response_mask
    assert ro.logprobs.shape == m.shape and ro.hidden.shape == (*m.shape, model.config.hidden_size)
    assert torch.allclose(ro.logprobs[m], full.logprobs[m], atol=1e-5, rtol=0)
    assert torch.allclose(ro.hidden[m], full.hidden[m], atol=1e-5, rtol=0)
    assert bool((ro.logprobs[m] < 0).all())


def test_sample_is_the_loop_on_left_padded_prompts_truncated_after_eos(tok):
    """The one sampler = left_pad + sample_tokens + truncate_after_eos, with the same draws."""
    model = tiny_llama(tok, seed=2).eval()
    queries = [tok(p, add_special_tokens=False)["input_ids"] for p in PROMPTS[:5]]
    kwargs = {"max_new_tokens": 9, "eos_id": [tok.eos_token_id, 7], "pad_id": tok.pad_token_id, "temperature": 0.8,
              "top_p": 0.9}
    torch.manual_seed(7)
    ro = sample(model, queries, **kwargs)
    q_ids, q_mask = left_pad(queries, tok.pad_token_id)
    torch.manual_seed(7)
    ids, mask = truncate_after_eos(sample_tokens(model, q_ids, q_mask, **kwargs).tokens, [tok.eos_token_id, 7],
                                   tok.pad_token_id)
    assert torch.equal(ro.query_ids, q_ids) and torch.equal(ro.query_mask, q_mask)
    assert torch.equal(ro.response_ids, ids) and torch.equal(ro.response_mask, mask)
    ends = torch.isin(ro.response_ids, torch.tensor([tok.eos_token_id, 7])) & ro.response_mask  # (B, R)
    assert bool((ends.sum(-1) <= 1).all()) and torch.equal(ro.has_eos, ends.any(-1))


class CountFullPasses:
    """Forward pre-hook: counts full-sequence (no KV cache) passes of a model."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, module, args, kwargs):
        if not kwargs.get("use_cache"):
            self.calls += 1


@pytest.mark.parametrize("value_model", ["shared", "separate"])
def test_sampler_logprobs_skip_the_policy_scoring_pass(tok, tmp_path, value_model):
    """rollout_logprobs='sampler' runs one policy pass per update micro-batch and none to score the rollout;
    the first minibatch's forward pass agrees with the sampler's log-probs to rounding, and 'recompute'
    agrees exactly."""
    passes, mismatch = {}, {}
    for mode in ("sampler", "recompute"):
        policy = tiny_llama(tok)
        counter = CountFullPasses()
        policy.register_forward_pre_hook(counter, with_kwargs=True)
        tracker = InMemoryTracker()
        cfg = ppo_cfg(optim={"max_steps": 2}, rollout_logprobs=mode, value_model=value_model, ppo_epochs=1)
        ref = tiny_llama(tok)  # a separate reference, so the counter sees the policy alone
        train_ppo(cfg, policy, tok, TokenFractionReward(5, n=8), tok, PROMPTS, ref_model=ref, output_dir=tmp_path / mode,
                  tracker=tracker)
        passes[mode] = counter.calls
        mismatch[mode] = [v for _, v in tracker.series("ppo/logprob_mismatch")]
    # 2 steps x rollout of 8 in micro-batches of 4: the update is 2 passes a step, scoring 2 more
    assert passes == {"sampler": 4, "recompute": 8}
    assert mismatch["recompute"] == [0.0, 0.0]
    assert all(0.0 <= v < 1e-4 for v in mismatch["sampler"]), mismatch


def test_auto_rollout_logprobs_follow_the_dtype(tok):
    from rlhf_core.ppo.trainer import use_sampler_logprobs

    model = tiny_llama(tok)
    assert use_sampler_logprobs(ppo_cfg(), model)
    assert not use_sampler_logprobs(ppo_cfg(), model.to(torch.bfloat16))
    assert use_sampler_logprobs(ppo_cfg(rollout_logprobs="sampler"), model)
    assert not use_sampler_logprobs(ppo_cfg(rollout_logprobs="recompute"), tiny_llama(tok))
    with pytest.raises(Exception, match="rollout_logprobs"):
        ppo_cfg(rollout_logprobs="cache")


# ----------------------------------------------------------------------------- the loop
def test_ppo_learns_trivial_reward(tok, tmp_path):
    policy = tiny_llama(tok)
    before = params_of(policy)
    target = tok.convert_tokens_to_ids(TARGET)
    reward = TokenFractionReward(target, n=8)
    tracker = InMemoryTracker()
    cfg = ppo_cfg(optim={"max_steps": 30}, rollout_batch_size=16, ppo_epochs=4, max_kl=50.0)
    result = train_ppo(cfg, policy, tok, reward, tok, PROMPTS, output_dir=tmp_path, tracker=tracker, seed=0,
                       gold_fn=lambda p, r: float(r.count(TARGET)))
    rewards = [v for _, v in tracker.series("ppo/reward")]
    assert len(tracker.metrics) == 30  # one tracker call per step
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert last > first + 0.2, (first, last)
    assert max(v for _, v in tracker.series("ppo/kl")) < cfg.max_kl
    assert result.steps == 30 and not result.stopped_early
    for key in ("ppo/gold", "ppo/entropy", "ppo/clipfrac", "ppo/approx_kl", "ppo/value_loss", "ppo/policy_loss",
                "ppo/explained_variance", "ppo/response_length", "ppo/refusal_rate", "ppo/no_eos_rate", "ppo/kl_coef",
                "time/generation", "time/scoring", "time/update"):
        assert key in tracker.metrics[-1][1], key
    after = dict(policy.named_parameters())
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert (result.model_dir / "rlhf_stage.json").is_file()


class OffsetReward(TokenFractionReward):
    """TokenFractionReward + a constant: the same preferences, another (arbitrary) offset."""

    def __init__(self, token_id: int, n: int, offset: float) -> None:
        super().__init__(token_id, n)
        self.offset = offset

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return super().forward(input_ids, attention_mask) + self.offset


@pytest.mark.parametrize("center", [True, False])
def test_centered_scores_make_training_blind_to_the_reward_offset(tok, tmp_path, center):
    target = tok.convert_tokens_to_ids(TARGET)
    trained = []
    for offset in (0.0, -3.0):
        policy = tiny_llama(tok)
        cfg = ppo_cfg(optim={"max_steps": 2}, center_scores=center, whiten_advantages=False)
        tracker = InMemoryTracker()
        train_ppo(cfg, policy, tok, OffsetReward(target, 8, offset), tok, PROMPTS, output_dir=tmp_path / f"{offset}",
                  tracker=tracker, seed=0)
        trained.append(params_of(policy))
        # the logged score stays the reward model's own (offset included), centered or not
        assert tracker.metrics[0][1]["ppo/score"] < -2.0 if offset else tracker.metrics[0][1]["ppo/score"] >= 0.0
    same = all(torch.allclose(trained[0][k], trained[1][k], atol=1e-5) for k in trained[0])
    assert same == center


def test_nan_reward_stops_naming_step(tok, tmp_path):
    reward = TokenFractionReward(5, n=8, fail_at_call=3)  # 2 reward micro-batches per step
    with pytest.raises(TrainingError, match=r"reward model score is not finite at step 2"):
        train_ppo(ppo_cfg(), tiny_llama(tok), tok, reward, tok, PROMPTS, output_dir=tmp_path)


def test_kl_above_bound_stops_early(tok, tmp_path):
    cfg = ppo_cfg(optim={"learning_rate": 5e-2, "max_steps": 6}, max_kl=1e-3, kl_coef=0.0)
    result = train_ppo(cfg, tiny_llama(tok), tok, TokenFractionReward(5, n=8), tok, PROMPTS, output_dir=tmp_path)
    assert result.stopped_early and result.steps < 6
    assert "exceeds max_kl" in result.stop_reason and f"step {result.steps + 1}" in result.stop_reason


class StopAt(InMemoryTracker):
    def __init__(self, step: int) -> None:
        super().__init__()
        self.step = step

    def log_metrics(self, metrics, step):
        if step == self.step:
            raise KeyboardInterrupt
        super().log_metrics(metrics, step)


@pytest.mark.parametrize("adaptive", [False, True])
def test_exact_resume_is_bitwise(tok, tmp_path, adaptive):
    cfg = ppo_cfg(optim={"max_steps": 4, "checkpoint_every": 2}, adaptive_kl=adaptive, kl_horizon=50)
    straight = tiny_llama(tok)
    full = train_ppo(cfg, straight, tok, TokenFractionReward(5, n=8), tok, PROMPTS, output_dir=tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        train_ppo(cfg, tiny_llama(tok), tok, TokenFractionReward(5, n=8), tok, PROMPTS, output_dir=tmp_path / "b",
                  tracker=StopAt(3))
    resumed_policy = tiny_llama(tok)
    resumed = train_ppo(cfg, resumed_policy, tok, TokenFractionReward(5, n=8), tok, PROMPTS, output_dir=tmp_path / "b")
    assert resumed.resumed_from_step == 2
    for (name, a), (_, b) in zip(straight.named_parameters(), resumed_policy.named_parameters(), strict=True):
        assert torch.equal(a, b), name
    assert [h["ppo/kl_coef"] for h in full.history] == [h["ppo/kl_coef"] for h in resumed.history]
    assert full.history[-1]["ppo/reward"] == resumed.history[-1]["ppo/reward"]


def test_progress_reports_every_step_and_changes_nothing(tok, tmp_path, capsys, monkeypatch):
    """As in a CI log (stderr not a terminal, 80 columns): one line per step, and the same training."""
    import rlhf_core.training

    monkeypatch.setattr(rlhf_core.training, "PROGRESS_INTERVAL_S", 0.0)  # unthrottled: a line per step
    monkeypatch.setenv("COLUMNS", "80")
    cfg = ppo_cfg(optim={"max_steps": 3})
    quiet, reported = tiny_llama(tok), tiny_llama(tok)
    off = train_ppo(cfg, quiet, tok, TokenFractionReward(5, n=8), tok, PROMPTS, output_dir=tmp_path / "off")
    assert "ppo: step" not in capsys.readouterr().err
    on = train_ppo(cfg, reported, tok, TokenFractionReward(5, n=8), tok, PROMPTS, output_dir=tmp_path / "on",
                   progress=True)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ppo: step")]
    assert [line.split(",")[0] for line in lines] == ["ppo: step 1/3", "ppo: step 2/3", "ppo: step 3/3"]
    for line, h in zip(lines, on.history, strict=True):
        assert line.endswith(f"| reward {h['ppo/reward']:.4g}, kl {h['ppo/kl']:.4g}") and len(line) <= 80, line
    assert "left" in lines[0] and "left" not in lines[-1]
    for (name, a), (_, b) in zip(quiet.named_parameters(), reported.named_parameters(), strict=True):
        assert torch.equal(a, b), name
    assert off.history == [{**h, **{k: off.history[i][k] for k in h if k.startswith("time/")}}
                           for i, h in enumerate(on.history)]  # timings aside, every number equal


def test_out_of_memory_retries_with_smaller_micro_batch(tok, tmp_path, caplog):
    """A (simulated) OOM whenever >2 rows go through a non-generation forward (scoring passes and the
    update): each is redone in micro-batches of 2, and the run equals one configured with 2."""
    reference_policy = tiny_llama(tok)
    # the same minibatch of 4 per optimizer update, in micro-batches of 2
    reference = train_ppo(ppo_cfg(optim={"micro_batch_size": 2, "grad_accum_steps": 2, "max_steps": 2}), reference_policy, tok,
                          TokenFractionReward(5, n=8), tok, PROMPTS, output_dir=tmp_path / "ref")
    policy = tiny_llama(tok)

    def out_of_memory(module, args, kwargs):  # sampling (KV cache) fits; full-sequence passes of >2 rows do not
        if not kwargs.get("use_cache") and kwargs["input_ids"].shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    policy.register_forward_pre_hook(out_of_memory, with_kwargs=True)
    with caplog.at_level("WARNING", logger="rlhf_core.training"):
        result = train_ppo(ppo_cfg(optim={"micro_batch_size": 4, "max_steps": 2}), policy, tok, TokenFractionReward(5, n=8),
                           tok, PROMPTS, output_dir=tmp_path / "oom")
    messages = [r.getMessage() for r in caplog.records]
    # the first full-sequence pass of step 1 (log-probs and values of the rollout of 8) hits it once;
    # the smaller size is kept for the rest of the run
    assert messages == ["ppo: out of memory at step 1 with micro-batch 4; retrying the step with micro-batch 2 "
                        "(4 micro-batches, same effective batch of 8)"]
    for (name, a), (_, b) in zip(reference_policy.named_parameters(), policy.named_parameters(), strict=True):
        assert torch.equal(a, b), name
    assert [h["ppo/reward"] for h in result.history] == [h["ppo/reward"] for h in reference.history]


# ----------------------------------------------------------------------------- bad input
def test_bad_inputs_fail_clearly(tok, tmp_path):
    reward = TokenFractionReward(5, n=8)
    with pytest.raises(DataError, match="empty"):
        train_ppo(ppo_cfg(), tiny_llama(tok), tok, reward, tok, [], output_dir=tmp_path)
    long_rows = [{"id": "p1", "prompt": "short"}, {"id": "p-long", "prompt": "x" * 100}]
    with pytest.raises(DataError, match="prompt p-long has 100 tokens"):
        train_ppo(ppo_cfg(), tiny_llama(tok), tok, reward, tok, long_rows, output_dir=tmp_path)
    other = tiny_llama(tok, vocab=256)
    with pytest.raises(ConfigError, match="ref_model does not have the policy's architecture"):
        train_ppo(ppo_cfg(), tiny_llama(tok), tok, reward, tok, PROMPTS, ref_model=other, output_dir=tmp_path)
    with pytest.raises(ConfigError, match="value_init='reward' needs a RewardModel"):
        train_ppo(ppo_cfg(value_init="reward"), tiny_llama(tok), tok, reward, tok, PROMPTS, output_dir=tmp_path)
    with pytest.raises(Exception, match="rollout_batch_size"):
        ppo_cfg(rollout_batch_size=6)
    with pytest.raises(Exception, match=r"multiple of samples_per_prompt \(3\)"):
        ppo_cfg(samples_per_prompt=3)


# ----------------------------------------------------------------------------- real tokenizer, RM, LoRA
class RecordingTextReward(torch.nn.Module):
    """A reward model with its own (character) tokenizer: reward = share of 'e' in the text it reads."""

    def __init__(self, tokenizer) -> None:
        super().__init__()
        self.tokenizer, self.texts = tokenizer, []

    def forward(self, input_ids, attention_mask):
        texts = [self.tokenizer.decode(row[m.bool()], skip_special_tokens=True) for row, m in zip(input_ids, attention_mask)]
        self.texts.extend(texts)
        return torch.tensor([t.count("e") / max(len(t), 1) for t in texts])


def test_reward_tokenizer_mismatch_is_retokenised(tiny_tokenizer, tok, tmp_path):
    from rlhf_core.config.model import TinyModelConfig
    from rlhf_core.models import build_tiny_model

    policy = build_tiny_model(TinyModelConfig(hidden_size=32, intermediate_size=64), tiny_tokenizer)
    reward = RecordingTextReward(tok)
    cfg = ppo_cfg(optim={"max_steps": 1, "learning_rate": 1e-3}, prompt_format="chat", value_model="shared")
    train_ppo(cfg, policy, tiny_tokenizer, reward, tok, PROMPTS, output_dir=tmp_path)
    assert len(reward.texts) == cfg.rollout_size
    # plain format of the reward tokenizer: the prompt text, not the policy's chat template or its ids
    assert all(any(t.startswith(p) for p in PROMPTS) for t in reward.texts)
    assert not any("<|im_start|>" in t for t in reward.texts)


def test_conversation_prompts_reach_the_policy_and_the_retokenised_reward(tiny_tokenizer, tok, tmp_path):
    from rlhf_core.batching import prompt_ids
    from rlhf_core.config.model import TinyModelConfig
    from rlhf_core.models import build_tiny_model
    from rlhf_core.ppo.trainer import prepare_inputs

    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
               {"role": "user", "content": PROMPTS[0]}]
    rows = [{"id": f"p{i}", "prompt": p, "prompt_messages": history if i == 0 else None} for i, p in enumerate(PROMPTS)]
    policy = build_tiny_model(TinyModelConfig(hidden_size=32, intermediate_size=64), tiny_tokenizer)
    cfg = ppo_cfg(optim={"max_steps": 1, "learning_rate": 1e-3, "max_length": 128}, prompt_format="chat",
                  value_model="shared")
    items, _ = prepare_inputs(cfg, policy, tiny_tokenizer, rows, None, "chat")
    assert items[0].ids == prompt_ids(tiny_tokenizer, PROMPTS[0], "chat", context=history)
    assert items[1].ids == prompt_ids(tiny_tokenizer, PROMPTS[1], "chat")
    reward = RecordingTextReward(tok)
    train_ppo(cfg, policy, tiny_tokenizer, reward, tok, rows, output_dir=tmp_path)
    # the reward tokenizer has no template: the conversation reads "User: ...\n\nAssistant: ..." (its
    # vocabulary has no newline, so the newlines decode to nothing)
    turns = [t for t in reward.texts if t.startswith("User: hiAssistant: helloUser: hello thereAssistant:")]
    assert len(turns) == 1 and len(reward.texts) == cfg.rollout_size


def test_lora_reference_and_reward_initialised_critic(tiny_tokenizer, tmp_path):
    from rlhf_core.config.model import TinyModelConfig
    from rlhf_core.models import build_tiny_model
    from rlhf_core.reward.model import RewardModel

    small = TinyModelConfig(hidden_size=32, intermediate_size=64)
    policy = build_tiny_model(small, tiny_tokenizer)
    rm = RewardModel.from_model(build_tiny_model(small.model_copy(update={"seed": 1}), tiny_tokenizer),
                                pad_token_id=tiny_tokenizer.pad_token_id)
    cfg = ppo_cfg(optim={"max_steps": 2, "learning_rate": 1e-2, "lora": {"enabled": True, "r": 4}},
                  prompt_format="chat", value_init="reward", rollout_logprobs="recompute")
    tracker = InMemoryTracker()
    result = train_ppo(cfg, policy, tiny_tokenizer, rm, tiny_tokenizer, PROMPTS, output_dir=tmp_path, tracker=tracker)
    kl = [v for _, v in tracker.series("ppo/kl")]
    assert kl[0] == 0.0  # LoRA starts at B = 0: policy == reference (adapters disabled)
    assert kl[1] != 0.0  # and the adapters moved
    assert result.steps == 2 and (result.model_dir / "adapter_config.json").is_file()
    # log-probs read off the sampler (KV-cache pass) differ from the reference's full pass by rounding only
    tracker = InMemoryTracker()
    train_ppo(cfg.model_copy(update={"rollout_logprobs": "sampler"}), build_tiny_model(small, tiny_tokenizer),
              tiny_tokenizer, rm, tiny_tokenizer, PROMPTS, output_dir=tmp_path / "sampler", tracker=tracker)
    assert abs(tracker.series("ppo/kl")[0][1]) < 1e-4


def test_ppo_ptx_mixes_in_sft_loss(tok, tmp_path):
    demos = [{"id": f"d{i}", "prompt": p, "response": "ok"} for i, p in enumerate(PROMPTS)]
    tracker = InMemoryTracker()
    cfg = ppo_cfg(optim={"max_steps": 2}, ptx_coef=0.5)
    train_ppo(cfg, tiny_llama(tok), tok, TokenFractionReward(5, n=8), tok, PROMPTS, output_dir=tmp_path,
              tracker=tracker, ptx_examples=demos)
    ptx = [v for _, v in tracker.series("ppo/ptx_loss")]
    assert len(ptx) == 2 and all(math.isfinite(v) and v > 0 for v in ptx)
    with pytest.raises(ConfigError, match="ptx_examples"):
        train_ppo(cfg, tiny_llama(tok), tok, TokenFractionReward(5, n=8), tok, PROMPTS, output_dir=tmp_path / "x")


def test_samples_per_prompt_puts_each_prompts_samples_side_by_side(tok, tmp_path):
    reward = RecordingTextReward(tok)
    cfg = ppo_cfg(optim={"max_steps": 2}, samples_per_prompt=4, center_scores=True)
    result = train_ppo(cfg, tiny_llama(tok), tok, reward, tok, PROMPTS, output_dir=tmp_path)
    assert result.steps == 2 and len(reward.texts) == 2 * cfg.rollout_size
    prompts = [[p for p in PROMPTS if t.startswith(p)] for t in reward.texts]
    assert all(len(p) == 1 for p in prompts), reward.texts
    prompts = [p[0] for p in prompts]
    groups = [prompts[i : i + 4] for i in range(0, len(prompts), 4)]  # 2 prompts x 4 samples per step
    assert all(len(set(g)) == 1 for g in groups), groups
    assert len({g[0] for g in groups}) == 4  # steps 1-2 walk on through the prompt order
