"""The PPO loop: the numbered recipe, each step a named phase from this package.

Per PPO step (``optim.max_steps`` of them)::

    1-4. experience  rollout, score (- missing EOS), KL-penalised rewards,    experience.make_experience
                     values, GAE + whitening; one finiteness check
    5.   update      ppo_epochs x minibatches: clipped policy + value loss    ppo_update
                     - entropy bonus (+ ptx), grad clipping, AdamW
    6.   log         the step's metrics, KL controller, checkpoint cadence     step_metrics, RunState.record

Timings logged per step: ``time/generation`` (sampling + decoding), ``time/scoring`` (reward
model, gold function), ``time/update`` (log-probs, values, reference, GAE and the PPO epochs).

The rollout's log-probs come from the sampling loop itself or from a second forward pass
(``cfg.rollout_logprobs``, see :mod:`rlhf_core.ppo.logprobs`); with a shared value head the
sampler also yields the values, so the step runs no policy pass besides sampling and the
update. ``ppo/logprob_mismatch`` is the largest |log-prob of the first minibatch's forward
pass - rollout log-prob| before any update of the step: 0 when recomputed, rounding noise
when read off the sampler. With ``rollout.engine='vllm'`` (rlhf_core.rollout) the log-probs are
always recomputed by the trainer, ``ppo/logprob_mismatch`` is the largest |vLLM - trainer|
log-prob over the step's response tokens (past ``rollout.max_logprob_mismatch`` the run stops),
and ``time/weight_sync`` is the time to hand the updated weights to the engine. The policy stays in ``eval()`` mode throughout (dropout off), so
the recomputed log-probs equal the first minibatch's and the PPO ratio starts at exactly 1.

Exact resume: the prompt order is a pure function of ``(seed, prompt position)`` and each
rollout row samples from its own generator seeded by ``(seed, step, row)``
(:func:`rlhf_core.ppo.parallel.rollout_seeds`); minibatch shuffles draw from the global torch
RNG, which the checkpoint restores with the weights (policy + critic), optimizer, scheduler
and the KL controller (:class:`rlhf_core.training.RunState`, shared with the other stages' loop).

Data-parallel (``dist``): each process samples and scores its share of the rollout rows, all
gather the full batch, derive rewards and advantages from it and sum their gradients
(:mod:`rlhf_core.ppo.parallel`), so N processes train as one does, up to float summation order.
"""

from __future__ import annotations

import copy
import functools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from rlhf_core.batching import Format, collate_sft, resolve_format, tokenize_sft_rows
from rlhf_core.errors import ConfigError
from rlhf_core.generation import PromptItem, eos_token_ids, prepare_prompts
from rlhf_core.losses import masked_mean
from rlhf_core.config.ppo import PPOConfig
from rlhf_core.models import apply_lora
from rlhf_core.ppo.experience import (
    STAGE,
    Experience,
    GoldFn,
    PPOModels,
    check_finite,
    make_experience,
)
from rlhf_core.ppo.kl import (
    AdaptiveKLController,
    FixedKLController,
    KLController,
    check_reference_matches,
    is_peft_model,
)
from rlhf_core.ppo.loss import entropy_from_logits, explained_variance, ppo_policy_loss, ppo_value_loss, ptx_loss, token_sum
from rlhf_core.ppo.parallel import all_reduce_gradients, max_over, rollout_seeds, share, sum_stats
from rlhf_core.ppo.score import RewardFn, tokenizers_match
from rlhf_core.ppo.value import PolicyWithValue, build_policy_with_value
from rlhf_core.rollout import RolloutEngine
from rlhf_core.rollout.hf_engine import HFEngine
from rlhf_core.rollout.vllm_engine import VLLMEngine
from rlhf_core.stage_io import MODEL_DIR, save_stage_model
from rlhf_core.tracking import NullTracker, Tracker
from rlhf_core.training import (
    RunState,
    TrainResult,
    build_optimizer,
    build_scheduler,
    config_params,
    count_trainable,
    dataset_fingerprint,
    retry_smaller_on_oom,
    set_seed,
)

if TYPE_CHECKING:  # pragma: no cover
    from rlhf_core.distributed import DataParallel

log = logging.getLogger(__name__)


@dataclass
class PPOResult(TrainResult):
    """:class:`TrainResult` plus why the run ended early, if it did."""

    stopped_early: bool = False
    stop_reason: str | None = None


# ----------------------------------------------------------------------------- inputs
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


def engine_log_name(dist: DataParallel | None) -> str:
    """Where a vllm rollout engine's own log goes, under the stage directory (one engine per process)."""
    return "vllm-engine.log" if dist is None or dist.world_size == 1 else f"vllm-engine.rank{dist.rank}.log"


