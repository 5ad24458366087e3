"""Held-out evaluation prompts: canonical prompt rows -> :class:`EvalPrompts`, and a seeded subset.

A prompt is one user turn (``prompt``) or a conversation (``prompt_messages``,
:mod:`rlhf_core.conversation`), which the sampler renders as real turns.

Torch-free (pure python + numpy).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rlhf_core.conversation import CONTEXT_COLUMN, Messages, row_context
from rlhf_core.errors import DataError


@dataclass(frozen=True)
class EvalPrompts:
    """Held-out prompts as plain lists (B,); ``contexts[i]`` is prompt i's conversation (None: one user turn)."""

    ids: list[str]
    prompts: list[str]
    harmful: list[bool]
    topics: list[str | None]
    contexts: list[Messages | None]

    def __len__(self) -> int:
        return len(self.prompts)

    def subset(self, rows: Sequence[int]) -> EvalPrompts:
        return EvalPrompts([self.ids[i] for i in rows], [self.prompts[i] for i in rows],
                           [self.harmful[i] for i in rows], [self.topics[i] for i in rows],
                           [self.contexts[i] for i in rows])

    def as_rows(self) -> list[dict[str, Any]]:
        """Back to canonical prompt rows (``id``, ``prompt``, ``prompt_messages``, ``harmful``, ``topic``)."""
        return [{"id": i, "prompt": p, CONTEXT_COLUMN: c, "harmful": h, "topic": t}
                for i, p, c, h, t in zip(self.ids, self.prompts, self.contexts, self.harmful, self.topics, strict=True)]


def _flag(value: Any, where: str) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False  # the canonical default
    if isinstance(value, (bool, np.bool_)) or (isinstance(value, (int, np.integer)) and value in (0, 1)):
        return bool(value)
    raise DataError(f"{where}: column 'harmful' must be true/false, got {value!r}")


def eval_prompts(prompts: Any, source: str = "eval prompts") -> EvalPrompts:
    """Canonical prompt rows (DataFrame or dicts: ``id``, ``prompt``, ``prompt_messages``, ``harmful``,
    ``topic``) or strings.

    Empty input, a blank prompt, a malformed conversation or a non-boolean ``harmful`` is a
    DataError naming the row.
    """
    from rlhf_core.batching import rows_to_records

    if isinstance(prompts, (list, tuple)) and prompts and all(isinstance(p, str) for p in prompts):
        prompts = [{"id": f"#{i}", "prompt": p} for i, p in enumerate(prompts)]
    records = rows_to_records(prompts, source)
    out = EvalPrompts([], [], [], [], [])
    for i, row in enumerate(records):
        row_id = row.get("id")
        row_id = f"#{i}" if row_id is None or (isinstance(row_id, float) and math.isnan(row_id)) else str(row_id)
        text = row.get("prompt")
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{source}: row {row_id}: column 'prompt' must be a non-empty string")
        topic = row.get("topic")
        out.ids.append(row_id)
        out.prompts.append(text)
        out.harmful.append(_flag(row.get("harmful"), f"{source}: row {row_id}"))
        out.topics.append(topic if isinstance(topic, str) else None)
        out.contexts.append(row_context(row, f"{source}: row {row_id}"))
    return out


def select_eval_prompts(prompts: EvalPrompts, n: int | None, seed: int) -> EvalPrompts:
    """At most ``n`` prompts, a seeded subset that keeps the harmful share (>= 1 harmful if any), in input order."""
    if n is None or n >= len(prompts):
        return prompts
    harmful = [i for i, h in enumerate(prompts.harmful) if h]
    benign = [i for i, h in enumerate(prompts.harmful) if not h]
    n_harmful = min(len(harmful), max(1 if harmful else 0, round(n * len(harmful) / len(prompts))))
    rng = np.random.default_rng(seed)
    chosen = list(rng.permutation(harmful)[:n_harmful]) + list(rng.permutation(benign)[: n - n_harmful])
    return prompts.subset(sorted(int(i) for i in chosen))
