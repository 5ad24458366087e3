"""Sampling helpers shared by the CLI, the demo-data generator and evaluation."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


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
