"""Supervised fine-tuning loop: completion-only next-token loss on demonstrations.

``train_sft`` tokenises the rows (labels only on response / assistant tokens, see
``rlhf_core.batching``), runs the shared loop (``rlhf_core.training``) and writes the final
model in Hugging Face format to ``output_dir/model`` with the stage marker ``{"stage": "sft"}``
(``rlhf_core.stage_io``).
With LoRA the adapters are also saved to ``output_dir/adapter`` and the model written to
``output_dir/model`` is the merged one, so later stages load a plain causal LM.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from rlhf_core.batching import (
    IGNORE_INDEX,
    SFTExample,
    collate_sft,
    count_target_tokens,
    resolve_format,
    tokenize_sft_rows,
)
from rlhf_core.config.sft import SFTConfig
from rlhf_core.distributed import DataParallel
from rlhf_core.losses import sft_loss_sum
from rlhf_core.models import apply_lora, unwrap_peft
from rlhf_core.stage_io import MODEL_DIR, replace_dir, save_stage_model
from rlhf_core.tracking import NullTracker, Tracker
from rlhf_core.training import (
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

SFT_STAGE = "sft"

# Architectures whose logits are exactly ``lm_head(decoder(x).last_hidden_state)`` (no logit
# scaling or soft-capping): for them the LM head runs only on positions that carry a label.
_HIDDEN_STATE_PATH = frozenset({"llama", "mistral", "qwen2", "qwen3"})


@dataclass
class SFTResult(TrainResult):
    """``TrainResult`` of the SFT stage (``metrics`` hold ``sft/loss``, ``sft/eval_loss``, ...)."""


def completion_nll_sum(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Summed next-token NLL over labelled tokens, and their count.

    batch: ``input_ids``/``attention_mask``/``labels`` (B, T). Equals
    ``losses.sft_loss_sum(model(...).logits, labels)``; for Llama-family models the vocabulary
    projection runs only on the N labelled positions, (N, V) logits instead of (B, T, V):
    prompts and padding need no logits (tested against the full-logits path).
    """
    base = unwrap_peft(model)  # peft: LoRA layers live inside the base model
    config = getattr(base, "config", None)
    labels = batch["labels"]
    if getattr(config, "model_type", None) in _HIDDEN_STATE_PATH and hasattr(base, "get_decoder"):
        hidden = base.get_decoder()(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
        ).last_hidden_state  # (B, T, H)
        targets = labels[:, 1:]  # (B, T-1): position t predicts token t+1
        mask = targets != IGNORE_INDEX  # (B, T-1)
        logits = base.get_output_embeddings()(hidden[:, :-1][mask])  # (N, V)
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        return F.cross_entropy(logits, targets[mask], reduction="sum"), int(mask.sum())
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    return sft_loss_sum(logits, labels)


def sft_step_loss(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], step_tokens: int
) -> tuple[torch.Tensor, dict[str, float]]:
    """One micro-batch's share of the step's token-mean loss: ``nll_sum / step_tokens``."""
    nll_sum, _ = completion_nll_sum(model, batch)
    loss = nll_sum / step_tokens
    return loss, {"sft/loss": float(loss.detach())}


def _evaluator(model: torch.nn.Module, examples: list[SFTExample], pad_id: int, batch_size: int):
    device = next(model.parameters()).device
    order = eval_batches([len(e.input_ids) for e in examples], batch_size)

    def evaluate() -> dict[str, float]:
        total, count = 0.0, 0
        for indices in order:
            batch = collate_sft([examples[i] for i in indices], pad_id)
            nll, n = completion_nll_sum(model, {k: v.to(device) for k, v in batch.items()})
            total, count = total + float(nll), count + n
        return {"sft/eval_loss": total / count, "sft/eval_tokens": float(count)}

    return evaluate


