"""Preference pairs grouped by prompt: all compared replies of one prompt in ONE batch element.

InstructGPT (Ouyang et al. 2022, eq. 1) trains its reward model on the K ranked replies of a
prompt as one batch element: the K replies go through the model once, the loss is averaged over
that prompt's compared pairs, and each prompt weighs the same (seeing every reply K-1 times as
separate pairs overfitted). This module builds those elements from ordinary preference rows
(``id, prompt, chosen, rejected``): rows with the same prompt form a :class:`PromptGroup` of its
distinct replies and exactly the pairs that were observed (a full ranking expanded to pairs gives
all K(K-1)/2 of them; a duplicated comparison counts twice, as it would as two pairs).

Two layouts, as for pairs (``rlhf_core.batching``):

* shared prefix (``collate_shared_groups``): ONE row per prompt, ``[prefix | reply 1 | ... |
  reply K]``, the prefix being the longest common token prefix of the K sequences (so the
  chat-templated prompt is computed once); ``RewardModel.forward_groups`` attends with a 4D mask
  in which no reply sees another and every reply's positions restart after the prefix.
* one row per reply (``collate_group_rows``): K sequences prompt+reply, for backbones that do
  not take a 4D attention mask.

Rows are tokenised one by one with ``rlhf_core.batching.tokenize_preference_row`` (the pairwise
path's rendering, truncation and errors); a prompt whose rows were cut by different amounts
(``truncate_prompt``) is cut by the largest, so its replies share one prompt.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np

from rlhf_core.batching import Format, rows_to_records, tokenize_preference_row
from rlhf_core.errors import DataError

if TYPE_CHECKING:  # pragma: no cover - typing only
    from collections.abc import Mapping, Sequence

    import torch
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class PromptGroup:
    """The compared replies of one prompt: K distinct token sequences and which beat which."""

    group_id: str  # the id of the prompt's first row
    row_ids: tuple[str, ...]  # the preference rows it holds, one per pair
    sequences: tuple[tuple[int, ...], ...]  # (K,) prompt + reply token ids, in order of first appearance
    pairs: tuple[tuple[int, int], ...]  # (better, worse) indices into ``sequences``, one per row
    truncated: int = 0  # prompt tokens cut from the left (the same for every reply)

    @property
    def n_replies(self) -> int:
        return len(self.sequences)

    @cached_property
    def prefix_length(self) -> int:
        """Tokens every sequence shares from the start, leaving each reply at least one token."""
        limit = min(len(s) for s in self.sequences) - 1
        first = self.sequences[0]
        n = 0
        while n < limit and all(s[n] == first[n] for s in self.sequences):
            n += 1
        return n

    @property
    def shared_length(self) -> int:
        """Row length in the shared-prefix layout: prefix + every reply's suffix."""
        return self.prefix_length + sum(len(s) - self.prefix_length for s in self.sequences)

    def row_length(self, share_prompt: bool) -> int:
        """What length bucketing sorts by: the shared row, or the longest of the K rows."""
        return self.shared_length if share_prompt else max(len(s) for s in self.sequences)


def _prompt_key(row: Mapping[str, Any]) -> str:
    """Rows with the same key share one prompt: its text and, for a conversation, its messages."""
    messages = row.get("prompt_messages")
    if isinstance(messages, np.ndarray):  # parquet round-trips lists as arrays
        messages = messages.tolist()
    if isinstance(messages, (list, tuple)) and messages:
        return json.dumps([str(row["prompt"]), [dict(m) for m in messages]], sort_keys=True, default=str)
    return json.dumps([str(row["prompt"]), None])


def group_preference_rows(
    rows: Any,
    tokenizer: PreTrainedTokenizerBase,
    *,
    fmt: Format,
    max_length: int,
    truncate: bool = False,
    source: str = "train",
) -> list[PromptGroup]:
    """Preference rows -> one :class:`PromptGroup` per prompt, in order of the prompts' first rows.

    Rows with chosen == rejected (as tokens) carry no signal and are dropped with a warning, as
    the pairwise path does; all of them -> DataError. Every other row is in exactly one group.
    """
    records = rows_to_records(rows, source)
    members: dict[str, list[tuple[Any, ...]]] = {}  # prompt key -> (row id, chosen ids, rejected ids, cut)
    dropped = []
    for i, record in enumerate(records):
        pair = tokenize_preference_row(record, tokenizer, fmt=fmt, max_length=max_length, truncate=truncate, index=i,
                                       source=source)
        if pair.chosen_ids == pair.rejected_ids:
            dropped.append(pair.row_id)
            continue
        members.setdefault(_prompt_key(record), []).append((pair.row_id, pair.chosen_ids, pair.rejected_ids, pair.truncated))
    if not members:
        raise DataError(
            f"{source}: all {len(records)} preference pairs have chosen == rejected; a reward model cannot learn from them"
        )
    if dropped:
        warnings.warn(f"{source}: dropped {len(dropped)} pair(s) with chosen == rejected (first: {dropped[0]})", stacklevel=2)
    return [_group(rows) for rows in members.values()]


