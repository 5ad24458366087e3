"""Best-of-N sampling against the reward model (WebGPT's baseline for RL), plus the sampling and
scoring helpers the evaluation shares with it.

Best-of-N draws N responses per prompt from a policy (the SFT model, in the WebGPT and Gao et al.
comparisons) and keeps the one the reward model scores highest. It needs no training, and its KL
to the sampling policy has a closed form (:func:`best_of_n_kl`), which makes it the natural
yardstick for how much gold score an RL policy buys per nat of KL.

Candidates are sampled prompt-major (rows ``i*N .. i*N+N-1`` are prompt ``i``'s), so the N copies
of one prompt share a batch and padding stays minimal; rows go through the model ``batch_size`` at
a time. Selecting the best of the *first* ``n`` candidates (:meth:`Candidates.best`) gives every
smaller N from one draw of the largest: best-of-4 then never scores below best-of-1 by the reward
model, because it is a max over a superset of the same samples.

Prompts are one user turn each or conversations (``prompt_messages``, :mod:`rlhf_core.conversation`),
rendered as PPO renders them (:func:`rlhf_core.generation.prepare_prompts`).

Shapes: ``B`` prompts, ``N`` candidates per prompt, ``P``/``R`` prompt/response tokens.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from rlhf_core.batching import Format, resolve_format
from rlhf_core.conversation import Messages
from rlhf_core.errors import ConfigError, TrainingError
from rlhf_core.eval_prompts import eval_prompts
from rlhf_core.generation import eos_token_ids, prepare_prompts
from rlhf_core.losses import masked_sum
from rlhf_core.ppo.kl import kl_estimate, reference_context
from rlhf_core.ppo.experience import engine_logprob_gap
from rlhf_core.ppo.logprobs import policy_logprobs
from rlhf_core.ppo.parallel import rollout_seeds
from rlhf_core.ppo.score import RewardFn, exchange_ids, reward_scores, tokenizers_match
from rlhf_core.sampling import Rollout, sample

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedTokenizerBase

    from rlhf_core.rollout import RolloutEngine

# Rows per request to a rollout engine (vLLM batches them itself; a request must finish within its timeout)
ENGINE_CHUNK = 256


# ----------------------------------------------------------------------------- small pieces
def best_of_n_kl(n: int) -> float:
    """KL(best-of-n || base policy) = log n - (n - 1) / n nats (Stiennon et al. 2020, Gao et al. 2022).

    Exact when the n samples are distinct; an upper bound otherwise (Beirami et al. 2024), so the
    best-of-N points of the gold-vs-sqrt(KL) picture sit at most this far right.
    """
    if n < 1:
        raise ValueError(f"best_of_n_kl: n must be >= 1, got {n}")
    return math.log(n) - (n - 1) / n


def select_best(scores: np.ndarray, n: int) -> np.ndarray:
    """Index of the best of the first ``n`` candidates per prompt: scores (B, N) -> (B,) in [0, n).

    Ties go to the earliest candidate (``argmax``), so the choice is deterministic.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2:
        raise ValueError(f"select_best: expected scores of shape (B, N), got {scores.shape}")
    if not 1 <= n <= scores.shape[1]:
        raise ValueError(f"select_best: n={n} outside [1, {scores.shape[1]}] candidates")
    return scores[:, :n].argmax(axis=1)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block with the global torch RNG seeded by ``seed``; the caller's RNG state is restored after.

    Sampling draws from the global generator (see ``sampling.sample_from_probs``); forking it keeps an
    evaluation from perturbing a training run that calls it, and makes the samples a function of ``seed``.
    """
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def eval_mode(*models: Any) -> Iterator[None]:
    """Dropout off inside the block; each module's train/eval flag is restored after."""
    modules = [m for m in models if isinstance(m, torch.nn.Module)]
    flags = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for m, flag in zip(modules, flags, strict=True):
            m.train(flag)


