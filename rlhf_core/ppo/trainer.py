"""The PPO loop: the numbered recipe, step by step, each step a function from this package.

Per PPO step (``optim.max_steps`` of them)::

    1. rollout      sample responses to a batch of prompts              rollout.rollout
    2. score        reward model on prompt + response (- missing-EOS)   score.*
    3. KL penalty   per-token KL to the frozen reference in the reward  kl.kl_penalized_rewards
    4. values, GAE  critic values, advantages + returns, whitening      value.*, gae.compute_gae
    5. update       ppo_epochs x minibatches: clipped policy + value    loss.*
                    loss - entropy bonus (+ ptx), grad clipping, AdamW
    6. log          one tracker call per step; checkpoint; KL controller update

Timings logged per step: ``time/generation`` (sampling + decoding), ``time/scoring`` (reward
model, gold function), ``time/update`` (log-probs, values, reference, GAE and the PPO epochs).

The rollout's log-probs come from the sampling loop itself or from a second forward pass
(``cfg.rollout_logprobs``, see :mod:`rlhf_core.ppo.rollout`); with a shared value head the
sampler also yields the values, so the step runs no policy pass besides sampling and the
update. ``ppo/logprob_mismatch`` is the largest |log-prob of the first minibatch's forward
pass - rollout log-prob| before any update of the step: 0 when recomputed, rounding noise
when read off the sampler. The policy stays in ``eval()`` mode throughout (dropout off), so
the recomputed log-probs equal the first minibatch's and the PPO ratio starts at exactly 1.

Exact resume: the prompt order is a pure function of ``(seed, prompt position)``; sampling
and minibatch shuffles draw from the global torch RNG, which the checkpoint restores with
the weights (policy + critic), optimizer, scheduler and the KL controller.
"""

from __future__ import annotations

import copy
import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlhf_core.batching import Format, collate_sft, prompt_ids, resolve_format, rows_to_records, tokenize_sft_rows
from rlhf_core.checkpoint import load_checkpoint, save_checkpoint
from rlhf_core.config.ppo import PPOConfig
from rlhf_core.errors import ConfigError, DataError, TrainingError
from rlhf_core.losses import masked_mean, masked_whiten
from rlhf_core.ppo.gae import compute_gae
from rlhf_core.ppo.kl import (
    AdaptiveKLController,
    FixedKLController,
    KLController,
    check_reference_matches,
    is_peft_model,
    kl_estimate,
    kl_penalized_rewards,
    reference_logprobs,
)
from rlhf_core.ppo.loss import entropy_from_logits, explained_variance, ppo_policy_loss, ppo_value_loss, ptx_loss, token_sum
from rlhf_core.ppo.rollout import Rollout, left_pad, rollout
from rlhf_core.ppo.score import (
    RewardFn,
    apply_missing_eos_penalty,
    center_scores,
    retokenize,
    reward_scores,
    tokenizers_match,
)
from rlhf_core.ppo.value import PolicyWithValue, build_policy_with_value
from rlhf_core.tracking import NullTracker, Tracker
from rlhf_core.training import (
    StepProgress,
    TrainResult,
    _resolve_resume,
    apply_lora,
    build_optimizer,
    build_scheduler,
    config_params,
    count_trainable,
    dataset_fingerprint,
    replace_dir,
    retry_smaller_on_oom,
    set_seed,
)

log = logging.getLogger(__name__)

STAGE = "ppo"
GoldFn = Callable[[str, str], float]


@dataclass
class PPOResult(TrainResult):
    """:class:`TrainResult` plus why the run ended early, if it did."""

    stopped_early: bool = False
    stop_reason: str | None = None


@dataclass(frozen=True)
class PromptItem:
    row_id: str
    text: str
    ids: list[int]