def train_sft(
    cfg: SFTConfig,
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    train_rows: Any,
    *,
    output_dir: Path,
    tracker: Tracker | None = None,
    eval_rows: Any | None = None,
    resume: bool | str | Path = True,
    seed: int = 0,
    progress: bool = True,
    dist: DataParallel | None = None,
) -> SFTResult:
    """Fine-tune ``model`` (a causal LM, trained in place) on demonstration rows.

    train_rows / eval_rows: ``list[dict]`` or a DataFrame with the demonstrations columns
    (``id, prompt, response, messages``). ``resume``: True = continue from the newest
    checkpoint in ``output_dir/checkpoints`` if any; False = start over (old checkpoints are
    deleted); a path = that checkpoint (missing/corrupt/other stage -> TrainingError).
    Raises DataError for empty data or over-long rows, TrainingError on NaN (naming the step).
    """
    main = dist is None or dist.is_main  # data-parallel: rank 0 alone tracks and writes the model
    tracker = (tracker or NullTracker()) if main else NullTracker()
    output_dir = Path(output_dir)
    optim = cfg.optim
    fmt = resolve_format(tokenizer, cfg.prompt_format)
    tok_kwargs = {"fmt": fmt, "max_length": optim.max_length, "truncate": optim.truncate_prompt}
    examples = tokenize_sft_rows(train_rows, tokenizer, source="sft train data", **tok_kwargs)
    eval_examples = (
        tokenize_sft_rows(eval_rows, tokenizer, source="sft eval data", **tok_kwargs) if eval_rows is not None else None
    )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    set_seed(seed)
    if optim.lora.enabled:
        model = apply_lora(model, optim.lora, task_type="CAUSAL_LM")
    trainable, total = count_trainable(model)
    tracker.log_params(
        {**config_params(cfg, "sft"), "sft.seed": seed, "sft.examples": len(examples),
         "sft.prompt_format_resolved": fmt, "sft.trainable_parameters": trainable, "sft.parameters": total}
    )

    outcome = run_training_loop(
        stage=SFT_STAGE,
        model=model,
        optim=optim,
        lengths=[len(e.input_ids) for e in examples],
        collate=lambda idx: collate_sft([examples[i] for i in idx], pad_id),
        units_of=lambda batch: count_target_tokens(batch["labels"]),
        loss_fn=sft_step_loss,
        output_dir=output_dir,
        tracker=tracker,
        evaluate=_evaluator(model, eval_examples, pad_id, cfg.eval_batch_size) if eval_examples else None,
        resume=resume,
        seed=seed,
        fingerprint={"data": dataset_fingerprint([e.input_ids + e.labels for e in examples]), "format": fmt,
                     "lora": optim.lora.model_dump(exclude_none=True)},
        progress=progress,
        dist=dist,
        unit_name="tokens",
    )

    if main:
        model_dir = _save_final(model, tokenizer, output_dir, step=outcome.steps, lora=optim.lora.enabled)
        tracker.log_artifact(model_dir)
    else:
        model_dir = output_dir / MODEL_DIR
    if dist is not None:
        dist.barrier()
    return SFTResult.from_outcome(
        SFT_STAGE, outcome, model_dir, examples=len(examples), trainable=trainable,
        extra={"target_tokens": outcome.units, "prompt_format": fmt,
               "truncated_rows": sum(1 for e in examples if e.truncated)},
    )


def _save_final(
    model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, output_dir: Path, *, step: int, lora: bool
) -> Path:
    """HF-format model + tokenizer + stage marker (``stage_io.save_stage_model``); LoRA: the adapters too, then merged."""
    output_dir.mkdir(parents=True, exist_ok=True)
    if lora:
        adapter_tmp = Path(tempfile.mkdtemp(prefix=".tmp-adapter-", dir=output_dir))
        model.save_pretrained(str(adapter_tmp))
        replace_dir(adapter_tmp, output_dir / "adapter")
        model = model.merge_and_unload()  # later stages load a plain causal LM
    return save_stage_model(model, tokenizer, output_dir / MODEL_DIR, stage=SFT_STAGE, step=step, lora_merged=lora)
