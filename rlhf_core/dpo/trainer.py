"""The DPO loop: tokenise pairs, precompute reference log-probs once, then the shared training loop.

The reference log-probs are computed before the first update with the *starting* policy
(TRL's ``precompute_ref_log_probs``): no second model stays in memory, with or without LoRA.
Only the pairs the loop will visit in ``optim.max_steps`` steps are computed: the shared loop's
data order is a pure function of ``(lengths, step size, window, seed)``
(:class:`rlhf_core.batching.LengthBucketedBatches`), so :func:`visited_examples` replays it up
front (a short smoke run over a large dataset otherwise spends most of its time here).
Those values are bitwise what a full precompute gives: the forward passes are the full
pass's ``micro_batch_size`` batches, skipping the ones that hold no visited pair.
A resumed run is handed the same starting model (checkpoints hold only what training
changed), so it recomputes the same reference values, for the same steps ``[0, max_steps)``,
before loading its checkpoint.
Data-parallel (``dist``): the step batches are those of one process, so the pairs to precompute
are too; the processes share those forward passes (process ``r`` takes every ``world``-th of
them) and sum the results (zeros elsewhere: exact), so every process holds, bitwise, the values
one process computes, at ``1/world`` of its cost plus one all-reduce of 2 floats per pair.
Each micro-batch stacks ``[chosen; rejected]`` so both go through the policy in ONE forward pass.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rlhf_core.batching import (
    IGNORE_INDEX,
    Format,
    LengthBucketedBatches,
    _row_id,
    pair_ids,
    resolve_format,
    rows_to_records,
)
from rlhf_core.config.dpo import DPOConfig
from rlhf_core.config.optim import OptimConfig
from rlhf_core.distributed import DataParallel
from rlhf_core.dpo.loss import dpo_loss, sequence_logprobs
from rlhf_core.errors import DataError, TrainingError
from rlhf_core.models import apply_lora
from rlhf_core.stage_io import MODEL_DIR, save_stage_model
from rlhf_core.tracking import NullTracker, Tracker
from rlhf_core.training import (
    TrainResult,
    config_params,
    count_trainable,
    dataset_fingerprint,
    run_training_loop,
    set_seed,
)

STAGE = "dpo"


@dataclass(frozen=True)
class DPOExample:
    """One pair as two full sequences with completion-only labels (-100 on the prompt)."""

    row_id: str
    chosen_ids: list[int]
    chosen_labels: list[int]
    rejected_ids: list[int]
    rejected_labels: list[int]

    @property
    def length(self) -> int:
        return max(len(self.chosen_ids), len(self.rejected_ids))


def tokenize_dpo_row(
    row: Mapping[str, Any], tokenizer: Any, *, fmt: Format, max_length: int, truncate: bool, index: int, source: str
) -> DPOExample:
    """One preference row -> :class:`DPOExample`; the prompt (a ``prompt_messages`` conversation too)
    as :func:`rlhf_core.batching.pair_ids` renders it, earliest turns dropped when over ``max_length``."""
    row_id = _row_id(row, index)
    where = f"{source}: row {row_id}"
    p_ids, c_ids, r_ids, _ = pair_ids(row, tokenizer, fmt=fmt, max_length=max_length, where=where)
    longest = len(p_ids) + max(len(c_ids), len(r_ids))
    if longest > max_length:
        if not truncate or max(len(c_ids), len(r_ids)) >= max_length:
            raise DataError(
                f"{where}: prompt+response has {longest} tokens, over max_length {max_length}; raise optim.max_length"
                + ("" if truncate else " or set optim.truncate_prompt=true")
            )
        p_ids = p_ids[longest - max_length :]  # cut the oldest prompt tokens
    prompt_labels = [IGNORE_INDEX] * len(p_ids)
    return DPOExample(row_id, p_ids + c_ids, prompt_labels + c_ids, p_ids + r_ids, prompt_labels + r_ids)


def tokenize_dpo_rows(
    rows: Any, tokenizer: Any, *, fmt: Format, max_length: int, truncate: bool = False, source: str = "train"
) -> list[DPOExample]:
    """Preference rows (``prompt``, ``chosen``, ``rejected``) -> examples; pairs with chosen == rejected are dropped."""
    records = rows_to_records(rows, source)
    examples = [
        tokenize_dpo_row(r, tokenizer, fmt=fmt, max_length=max_length, truncate=truncate, index=i, source=source)
        for i, r in enumerate(records)
    ]
    kept = [e for e in examples if e.chosen_ids != e.rejected_ids]
    if not kept:
        raise DataError(f"{source}: all {len(examples)} pairs have chosen == rejected; DPO cannot learn from them")
    return kept


def collate_dpo(examples: list[DPOExample], pad_id: int) -> dict[str, torch.Tensor]:
    """``input_ids``/``attention_mask``/``labels`` (2B, T): rows 0..B-1 chosen, B..2B-1 rejected; right padding."""
    seqs = [e.chosen_ids for e in examples] + [e.rejected_ids for e in examples]
    labels = [e.chosen_labels for e in examples] + [e.rejected_labels for e in examples]
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    lab = torch.full((len(seqs), T), IGNORE_INDEX, dtype=torch.long)
    for i, (s, lb) in enumerate(zip(seqs, labels, strict=True)):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
        lab[i, : len(lb)] = torch.tensor(lb)
    return {"input_ids": ids, "attention_mask": mask, "labels": lab}


def pair_logprobs(
    model: torch.nn.Module, batch: Mapping[str, torch.Tensor], *, average: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass over a :func:`collate_dpo` batch -> (chosen logps (B,), rejected logps (B,))."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    logps, _ = sequence_logprobs(logits, batch["labels"], average=average)  # (2B,)
    half = logps.shape[0] // 2
    return logps[:half], logps[half:]


def visited_examples(lengths: Sequence[int], optim: OptimConfig, *, seed: int) -> list[int]:
    """Sorted indices of the examples :func:`rlhf_core.training.run_training_loop` uses in steps ``[0, max_steps)``.

    Replays the loop's schedule: step ``s`` takes step-batch ``s % n`` of epoch ``s // n`` from a
    ``LengthBucketedBatches(lengths, micro_batch_size * grad_accum_steps, window, seed)``, where
    ``n`` = batches per epoch. Once the steps cover an epoch every example is visited.
    """
    sampler = LengthBucketedBatches(
        lengths, optim.micro_batch_size * optim.grad_accum_steps, window=optim.length_bucket_window, seed=seed
    )
    per_epoch = len(sampler)
    if optim.max_steps >= per_epoch:
        return list(range(len(lengths)))
    return sorted({i for batch in sampler.epoch(0)[: optim.max_steps] for i in batch})


@torch.no_grad()
def precompute_reference(
    model: torch.nn.Module,
    examples: list[DPOExample],
    pad_id: int,
    *,
    batch_size: int,
    average: bool,
    indices: Sequence[int] | None = None,
    dist: DataParallel | None = None,
) -> torch.Tensor:
    """Reference log-probs (N, 2): column 0 chosen, column 1 rejected, under ``model`` as it is now.

    Examples go through ``model`` in index order, ``batch_size`` at a time. ``indices`` limits
    the work to the batches that hold one of them (rows of the skipped batches are NaN); the
    batches stay those of the full pass, so every value is bitwise what the full pass gives
    (a batch's padding length changes the last bits: measured up to 6e-5 on CPU).
    ``dist``: this process runs every ``world_size``-th of those batches and the processes sum
    their results (a value plus zeros: exact), so each returns the same tensor as one process.
    """
    wanted = None if indices is None else set(indices)
    starts = [
        i for i in range(0, len(examples), batch_size)
        if wanted is None or not wanted.isdisjoint(range(i, i + batch_size))
    ]
    mine = starts if dist is None else starts[dist.rank :: dist.world_size]
    out = torch.zeros((len(examples), 2), dtype=torch.float32)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        for i in mine:
            batch = {k: v.to(device) for k, v in collate_dpo(examples[i : i + batch_size], pad_id).items()}
            chosen, rejected = pair_logprobs(model, batch, average=average)
            out[i : i + batch_size] = torch.stack([chosen, rejected], dim=-1).float().cpu()
    finally:
        model.train(was_training)
    if dist is not None:  # float32 -> float64 on the wire -> float32 is exact
        out = torch.tensor(dist.sum(out.flatten().tolist()), dtype=torch.float64).float().view(len(examples), 2)
    computed = torch.zeros(len(examples), dtype=torch.bool)
    for i in starts:
        computed[i : i + batch_size] = True
    out[~computed] = float("nan")
    return out


def train_dpo(
    cfg: DPOConfig,
    policy: torch.nn.Module,
    tokenizer: Any,
    pairs: Any,
    *,
    ref_model: torch.nn.Module | None = None,
    output_dir: str | Path,
    tracker: Tracker | None = None,
    seed: int = 0,
    resume: bool | str | Path = True,
    progress: bool = False,
    dist: DataParallel | None = None,
) -> TrainResult:
    """Train ``policy`` in place with DPO/IPO on preference rows; the final model goes to ``output_dir/model``.

    ``ref_model`` None = the starting policy is the reference (precomputed, see module docstring).
    ``dist``: train data-parallel in this process group (:mod:`rlhf_core.distributed`); rank 0
    alone tracks, checkpoints and writes the model.
    """
    main = dist is None or dist.is_main
    tracker = (tracker or NullTracker()) if main else NullTracker()
    output_dir = Path(output_dir)
    optim = cfg.optim
    set_seed(seed)
    fmt = resolve_format(tokenizer, cfg.prompt_format)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    examples = tokenize_dpo_rows(pairs, tokenizer, fmt=fmt, max_length=optim.max_length, truncate=optim.truncate_prompt)
    average = cfg.loss_type == "ipo" and cfg.ipo_length_normalize
    lengths = [e.length for e in examples]
    visited = visited_examples(lengths, optim, seed=seed)
    ref = precompute_reference(
        ref_model or policy, examples, pad_id, batch_size=optim.micro_batch_size, average=average, indices=visited,
        dist=dist,
    )
    computed = torch.zeros(len(examples), dtype=torch.bool)
    computed[visited] = True
    if optim.lora.enabled:
        policy = apply_lora(policy, optim.lora, task_type="CAUSAL_LM")

    def collate(indices: list[int]) -> dict[str, torch.Tensor]:
        if not bool(computed[indices].all()):  # visited_examples no longer matches the loop's schedule
            missing = [examples[i].row_id for i in indices if not computed[i]]
            raise TrainingError(
                f"{STAGE}: no reference log-probs for pairs {missing[:3]}: the training loop's data order "
                "differs from rlhf_core.dpo.trainer.visited_examples (a bug, please report it)"
            )
        batch = collate_dpo([examples[i] for i in indices], pad_id)
        batch["ref_logps"] = ref[indices]  # (B, 2)
        return batch

    def loss_fn(model: torch.nn.Module, batch: dict[str, torch.Tensor], step_units: int):
        chosen, rejected = pair_logprobs(model, batch, average=average)
        loss, stats = dpo_loss(
            chosen, rejected, batch["ref_logps"][:, 0].to(chosen.dtype), batch["ref_logps"][:, 1].to(chosen.dtype),
            beta=cfg.beta, loss_type=cfg.loss_type, label_smoothing=cfg.label_smoothing,
        )
        share = chosen.shape[0] / step_units  # pair-mean over the whole optimizer step
        return loss * share, {k: v * share for k, v in stats.items()}

    tracker.log_params(config_params(cfg, STAGE))
    outcome = run_training_loop(
        stage=STAGE,
        model=policy,
        optim=optim,
        lengths=lengths,
        collate=collate,
        units_of=lambda b: int(b["ref_logps"].shape[0]),
        loss_fn=loss_fn,
        output_dir=output_dir,
        tracker=tracker,
        resume=resume,
        seed=seed,
        fingerprint={"pairs": dataset_fingerprint([e.chosen_ids + [-1] + e.rejected_ids for e in examples])},
        progress=progress,
        unit_name="pairs",
        dist=dist,
    )
    model_dir = output_dir / MODEL_DIR
    if main:
        save_stage_model(policy, tokenizer, model_dir, stage=STAGE, step=outcome.steps, loss_type=cfg.loss_type, beta=cfg.beta)
        tracker.log_artifact(model_dir)
    if dist is not None:
        dist.barrier()
    trainable, _ = count_trainable(policy)
    return TrainResult.from_outcome(STAGE, outcome, model_dir, examples=len(examples), trainable=trainable)