# ----------------------------------------------------------------------------- inputs
def prepare_prompts(
    prompts: Any, tokenizer: Any, fmt: Format, *, max_prompt_tokens: int, truncate: bool, source: str = "prompts"
) -> list[PromptItem]:
    """Prompt rows (``id``, ``prompt``), a DataFrame or plain strings -> tokenised items.

    Empty input, a blank prompt, or a prompt longer than ``max_prompt_tokens`` (unless
    ``truncate``: keep its last tokens) is a DataError naming the prompt id.
    """
    if isinstance(prompts, (list, tuple)) and prompts and all(isinstance(p, str) for p in prompts):
        prompts = [{"id": f"#{i}", "prompt": p} for i, p in enumerate(prompts)]
    records = rows_to_records(prompts, source)
    items = []
    for i, row in enumerate(records):
        row_id = str(row.get("id") if row.get("id") is not None else f"#{i}")
        text = row.get("prompt")
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{source}: prompt {row_id}: column 'prompt' must be a non-empty string")
        ids = prompt_ids(tokenizer, text, fmt)
        if len(ids) > max_prompt_tokens:
            if not truncate:
                raise DataError(
                    f"{source}: prompt {row_id} has {len(ids)} tokens, over the {max_prompt_tokens} the context leaves "
                    "for it (optim.max_length - max_new_tokens); shorten it, raise optim.max_length, or set "
                    "optim.truncate_prompt=true"
                )
            ids = ids[-max_prompt_tokens:]
        items.append(PromptItem(row_id=row_id, text=text, ids=ids))
    return items


def prompt_indices(step: int, batch_size: int, n_prompts: int, seed: int) -> list[int]:
    """Prompts of PPO step ``step`` (0-based): consecutive positions of a per-epoch seeded permutation.

    Position ``k`` of the infinite stream is ``permutation(seed, k // N)[k % N]``, so any step
    can be rebuilt without replaying the ones before it (exact resume).
    """
    out = []
    for k in range(step * batch_size, (step + 1) * batch_size):
        epoch, offset = divmod(k, n_prompts)
        out.append(int(np.random.default_rng([seed, epoch]).permutation(n_prompts)[offset]))
    return out


