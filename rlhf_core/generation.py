"""Prompts as token ids for the sampler (PPO, best-of-N, evaluation), and chat replies for the CLI and demo data.

A prompt row is one user turn (``prompt``) or a conversation (``prompt_messages``, see
:mod:`rlhf_core.conversation`), rendered by :func:`rlhf_core.batching.prompt_ids`; a conversation
over the prompt budget loses whole earliest turns before any token is cut.

PPO, best-of-N and the evaluation sample through :func:`rlhf_core.sampling.sample`.
:func:`sample_replies` (``rlhf model chat``, ``rlhf data make-demo``) stays on ``model.generate``:
its draws differ from that sampler's (``torch.multinomial`` rather than one uniform per row,
transformers' top-p rule, the generation config's default top-k of 50 and any other processor a
model's ``generation_config.json`` sets), and the replies shipped in ``data/demo/samples.json``
were drawn this way.

torch and the tokenising code are imported inside the functions that need them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rlhf_core.errors import ConfigError, DataError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from rlhf_core.batching import Format
    from rlhf_core.conversation import Messages


@dataclass(frozen=True)
class PromptItem:
    """One tokenised prompt: its row id, readable text, token ids (P,) and the conversation they render."""

    row_id: str
    text: str
    ids: list[int]
    context: Messages | None = None  # the turns kept from ``prompt_messages``; None for a single user turn


def prepare_prompts(
    prompts: Any, tokenizer: Any, fmt: Format, *, max_prompt_tokens: int, truncate: bool, source: str = "prompts"
) -> list[PromptItem]:
    """Prompt rows (``id``, ``prompt``, ``prompt_messages``), a DataFrame or plain strings -> tokenised items.

    A conversation over ``max_prompt_tokens`` loses whole earliest turns down to its final user
    turn (:func:`rlhf_core.conversation.fit_turns`). Empty input, a blank prompt, a malformed
    conversation, or a prompt still longer than ``max_prompt_tokens`` (unless ``truncate``: keep
    its last tokens) is a DataError naming the prompt id.
    """
    from rlhf_core.batching import prompt_ids, rows_to_records
    from rlhf_core.conversation import fit_turns, row_context

    if isinstance(prompts, (list, tuple)) and prompts and all(isinstance(p, str) for p in prompts):
        prompts = [{"id": f"#{i}", "prompt": p} for i, p in enumerate(prompts)]
    records = rows_to_records(prompts, source)
    items = []
    for i, row in enumerate(records):
        row_id = str(row.get("id") if row.get("id") is not None else f"#{i}")
        text = row.get("prompt")
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{source}: prompt {row_id}: column 'prompt' must be a non-empty string")
        where = f"{source}: prompt {row_id}"
        context = row_context(row, where)
        if context is None:
            ids = prompt_ids(tokenizer, text, fmt, where=where)
        else:
            (context, ids), _ = fit_turns(
                context, lambda c: (c, prompt_ids(tokenizer, text, fmt, context=c, where=where)),
                lambda built: len(built[1]), max_prompt_tokens,
            )
        if len(ids) > max_prompt_tokens:
            if not truncate:
                raise DataError(
                    f"{source}: prompt {row_id} has {len(ids)} tokens, over the {max_prompt_tokens} the context leaves "
                    "for it (optim.max_length - max_new_tokens); shorten it, raise optim.max_length, or set "
                    "optim.truncate_prompt=true"
                )
            ids = ids[-max_prompt_tokens:]
        items.append(PromptItem(row_id=row_id, text=text, ids=ids, context=context))
    return items


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


def chat_prompt_ids(tokenizer: PreTrainedTokenizerBase, prompts: list[str]) -> dict:
    """User prompts as the policy reads them (:func:`rlhf_core.batching.prompt_ids`, chat template
    when the tokenizer has one), left-padded for batched generation: ``input_ids``, ``attention_mask`` (B, P)."""
    from rlhf_core.batching import prompt_ids, resolve_format
    from rlhf_core.sampling import left_pad

    fmt = resolve_format(tokenizer, "auto")
    ids, mask = left_pad([prompt_ids(tokenizer, p, fmt) for p in prompts], tokenizer.pad_token_id)
    return {"input_ids": ids, "attention_mask": mask}


def sample_replies(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    *,
    max_new_tokens: int = 48,
    temperature: float = 0.7,
    top_p: float = 0.9,
    seed: int | None = 0,
) -> list[str]:
    """Sample one reply per prompt (temperature 0 = greedy). Deterministic given ``seed`` on CPU."""
    import torch

    batch = {k: v.to(model.device) for k, v in chat_prompt_ids(tokenizer, prompts).items()}
    if seed is not None:
        torch.manual_seed(seed)
    sampling = temperature > 0
    kwargs = {"do_sample": True, "temperature": temperature, "top_p": top_p} if sampling else {"do_sample": False}
    with torch.no_grad():
        out = model.generate(
            **batch, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, **kwargs
        )
    new_tokens = out[:, batch["input_ids"].shape[1] :]
    return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in new_tokens]


def chat_reply(model, tokenizer, prompt: str, **kwargs) -> str:
    """One sampled reply to one user message."""
    return sample_replies(model, tokenizer, [prompt], **kwargs)[0]
