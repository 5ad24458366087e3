"""Prompts as token ids for the sampler (PPO, best-of-N, evaluation), and chat replies for the CLI and demo data.

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


@dataclass(frozen=True)
class PromptItem:
    row_id: str
    text: str
    ids: list[int]


def prepare_prompts(
    prompts: Any, tokenizer: Any, fmt: Format, *, max_prompt_tokens: int, truncate: bool, source: str = "prompts"
) -> list[PromptItem]:
    """Prompt rows (``id``, ``prompt``), a DataFrame or plain strings -> tokenised items.

    Empty input, a blank prompt, or a prompt longer than ``max_prompt_tokens`` (unless
    ``truncate``: keep its last tokens) is a DataError naming the prompt id.
    """
    from rlhf_core.batching import prompt_ids, rows_to_records

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
    """Tokenize user prompts through the chat template, left-padded for batched generation."""
    texts = [
        tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        if tokenizer.chat_template
        else p
        for p in prompts
    ]
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # generation continues from the right edge
    try:
        return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tokenizer.padding_side = side


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

    batch = chat_prompt_ids(tokenizer, prompts).to(model.device)
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
