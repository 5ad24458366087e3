"""Recipe steps 1-4 as one phase: a batch of prompts in, an :class:`Experience` out.

:func:`make_experience` runs, for one PPO step::

    1. rollout      sample responses                                the rollout engine (rlhf_core.rollout)
    2. score        reward model on prompt + response (- missing EOS) score.*
    3. KL penalty   per-token KL to the reference in the reward      kl.kl_penalized_rewards
    4. values, GAE  critic values, advantages + returns, whitening   value.*, gae.compute_gae

and checks, once, that every quantity the update will read is finite. The result groups
the step's tensors by role (OpenRLHF's ``Experience``): what was sampled, what the models
said about it, and what PPO derives from that. :meth:`Experience.minibatch_indices` and
:meth:`Experience.select` cut it into the update's minibatches and micro-batches.

Steps 1-2 and the model passes depend on a row alone (:func:`sample_and_score`, with a seed
per row); data-parallel, each process runs them on its share of the rows and the full batch
is gathered before the rest, which uses batch statistics (:mod:`rlhf_core.ppo.parallel`).

Shapes: ``B`` rollout rows (``cfg.rollout_size``), ``P`` prompt tokens (left-padded), ``R``
response tokens (right-padded after the first EOS).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from rlhf_core.batching import Format
from rlhf_core.errors import TrainingError
from rlhf_core.generation import PromptItem
from rlhf_core.losses import masked_whiten
from rlhf_core.config.ppo import PPOConfig
from rlhf_core.ppo.gae import compute_gae
from rlhf_core.ppo.kl import kl_estimate, kl_penalized_rewards, reference_logprobs
from rlhf_core.ppo.loss import token_sum
from rlhf_core.ppo.parallel import gather_rollout, max_over, share
from rlhf_core.ppo.score import RewardFn, apply_missing_eos_penalty, center_scores, retokenize, reward_scores
from rlhf_core.ppo.value import PolicyWithValue
from rlhf_core.rollout import RolloutEngine
from rlhf_core.sampling import QueryResponse, Rollout
from rlhf_core.training import retry_smaller_on_oom

if TYPE_CHECKING:  # pragma: no cover
    from rlhf_core.distributed import DataParallel

STAGE = "ppo"
GoldFn = Callable[[str, str], float]


@dataclass
class PPOModels:
    """What one PPO step runs: the models, and how their inputs are encoded."""

    model: PolicyWithValue  # the trained policy and its critic / value head
    ref_model: torch.nn.Module | None  # the frozen reference; None = the policy with its adapters disabled
    reward_model: RewardFn
    tokenizer: Any  # the policy's
    reward_tokenizer: Any
    reward_fmt: Format | None  # how prompts are rendered for the reward model; None = it reads the policy's ids
    eos_ids: list[int]
    pad_id: int
    from_sampler: bool  # log-probs (and shared-head values) read off the sampling loop, not recomputed
    device: torch.device
    engine: RolloutEngine  # samples the rollouts; close() it when the stage ends


@dataclass
class Experience(QueryResponse):
    """One PPO step's rollout, grouped by role. Every tensor's first dimension is the rollout row."""

    # what was sampled
    query_ids: torch.Tensor  # (B, P) left-padded prompt ids
    query_mask: torch.Tensor  # (B, P) 1 on real prompt tokens
    response_ids: torch.Tensor  # (B, R) pad after the first EOS
    response_mask: torch.Tensor  # (B, R) bool, True up to and including the first EOS
    has_eos: torch.Tensor  # (B,) bool
    texts: list[str]  # (B,) decoded responses
    # what the models said about it
    logprobs: torch.Tensor  # (B, R) log-probs under the rollout policy ("old" in the PPO ratio)
    ref_logprobs: torch.Tensor  # (B, R) log-probs under the reference
    values: torch.Tensor  # (B, R) critic values before the update
    raw_scores: torch.Tensor  # (B,) reward model output
    scores: torch.Tensor  # (B,) raw_scores with the missing-EOS penalty
    gold: list[float] | None  # (B,) gold_fn(prompt, response), when given
    # what PPO derives from it
    kl: torch.Tensor  # (B,) summed per-token k1 KL to the reference (what max_kl bounds)
    kl_coef: float  # the KL coefficient the rewards were built with
    rl_scores: torch.Tensor  # (B,) the scores the rewards carry (centered per prompt when cfg.center_scores)
    rewards: torch.Tensor  # (B, R) rl_score at the last response token - kl_coef * KL per token
    advantages: torch.Tensor  # (B, R) GAE, whitened when cfg.whiten_advantages
    returns: torch.Tensor  # (B, R) advantages (before whitening) + values
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)  # generation / scoring / preparation
    engine_mismatch: float | None = None  # max |engine - trainer| log-prob over the response tokens (vllm engine)

    @property
    def batch_size(self) -> int:
        return self.query_ids.shape[0]

    @property
    def mean_kl(self) -> float:
        return float(self.kl.mean())

    def select(self, rows: torch.Tensor) -> Experience:
        """The rows ``rows`` (a 1-D index tensor) of every per-row field; scalars and timings as they are."""
        picked = rows.tolist()
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                value = value[rows.to(value.device)]
            elif isinstance(value, list):
                value = [value[i] for i in picked]
            out[f.name] = value
        return Experience(**out)

    def minibatch_indices(self, size: int) -> list[torch.Tensor]:
        """One epoch's minibatches: a fresh ``torch.randperm`` of the rows cut into runs of ``size``.

        Every row lands in exactly one minibatch. Draws one permutation from the global torch RNG
        (restored by a checkpoint: exact resume).
        """
        perm = torch.randperm(self.batch_size).to(self.query_ids.device)
        return [perm[m0 : m0 + size] for m0 in range(0, self.batch_size, size)]


# ----------------------------------------------------------------------------- scoring passes
@torch.no_grad()
def rollout_logprobs_values(
    model: PolicyWithValue, ro: Rollout, *, temperature: float, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs (B, R) and values (B, R) of a rollout under the current policy/critic, in micro-batches."""
    ids, attn, start = ro.query_response_ids, ro.attention_mask, ro.response_start
    lps, vals = [], []
    for i in range(0, ids.shape[0], batch_size):
        out, values = model(ids[i : i + batch_size], attn[i : i + batch_size], start, temperature)
        lps.append(out.logprobs)
        vals.append(values)
    return torch.cat(lps), torch.cat(vals)


