"""Honest evaluation of trained policies on held-out prompts: sample, score, compare with the SFT model.

:func:`evaluate_policy` samples one response per prompt from a policy (through the sampler PPO
uses, :func:`rlhf_core.best_of_n.sample_responses`), measures its KL to the SFT model on those
samples, scores them with the reward model and compares them with the SFT model's responses;
:func:`compare_methods` does so for the SFT model, best-of-N and any number of policies on the
same prompts. The figures and the reports they fill are :mod:`rlhf_core.eval_report`'s, the
held-out prompts :mod:`rlhf_core.eval_prompts`'.

This module imports torch only inside the functions that sample; its config, :class:`EvalConfig`,
lives in ``rlhf_core.config.eval``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rlhf_core.config.eval import EvalConfig
from rlhf_core.eval_prompts import eval_prompts, select_eval_prompts
from rlhf_core.eval_report import (
    EvalReport,
    MethodComparison,
    build_report,
    gold_head_to_heads,
    ranking_agreement,
    series_of,
)
from rlhf_core.gold import gold_score
from rlhf_core.stats import Estimate, estimate

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from transformers import PreTrainedTokenizerBase

    from rlhf_core.ppo.score import RewardFn
    from rlhf_core.rollout import RolloutEngine


# ----------------------------------------------------------------------------- sampling a policy
def evaluate_policy(
    policy: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    *,
    reference: torch.nn.Module | None,
    reward_model: RewardFn,
    reward_tokenizer: PreTrainedTokenizerBase,
    prompts: Any,
    baseline_responses: Sequence[str] | None = None,
    baseline_rm: Sequence[float] | None = None,
    max_new_tokens: int = 48,
    temperature: float = 0.7,
    top_p: float = 1.0,
    top_k: int = 0,
    seed: int = 0,
    n_boot: int = 1000,
    confidence: float = 0.95,
    batch_size: int = 16,
    prompt_format: str = "auto",
    reward_prompt_format: str = "auto",
    truncate_prompt: bool = False,
    method: str = "policy",
    series: str | None = None,
    gold: bool = True,
    engine: RolloutEngine | None = None,
    max_engine_gap: float | None = None,
) -> EvalReport:
    """Sample one response per held-out prompt from ``policy`` and compare it with the SFT model's.

    ``reference``: the SFT model (None: the policy with its LoRA adapters disabled).
    ``prompts``: canonical prompt rows (``id``, ``prompt``, ``prompt_messages``, ``harmful``, ``topic``)
    or strings; a conversation is rendered as real turns, as PPO renders it.
    ``baseline_responses``: the SFT model's responses to the same prompts; None = sampled here
    from the reference with the same ``seed`` (common random numbers: a policy equal to its
    reference gets the very same responses, delta 0). ``baseline_rm``: their reward-model scores,
    if already known. ``prompt_format`` must be the one SFT/PPO used; ``reward_prompt_format``
    the reward model's. ``gold=False``: data without a gold scorer (no gold figures). ``engine``:
    a rollout engine (:mod:`rlhf_core.rollout`) serving ``policy``'s weights, which samples instead
    of the trainer's sampler (it is given the reference's weights for a baseline sampled here, and
    the policy's back after); ``max_engine_gap`` bounds its log-probs' distance from the policy's
    (:func:`~rlhf_core.best_of_n.sample_responses`). See the module docstring for every figure.
    """
    from rlhf_core.batching import resolve_format
    from rlhf_core.best_of_n import reward_model_scores, sample_responses, score_samples, tokenize_prompts
    from rlhf_core.ppo.kl import reference_context

    rows = eval_prompts(prompts)
    if baseline_responses is not None and len(baseline_responses) != len(rows):
        raise ValueError(f"evaluate_policy: {len(rows)} prompts but {len(baseline_responses)} baseline responses")
    if baseline_rm is not None and (baseline_responses is None or len(baseline_rm) != len(rows)):
        raise ValueError("evaluate_policy: baseline_rm needs baseline_responses and one score per prompt")
    fmt = resolve_format(tokenizer, prompt_format)
    reward_fmt = resolve_format(reward_tokenizer, reward_prompt_format)
    ids = tokenize_prompts(policy, tokenizer, rows.as_rows(), fmt=fmt, max_new_tokens=max_new_tokens,
                           truncate=truncate_prompt, source=f"{method} evaluation prompts")
    gen = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed,
               batch_size=batch_size)
    score = dict(reward_fmt=reward_fmt, batch_size=batch_size, contexts=rows.contexts)
    if baseline_responses is None:
        if engine is not None:
            if reference is None:
                raise ValueError("evaluate_policy: a rollout engine samples the baseline from an explicit reference model")
            engine.load_weights(reference)
        with reference_context(policy, reference) as ref:
            baseline = sample_responses(ref, tokenizer, ids, engine=engine, **gen)
        if engine is not None:
            engine.load_weights(policy)
        baseline_responses = baseline.texts
        baseline_rm = score_samples(baseline, rows.prompts, reward_model, reward_tokenizer, tokenizer, **score)
    elif baseline_rm is None:  # text only: rendered for the reward model
        baseline_rm = reward_model_scores(reward_model, reward_tokenizer, rows.prompts, baseline_responses,
                                          fmt=reward_fmt, batch_size=batch_size, contexts=rows.contexts)
    # sample_responses forks the RNG: the order of the two draws moves nothing
    samples = sample_responses(policy, tokenizer, ids, reference=reference, measure_kl=True, engine=engine,
                               max_engine_gap=max_engine_gap, **gen)
    policy_rm = score_samples(samples, rows.prompts, reward_model, reward_tokenizer, tokenizer, **score)
    return build_report(
        method=method, series=series, prompts=rows, policy_texts=samples.texts, sft_texts=list(baseline_responses),
        policy_rm=policy_rm, sft_rm=baseline_rm, kl=samples.kl or [], kl_source="measured",
        lengths=samples.token_lengths, finished=samples.has_eos, gold=gold, n_boot=n_boot, seed=seed,
        confidence=confidence,
        settings=dict(**gen, n_boot=n_boot, confidence=confidence, prompt_format=fmt, reward_prompt_format=reward_fmt,
                      **engine_settings(engine, samples.engine_gap)),
    )


def engine_settings(engine: RolloutEngine | None, gap: float | None = None) -> dict[str, Any]:
    """What an evaluation's settings record of the engine that sampled it (nothing for the trainer's sampler)."""
    if engine is None:
        return {}
    return {"engine": engine.name, **({} if gap is None else {"engine_logprob_gap": gap})}


def compare_methods(
    policies: Mapping[str, Any],
    tokenizer: PreTrainedTokenizerBase,
    *,
    reference: torch.nn.Module,
    reward_model: RewardFn,
    reward_tokenizer: PreTrainedTokenizerBase,
    prompts: Any,
    cfg: EvalConfig,
    prompt_format: str = "auto",
    reward_prompt_format: str = "auto",
    truncate_prompt: bool = False,
    log: Callable[[str], None] | None = None,
    engine: RolloutEngine | None = None,
    max_engine_gap: float | None = None,
) -> MethodComparison:
    """Evaluate the SFT model, best-of-N from it, and each of ``policies`` on the same prompts.

    ``policies``: name -> model, or name -> zero-argument loader (called when its turn comes and
    dropped after, so only one policy is in memory at a time). Names ending ``-step-<k>`` (PPO
    checkpoints) join the series of their prefix in :meth:`MethodComparison.points`.
    ``reference`` is the SFT model: its one sample per prompt (seed ``cfg.seed``) is every
    method's baseline. Best-of-N candidates are a separate draw (seed ``cfg.seed + 1``), so
    best-of-1 is an independent SFT sample whose delta to the baseline shows the noise level;
    every N comes from the first N of the same ``max(cfg.best_of_n)`` candidates. Diversity
    (k = ``cfg.diversity_samples`` on the first ``cfg.diversity_prompts`` prompts): SFT's first k
    candidates (a draw of its own when N < k) against k samples of each final policy, seed + 1
    (:func:`rlhf_core.diversity.compare_diversity`). Elo: :func:`method_elo`. Order: sft, best-of-N,
    ``policies`` as given. ``cfg.gold`` False: no gold figures (data without a gold scorer).
    ``engine``: a rollout engine started on ``reference``'s weights that samples every method
    (each policy's weights loaded in turn); None = the trainer's sampler.
    """
    import torch

    from rlhf_core.batching import resolve_format
    from rlhf_core.best_of_n import sample_responses, score_samples, tokenize_prompts
    from rlhf_core.diversity import compare_diversity, diversity_report

    say = log or (lambda message: None)
    rows = select_eval_prompts(eval_prompts(prompts), cfg.n_prompts, cfg.seed)
    fmt = resolve_format(tokenizer, prompt_format)
    reward_fmt = resolve_format(reward_tokenizer, reward_prompt_format)
    ids = tokenize_prompts(reference, tokenizer, rows.as_rows(), fmt=fmt, max_new_tokens=cfg.max_new_tokens,
                           truncate=truncate_prompt, source="evaluation prompts")
    gen = dict(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
               batch_size=cfg.batch_size)
    common = dict(n_boot=cfg.n_boot, seed=cfg.seed, confidence=cfg.confidence, gold=cfg.gold)
    settings = {**gen, "n_boot": cfg.n_boot, "seed": cfg.seed, "confidence": cfg.confidence, "prompt_format": fmt,
                "reward_prompt_format": reward_fmt, **engine_settings(engine)}
    reports: dict[str, EvalReport] = {}
    on_policy: Estimate | None = None
    diversity: dict[str, Any] = {}
    k, m = cfg.diversity_samples, min(len(rows), cfg.diversity_prompts or len(rows))
    stats = dict(n_boot=cfg.n_boot, seed=cfg.seed, confidence=cfg.confidence)
    say(f"eval: sampling the SFT baseline on {len(rows)} prompts")
    sft = sample_responses(reference, tokenizer, ids, seed=cfg.seed, engine=engine, **gen)
    score = dict(reward_fmt=reward_fmt, batch_size=cfg.batch_size, contexts=rows.contexts)
    sft_rm = score_samples(sft, rows.prompts, reward_model, reward_tokenizer, tokenizer, **score)
    reports["sft"] = build_report(
        method="sft", prompts=rows, policy_texts=sft.texts, sft_texts=sft.texts, policy_rm=sft_rm, sft_rm=sft_rm,
        kl=0.0, kl_source="reference", lengths=sft.token_lengths, finished=sft.has_eos, settings=settings, **common,
    )

    grouped: list[list[str]] = []
    if cfg.best_of_n:
        n_max = max(cfg.best_of_n)
        say(f"eval: best-of-{n_max} candidates from the SFT model ({len(rows) * n_max} samples)")
        cand = sample_responses(reference, tokenizer, ids, n=n_max, seed=cfg.seed + 1, engine=engine, **gen)
        scores = score_samples(cand, rows.prompts, reward_model, reward_tokenizer, tokenizer, **score)
        grouped = cand.grouped()
        best, on_policy = best_of_n_reports(cfg, rows, cand, scores.reshape(len(rows), n_max), sft.texts, sft_rm,
                                            settings=settings, common=common)
        reports.update(best)

    sft_spread = None  # the SFT model's k samples a prompt: its first k best-of-N candidates, or a draw of its own
    if k:
        sft_spread = [texts[:k] for texts in grouped[:m]] if len(grouped) and len(grouped[0]) >= k else (
            sample_responses(reference, tokenizer, ids[:m], n=k, seed=cfg.seed + 1, engine=engine, **gen).grouped())
        diversity["sft"] = diversity_report(sft_spread, **stats)

    for name, source in policies.items():
        say(f"eval: {name}")
        policy = source if isinstance(source, torch.nn.Module) else source()
        try:
            if engine is not None:
                engine.load_weights(policy)
            reports[name] = evaluate_policy(
                policy, tokenizer, reference=reference, reward_model=reward_model, reward_tokenizer=reward_tokenizer,
                prompts=rows.as_rows(), baseline_responses=sft.texts, baseline_rm=sft_rm, seed=cfg.seed,
                prompt_format=fmt, reward_prompt_format=reward_fmt, truncate_prompt=truncate_prompt,
                method=name, series=series_of(name), engine=engine, max_engine_gap=max_engine_gap, **gen,
                **{key: v for key, v in common.items() if key != "seed"},
            )
            if sft_spread is not None and series_of(name) == name:  # final policies, not the PPO checkpoints
                spread = sample_responses(policy, tokenizer, ids[:m], n=k, seed=cfg.seed + 1, engine=engine, **gen)
                diversity[name] = compare_diversity(spread.grouped(), sft_spread, **stats)
        finally:
            del policy
    return MethodComparison(reports, rm_gold_agreement_on_policy=on_policy, gold=cfg.gold, diversity=diversity,
                            elo=method_elo(reports, cfg))


def method_elo(reports: Mapping[str, EvalReport], cfg: EvalConfig) -> list[Any]:
    """Elo of every method from gold head-to-heads on the same prompts, SFT at 1000 ([] without gold or a rival)."""
    if not cfg.gold or len(reports) < 2:
        return []
    from rlhf_core.ratings import elo_ratings

    return elo_ratings(gold_head_to_heads(reports), anchor="sft", n_boot=cfg.n_boot, seed=cfg.seed,
                       confidence=cfg.confidence)


def best_of_n_reports(
    cfg: EvalConfig, rows: Any, cand: Any, scores: np.ndarray, sft_texts: Sequence[str], sft_rm: np.ndarray, *,
    settings: Mapping[str, Any], common: Mapping[str, Any],
) -> tuple[dict[str, EvalReport], Estimate | None]:
    """Best-of-N reports for every N in ``cfg.best_of_n`` from the first N of the same candidates ``cand``
    (``scores``: their reward-model scores, (B, N_max)), and with the gold scorer the reward model's ranking
    agreement with it on these SFT samples (None without gold or with one candidate)."""
    from rlhf_core.best_of_n import best_of_n_kl, select_best

    B, n_max = scores.shape
    grouped = cand.grouped()
    on_policy = None
    if cfg.gold and n_max > 1:
        cand_gold = np.array([[gold_score(p, t, harmful=h) for t in texts]
                              for p, texts, h in zip(rows.prompts, grouped, rows.harmful, strict=True)])
        on_policy = estimate(ranking_agreement(scores, cand_gold), n_boot=cfg.n_boot, seed=cfg.seed,
                             confidence=cfg.confidence)
    token_lengths = np.asarray(cand.token_lengths).reshape(B, n_max)
    finished = np.asarray(cand.has_eos).reshape(B, n_max)
    picked = np.arange(B)
    reports = {}
    for n in cfg.best_of_n:
        idx = select_best(scores, n)  # (B,)
        reports[f"best-of-{n}"] = build_report(
            method=f"best-of-{n}", series="best-of-n", prompts=rows,
            policy_texts=[grouped[i][j] for i, j in enumerate(idx)], sft_texts=sft_texts,
            policy_rm=scores[picked, idx], sft_rm=sft_rm, kl=best_of_n_kl(n), kl_source="analytic",
            lengths=token_lengths[picked, idx].tolist(), finished=finished[picked, idx].tolist(),
            settings={**settings, "n": n, "candidate_seed": cfg.seed + 1}, **common,
        )
    return reports, on_policy


# ----------------------------------------------------------------------------- PPO checkpoints
def ppo_checkpoint_steps(checkpoint_root: str | Path) -> dict[int, Path]:
    """``step -> directory`` of the training checkpoints under ``<ppo>/checkpoints`` (none: {})."""
    from rlhf_core.checkpoint import list_checkpoints

    root = Path(checkpoint_root)
    if not root.is_dir():
        return {}
    out = {}
    for path in list_checkpoints(root):
        match = re.match(r"^step-(\d+)$", path.name)
        if match:
            out[int(match.group(1))] = path
    return out