def _device(module: Any) -> torch.device:
    try:
        return next(module.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


def context_length(policy: torch.nn.Module, max_new_tokens: int, max_length: int | None = None) -> int:
    """Tokens a prompt may use: the model's context (capped by ``max_length``) minus ``max_new_tokens``."""
    config = getattr(policy, "config", None)
    context = getattr(config, "max_position_embeddings", None)
    context = context if isinstance(context, int) else (max_length or 2048)
    if max_length is not None:
        context = min(context, max_length)
    if max_new_tokens >= context:
        raise ConfigError(f"max_new_tokens ({max_new_tokens}) leaves no room for a prompt in a {context}-token context")
    return context - max_new_tokens


def tokenize_prompts(
    policy: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Any,
    *,
    fmt: Format,
    max_new_tokens: int,
    max_length: int | None = None,
    truncate: bool = False,
    source: str = "prompts",
) -> list[list[int]]:
    """Prompt rows (``prompt``, ``prompt_messages``) / strings -> policy token ids, as PPO renders them
    (DataError naming an over-long or blank prompt)."""
    budget = context_length(policy, max_new_tokens, max_length)
    items = prepare_prompts(prompts, tokenizer, fmt, max_prompt_tokens=budget, truncate=truncate, source=source)
    return [it.ids for it in items]


# ----------------------------------------------------------------------------- sampling
@dataclass
class Samples:
    """Sampled responses, prompt-major: row ``i * n + j`` is candidate ``j`` of prompt ``i``."""

    texts: list[str]  # (B*N,) decoded, special tokens dropped
    n: int  # candidates per prompt
    prompt_ids: list[list[int]]  # (B*N,) the policy's prompt tokens of each row (unpadded)
    response_ids: list[list[int]]  # (B*N,) sampled tokens up to and including the first EOS
    token_lengths: list[int]  # (B*N,) response tokens, the first EOS included
    has_eos: list[bool]  # (B*N,) emitted EOS within max_new_tokens
    kl: list[float] | None  # (B*N,) sequence KL to the reference: sum over tokens of k1 (measure_kl=True)
    engine_gap: float | None = None  # largest |engine - trainer| log-prob (a rollout engine and measure_kl)

    def grouped(self) -> list[list[str]]:
        """Texts as (B, N) nested lists."""
        return [self.texts[i : i + self.n] for i in range(0, len(self.texts), self.n)]


@torch.no_grad()
def sample_responses(
    policy: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompt_ids: Sequence[Sequence[int]],
    *,
    n: int = 1,
    max_new_tokens: int,
    temperature: float,
    top_p: float = 1.0,
    top_k: int = 0,
    seed: int = 0,
    batch_size: int = 16,
    reference: torch.nn.Module | None = None,
    measure_kl: bool = False,
    engine: RolloutEngine | None = None,
    max_engine_gap: float | None = None,
) -> Samples:
    """Sample ``n`` responses to each prompt with :func:`rlhf_core.sampling.sample` (PPO's sampler) or ``engine``.

    prompt_ids: B token-id lists (from :func:`tokenize_prompts`). Without ``engine``, rows are
    processed ``batch_size`` at a time from one RNG stream seeded by ``seed``: the result is a
    function of (model, prompts, n, settings, seed, batch_size). With a rollout ``engine``
    (:mod:`rlhf_core.rollout`, already serving ``policy``'s weights: the caller syncs them) each
    row has its own seed, a function of (``seed``, row) as PPO's per-row seeds, so the rows come
    in chunks of :data:`ENGINE_CHUNK` whatever ``batch_size`` is. With ``measure_kl`` the sequence
    KL to the reference (``reference``, or the policy with LoRA adapters disabled when None) is
    measured on these very samples: per-token ``k1 = log p - log q`` from logits / ``temperature``
    (the distribution sampled from, as PPO's ``ppo/kl``), summed over the response; with an
    engine that reports log-probs, ``Samples.engine_gap`` is then the largest |engine - trainer|
    log-prob, and past ``max_engine_gap`` a TrainingError (the engine sampled from other weights).
    """
    if n < 1 or batch_size < 1:
        raise ValueError(f"sample_responses: n ({n}) and batch_size ({batch_size}) must be >= 1")
    if temperature <= 0:
        raise ConfigError(f"temperature must be > 0 for sampling, got {temperature}")
    device = _device(policy)
    eos_ids = eos_token_ids(tokenizer, policy)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    rows = [list(ids) for ids in prompt_ids for _ in range(n)]  # prompt-major repeats
    texts: list[str] = []
    responses: list[list[int]] = []
    lengths: list[int] = []
    has_eos: list[bool] = []
    kls: list[float] = []
    gaps: list[float] = []
    settings = dict(max_new_tokens=max_new_tokens, eos_id=eos_ids, pad_id=pad_id, temperature=temperature, top_k=top_k,
                    top_p=top_p)

    def rollouts() -> Iterator[Rollout]:
        if engine is None:
            for start in range(0, len(rows), batch_size):
                yield sample(policy, rows[start : start + batch_size], device=device, **settings)
            return
        seeds = rollout_seeds(seed, 0, len(rows))  # PPO's steps count from 1: step 0 is never a training step's
        for start in range(0, len(rows), ENGINE_CHUNK):
            ro = engine.generate(rows[start : start + ENGINE_CHUNK], seeds=seeds[start : start + ENGINE_CHUNK], **settings)
            for first in range(0, len(ro.has_eos), batch_size):  # the trainer's passes, batch_size rows at a time
                yield rollout_rows(ro, first, first + batch_size)

    with seeded(seed), eval_mode(policy, reference):
        for ro in rollouts():
            mask = ro.response_mask  # (b, R)
            texts += tokenizer.batch_decode(torch.where(mask, ro.response_ids, pad_id), skip_special_tokens=True)
            responses += [row[m].tolist() for row, m in zip(ro.response_ids.cpu(), mask.cpu(), strict=True)]
            lengths += mask.sum(-1).tolist()
            has_eos += ro.has_eos.tolist()
            if measure_kl:
                ids, attn, p = ro.query_response_ids, ro.attention_mask, ro.response_start
                logp = policy_logprobs(policy, ids, attn, p, temperature)  # (b, R)
                with reference_context(policy, reference) as ref:
                    ref_logp = policy_logprobs(ref, ids, attn, p, temperature)  # (b, R)
                kls += masked_sum(kl_estimate(logp.float(), ref_logp.float(), "k1"), mask, dim=-1).tolist()  # (b,)
                if engine is not None and ro.logprobs is not None:
                    gaps.append(engine_logprob_gap(ro, logp.float()))
    gap = max(gaps) if gaps else None
    if gap is not None and max_engine_gap is not None and gap > max_engine_gap:
        raise TrainingError(
            f"the rollout engine's log-probs differ from the trainer's by up to {gap:.3g} nats (bound "
            f"{max_engine_gap:g}, ppo.rollout.max_logprob_mismatch): it did not sample from the evaluated weights"
        )
    return Samples(texts=texts, n=n, prompt_ids=rows, response_ids=responses, token_lengths=lengths,
                   has_eos=has_eos, kl=kls if measure_kl else None, engine_gap=gap)


def rollout_rows(ro: Rollout, start: int, stop: int) -> Rollout:
    """Rows ``start:stop`` of a rollout (its padding columns kept: the masks say which tokens are real)."""
    return Rollout(
        query_ids=ro.query_ids[start:stop], query_mask=ro.query_mask[start:stop], response_ids=ro.response_ids[start:stop],
        response_mask=ro.response_mask[start:stop], has_eos=ro.has_eos[start:stop],
        logprobs=None if ro.logprobs is None else ro.logprobs[start:stop],
    )


# ----------------------------------------------------------------------------- scoring
@torch.no_grad()
def reward_model_scores_ids(
    reward_model: RewardFn, sequences: Sequence[Sequence[int]], *, pad_id: int, batch_size: int = 16
) -> np.ndarray:
    """Reward-model score of each token sequence -> (B,) float64; right-padded ``batch_size`` rows at a time."""
    device = _device(reward_model)
    out: list[torch.Tensor] = []
    with eval_mode(reward_model):
        for i in range(0, len(sequences), batch_size):
            chunk = [list(s) for s in sequences[i : i + batch_size]]
            if any(not s for s in chunk):
                raise ValueError("reward_model_scores_ids: an empty sequence")
            length = max(len(s) for s in chunk)
            ids = torch.full((len(chunk), length), pad_id, dtype=torch.long)  # (b, T)
            mask = torch.zeros((len(chunk), length), dtype=torch.long)  # (b, T)
            for row, seq in enumerate(chunk):
                ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
                mask[row, : len(seq)] = 1
            out.append(reward_scores(reward_model, ids.to(device), mask.to(device), batch_size=batch_size).cpu())
    return torch.cat(out).double().numpy() if out else np.zeros(0)


def reward_model_scores(
    reward_model: RewardFn,
    reward_tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    responses: Sequence[str],
    *,
    fmt: Format,
    batch_size: int = 16,
    contexts: Sequence[Sequence[Mapping[str, str]] | None] | None = None,
) -> np.ndarray:
    """Reward-model score of each (prompt, response) text pair -> (B,) float64.

    Rendered with the reward tokenizer as the reward model was trained (``fmt``: its prompt
    format), so a closed assistant turn whether or not the response was cut off. ``contexts``:
    each prompt's conversation (None: one user turn). For sampled responses prefer
    :func:`score_samples`, which scores what PPO scored.
    """
    contexts = [None] * len(prompts) if contexts is None else contexts
    if not len(prompts) == len(responses) == len(contexts):
        raise ValueError(
            f"reward_model_scores: {len(prompts)} prompts, {len(contexts)} contexts but {len(responses)} responses"
        )
    pad = reward_tokenizer.pad_token_id if reward_tokenizer.pad_token_id is not None else 0
    sequences = [
        exchange_ids(reward_tokenizer, p, r, fmt, context=c) for p, r, c in zip(prompts, responses, contexts, strict=True)
    ]
    return reward_model_scores_ids(reward_model, sequences, pad_id=pad, batch_size=batch_size)


def score_samples(
    samples: Samples,
    prompts: Sequence[str],
    reward_model: RewardFn,
    reward_tokenizer: PreTrainedTokenizerBase,
    tokenizer: PreTrainedTokenizerBase,
    *,
    reward_fmt: Format,
    batch_size: int = 16,
    contexts: Sequence[Messages | None] | None = None,
) -> np.ndarray:
    """Reward-model scores of sampled responses -> (B*N,), exactly as PPO's step 2 computes them.

    ``prompts``: the B prompt strings (the rows of ``samples`` repeat each ``samples.n`` times),
    ``contexts`` their conversations (None: single user turns). When the reward model shares the
    policy's tokenizer it reads the sampled token ids (prompt + response up to the first EOS, no
    re-rendering); otherwise the texts are rendered with the reward tokenizer
    (:func:`reward_model_scores`).
    """
    if len(prompts) * samples.n != len(samples.texts):
        raise ValueError(f"score_samples: {len(prompts)} prompts x {samples.n} but {len(samples.texts)} samples")
    if tokenizers_match(tokenizer, reward_tokenizer):
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        sequences = [p + r for p, r in zip(samples.prompt_ids, samples.response_ids, strict=True)]
        return reward_model_scores_ids(reward_model, sequences, pad_id=pad, batch_size=batch_size)
    flat = [p for p in prompts for _ in range(samples.n)]
    flat_contexts = None if contexts is None else [c for c in contexts for _ in range(samples.n)]
    return reward_model_scores(reward_model, reward_tokenizer, flat, samples.texts, fmt=reward_fmt,
                               batch_size=batch_size, contexts=flat_contexts)


# ----------------------------------------------------------------------------- best-of-N
@dataclass
class Candidates:
    """N sampled responses per prompt and their reward-model scores."""

    prompts: list[str]  # (B,) readable prompt texts
    texts: list[list[str]]  # (B, N)
    scores: np.ndarray  # (B, N) reward-model scores
    token_lengths: list[list[int]]  # (B, N)

    @property
    def n(self) -> int:
        return self.scores.shape[1]

    def best(self, n: int | None = None) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Best of the first ``n`` (default all) candidates: (texts (B,), their scores (B,), indices (B,))."""
        idx = select_best(self.scores, self.n if n is None else n)
        rows = np.arange(len(self.texts))
        return [self.texts[i][j] for i, j in enumerate(idx)], self.scores[rows, idx], idx


def best_of_n_candidates(
    policy: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    reward_model: RewardFn,
    reward_tokenizer: PreTrainedTokenizerBase,
    prompts: Any,
    *,
    n: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float = 1.0,
    top_k: int = 0,
    seed: int = 0,
    batch_size: int = 16,
    prompt_format: str = "auto",
    reward_prompt_format: str = "auto",
    truncate_prompt: bool = False,
    engine: RolloutEngine | None = None,
) -> Candidates:
    """Sample ``n`` responses per prompt and score each with the reward model (see the module docstring).

    ``prompts``: strings, or prompt rows / a DataFrame (``prompt``, ``prompt_messages``). ``engine``:
    a rollout engine serving ``policy``'s weights samples them (:func:`sample_responses`).
    """
    rows = eval_prompts(prompts, source="best-of-N prompts")
    fmt = resolve_format(tokenizer, prompt_format)
    ids = tokenize_prompts(policy, tokenizer, rows.as_rows(), fmt=fmt, max_new_tokens=max_new_tokens,
                           truncate=truncate_prompt, source="best-of-N prompts")
    samples = sample_responses(
        policy, tokenizer, ids, n=n, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
        top_k=top_k, seed=seed, batch_size=batch_size, engine=engine,
    )
    scores = score_samples(
        samples, rows.prompts, reward_model, reward_tokenizer, tokenizer,
        reward_fmt=resolve_format(reward_tokenizer, reward_prompt_format), batch_size=batch_size, contexts=rows.contexts,
    ).reshape(len(rows), n)  # (B, N)
    lengths = [samples.token_lengths[i : i + n] for i in range(0, len(samples.token_lengths), n)]
    return Candidates(prompts=rows.prompts, texts=samples.grouped(), scores=scores, token_lengths=lengths)


def best_of_n(
    policy: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    reward_model: RewardFn,
    reward_tokenizer: PreTrainedTokenizerBase,
    prompts: Any,
    *,
    n: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = 16,
    top_k: int = 0,
    prompt_format: str = "auto",
    reward_prompt_format: str = "auto",
    engine: RolloutEngine | None = None,
) -> list[str]:
    """One response per prompt (strings or prompt rows, as :func:`best_of_n_candidates`): the reward
    model's favourite of ``n`` samples from ``policy`` (WebGPT), sampled by ``engine`` if given."""
    candidates = best_of_n_candidates(
        policy, tokenizer, reward_model, reward_tokenizer, prompts, n=n, max_new_tokens=max_new_tokens,
        temperature=temperature, top_p=top_p, top_k=top_k, seed=seed, batch_size=batch_size,
        prompt_format=prompt_format, reward_prompt_format=reward_prompt_format, engine=engine,
    )
    return candidates.best()[0]