def use_sampler_logprobs(cfg: PPOConfig, policy: torch.nn.Module) -> bool:
    """Resolve ``cfg.rollout_logprobs``: 'auto' reads them off the sampler when the policy computes in fp32
    and the sampler is the trainer's own (``rollout.engine='hf'``)."""
    if cfg.rollout.engine != "hf":
        return False
    if cfg.rollout_logprobs != "auto":
        return cfg.rollout_logprobs == "sampler"
    return next(policy.parameters()).dtype == torch.float32


def prepare_inputs(
    cfg: PPOConfig, policy: torch.nn.Module, tokenizer: Any, prompts: Any, ptx_examples: Any, fmt: Format
) -> tuple[list[PromptItem], list[Any]]:
    """(tokenised prompts, tokenised PPO-ptx demonstrations), each fitted to the policy's context."""
    optim = cfg.optim
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
    return items, ptx


def build_models(
    cfg: PPOConfig,
    policy: torch.nn.Module,
    tokenizer: Any,
    reward_model: RewardFn,
    reward_tokenizer: Any,
    *,
    ref_model: torch.nn.Module | None,
    value_model: torch.nn.Module | None,
    reward_prompt_format: str | None,
    seed: int,
    engine_log: Path | None = None,
) -> PPOModels:
    """LoRA adapters, the frozen reference, policy + critic in eval mode, how each model reads its input, and
    the rollout engine (started last; ``engine_log``: where a vllm engine's own log goes)."""
    device = next(policy.parameters()).device
    same_tokenizer = tokenizers_match(tokenizer, reward_tokenizer)
    reward_fmt = None if same_tokenizer else resolve_format(reward_tokenizer, reward_prompt_format or "auto")
    eos_ids = eos_token_ids(tokenizer, policy)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    if cfg.optim.lora.enabled and not is_peft_model(policy):
        policy = apply_lora(policy, cfg.optim.lora, task_type="CAUSAL_LM")
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
    if cfg.rollout.engine == "vllm":
        engine: RolloutEngine = VLLMEngine(model.policy, cfg.rollout, device=device, log_path=engine_log)
    else:
        engine = HFEngine(model.policy, device=device, score_tokens=from_sampler,
                          keep_hidden=from_sampler and model.value_head is not None)
    return PPOModels(
        model=model, ref_model=ref_model, reward_model=reward_model, tokenizer=tokenizer,
        reward_tokenizer=reward_tokenizer, reward_fmt=reward_fmt, eos_ids=eos_ids, pad_id=pad_id,
        from_sampler=from_sampler, device=device, engine=engine,
    )


def kl_stop_reason(exp: Experience, cfg: PPOConfig, number: int) -> str | None:
    """Why step ``number`` must not train (the policy drifted past ``cfg.max_kl``), or None."""
    if exp.mean_kl <= cfg.max_kl:
        return None
    return (
        f"ppo: stopped early at step {number}: mean KL to the reference {exp.mean_kl:.3f} nats exceeds "
        f"max_kl {cfg.max_kl} (the policy drifted too far; lower optim.learning_rate or raise kl_coef)"
    )


# ----------------------------------------------------------------------------- 5. update
@dataclass
class UpdateStats:
    """What the PPO epochs of one step report."""

    minibatches: list[dict[str, float]] = field(default_factory=list)  # loss statistics, one dict per minibatch
    grad_norms: list[float] = field(default_factory=list)  # one per optimizer step
    mismatch: list[float] = field(default_factory=list)  # |forward - rollout log-prob|, first minibatch