@torch.no_grad()
def rollout_values(model: PolicyWithValue, ro: Rollout, *, batch_size: int) -> torch.Tensor:
    """Values (B, R) of a rollout: the shared head on the sampler's hidden states, or the critic in micro-batches."""
    if model.value_head is not None:
        if ro.hidden is None:
            raise ValueError("rollout_values: a shared value head needs the rollout's hidden states (keep_hidden=True)")
        return model.value_head(ro.hidden)
    ids, attn, start = ro.query_response_ids, ro.attention_mask, ro.response_start
    return torch.cat([
        model.critic(ids[i : i + batch_size], attn[i : i + batch_size])[:, start - 1 : -1]
        for i in range(0, ids.shape[0], batch_size)
    ])


@torch.no_grad()
def rollout_reference_logprobs(
    policy: torch.nn.Module, ref_model: torch.nn.Module | None, ro: Rollout, *, temperature: float, batch_size: int
) -> torch.Tensor:
    """Log-probs (B, R) of a rollout under the reference, in micro-batches."""
    ids, attn, start = ro.query_response_ids, ro.attention_mask, ro.response_start
    return torch.cat([
        reference_logprobs(policy, ref_model, ids[i : i + batch_size], attn[i : i + batch_size], start, temperature)
        for i in range(0, ids.shape[0], batch_size)
    ])


def check_finite(number: int, checks: Sequence[tuple[str, torch.Tensor, torch.Tensor | None]]) -> None:
    """TrainingError naming the step and the first quantity ``(name, tensor, mask)`` with a NaN/inf (unmasked) value."""
    for name, tensor, mask in checks:
        values = tensor.detach()
        if mask is not None:
            values = values[mask.bool()]
        bad = ~torch.isfinite(values)
        if bool(bad.any()):
            raise TrainingError(
                f"ppo: {name} is not finite at step {number} ({int(bad.sum())} of {values.numel()} values NaN/inf); "
                "stopped before the update; lower optim.learning_rate or check the reward model"
            )


