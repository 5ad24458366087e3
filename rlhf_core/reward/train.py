"""Reward-model training loop: Bradley-Terry loss on preference pairs, or InstructGPT's K-wise loss per prompt.

Each micro-batch of B pairs is ONE forward pass: by default over B shared-prefix rows
``[prompt | chosen suffix | rejected suffix]`` (the prompt computed once, see
``rlhf_core.batching.collate_shared_pairs``), or with ``share_prompt=False`` over 2B sequences
``[chosen; rejected]`` (``collate_pairs``). Both give the same rewards, loss and gradient up to
float rounding; length bucketing sorts by the chosen layout's row length. Gradient accumulation
normalises by the step's total pairs.

With ``grouping="prompt"`` a batch element is a prompt instead (``rlhf_core.reward.grouped``): its
K distinct replies in one forward pass (one row ``[prompt | reply 1 | ... | reply K]``, or K rows
without ``share_prompt``), the K-wise ranking loss over its observed pairs
(``rlhf_core.losses.kwise_ranking_loss``), and accumulation normalises by the step's prompts. The final model goes to ``output_dir/model`` via
``RewardModel.save_pretrained`` (HF format + the stage marker ``{"stage": "reward"}``); with
LoRA the adapters are merged first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from rlhf_core.batching import (
    Format,
    PairExample,
    collate_pairs,
    collate_shared_pairs,
    pairs_in_batch,
    resolve_format,
    rows_to_records,
    tokenize_preference_row,
    tokenize_preference_rows,
)
from rlhf_core.config.reward import RewardConfig
from rlhf_core.distributed import DataParallel
from rlhf_core.config.optim import OptimConfig
from rlhf_core.losses import bradley_terry_loss, kwise_ranking_loss
from rlhf_core.models import apply_lora
from rlhf_core.reward.grouped import (
    PromptGroup,
    collate_group_rows,
    collate_shared_groups,
    group_preference_rows,
    group_rewards,
    prompts_in_batch,
)
from rlhf_core.reward.model import RewardModel
from rlhf_core.stage_io import MODEL_DIR, REWARD_STAGE
from rlhf_core.tracking import NullTracker, Tracker
from rlhf_core.training import (
    LoopOutcome,
    TrainResult,
    config_params,
    count_trainable,
    dataset_fingerprint,
    eval_batches,
    run_training_loop,
    set_seed,
)

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedTokenizerBase


@dataclass
class RewardResult(TrainResult):
    """``TrainResult`` of the reward stage; ``pairs_per_second`` beside tokens/s."""

    pairs_per_second: float = 0.0


def collate_for(share_prompt: bool):
    """The pair collate function of a layout: shared-prefix rows or ``[chosen; rejected]``."""
    return collate_shared_pairs if share_prompt else collate_pairs


def pair_step_loss(center_coef: float):
    """The loss function for :func:`rlhf_core.training.run_training_loop`, for a given centering weight.

    Takes a batch of either layout: shared-prefix rows (``prefix_lengths`` / ``chosen_ends`` present)
    or ``[chosen; rejected]`` rows; both give rewards (2B,), chosen first.
    """

    def loss_fn(rm: torch.nn.Module, batch: dict[str, torch.Tensor], step_pairs: int) -> tuple[torch.Tensor, dict[str, float]]:
        layout = {k: batch[k] for k in ("prefix_lengths", "chosen_ends") if k in batch}
        rewards = rm(batch["input_ids"], batch["attention_mask"], **layout)  # (2B,)
        n = rewards.shape[0] // 2
        loss, stats = bradley_terry_loss(
            rewards[:n], rewards[n:], margin=batch.get("margin"), center_coef=center_coef
        )
        weight = n / step_pairs  # per-pair means -> this micro-batch's share of the step mean
        return loss * weight, {key: value * weight for key, value in stats.items()}

    return loss_fn


def group_step_loss(center_coef: float):
    """The loss function of prompt-grouped batches (either layout): K-wise ranking loss, units = prompts.

    Each prompt's loss is the mean over its observed pairs and weighs ``1 / step_prompts`` of the
    step; ``rm/pairs`` is a count (summed over micro-batches, not weighted).
    """

    def loss_fn(rm: torch.nn.Module, batch: dict[str, torch.Tensor], step_prompts: int) -> tuple[torch.Tensor, dict[str, float]]:
        rewards = group_rewards(rm, batch)  # (B, K)
        loss, stats = kwise_ranking_loss(rewards, compared=batch["compared"], center_coef=center_coef)
        weight = rewards.shape[0] / step_prompts  # per-prompt means -> this micro-batch's share of the step mean
        pairs = stats.pop("rm/pairs")
        return loss * weight, {key: value * weight for key, value in stats.items()} | {"rm/pairs": pairs}

    return loss_fn


@dataclass(frozen=True)
class Batching:
    """What a batch element is (a pair, or a prompt with all its replies) and its row layout."""

    grouping: Literal["pairs", "prompt"]
    share_prompt: bool

    @property
    def unit_name(self) -> str:
        return "prompts" if self.grouping == "prompt" else "pairs"

    def examples(
        self, rows: Any, tokenizer: PreTrainedTokenizerBase, *, fmt: Format, optim: OptimConfig, use_margin: bool, source: str
    ) -> list[PairExample] | list[PromptGroup]:
        if self.grouping == "prompt":
            return group_preference_rows(
                rows, tokenizer, fmt=fmt, max_length=optim.max_length, truncate=optim.truncate_prompt, source=source
            )
        return tokenize_preference_rows(
            rows, tokenizer, fmt=fmt, max_length=optim.max_length, truncate=optim.truncate_prompt, use_margin=use_margin,
            source=source,
        )

    def collate(self, items: list[Any], pad_id: int) -> dict[str, torch.Tensor]:
        if self.grouping == "prompt":
            return (collate_shared_groups if self.share_prompt else collate_group_rows)(items, pad_id)
        return collate_for(self.share_prompt)(items, pad_id)

    def units_of(self, batch: dict[str, torch.Tensor]) -> int:
        return prompts_in_batch(batch) if self.grouping == "prompt" else pairs_in_batch(batch)

    def loss_fn(self, center_coef: float) -> Callable[..., tuple[torch.Tensor, dict[str, float]]]:
        return group_step_loss(center_coef) if self.grouping == "prompt" else pair_step_loss(center_coef)

    def pairs(self, items: list[Any]) -> int:
        return sum(len(g.pairs) for g in items) if self.grouping == "prompt" else len(items)

    def fingerprint(self, items: list[Any]) -> dict[str, Any]:
        """What a resumed run must find again: every token sequence (per prompt, which reply beat which) and the order."""
        if self.grouping == "prompt":
            data = dataset_fingerprint(
                [[i for seq in g.sequences for i in (*seq, -1)] + [-2] + [i for pair in g.pairs for i in pair] for g in items]
            )
        else:
            data = dataset_fingerprint([p.chosen_ids + [-1] + p.rejected_ids for p in items])
        return {
            "data": data,
            # the layout sets the length buckets, so the data order. None = two rows per pair, which
            # checkpoints from before the shared-prefix layout existed also read (no key), so they resume
            "pair_layout": "shared-prefix" if self.share_prompt else None,
            # what an example is, so the data order too; None = pairs (checkpoints from before grouping read no key)
            "grouping": "prompt" if self.grouping == "prompt" else None,
        }


def _evaluator(rm: torch.nn.Module, items: list[Any], batching: Batching, pad_id: int, batch_size: int, center_coef: float):
    device = next(rm.parameters()).device
    order = eval_batches([x.row_length(batching.share_prompt) for x in items], batch_size)
    loss_fn = batching.loss_fn(center_coef)

    def evaluate() -> dict[str, float]:
        sums: dict[str, float] = {}
        for indices in order:
            batch = batching.collate([items[i] for i in indices], pad_id)
            _, stats = loss_fn(rm, {k: v.to(device) for k, v in batch.items()}, len(items))
            for key, value in stats.items():
                sums[key] = sums.get(key, 0.0) + value
        return {key.replace("rm/", "rm/eval_", 1): value for key, value in sums.items()} | {
            f"rm/eval_{batching.unit_name}": float(len(items))
        }

    return evaluate


def train_reward_model(
    cfg: RewardConfig,
    reward_model: RewardModel,
    tokenizer: PreTrainedTokenizerBase,
    train_pairs: Any,
    *,
    output_dir: Path,
    tracker: Tracker | None = None,
    eval_pairs: Any | None = None,
    resume: bool | str | Path = True,
    seed: int = 0,
    progress: bool = True,
    dist: DataParallel | None = None,
) -> RewardResult:
    """Train ``reward_model`` (in place) on preference rows (``id, prompt, chosen, rejected, margin``).

    Logs ``rm/loss``, ``rm/accuracy``, ``rm/margin``, ``rm/chosen_reward``, ``rm/rejected_reward``
    per step (and ``rm/eval_*`` on ``eval_pairs``); with ``cfg.grouping="prompt"``, ``rm/loss``,
    ``rm/accuracy``, ``rm/margin`` averaged per prompt and ``rm/pairs``. Empty data or all pairs with
    chosen == rejected -> DataError before training; pairs with chosen == rejected among
    others are dropped with a warning. ``resume`` as in :func:`rlhf_core.sft.train.train_sft`.
    """
    main = dist is None or dist.is_main  # data-parallel: rank 0 alone tracks and writes the model
    tracker = (tracker or NullTracker()) if main else NullTracker()
    output_dir = Path(output_dir)
    optim = cfg.optim
    fmt = resolve_format(tokenizer, cfg.prompt_format)
    share = cfg.share_prompt
    batching = Batching(cfg.grouping, share)
    tok_kwargs = {"fmt": fmt, "optim": optim, "use_margin": cfg.use_margin}
    items = batching.examples(train_pairs, tokenizer, source="reward train data", **tok_kwargs)
    eval_items = (
        batching.examples(eval_pairs, tokenizer, source="reward eval data", **tok_kwargs) if eval_pairs is not None else None
    )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    reward_model.set_pad_token_id(pad_id)
    if share:  # a backbone that ignores or rejects the 4D mask stops here, not with wrong rewards
        reward_model.check_pair_layout()

    set_seed(seed)
    if optim.lora.enabled:
        # SEQ_CLS keeps the score head trainable (peft modules_to_save); adapters are merged at the end
        reward_model.backbone = apply_lora(reward_model.backbone, optim.lora, task_type="SEQ_CLS")
    trainable, total = count_trainable(reward_model)
    n_pairs = batching.pairs(items)
    grouped = {"reward.prompts": len(items)} if cfg.grouping == "prompt" else {}
    tracker.log_params(
        {**config_params(cfg, "reward"), "reward.seed": seed, "reward.pairs": n_pairs, **grouped,
         "reward.prompt_format_resolved": fmt, "reward.trainable_parameters": trainable, "reward.parameters": total}
    )

    outcome = run_training_loop(
        stage=REWARD_STAGE,
        model=reward_model,
        optim=optim,
        lengths=[x.row_length(share) for x in items],
        collate=lambda idx: batching.collate([items[i] for i in idx], pad_id),
        units_of=batching.units_of,
        loss_fn=batching.loss_fn(cfg.center_coef),
        output_dir=output_dir,
        tracker=tracker,
        evaluate=_evaluator(reward_model, eval_items, batching, pad_id, cfg.eval_batch_size, cfg.center_coef)
        if eval_items
        else None,
        resume=resume,
        seed=seed,
        fingerprint={
            **batching.fingerprint(items), "format": fmt, "lora": optim.lora.model_dump(exclude_none=True),
            "use_margin": cfg.use_margin,
        },
        progress=progress,
        dist=dist,
        unit_name=batching.unit_name,
    )

    output_dir.mkdir(parents=True, exist_ok=True)
    if optim.lora.enabled:
        reward_model.merge_lora()
    model_dir = output_dir / MODEL_DIR
    if main:
        reward_model.save_pretrained(
            model_dir, tokenizer=tokenizer, atomic=True, step=outcome.steps, lora_merged=optim.lora.enabled
        )
        tracker.log_artifact(model_dir)
    if dist is not None:
        dist.barrier()
    wall = outcome.wall_seconds
    return RewardResult.from_outcome(
        REWARD_STAGE, outcome, model_dir, examples=n_pairs, trainable=trainable,
        pairs_per_second=_pairs_trained(outcome, cfg.grouping) / wall if wall > 0 else 0.0,
        extra={"prompt_format": fmt, "truncated_rows": _truncated_rows(items),
               "pair_layout": "shared-prefix" if share else "two-rows", "grouping": cfg.grouping},
    )


def _pairs_trained(outcome: LoopOutcome, grouping: str) -> int:
    """Pairs this session trained on (a resumed run's earlier steps excluded), for ``pairs_per_second``."""
    if grouping == "prompt":  # the loop counts prompts; each step logs its pairs
        return int(sum(h["rm/pairs"] for h in outcome.history if h["step"] > outcome.resumed_from_step))
    return outcome.units


def _truncated_rows(items: list[PairExample] | list[PromptGroup]) -> int:
    return sum(len(x.row_ids) if isinstance(x, PromptGroup) else 1 for x in items if x.truncated)


def score_pairs(
    reward_model: RewardModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Any,
    *,
    max_length: int,
    prompt_format: str = "auto",
    truncate: bool = False,
    batch_size: int = 16,
    share_prompt: bool = True,
) -> tuple[list[float], list[float]]:
    """Rewards of every row's chosen and rejected response, in row order (for agreement evaluation).

    pairs: ``list[dict]`` or DataFrame with ``prompt, chosen, rejected``. Unlike training, no
    row is dropped (pairs with chosen == rejected score equal). Formatting must match
    training: pass the stage's ``prompt_format`` / ``truncate_prompt``. ``share_prompt``: score each
    pair as one shared-prefix row (see :func:`train_reward_model`; same rewards up to float rounding).
    Returns ``(chosen_rewards (n,), rejected_rewards (n,))`` as float lists.
    """
    fmt = resolve_format(tokenizer, prompt_format)
    records = rows_to_records(pairs, "scored pairs")
    examples = [
        tokenize_preference_row(r, tokenizer, fmt=fmt, max_length=max_length, truncate=truncate, index=i, source="scored pairs")
        for i, r in enumerate(records)
    ]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(reward_model.parameters()).device
    if share_prompt:
        reward_model.check_pair_layout()
    collate = collate_for(share_prompt)
    chosen, rejected = [0.0] * len(examples), [0.0] * len(examples)
    was_training = reward_model.training
    reward_model.eval()
    try:
        with torch.no_grad():
            for indices in eval_batches([e.row_length(share_prompt) for e in examples], batch_size):
                batch = collate([examples[i] for i in indices], pad_id)
                layout = {k: batch[k].to(device) for k in ("prefix_lengths", "chosen_ends") if k in batch}
                rewards = reward_model(batch["input_ids"].to(device), batch["attention_mask"].to(device), **layout)  # (2B,)
                rewards = rewards.float().cpu().tolist()
                for j, i in enumerate(indices):
                    chosen[i], rejected[i] = rewards[j], rewards[len(indices) + j]
    finally:
        reward_model.train(was_training)
    return chosen, rejected