def minibatch_gradients(
    micro: int,
    *,
    model: PolicyWithValue,
    optimizer: torch.optim.Optimizer,
    exp: Experience,
    rows: torch.Tensor,
    cfg: PPOConfig,
    epoch: int,
    number: int,
    ptx: Sequence[Any],
    ptx_cursor: int,
    pad_id: int,
    mismatch: list[float] | None,
    dist: DataParallel | None = None,
) -> tuple[dict[str, float], int]:
    """Gradients of minibatch ``rows`` in micro-batches of ``micro`` (zeroed first); (stats, ptx position after).

    Each micro-batch's loss is weighted by its share of the minibatch's response tokens, so the
    sum is the token mean over the minibatch exactly. ``mismatch``: where to note the largest
    |forward - rollout log-prob| of each micro-batch (the step's first minibatch only).
    ``dist``: this process runs its contiguous slice of ``rows`` (weights still relative to the
    whole minibatch) and its share of the PPO-ptx micro-batches; the caller sums the gradients
    and the stats over the processes.
    """
    optimizer.zero_grad(set_to_none=True)
    stats_sum: dict[str, float] = {}
    mb_tokens = int(exp.response_mask[rows].sum())
    part_rows = share(len(rows), dist)
    mine = rows[part_rows.start : part_rows.stop]
    for idx in [mine[i : i + micro] for i in range(0, len(mine), micro)]:
        part = exp.select(idx)
        m = part.response_mask  # (b, R)
        weight = int(m.sum()) / mb_tokens
        out, new_values = model(part.query_response_ids, part.attention_mask, part.response_start, cfg.temperature,
                                keep_logits=True)
        if mismatch is not None:  # no update yet this step: the two should agree
            gap = (out.logprobs.detach() - part.logprobs).abs()[m]
            mismatch.append(float(gap.max()) if gap.numel() else 0.0)
        pg, pg_stats = ppo_policy_loss(out.logprobs, part.logprobs, part.advantages, m, clip_range=cfg.clip_range)
        vf, vf_stats = ppo_value_loss(new_values, part.values, part.returns, m, clip_range_value=cfg.clip_range_value)
        loss = weight * (pg + cfg.vf_coef * vf)
        micro_stats = {**pg_stats, **vf_stats}
        if cfg.entropy_coef:
            entropy = masked_mean(entropy_from_logits(out.logits, m), m)
            loss = loss - weight * cfg.entropy_coef * entropy
            micro_stats["ppo/entropy"] = float(entropy.detach())
        elif epoch == 0:  # only a statistic: the rollout policy's entropy, once per step
            with torch.no_grad():
                micro_stats["ppo/entropy"] = float(masked_mean(entropy_from_logits(out.logits, m), m))
        check_finite(number, [("loss", loss, None)])
        loss.backward()
        for key, v in micro_stats.items():
            stats_sum[key] = stats_sum.get(key, 0.0) + weight * v
    if not ptx:
        return stats_sum, ptx_cursor
    # PPO-ptx: as many demonstration micro-batches as one process runs PPO micro-batches, averaged
    chunks = -(-len(rows) // micro)
    for j in share(chunks, dist):
        chosen = [ptx[(ptx_cursor + j * micro + i) % len(ptx)] for i in range(micro)]
        batch = {n: t.to(exp.query_ids.device) for n, t in collate_sft(chosen, pad_id).items()}
        logits = model.policy(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        ptx_term, ptx_stats = ptx_loss(logits, batch["labels"], coef=cfg.ptx_coef)
        check_finite(number, [("ptx loss", ptx_term, None)])
        (ptx_term / chunks).backward()
        for key, v in ptx_stats.items():  # plain mean over the micro-batches
            stats_sum[key] = stats_sum.get(key, 0.0) + v / chunks
    return stats_sum, ptx_cursor + chunks * micro


def ppo_update(
    models: PPOModels,
    optimizer: torch.optim.Optimizer,
    exp: Experience,
    cfg: PPOConfig,
    *,
    number: int,
    micro: int,
    ptx: Sequence[Any] = (),
    dist: DataParallel | None = None,
) -> tuple[UpdateStats, int]:
    """Recipe step 5: ``cfg.ppo_epochs`` passes over ``exp`` in shuffled minibatches; (stats, micro).

    One optimizer step per minibatch of ``cfg.minibatch_size`` rows (clipped policy + value loss,
    entropy bonus, PPO-ptx; global-norm clipping). ``micro``: the micro-batch, halved after an
    out-of-memory error in one process (the smaller size is returned). Step ``number`` (1-based)
    picks the demonstrations, so a resumed run uses the same ones. ``dist``: every process holds
    the full ``exp`` and draws the same permutation; each computes its slice of a minibatch and
    the gradients are summed (:func:`~rlhf_core.ppo.parallel.all_reduce_gradients`) before clipping.
    """
    model, B = models.model, exp.batch_size
    params = [p for p in model.parameters() if p.requires_grad]
    update = UpdateStats()
    ptx_cursor = (number - 1) * cfg.ppo_epochs * B  # a function of the step (exact resume)
    for epoch in range(cfg.ppo_epochs):
        for k, rows in enumerate(exp.minibatch_indices(cfg.minibatch_size)):
            gradients = functools.partial(
                minibatch_gradients, model=model, optimizer=optimizer, exp=exp, rows=rows, cfg=cfg, epoch=epoch,
                number=number, ptx=ptx, ptx_cursor=ptx_cursor, pad_id=models.pad_id,
                mismatch=update.mismatch if epoch == 0 and k == 0 else None, dist=dist,
            )
            if dist is None:
                (stats, ptx_cursor), micro = retry_smaller_on_oom(
                    gradients, micro, stage=STAGE, step=number, total=len(rows), model=model, device=models.device
                )
            else:  # no retry: the other processes would already be inside the all-reduce
                stats, ptx_cursor = gradients(micro)
                all_reduce_gradients(params, dist)
                stats = sum_stats(stats, dist)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.optim.max_grad_norm)
            check_finite(number, [("gradient norm", grad_norm, None)])
            optimizer.step()
            update.grad_norms.append(float(grad_norm))
            update.minibatches.append(stats)
    if dist is not None:
        update.mismatch = [max_over(max(update.mismatch, default=0.0), dist)]
    return update, micro


# ----------------------------------------------------------------------------- 6. log
def _mean_stats(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    keys = {k for r in rows for k in r}
    return {k: float(np.mean([r[k] for r in rows if k in r])) for k in sorted(keys)}


def step_metrics(exp: Experience, update: UpdateStats, *, lr: float, update_seconds: float) -> dict[str, float]:
    """The metrics one PPO step logs (``ppo/*``, ``train/*``, ``time/*``; ``ppo/gold`` with a gold function)."""
    from rlhf_core.gold import is_refusal

    mask = exp.response_mask
    metrics = {
        "ppo/reward": float(exp.raw_scores.mean()),
        "ppo/score": float(exp.scores.mean()),
        "ppo/kl": exp.mean_kl,
        "ppo/kl_coef": exp.kl_coef,
        "ppo/non_score_reward": float(token_sum(exp.rewards, mask).mean() - exp.rl_scores.mean()),
        "ppo/explained_variance": explained_variance(exp.values, exp.returns, mask),
        "ppo/response_length": float(mask.sum(-1).float().mean()),
        "ppo/no_eos_rate": float((~exp.has_eos).float().mean()),
        "ppo/refusal_rate": float(np.mean([is_refusal(t) for t in exp.texts])),
        "ppo/value_mean": float(masked_mean(exp.values, mask)),
        "ppo/logprob_mismatch": max(update.mismatch, default=0.0),
        "ppo/return_mean": float(masked_mean(exp.returns, mask)),
        **_mean_stats(update.minibatches),
        "train/lr": lr,
        "train/grad_norm": float(np.mean(update.grad_norms)),
        "time/generation": exp.seconds["generation"],
        "time/scoring": exp.seconds["scoring"],
        "time/update": exp.seconds["preparation"] + update_seconds,
    }
    if exp.engine_mismatch is not None:  # the trainer recomputed the log-probs: compare the engine's
        metrics["ppo/logprob_mismatch"] = exp.engine_mismatch
    if exp.gold is not None:
        metrics["ppo/gold"] = float(np.mean(exp.gold))
    return metrics


# ----------------------------------------------------------------------------- the loop
def build_optimization(models: PPOModels, cfg: PPOConfig) -> tuple[Any, Any, KLController]:
    """AdamW over the trainable parameters, its schedule, and the KL coefficient's controller."""
    optimizer = build_optimizer(models.model, cfg.optim)
    kl_ctl: KLController = (
        AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon) if cfg.adaptive_kl else FixedKLController(cfg.kl_coef)
    )
    return optimizer, build_scheduler(optimizer, cfg.optim), kl_ctl


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
    dist: DataParallel | None = None,
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
    ``dist``: train data-parallel in this process group (:mod:`rlhf_core.ppo.parallel`); every
    process passes the same arguments; rank 0 alone tracks and writes checkpoints and the model.
    """
    main = dist is None or dist.is_main
    tracker = (tracker or NullTracker()) if main else NullTracker()
    optim, B, per_prompt = cfg.optim, cfg.rollout_size, cfg.samples_per_prompt
    if dist is not None:
        cfg.check_processes(dist.world_size)
    set_seed(seed)
    items, ptx = prepare_inputs(cfg, policy, tokenizer, prompts, ptx_examples, resolve_format(tokenizer, cfg.prompt_format))
    models = build_models(cfg, policy, tokenizer, reward_model, reward_tokenizer, ref_model=ref_model,
                          value_model=value_model, reward_prompt_format=reward_prompt_format, seed=seed,
                          engine_log=Path(output_dir) / engine_log_name(dist))
    try:
        optimizer, scheduler, kl_ctl = build_optimization(models, cfg)
        run = RunState(
            STAGE, Path(output_dir), optim, fingerprint=run_fingerprint(cfg, items, seed), tracker=tracker,
            model=models.model, optimizer=optimizer, scheduler=scheduler, is_main=main,
            barrier=dist.barrier if dist is not None else None,
            extra_state=lambda: {"kl_controller": kl_ctl.state_dict(), "micro_batch_size": micro},
        )
        state = run.resume(resume, fingerprint_defaults={"samples_per_prompt": 1},  # older checkpoints: 1
                           first=dist.main_first() if dist is not None else None)  # rank 0 prunes first
        if state is not None:
            kl_ctl.load_state_dict(state["kl_controller"])
            models.engine.load_weights(models.model.policy)  # the engine started from the weights before the resume
        # the micro-batch of the scoring passes and the update: halved after an out-of-memory error
        micro = int((state or {}).get("micro_batch_size") or optim.micro_batch_size)
        tracker.log_params(config_params(cfg, STAGE))
        stop_reason, number, tokens = None, run.start_step, 0
        with run.steps(progress) as steps:
            for step in steps:
                number = step + 1
                # a prompt's samples sit next to each other (center_scores' groups)
                batch = [items[i] for i in prompt_indices(step, B // per_prompt, len(items), seed) for _ in range(per_prompt)]
                # 1-4. rollout, score, KL-penalised rewards, values + GAE
                exp, micro = make_experience(models, cfg, batch, seeds=rollout_seeds(seed, number, B), kl_coef=kl_ctl.value,
                                             number=number, micro=micro, gold_fn=gold_fn, dist=dist)
                if stop_reason := kl_stop_reason(exp, cfg, number):
                    log.warning(stop_reason)
                    number = step  # this step did not train
                    break
                # 5. PPO epochs over minibatches, then the schedule and the KL controller
                t0 = time.perf_counter()
                update, micro = ppo_update(models, optimizer, exp, cfg, number=number, micro=micro, ptx=ptx, dist=dist)
                lr = optimizer.param_groups[0]["lr"]
                scheduler.step()
                kl_ctl.update(exp.mean_kl, B)
                sync_seconds = models.engine.load_weights(models.model.policy) if number < optim.max_steps else 0.0
                # 6. log, progress, checkpoint
                tokens += int(exp.attention_mask.sum())
                metrics = step_metrics(exp, update, lr=lr, update_seconds=time.perf_counter() - t0 - sync_seconds)
                if cfg.rollout.engine != "hf":
                    metrics["time/weight_sync"] = sync_seconds
                run.record(number, metrics, {"reward": metrics["ppo/reward"], "kl": exp.mean_kl})
    finally:
        models.engine.close()  # a vllm engine's process tree, on error and interrupt too
    final_step = number if stop_reason else max(run.start_step, optim.max_steps)
    checkpoint = run.finish(final_step)
    model_dir = save_final_policy(models.model.policy, tokenizer, Path(output_dir), final_step, tracker, dist)
    return PPOResult(
        stage=STAGE, model_dir=model_dir, steps=final_step, resumed_from_step=run.start_step,
        metrics=run.last_metrics, history=run.history, wall_seconds=run.wall_seconds,
        tokens_per_second=tokens / run.wall_seconds if run.wall_seconds > 0 else 0.0, examples=len(items),
        checkpoint_dir=checkpoint, trainable_parameters=count_trainable(models.model)[0],
        stopped_early=stop_reason is not None, stop_reason=stop_reason,
    )


def save_final_policy(
    policy: torch.nn.Module, tokenizer: Any, output_dir: Path, step: int, tracker: Tracker, dist: DataParallel | None
) -> Path:
    """The trained policy in ``output_dir/model`` (rank 0 writes it, the others wait); its path."""
    model_dir = output_dir / MODEL_DIR
    if dist is None or dist.is_main:
        model_dir = save_stage_model(policy, tokenizer, model_dir, stage=STAGE, step=step, lora=is_peft_model(policy))
        tracker.log_artifact(model_dir)
    if dist is not None:
        dist.barrier()
    return model_dir


def run_fingerprint(cfg: PPOConfig, items: Sequence[PromptItem], seed: int) -> dict[str, Any]:
    """What a resumed run must share with its checkpoint."""
    return {
        "stage": STAGE,
        "seed": seed,
        "rollout_size": cfg.rollout_size,
        "samples_per_prompt": cfg.samples_per_prompt,
        "minibatch_size": cfg.minibatch_size,
        "batch_size": cfg.optim.micro_batch_size,  # the key checkpoints were written with
        "value_model": cfg.value_model,
        "prompts": dataset_fingerprint([it.ids for it in items]),
    }