def _group(rows: list[tuple[Any, ...]]) -> PromptGroup:
    """One prompt's tokenised rows -> its group; every row's prompt cut to the largest cut among them."""
    cut = max(row[3] for row in rows)
    index: dict[tuple[int, ...], int] = {}
    pairs = []
    for _, chosen, rejected, row_cut in rows:
        extra = cut - row_cut  # chosen/rejected are prompt[row_cut:] + reply: cut `extra` more prompt tokens
        better = index.setdefault(tuple(chosen[extra:]), len(index))
        worse = index.setdefault(tuple(rejected[extra:]), len(index))
        pairs.append((better, worse))
    return PromptGroup(
        group_id=rows[0][0], row_ids=tuple(row[0] for row in rows), sequences=tuple(index), pairs=tuple(pairs),
        truncated=cut,
    )


def _compared(groups: Sequence[PromptGroup], K: int) -> torch.Tensor:
    """(B, K, K) int64: ``[b, i, j]`` = how many of prompt b's rows preferred reply i over reply j."""
    import torch

    counts = torch.zeros(len(groups), K, K, dtype=torch.long)
    for b, group in enumerate(groups):
        for better, worse in group.pairs:
            counts[b, better, worse] += 1
    return counts


def _padded(rows: Sequence[Sequence[int]], pad_token_id: int) -> dict[str, torch.Tensor]:
    import torch

    length = max(len(r) for r in rows)
    return {
        "input_ids": torch.tensor([list(r) + [pad_token_id] * (length - len(r)) for r in rows], dtype=torch.long),
        "attention_mask": torch.tensor([[1] * len(r) + [0] * (length - len(r)) for r in rows], dtype=torch.long),
    }


def collate_shared_groups(groups: Sequence[PromptGroup], pad_token_id: int) -> dict[str, torch.Tensor]:
    """One row per prompt, ``[shared prefix | reply 1 | ... | reply K]``, right-padded.

    ``input_ids`` / ``attention_mask`` (B, T); ``prefix_lengths`` (B,); ``reply_ends`` (B, K) with
    K the most replies of any prompt here: where each reply's suffix ends (a prompt with fewer
    replies repeats its row length: empty slots); ``compared`` (B, K, K) counts (see
    ``rlhf_core.losses.kwise_ranking_loss``). ``RewardModel.forward_groups`` reads these.
    """
    import torch

    K = max(g.n_replies for g in groups)
    rows, prefixes, ends = [], [], []
    for g in groups:
        n = g.prefix_length
        row = list(g.sequences[0][:n])
        row_ends = []
        for seq in g.sequences:
            row.extend(seq[n:])
            row_ends.append(len(row))
        rows.append(row)
        prefixes.append(n)
        ends.append(row_ends + [len(row)] * (K - g.n_replies))
    return {
        **_padded(rows, pad_token_id),
        "prefix_lengths": torch.tensor(prefixes, dtype=torch.long),
        "reply_ends": torch.tensor(ends, dtype=torch.long),
        "compared": _compared(groups, K),
    }


def collate_group_rows(groups: Sequence[PromptGroup], pad_token_id: int) -> dict[str, torch.Tensor]:
    """One row per reply (prompt + reply), right-padded: the layout for backbones without 4D masks.

    ``input_ids`` / ``attention_mask`` (N, T), N = the replies of all B prompts; ``reply_rows``
    (B, K): the row of each prompt's reply k (empty slots point at the prompt's first row);
    ``compared`` (B, K, K) as in :func:`collate_shared_groups`.
    """
    import torch

    K = max(g.n_replies for g in groups)
    rows: list[Sequence[int]] = []
    reply_rows = []
    for g in groups:
        first = len(rows)
        rows.extend(g.sequences)
        reply_rows.append(list(range(first, len(rows))) + [first] * (K - g.n_replies))
    return {**_padded(rows, pad_token_id), "reply_rows": torch.tensor(reply_rows, dtype=torch.long),
            "compared": _compared(groups, K)}


def prompts_in_batch(batch: Mapping[str, torch.Tensor]) -> int:
    """Prompts (batch elements) in a grouped batch of either layout."""
    return int(batch["compared"].shape[0])


def group_rewards(reward_model: torch.nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Rewards (B, K) of every prompt's replies from a grouped batch of either layout (one forward pass)."""
    if "reply_ends" in batch:
        return reward_model(
            batch["input_ids"], batch["attention_mask"], prefix_lengths=batch["prefix_lengths"], reply_ends=batch["reply_ends"]
        )
    rewards = reward_model(batch["input_ids"], batch["attention_mask"])  # (N,)
    return rewards[batch["reply_rows"]]  # (B, K)
