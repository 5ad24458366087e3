"""Recipe step 2: score. The reward model reads prompt + response and returns one number each.

When the reward model has its own tokenizer (another vocabulary, another chat template) the
policy's token ids mean nothing to it: the prompt (its ``prompt_messages`` conversation, when it
has one) and the decoded response are re-rendered with the reward tokenizer in the format the reward model was trained on
(:func:`rlhf_core.batching.prompt_response_ids`). That rendering always closes the assistant
turn, so a reward model cannot tell a cut-off response from a finished one there: use
``missing_eos_penalty`` for that.

Chat format: the whole conversation is rendered and tokenised in one go (:func:`exchange_ids`),
not prompt and response separately. The reward model reads the whole sequence, so it needs no
prompt/response split, and a sampled response that starts with whitespace ("\\n\\n...",
"  ...") merges with the assistant header's trailing newline into other tokens, which the
split would have to reject. Where the split is stable (every training row) this is exactly
``prompt_ids + response_ids``; the response text is scored as sampled, never stripped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

import torch

from rlhf_core.batching import Format, prompt_response_ids, render_chat_ids
from rlhf_core.conversation import chat_messages

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedTokenizerBase


class RewardFn(Protocol):
    """Anything with the :class:`rlhf_core.reward.model.RewardModel` interface."""

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """input_ids, attention_mask: (B, T) -> rewards (B,)."""
        ...


def tokenizers_match(a: PreTrainedTokenizerBase, b: PreTrainedTokenizerBase) -> bool:
    """True when token ids can be handed from ``a`` to ``b`` unchanged (same object, or same vocab and template)."""
    if a is b:
        return True
    return (
        len(a) == len(b)
        and a.get_vocab() == b.get_vocab()
        and getattr(a, "chat_template", None) == getattr(b, "chat_template", None)
    )


def exchange_ids(
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    response: str,
    fmt: Format,
    *,
    context: Sequence[Mapping[str, str]] | None = None,
) -> list[int]:
    """Token ids (T,) of the whole (prompt, response) exchange, as the reward model reads it; any response text.

    ``context``: the conversation before the response (a ``prompt_messages``), else ``prompt`` is
    one user turn. Chat: the conversation plus the response as the next assistant turn, rendered
    through the template and tokenised whole. Plain: the prompt's ids, the response's and EOS
    (:func:`rlhf_core.batching.prompt_response_ids`).
    """
    where = "reward re-tokenisation"
    if fmt == "chat":
        messages = [*chat_messages(prompt, context), {"role": "assistant", "content": response}]
        return render_chat_ids(tokenizer, messages, add_generation_prompt=False, where=where)
    p_ids, r_ids = prompt_response_ids(tokenizer, prompt, response, fmt, where=where, context=context)
    return p_ids + r_ids


def retokenize(
    prompts: Sequence[str],
    responses: Sequence[str],
    tokenizer: PreTrainedTokenizerBase,
    fmt: Format,
    *,
    max_length: int | None = None,
    contexts: Sequence[Sequence[Mapping[str, str]] | None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Render (prompt, response) text pairs with ``tokenizer``; right-padded ``ids``, ``mask`` (B, T).

    Each row is :func:`exchange_ids` (``contexts``: each prompt's conversation, None entries or
    None for single user turns), so any sampled text scores (see the module docstring).
    Over-long rows keep their *last* ``max_length`` tokens: the reward model reads the last token.
    """
    contexts = [None] * len(prompts) if contexts is None else contexts
    if not len(prompts) == len(responses) == len(contexts):
        raise ValueError(f"retokenize: {len(prompts)} prompts, {len(contexts)} contexts but {len(responses)} responses")
    rows = []
    for prompt, response, context in zip(prompts, responses, contexts, strict=True):
        ids = exchange_ids(tokenizer, prompt, response, fmt, context=context)
        rows.append(ids[-max_length:] if max_length else ids)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids, mask


@torch.no_grad()
def reward_scores(
    reward_model: RewardFn, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, batch_size: int
) -> torch.Tensor:
    """The reward model over (B, T) sequences in chunks of ``batch_size`` -> (B,) float32."""
    chunks = [
        reward_model(input_ids[i : i + batch_size], attention_mask[i : i + batch_size]).float()
        for i in range(0, input_ids.shape[0], batch_size)
    ]
    return torch.cat(chunks)


def apply_missing_eos_penalty(scores: torch.Tensor, has_eos: torch.Tensor, penalty: float | None) -> torch.Tensor:
    """scores (B,), has_eos (B,) bool -> scores with ``penalty`` subtracted where no EOS was emitted.

    TRL's ``missing_eos_penalty``: a response cut off at ``max_new_tokens`` is usually a
    rambling one, and reward models tend to like length; ``None`` or 0 disables it.
    """
    if not penalty:
        return scores
    return torch.where(has_eos, scores, scores - penalty)


def center_scores(scores: torch.Tensor, samples_per_prompt: int = 1) -> torch.Tensor:
    """Scores (B,) minus a baseline that carries no information about the response itself.

    ``samples_per_prompt == 1``: the rollout batch's mean (the reward model's offset is arbitrary).
    ``samples_per_prompt = k > 1`` (the batch holds each prompt's ``k`` samples consecutively):
    the mean of the *other* ``k - 1`` samples of the same prompt (leave-one-out, as RLOO,
    Ahmadian et al. 2024), so what the prompt alone contributes to the score cancels and each
    sample is judged only against its siblings; unbiased, as no sample is its own baseline.
    """
    if scores.dim() != 1:
        raise ValueError(f"center_scores: expected scores of shape (B,), got {tuple(scores.shape)}")
    k = samples_per_prompt
    if k < 1 or scores.shape[0] % k:
        raise ValueError(f"center_scores: {scores.shape[0]} scores do not split into groups of {k} samples per prompt")
    if k == 1:
        return scores - scores.mean()
    groups = scores.view(-1, k)  # (B/k, k)
    others = (groups.sum(-1, keepdim=True) - groups) / (k - 1)  # (B/k, k)
    return (groups - others).reshape(-1)