def engine_logprob_gap(ro: Rollout, logprobs: torch.Tensor) -> float:
    """Largest |engine - trainer| log-prob (B, R) over the response tokens (0 for no response token)."""
    gap = (ro.logprobs.to(logprobs.device) - logprobs).abs()[ro.response_mask]
    return float(gap.max()) if gap.numel() else 0.0


def check_engine_gap(gap: float, cfg: PPOConfig, number: int) -> float:
    """``gap`` (the step's largest |engine - trainer| log-prob); TrainingError past the configured bound.

    The trainer's own log-probs are the ones PPO uses; a gap past ``rollout.max_logprob_mismatch``
    means the engine sampled from other weights than the trainer's (a failed weight sync).
    """
    if gap > cfg.rollout.max_logprob_mismatch:
        raise TrainingError(
            f"ppo: at step {number} the {cfg.rollout.engine} rollout engine's log-probs differ from the trainer's by up to "
            f"{gap:.3g} nats (bound ppo.rollout.max_logprob_mismatch = {cfg.rollout.max_logprob_mismatch}): it is not "
            "sampling from the trained weights"
        )
    return gap


# ----------------------------------------------------------------------------- the phase
# Per-row fields of a rollout by padding side (data-parallel gather: rlhf_core.ppo.parallel.gather_rollout).
QUERY_FIELDS = ("query_ids", "query_mask")
RESPONSE_FIELDS = ("response_ids", "response_mask", "logprobs", "ref_logprobs", "values")


def sample_and_score(
    models: PPOModels,
    cfg: PPOConfig,
    prompts: Sequence[PromptItem],
    seeds: Sequence[int],
    *,
    retry: Callable[[Callable[[int], Any]], Any],
    gold_fn: GoldFn | None = None,
) -> tuple[dict[str, Any], dict[str, float], float | None]:
    """Recipe steps 1-2 and the model passes of step 3-4, row by row: (per-row fields, seconds, engine gap).

    Everything here depends on a row alone (its prompt, its seed), so N processes can each run
    a share of the rows. Fields: :data:`QUERY_FIELDS` (b, P), :data:`RESPONSE_FIELDS` (b, R),
    ``has_eos`` and ``raw_scores`` (b,), ``texts`` and ``gold`` (lists). ``retry(fn)`` runs
    ``fn(micro_batch)`` (halving it after an out-of-memory error in one process). Engine gap: the
    largest |engine - trainer| log-prob of these rows' response tokens when the trainer recomputed
    the log-probs of an engine that reports its own (None otherwise).
    """
    m, device = models.model, models.device
    # 1. rollout
    t0 = time.perf_counter()
    ro = models.engine.generate(
        [it.ids for it in prompts], seeds=seeds, max_new_tokens=cfg.max_new_tokens, eos_id=models.eos_ids,
        pad_id=models.pad_id, temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
    )
    mask = ro.response_mask  # (b, R)
    texts = models.tokenizer.batch_decode(torch.where(mask, ro.response_ids, models.pad_id), skip_special_tokens=True)
    t_gen = time.perf_counter() - t0

    # 2. score
    t0 = time.perf_counter()
    if models.reward_fmt is None:
        rm_ids, rm_mask = ro.query_response_ids, ro.attention_mask
    else:
        rm_ids, rm_mask = retokenize(
            [it.text for it in prompts], texts, models.reward_tokenizer, models.reward_fmt,
            contexts=[it.context for it in prompts],
        )
    raw_scores = retry(lambda n: reward_scores(models.reward_model, rm_ids.to(device), rm_mask.to(device), batch_size=n))
    gold = [gold_fn(it.text, t) for it, t in zip(prompts, texts, strict=True)] if gold_fn else None
    t_score = time.perf_counter() - t0

    # 3-4. log-probs, values (first: it frees the sampler's hidden states), reference log-probs
    t0 = time.perf_counter()
    if models.from_sampler:
        logprobs = ro.logprobs
        values = retry(lambda n: rollout_values(m, ro, batch_size=n))
        ro.hidden = None  # (b, R, H): not needed past this point
    else:
        logprobs, values = retry(lambda n: rollout_logprobs_values(m, ro, temperature=cfg.temperature, batch_size=n))
    # the engine's own log-probs against the trainer's (a vllm engine; the bound is checked on the whole batch)
    engine_gap = None if models.from_sampler or ro.logprobs is None else engine_logprob_gap(ro, logprobs)
    ref_lp = retry(
        lambda n: rollout_reference_logprobs(m.policy, models.ref_model, ro, temperature=cfg.temperature, batch_size=n)
    )
    rows = {
        "query_ids": ro.query_ids, "query_mask": ro.query_mask, "response_ids": ro.response_ids, "response_mask": mask,
        "logprobs": logprobs, "ref_logprobs": ref_lp, "values": values, "has_eos": ro.has_eos,
        "raw_scores": raw_scores, "texts": texts, "gold": gold,
    }
    seconds = {"generation": t_gen, "scoring": t_score, "preparation": time.perf_counter() - t0}
    return rows, seconds, engine_gap


