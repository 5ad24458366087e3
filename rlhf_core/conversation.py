"""Conversations before the final reply: the ``prompt_messages`` column, checked, cut and rendered as text.

A prompt (in prompt, preference and ranking rows) is either one user turn, its text in ``prompt``
and ``prompt_messages`` None, or a conversation: ``prompt_messages`` holds the chat messages
(``{"role", "content"}``, roles system/user/assistant) before the final assistant reply, starting
with a system or user message and ending with the user turn the reply answers. ``prompt`` then
holds a readable rendering (dedup key, display); the token ids come from the messages
(:func:`rlhf_core.batching.prompt_ids`).

Over-long conversations lose whole earliest turns (:func:`turn_cuts`): a cut starts at a user
turn, so the model never reads a reply without its question, and a leading system message stays.

Pure python: no torch, no tokenizer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np

from rlhf_core.errors import DataError

Messages = list[dict[str, str]]
ROLES = ("system", "user", "assistant")
CONTEXT_COLUMN = "prompt_messages"
_PLAIN_SPEAKERS = {"system": "System", "user": "User", "assistant": "Assistant"}
T = TypeVar("T")


def _as_list(value: Any) -> Any:
    # parquet round-trips a list column as numpy arrays
    return value.tolist() if isinstance(value, np.ndarray) else value


def check_messages(value: Any, where: str, column: str = CONTEXT_COLUMN) -> Messages:
    """A list of ``{"role", "content"}`` messages -> plain dicts; anything else a DataError naming ``where``."""
    value = _as_list(value)
    if not isinstance(value, (list, tuple)) or not value:
        raise DataError(f"{where}: '{column}' must be a non-empty list of {{role, content}}")
    out = []
    for k, message in enumerate(value):
        if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
            raise DataError(f"{where}: {column}[{k}] must have 'role' and 'content'")
        role, content = message["role"], message["content"]
        if role not in ROLES:
            raise DataError(f"{where}: {column}[{k}].role '{role}' is not one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise DataError(f"{where}: {column}[{k}].content must be a string")
        out.append({"role": role, "content": content})
    return out


def row_context(row: Mapping[str, Any], where: str) -> Messages | None:
    """A row's ``prompt_messages``: None (absent column, None, NaN or an empty list) for a single user turn.

    Otherwise the checked messages, which must start with a system or user message and end with
    a user turn (the one the reply answers); a DataError naming ``where`` and the rule if not.
    """
    value = _as_list(row.get(CONTEXT_COLUMN))
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, (list, tuple)) and not value:
        return None
    messages = check_messages(value, where)
    first, last = messages[0]["role"], messages[-1]["role"]
    if first not in ("system", "user"):
        raise DataError(f"{where}: '{CONTEXT_COLUMN}' must start with a system or user message, not {first}")
    if last != "user":
        raise DataError(f"{where}: '{CONTEXT_COLUMN}' must end with the user turn the reply answers, not {last}")
    return messages


def chat_messages(prompt: str, context: Sequence[Mapping[str, str]] | None) -> Messages:
    """The messages before the reply: ``context``, or ``prompt`` as the one user turn."""
    if context is None:
        return [{"role": "user", "content": prompt}]
    return [dict(m) for m in context]


def plain_text(context: Sequence[Mapping[str, str]]) -> str:
    """A conversation as text for the 'plain' (no chat template) format, ready for the reply.

    ``"User: ...\\n\\nAssistant: ...\\n\\nUser: ...\\n\\nAssistant:"`` (a system message reads
    ``"System: ..."``); the reply's tokens follow directly, then EOS, as after a single-turn prompt.
    """
    turns = [f"{_PLAIN_SPEAKERS[m['role']]}: {m['content']}" for m in context]
    return "\n\n".join([*turns, "Assistant:"])


def turn_cuts(messages: Sequence[Mapping[str, str]]) -> list[Messages]:
    """``messages`` whole, then with ever more of its earliest turns dropped, longest first.

    Each cut keeps a leading system message and starts at a user turn; the last keeps only the
    final user turn and what follows it (the reply, in a full conversation).
    """
    messages = [dict(m) for m in messages]
    head = messages[:1] if messages and messages[0]["role"] == "system" else []
    body = messages[len(head):]
    return [messages] + [head + body[i:] for i, m in enumerate(body) if i > 0 and m["role"] == "user"]


def fit_turns(
    messages: Sequence[Mapping[str, str]], build: Callable[[Messages], T], length: Callable[[T], int], limit: int
) -> tuple[T, int]:
    """``build`` the longest cut of ``messages`` (:func:`turn_cuts`) whose ``length`` is at most ``limit``.

    Returns ``(built, tokens dropped with the turns)``. When not even the shortest cut fits, it is
    returned anyway: the caller then truncates its tokens or raises, as for a single-turn row.
    """
    cuts = turn_cuts(messages)
    built = build(cuts[0])
    whole = n = length(built)
    for cut in cuts[1:]:
        if n <= limit:
            break
        built = build(cut)
        n = length(built)
    return built, whole - n