def eos_token_ids(tokenizer: Any, policy: torch.nn.Module) -> list[int]:
    """Every id that ends a response: the tokenizer's EOS and the generation config's."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen = getattr(policy, "generation_config", None)
    extra = getattr(gen, "eos_token_id", None)
    if extra is not None:
        ids.update([int(extra)] if isinstance(extra, int) else [int(e) for e in extra])
    if not ids:
        raise ConfigError("the policy tokenizer has no EOS token: PPO cannot tell when a response ends")
    return sorted(ids)


def _check_finite(name: str, tensor: torch.Tensor, number: int, mask: torch.Tensor | None = None) -> None:
    """TrainingError naming the step and the quantity when any (unmasked) value is NaN/inf."""
    values = tensor.detach()
    if mask is not None:
        values = values[mask.bool()]
    bad = ~torch.isfinite(values)
    if bool(bad.any()):
        raise TrainingError(
            f"ppo: {name} is not finite at step {number} ({int(bad.sum())} of {values.numel()} values NaN/inf); "
            "stopped before the update; lower optim.learning_rate or check the reward model"
        )


# ----------------------------------------------------------------------------- recipe helpers
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


def use_sampler_logprobs(cfg: PPOConfig, policy: torch.nn.Module) -> bool:
    """Resolve ``cfg.rollout_logprobs``: 'auto' reads them off the sampler when the policy computes in fp32."""
    if cfg.rollout_logprobs != "auto":
        return cfg.rollout_logprobs == "sampler"
    return next(policy.parameters()).dtype == torch.float32


@torch.no_grad()
def rollout_reference_logprobs(
    policy: torch.nn.Module, ref_model: torch.nn.Module | None, ro: Rollout, *, temperature: float, batch_size: int
) -> torch.Tensor:
    ids, attn, start = ro.query_response_ids, ro.attention_mask, ro.response_start
    return torch.cat([
        reference_logprobs(policy, ref_model, ids[i : i + batch_size], attn[i : i + batch_size], start, temperature)
        for i in range(0, ids.shape[0], batch_size)
    ])


def _mean_stats(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    keys = {k for r in rows for k in r}
    return {k: float(np.mean([r[k] for r in rows if k in r])) for k in sorted(keys)}


# ----------------------------------------------------------------------------- the loop
def train_ppo(
    cfg: PPOConfig,
    policy: torch.nn.Module,
    tokenizer: Any,
    reward_model: RewardFn,
    reward_tokenizer: Any,
    prompts: Any,
    *,
    ref_model: torch.nn.Module | None = None,
    value_model: torch.nn.Module | None = None,
    output_dir: str | Path,
    tracker: Tracker | None = None,
    gold_fn: GoldFn | None = None,
    ptx_examples: Any = None,
    reward_prompt_format: str | None = None,
    seed: int = 0,
    resume: bool | str | Path = True,
    progress: bool = False,
) -> PPOResult:
    """Train ``policy`` in place with PPO against ``reward_model``; see the module docstring.

    ``prompts``: canonical prompt rows (``id``, ``prompt``), a DataFrame, or a list of strings.
    ``ref_model``: the frozen SFT model; None = the policy with LoRA adapters disabled
    (``optim.lora.enabled`` or a peft policy), else a frozen copy of the starting policy.
    ``value_model``: a ready :class:`ValueModel`/:class:`ValueHead`; None = built from
    ``cfg.value_model`` / ``cfg.value_init``. ``gold_fn(prompt, response) -> float`` is logged
    as ``ppo/gold``. ``ptx_examples``: demonstration rows for PPO-ptx (``cfg.ptx_coef > 0``).
    ``reward_prompt_format``: how the reward model's inputs were rendered when its tokenizer
    differs from the policy's (default "auto": chat when the reward tokenizer has a template, as RM training does).
    Writes checkpoints under ``output_dir/checkpoints`` and the final policy to ``output_dir/model``.
    """
    tracker = tracker or NullTracker()
    output_dir = Path(output_dir)
    optim = cfg.optim
    set_seed(seed)
    fmt = resolve_format(tokenizer, cfg.prompt_format)
    device = next(policy.parameters()).device

    # -- inputs -----------------------------------------------------------------------
    context = optim.max_length
    max_pos = getattr(getattr(policy, "config", None), "max_position_embeddings", None)
    if isinstance(max_pos, int):
        context = min(context, max_pos)
    if cfg.max_new_tokens >= context:
        raise ConfigError(f"ppo.max_new_tokens ({cfg.max_new_tokens}) leaves no room for a prompt in a {context}-token context")
    items = prepare_prompts(
        prompts, tokenizer, fmt, max_prompt_tokens=context - cfg.max_new_tokens, truncate=optim.truncate_prompt
    )
    if cfg.ptx_coef > 0 and ptx_examples is None:
        raise ConfigError("ppo.ptx_coef > 0 needs demonstration rows (ptx_examples) for the SFT term")
    ptx = (
        tokenize_sft_rows(ptx_examples, tokenizer, fmt=fmt, max_length=context, truncate=optim.truncate_prompt, source="ptx")
        if cfg.ptx_coef > 0
        else []
    )
    same_tokenizer = tokenizers_match(tokenizer, reward_tokenizer)
    reward_fmt = None if same_tokenizer else resolve_format(reward_tokenizer, reward_prompt_format or "auto")
    eos_ids = eos_token_ids(tokenizer, policy)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]

    # -- models -----------------------------------------------------------------------
    if optim.lora.enabled and not is_peft_model(policy):
        policy = apply_lora(policy, optim.lora, task_type="CAUSAL_LM")
    if ref_model is None and not is_peft_model(policy):
        # full fine-tuning without a given reference: freeze a copy of the starting policy (2x memory)
        ref_model = copy.deepcopy(policy)
    if ref_model is not None:
        check_reference_matches(policy, ref_model)
        ref_model.eval().requires_grad_(False)
    model = build_policy_with_value(
        policy, kind=cfg.value_model, init=cfg.value_init, reward_model=reward_model, value_model=value_model, seed=seed
    ).to(device)
    model.eval()  # dropout off for the whole run (see module docstring); gradients still flow
    if isinstance(reward_model, torch.nn.Module):
        reward_model.eval()
    from_sampler = use_sampler_logprobs(cfg, model.policy)
    optimizer = build_optimizer(model, optim)
    scheduler = build_scheduler(optimizer, optim)
    kl_ctl: KLController = (
        AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon) if cfg.adaptive_kl else FixedKLController(cfg.kl_coef)
    )

    # -- resume -----------------------------------------------------------------------
    root = output_dir / "checkpoints"
    run_fp = {
        "stage": STAGE,
        "seed": seed,
        "rollout_size": cfg.rollout_size,
        "samples_per_prompt": cfg.samples_per_prompt,
        "minibatch_size": cfg.minibatch_size,
        "batch_size": optim.micro_batch_size,  # the key checkpoints were written with
        "value_model": cfg.value_model,
        "prompts": dataset_fingerprint([it.ids for it in items]),
    }
    history: list[dict[str, float]] = []
    start_step = 0
    micro_restored = None
    last_ckpt = _resolve_resume(resume, root, STAGE)
    if last_ckpt is not None:
        state = load_checkpoint(last_ckpt, stage=STAGE, model=model, optimizer=optimizer, scheduler=scheduler)
        saved = {"samples_per_prompt": 1, **state["fingerprint"]}  # checkpoints from before the option: 1
        differs = {k: (saved.get(k), v) for k, v in run_fp.items() if saved.get(k) != v}
        if differs:
            detail = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in differs.items())
            raise TrainingError(
                f"cannot resume ppo from {last_ckpt}: the run changed ({detail}); pass resume=False (or a fresh output_dir)"
            )
        kl_ctl.load_state_dict(state["kl_controller"])
        history = list(state["history"])
        micro_restored = state.get("micro_batch_size")
        start_step = int(state["step"])
    tracker.log_params(config_params(cfg, STAGE))

    def checkpoint(number: int) -> Path:
        return save_checkpoint(
            root, stage=STAGE, step=number, model=model, optimizer=optimizer, scheduler=scheduler,
            trainer_state={"history": history, "kl_controller": kl_ctl.state_dict(), "fingerprint": run_fp,
                           "micro_batch_size": micro},
            keep=optim.keep_checkpoints,
        )

    # -- the loop ---------------------------------------------------------------------
    params = [p for p in model.parameters() if p.requires_grad]
    B, mb_size = cfg.rollout_size, cfg.minibatch_size
    per_prompt = cfg.samples_per_prompt  # a prompt's samples sit next to each other (center_scores' groups)
    # the micro-batch of the scoring passes and the update: halved after an out-of-memory error
    micro = int(micro_restored or optim.micro_batch_size)
    stopped, reason = False, None
    saved_at = start_step if last_ckpt is not None else -1
    started = time.perf_counter()
    tokens_total = 0
    number = start_step
    bar = StepProgress(STAGE, optim.max_steps, start_step) if progress else None
    try:
        for step in range(start_step, optim.max_steps):
            number = step + 1
            prompts_now = prompt_indices(step, B // per_prompt, len(items), seed)
            batch_items = [items[i] for i in prompts_now for _ in range(per_prompt)]

            # 1. rollout
            t0 = time.perf_counter()
            q_ids, q_mask = left_pad([it.ids for it in batch_items], pad_id)
            ro = rollout(
                model.policy, q_ids.to(device), q_mask.to(device), max_new_tokens=cfg.max_new_tokens,
                eos_id=eos_ids, pad_id=pad_id, temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
                score_tokens=from_sampler, keep_hidden=from_sampler and model.value_head is not None,
            )
            mask = ro.response_mask  # (B, R)
            texts = tokenizer.batch_decode(torch.where(mask, ro.response_ids, pad_id), skip_special_tokens=True)
            t_gen = time.perf_counter() - t0

            # 2. score
            t0 = time.perf_counter()
            if same_tokenizer:
                rm_ids, rm_mask = ro.query_response_ids, ro.attention_mask
            else:
                rm_ids, rm_mask = retokenize([it.text for it in batch_items], texts, reward_tokenizer, reward_fmt)
            raw_scores, micro = retry_smaller_on_oom(
                lambda n: reward_scores(reward_model, rm_ids.to(device), rm_mask.to(device), batch_size=n),
                micro, stage=STAGE, step=number, total=B, model=model, device=device,
            )  # (B,)
            _check_finite("reward model score", raw_scores, number)
            scores = apply_missing_eos_penalty(raw_scores, ro.has_eos, cfg.missing_eos_penalty)
            gold = [gold_fn(it.text, t) for it, t in zip(batch_items, texts, strict=True)] if gold_fn else None
            t_score = time.perf_counter() - t0

            # 3. KL-penalised rewards; 4a. values
            t0 = time.perf_counter()
            if from_sampler:
                logprobs = ro.logprobs
                values, micro = retry_smaller_on_oom(
                    lambda n: rollout_values(model, ro, batch_size=n),
                    micro, stage=STAGE, step=number, total=B, model=model, device=device,
                )
                ro.hidden = None  # (B, R, H): not needed past this point
            else:
                (logprobs, values), micro = retry_smaller_on_oom(
                    lambda n: rollout_logprobs_values(model, ro, temperature=cfg.temperature, batch_size=n),
                    micro, stage=STAGE, step=number, total=B, model=model, device=device,
                )
            ref_lp, micro = retry_smaller_on_oom(
                lambda n: rollout_reference_logprobs(model.policy, ref_model, ro, temperature=cfg.temperature, batch_size=n),
                micro, stage=STAGE, step=number, total=B, model=model, device=device,
            )
            _check_finite("policy log-probs", logprobs, number, mask)
            _check_finite("reference log-probs", ref_lp, number, mask)
            _check_finite("values", values, number, mask)
            seq_kl = token_sum(kl_estimate(logprobs, ref_lp, "k1"), mask)  # (B,)
            mean_kl = float(seq_kl.mean())
            if mean_kl > cfg.max_kl:
                stopped = True
                reason = (
                    f"ppo: stopped early at step {number}: mean KL to the reference {mean_kl:.3f} nats exceeds "
                    f"max_kl {cfg.max_kl} (the policy drifted too far; lower optim.learning_rate or raise kl_coef)"
                )
                log.warning(reason)
                number = step  # this step did not train
                break
            kl_coef = kl_ctl.value
            rl_scores = center_scores(scores, cfg.samples_per_prompt) if cfg.center_scores else scores  # (B,)
            rewards = kl_penalized_rewards(rl_scores, logprobs, ref_lp, mask, kl_coef, cfg.kl_estimator)  # (B, R)

            # 4b. GAE + whitening
            advantages, returns = compute_gae(rewards, values, mask, gamma=cfg.gamma, lam=cfg.lam)
            if cfg.whiten_advantages:
                advantages = masked_whiten(advantages, mask)
            _check_finite("advantages", advantages, number, mask)
            ev = explained_variance(values, returns, mask)

            # 5. PPO epochs over minibatches
            ids, attn, start = ro.query_response_ids, ro.attention_mask, ro.response_start
            update_stats: list[dict[str, float]] = []
            grad_norms = []
            mismatch: list[float] = []  # |forward - rollout log-prob| on the step's first minibatch
            # demonstrations for PPO-ptx: a position that is a function of the step (exact resume)
            ptx_cursor = step * cfg.ppo_epochs * B
            for epoch in range(cfg.ppo_epochs):
                perm = torch.randperm(B).to(device)
                for m0 in range(0, B, mb_size):
                    mb = perm[m0 : m0 + mb_size]
                    mb_tokens = int(mask[mb].sum())

                    def minibatch_gradients(micro: int) -> tuple[dict[str, float], int]:
                        """Gradients of this minibatch in micro-batches of ``micro``; (stats, ptx position after)."""
                        cursor = ptx_cursor
                        optimizer.zero_grad(set_to_none=True)
                        stats_sum: dict[str, float] = {}
                        micro_chunks = [mb[i : i + micro] for i in range(0, len(mb), micro)]
                        for idx in micro_chunks:
                            m = mask[idx]
                            weight = int(m.sum()) / mb_tokens  # token-mean over the minibatch, exactly
                            out, new_values = model(ids[idx], attn[idx], start, cfg.temperature, keep_logits=True)
                            if epoch == 0 and m0 == 0:  # no update yet this step: the two should agree
                                gap = (out.logprobs.detach() - logprobs[idx]).abs()[m]
                                mismatch.append(float(gap.max()) if gap.numel() else 0.0)
                            pg, pg_stats = ppo_policy_loss(out.logprobs, logprobs[idx], advantages[idx], m, clip_range=cfg.clip_range)
                            vf, vf_stats = ppo_value_loss(
                                new_values, values[idx], returns[idx], m, clip_range_value=cfg.clip_range_value
                            )
                            loss = weight * (pg + cfg.vf_coef * vf)
                            micro_stats = {**pg_stats, **vf_stats}
                            if cfg.entropy_coef:
                                entropy = masked_mean(entropy_from_logits(out.logits, m), m)
                                loss = loss - weight * cfg.entropy_coef * entropy
                                micro_stats["ppo/entropy"] = float(entropy.detach())
                            elif epoch == 0:  # only a statistic: the rollout policy's entropy, once per step
                                with torch.no_grad():
                                    micro_stats["ppo/entropy"] = float(masked_mean(entropy_from_logits(out.logits, m), m))
                            if ptx:  # one demonstration micro-batch per PPO micro-batch, averaged over the minibatch
                                chosen = [ptx[(cursor + j) % len(ptx)] for j in range(micro)]
                                cursor += micro
                                batch = {n: t.to(device) for n, t in collate_sft(chosen, pad_id).items()}
                                logits = model.policy(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                                ptx_term, ptx_stats = ptx_loss(logits, batch["labels"], coef=cfg.ptx_coef)
                                loss = loss + ptx_term / len(micro_chunks)
                                for key, v in ptx_stats.items():  # plain mean over micro-batches
                                    stats_sum[key] = stats_sum.get(key, 0.0) + v / len(micro_chunks)
                            _check_finite("loss", loss, number)
                            loss.backward()
                            for key, v in micro_stats.items():
                                stats_sum[key] = stats_sum.get(key, 0.0) + weight * v
                        return stats_sum, cursor

                    (stats_sum, ptx_cursor), micro = retry_smaller_on_oom(
                        minibatch_gradients, micro, stage=STAGE, step=number, total=len(mb), model=model, device=device,
                    )
                    grad_norm = torch.nn.utils.clip_grad_norm_(params, optim.max_grad_norm)
                    _check_finite("gradient norm", grad_norm, number)
                    optimizer.step()
                    grad_norms.append(float(grad_norm))
                    update_stats.append(stats_sum)
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            kl_ctl.update(mean_kl, B)
            t_update = time.perf_counter() - t0

            # 6. log
            from rlhf_core.gold import is_refusal

            lengths = mask.sum(-1).float()
            tokens_total += int(ro.attention_mask.sum())
            metrics = {
                "ppo/reward": float(raw_scores.mean()),
                "ppo/score": float(scores.mean()),
                "ppo/kl": mean_kl,
                "ppo/kl_coef": kl_coef,
                "ppo/non_score_reward": float(token_sum(rewards, mask).mean() - rl_scores.mean()),
                "ppo/explained_variance": ev,
                "ppo/response_length": float(lengths.mean()),
                "ppo/no_eos_rate": float((~ro.has_eos).float().mean()),
                "ppo/refusal_rate": float(np.mean([is_refusal(t) for t in texts])),
                "ppo/value_mean": float(masked_mean(values, mask)),
                "ppo/logprob_mismatch": max(mismatch, default=0.0),
                "ppo/return_mean": float(masked_mean(returns, mask)),
                **_mean_stats(update_stats),
                "train/lr": lr,
                "train/grad_norm": float(np.mean(grad_norms)),
                "time/generation": t_gen,
                "time/scoring": t_score,
                "time/update": t_update,
            }
            if gold is not None:
                metrics["ppo/gold"] = float(np.mean(gold))
            history.append({"step": float(number), **metrics})
            if number % optim.log_every == 0 or number == optim.max_steps:
                tracker.log_metrics(metrics, step=number)
            if bar is not None:
                bar.update({"reward": metrics["ppo/reward"], "kl": mean_kl})
            if optim.checkpoint_every and number % optim.checkpoint_every == 0 and number < optim.max_steps:
                last_ckpt = checkpoint(number)
                saved_at = number
    finally:
        if bar is not None:
            bar.close()
    wall = time.perf_counter() - started
    final_step = number if stopped else max(start_step, optim.max_steps)
    if saved_at != final_step:
        last_ckpt = checkpoint(final_step)
    model_dir = save_policy(model.policy, tokenizer, output_dir / "model", step=final_step)
    tracker.log_artifact(model_dir)
    trainable, _ = count_trainable(model)
    return PPOResult(
        stage=STAGE,
        model_dir=model_dir,
        steps=final_step,
        resumed_from_step=start_step,
        metrics={k: v for k, v in (history[-1] if history else {}).items() if k != "step"},
        history=history,
        wall_seconds=wall,
        tokens_per_second=tokens_total / wall if wall > 0 else 0.0,
        examples=len(items),
        checkpoint_dir=last_ckpt,
        trainable_parameters=trainable,
        stopped_early=stopped,
        stop_reason=reason,
    )


def save_policy(policy: torch.nn.Module, tokenizer: Any, final: Path, *, step: int) -> Path:
    """The policy in Hugging Face format (LoRA: the adapters) + tokenizer + ``rlhf_stage.json`` (stage 'ppo')."""
    from rlhf_core.reward.model import write_stage_marker

    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    policy.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    write_stage_marker(tmp, STAGE, step=step, lora=is_peft_model(policy))
    return replace_dir(tmp, final)  # also removes a killed run's half-written copies