def make_experience(
    models: PPOModels,
    cfg: PPOConfig,
    prompts: Sequence[PromptItem],
    *,
    seeds: Sequence[int],
    kl_coef: float,
    number: int,
    micro: int,
    gold_fn: GoldFn | None = None,
    dist: DataParallel | None = None,
) -> tuple[Experience, int]:
    """Recipe steps 1-4 for the prompts ``prompts`` (B rows) of step ``number`` (1-based); (experience, micro).

    ``seeds``: one sampling seed per row (:func:`rlhf_core.ppo.parallel.rollout_seeds`).
    ``micro``: the micro-batch of the scoring passes, halved after an out-of-memory error (the
    smaller size is returned, for the rest of the run). ``dist``: this process samples and
    scores its share of the rows (:func:`sample_and_score`), then every process gathers the
    full batch and derives rewards, GAE and whitening from it (global statistics). Raises
    TrainingError naming the first non-finite quantity (score, log-probs, reference log-probs,
    values, advantages).
    """
    mine = share(len(prompts), dist)

    def retry(fn: Callable[[int], Any]) -> Any:
        nonlocal micro
        if dist is not None:  # no retry: the other processes would already be inside a collective
            return fn(micro)
        result, micro = retry_smaller_on_oom(
            fn, micro, stage=STAGE, step=number, total=len(mine), model=models.model, device=models.device
        )
        return result

    rows, seconds, engine_gap = sample_and_score(
        models, cfg, [prompts[i] for i in mine], [seeds[i] for i in mine], retry=retry, gold_fn=gold_fn
    )
    t0 = time.perf_counter()
    if engine_gap is not None:
        engine_gap = check_engine_gap(max_over(engine_gap, dist) if dist is not None else engine_gap, cfg, number)
    if dist is not None:
        rows = gather_rollout(rows, dist, pad_id=models.pad_id, query=QUERY_FIELDS, response=RESPONSE_FIELDS)
    mask, logprobs, ref_lp, values = rows["response_mask"], rows["logprobs"], rows["ref_logprobs"], rows["values"]
    # 2. (cont.) missing-EOS penalty; 3. KL-penalised rewards
    scores = apply_missing_eos_penalty(rows["raw_scores"], rows["has_eos"], cfg.missing_eos_penalty)  # (B,)
    kl = token_sum(kl_estimate(logprobs, ref_lp, "k1"), mask)  # (B,)
    rl_scores = center_scores(scores, cfg.samples_per_prompt) if cfg.center_scores else scores  # (B,)
    rewards = kl_penalized_rewards(rl_scores, logprobs, ref_lp, mask, kl_coef, cfg.kl_estimator)  # (B, R)
    # 4. GAE + whitening
    advantages, returns = compute_gae(rewards, values, mask, gamma=cfg.gamma, lam=cfg.lam)
    if cfg.whiten_advantages:
        advantages = masked_whiten(advantages, mask)
    check_finite(number, [
        ("reward model score", rows["raw_scores"], None), ("policy log-probs", logprobs, mask),
        ("reference log-probs", ref_lp, mask), ("values", values, mask), ("advantages", advantages, mask),
    ])
    seconds["preparation"] += time.perf_counter() - t0
    return Experience(
        **{name: rows[name] for name in (*QUERY_FIELDS, *RESPONSE_FIELDS, "has_eos", "raw_scores", "texts", "gold")},
        scores=scores, kl=kl, kl_coef=kl_coef, rl_scores=rl_scores, rewards=rewards, advantages=advantages,
        returns=returns, seconds=seconds, engine_mismatch=engine_gap,
    ), micro
