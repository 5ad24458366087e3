"""From canonical rows to padded tensors: tokenisation, label masking, length bucketing, collation.

SFT rows (``demonstrations``: id, prompt, response, messages|None) become token ids plus labels
that are ``-100`` everywhere except on the tokens the model must learn to write: the response,
or every assistant turn of a multi-turn ``messages`` conversation (completion-only loss).
Preference rows (``preferences``: id, prompt, prompt_messages|None, chosen, rejected, margin|None)
become two token sequences, prompt+chosen and prompt+rejected, that go through the reward model
in ONE forward pass, in one of two layouts:

* shared prefix (the default, ``collate_shared_pairs``): ONE row per pair,
  ``[shared prefix | chosen suffix | rejected suffix]``, so the prompt (with the chat template's
  system prompt, often half the tokens) is computed once. The prefix is the longest common
  token prefix of the two sequences, cut so each suffix keeps >= 1 token (its last token is
  where the reward is read). It is found on token ids, so a BPE merge across the
  prompt/response boundary only shortens it. The model attends with a 4D mask in which
  rejected tokens do not see chosen tokens, and the rejected suffix's positions restart
  where the prefix ends: each token sees exactly what it sees in its own sequence.
* two rows (``collate_pairs``): ``[chosen; rejected]`` stacked along the batch, for backbones
  that do not take a 4D attention mask.

Finding assistant spans in a chat-templated conversation: templates rarely mark them (no
``{% generation %}`` blocks in most), so each assistant turn ``i`` is located by rendering
prefixes of the conversation through the template: the turn starts where
``render(messages[:i], add_generation_prompt=True)`` ends and stops where
``render(messages[:i+1])`` ends. Each prefix's token ids must be a prefix of the full
conversation's ids; a template that rewrites earlier turns fails loudly (``DataError``) instead
of silently mislabelling. With SmolLM2's ChatML template the labelled span is the content plus
``<|im_end|>\\n``, so the model learns to stop.

Every stage renders a prompt through :func:`prompt_ids` / :func:`prompt_response_ids`: one user
turn (``prompt``; ``prompt_messages`` None), or the conversation in ``prompt_messages``
(:mod:`rlhf_core.conversation`) rendered as real turns, ``apply_chat_template(prompt_messages,
add_generation_prompt=True)``, with the reply as the next assistant turn. The 'plain' format (no
template) renders a conversation as ``"User: ...\n\nAssistant: ...\n\nUser: ...\n\nAssistant:"``.

Lengths count template tokens. A conversation (``prompt_messages``, or an SFT row's ``messages``)
over ``max_length`` first loses whole earliest turns, a leading system message kept, down to the
final user turn and its reply (:func:`rlhf_core.conversation.fit_turns`); whatever is still too
long (and any over-long single-turn row) is an error naming the row and its lengths unless
truncation is on; truncation cuts the oldest tokens from the left and never the final response.
``truncated`` on an example counts every token cut from the left, whole turns included.

Batches are length-bucketed (megabatch trick, as in HF's ``LengthGroupedSampler``): per epoch,
a seeded shuffle, then windows of ``window`` step-batches sorted by length, chunked, and the
step-batch order shuffled again. Everything is a function of ``(seed, epoch)``, so a resumed
run rebuilds the exact order from its checkpointed position.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from rlhf_core.conversation import Messages, chat_messages, check_messages, fit_turns, plain_text, row_context
from rlhf_core.errors import ConfigError, DataError, TooLongError

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch
    from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100
Format = Literal["chat", "plain"]


@dataclass(frozen=True)
class SFTExample:
    """One tokenised demonstration. ``labels[t]`` is the token to predict at ``t`` or -100."""

    row_id: str
    input_ids: list[int]  # (T,)
    labels: list[int]  # (T,)  == input_ids on trained tokens, IGNORE_INDEX elsewhere
    truncated: int = 0  # tokens cut from the left

    @property
    def n_targets(self) -> int:
        """Tokens that contribute to the loss (position 0 is never a target: causal shift)."""
        return sum(1 for label in self.labels[1:] if label != IGNORE_INDEX)


@dataclass(frozen=True)
class PairExample:
    """One tokenised preference pair: prompt+chosen and prompt+rejected."""

    row_id: str
    chosen_ids: list[int]  # (Tc,)
    rejected_ids: list[int]  # (Tr,)
    margin: float | None = None
    truncated: int = 0

    @property
    def length(self) -> int:
        """Row length in the two-row layout (the longer sequence)."""
        return max(len(self.chosen_ids), len(self.rejected_ids))

    @cached_property
    def prefix_length(self) -> int:
        """Tokens both sequences share from the start, leaving each suffix at least one token.

        Causal attention makes a prefix token's hidden state depend on earlier tokens only, so
        it is the same in both sequences. A chosen that is a token-prefix of rejected (or the
        reverse) gives up its last shared token to its suffix.
        """
        limit = min(len(self.chosen_ids), len(self.rejected_ids)) - 1
        n = 0
        while n < limit and self.chosen_ids[n] == self.rejected_ids[n]:
            n += 1
        return n

    @property
    def shared_length(self) -> int:
        """Row length in the shared-prefix layout: prefix + chosen suffix + rejected suffix."""
        return len(self.chosen_ids) + len(self.rejected_ids) - self.prefix_length

    def row_length(self, share_prompt: bool) -> int:
        """Tokens of this pair's row in the given layout (what length bucketing sorts by)."""
        return self.shared_length if share_prompt else self.length


# --------------------------------------------------------------------------- rows


def rows_to_records(rows: Any, what: str) -> list[dict[str, Any]]:
    """Accept ``list[dict]`` or a pandas DataFrame (no pandas import here); empty -> DataError."""
    if rows is None:
        raise DataError(f"{what}: no data given")
    if hasattr(rows, "to_dict") and hasattr(rows, "columns"):
        records = rows.to_dict("records")
    else:
        records = [dict(r) for r in rows]
    if not records:
        raise DataError(f"{what}: dataset is empty (0 rows); nothing to train on")
    return records


def _missing(value: Any) -> bool:
    # pandas turns None into NaN in float columns
    return value is None or (isinstance(value, float) and math.isnan(value))


def _row_id(row: Mapping[str, Any], index: int) -> str:
    value = row.get("id")
    return f"#{index}" if _missing(value) else str(value)


def _text(row: Mapping[str, Any], column: str, where: str) -> str:
    value = row.get(column)
    if _missing(value) or not isinstance(value, str):
        raise DataError(f"{where}: column '{column}' must be a string, got {type(value).__name__}")
    if not value.strip():
        raise DataError(f"{where}: column '{column}' is empty")
    return value


# --------------------------------------------------------------------------- formatting


def resolve_format(tokenizer: PreTrainedTokenizerBase, fmt: str) -> Format:
    """'auto' -> 'chat' when the tokenizer has a chat template, else 'plain'."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if fmt == "auto":
        return "chat" if has_template else "plain"
    if fmt == "chat" and not has_template:
        raise ConfigError("prompt_format: 'chat' requested but the tokenizer has no chat template (use 'plain')")
    if fmt not in ("chat", "plain"):
        raise ConfigError(f"prompt_format: unknown format '{fmt}' (use auto, chat or plain)")
    return fmt  # type: ignore[return-value]


def render_chat_ids(
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[Mapping[str, str]],
    *,
    add_generation_prompt: bool,
    where: str = "row",
) -> list[int]:
    """Token ids of ``messages`` rendered through the chat template (special tokens are in the text).

    A template that refuses the conversation (a role it cannot render, an order it rejects) is a
    DataError naming ``where``.
    """
    from jinja2 import TemplateError

    try:
        text = tokenizer.apply_chat_template(
            [dict(m) for m in messages], tokenize=False, add_generation_prompt=add_generation_prompt
        )
    except TemplateError as exc:
        roles = ", ".join(m["role"] for m in messages)
        raise DataError(f"{where}: the chat template cannot render this conversation (roles {roles}): {exc}") from exc
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _eos_id(tokenizer: PreTrainedTokenizerBase) -> int:
    if tokenizer.eos_token_id is None:
        raise ConfigError("tokenizer has no EOS token; the 'plain' prompt format needs one")
    return int(tokenizer.eos_token_id)


def prompt_ids(
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    fmt: Format,
    *,
    context: Sequence[Mapping[str, str]] | None = None,
    where: str = "row",
) -> list[int]:
    """What the policy is conditioned on, up to where the reply starts.

    ``context`` None: ``prompt`` as one user turn plus the assistant header (chat), or the prompt
    text itself (plain). Otherwise the conversation ``context`` (a row's ``prompt_messages``, see
    :mod:`rlhf_core.conversation`; ``prompt`` unused) through the chat template with the
    assistant header, or as :func:`rlhf_core.conversation.plain_text`.
    """
    if fmt == "chat":
        return render_chat_ids(tokenizer, chat_messages(prompt, context), add_generation_prompt=True, where=where)
    text = prompt if context is None else plain_text(context)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def prompt_response_ids(
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    response: str,
    fmt: Format,
    where: str = "row",
    *,
    context: Sequence[Mapping[str, str]] | None = None,
) -> tuple[list[int], list[int]]:
    """``(prompt_ids, response_ids)`` whose concatenation is the full formatted exchange.

    The same split that SFT trains on, the reward model scores and PPO samples from. ``context``:
    the conversation before the reply, as in :func:`prompt_ids`; the reply is its next assistant
    turn (chat), or its tokens and EOS after the rendered prompt (plain).
    """
    p_ids = prompt_ids(tokenizer, prompt, fmt, context=context, where=where)
    if fmt == "plain":
        return p_ids, list(tokenizer(response, add_special_tokens=False)["input_ids"]) + [_eos_id(tokenizer)]
    full = render_chat_ids(
        tokenizer,
        [*chat_messages(prompt, context), {"role": "assistant", "content": response}],
        add_generation_prompt=False,
        where=where,
    )
    if full[: len(p_ids)] != p_ids:
        raise DataError(f"{where}: chat template is not prefix-stable (prompt tokens change when the response is added)")
    return p_ids, full[len(p_ids) :]


def _normalise_messages(messages: Any, where: str) -> Messages:
    out = check_messages(messages, where, column="messages")
    if not any(m["role"] == "assistant" for m in out):
        raise DataError(f"{where}: 'messages' has no assistant turn; nothing to train on")
    return out


def chat_ids_and_labels(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[Mapping[str, str]], where: str = "row"
) -> tuple[list[int], list[int], int]:
    """Token ids of a conversation, labels on assistant turns only, and where the last turn starts.

    Returns ``(input_ids (T,), labels (T,), last_turn_start)``. See the module docstring for how
    assistant spans are found (prefix-by-prefix rendering).
    """
    full = render_chat_ids(tokenizer, messages, add_generation_prompt=False, where=where)
    labels = [IGNORE_INDEX] * len(full)
    last_start = 0
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        head = render_chat_ids(tokenizer, messages[:i], add_generation_prompt=True, where=where)
        upto = render_chat_ids(tokenizer, messages[: i + 1], add_generation_prompt=False, where=where)
        if full[: len(head)] != head or full[: len(upto)] != upto or len(upto) <= len(head):
            raise DataError(
                f"{where}: chat template is not prefix-stable at messages[{i}]; cannot locate the assistant turn"
            )
        labels[len(head) : len(upto)] = full[len(head) : len(upto)]
        last_start = len(head)
    return full, labels, last_start


def _fit_length(
    ids: list[int], protected_from: int, *, max_length: int, truncate: bool, where: str, what: str
) -> int:
    """How many tokens to cut from the left so ``ids`` fits; tokens from ``protected_from`` on are kept."""
    if len(ids) <= max_length:
        return 0
    kept = len(ids) - protected_from
    if not truncate:
        raise TooLongError(
            f"{where}: {what} has {len(ids)} tokens (prompt/context {protected_from} + response {kept}), "
            f"over max_length {max_length}; raise optim.max_length or set optim.truncate_prompt=true"
        )
    if kept > max_length:
        raise TooLongError(
            f"{where}: {what} response alone has {kept} tokens, over max_length {max_length} "
            "(truncation only cuts the prompt); raise optim.max_length or drop the row"
        )
    return len(ids) - max_length


# --------------------------------------------------------------------------- SFT


def tokenize_sft_row(
    row: Mapping[str, Any],
    tokenizer: PreTrainedTokenizerBase,
    *,
    fmt: Format,
    max_length: int,
    truncate: bool = False,
    index: int = 0,
    source: str = "train",
) -> SFTExample:
    """One demonstration -> :class:`SFTExample` (chat ``messages`` win over prompt/response).

    A ``messages`` conversation over ``max_length`` loses whole earliest turns first (the module
    docstring); its remaining assistant turns are all trained on.
    """
    row_id = _row_id(row, index)
    where = f"{source}: row {row_id}"
    messages = row.get("messages")
    if isinstance(messages, np.ndarray):  # parquet round-trips lists as arrays
        messages = messages.tolist()
    # an empty list means "no conversation", as None does
    has_messages = not _missing(messages) and not (isinstance(messages, (list, tuple)) and len(messages) == 0)
    dropped = 0
    if has_messages:
        if fmt != "chat":
            raise DataError(f"{where}: row has chat 'messages' but the prompt format is '{fmt}' (use chat/auto)")
        (ids, labels, last_start), dropped = fit_turns(
            _normalise_messages(messages, where), lambda m: chat_ids_and_labels(tokenizer, m, where),
            lambda built: len(built[0]), max_length,
        )
    else:
        p_ids, r_ids = prompt_response_ids(
            tokenizer, _text(row, "prompt", where), _text(row, "response", where), fmt, where
        )
        ids, labels, last_start = p_ids + r_ids, [IGNORE_INDEX] * len(p_ids) + r_ids, len(p_ids)
    cut = _fit_length(ids, last_start, max_length=max_length, truncate=truncate, where=where, what="sequence")
    if cut:
        ids, labels = ids[cut:], labels[cut:]
    return SFTExample(row_id=row_id, input_ids=ids, labels=labels, truncated=dropped + cut)


def tokenize_sft_rows(
    rows: Any,
    tokenizer: PreTrainedTokenizerBase,
    *,
    fmt: Format,
    max_length: int,
    truncate: bool = False,
    source: str = "train",
) -> list[SFTExample]:
    """All demonstrations of a dataset; empty data or a row with nothing to learn -> DataError."""
    records = rows_to_records(rows, source)
    examples = [
        tokenize_sft_row(r, tokenizer, fmt=fmt, max_length=max_length, truncate=truncate, index=i, source=source)
        for i, r in enumerate(records)
    ]
    for ex in examples:
        if ex.n_targets == 0:
            raise DataError(f"{source}: row {ex.row_id}: no response tokens left to train on")
    return examples


# --------------------------------------------------------------------------- preferences


def pair_ids(
    row: Mapping[str, Any], tokenizer: PreTrainedTokenizerBase, *, fmt: Format, max_length: int, where: str
) -> tuple[list[int], list[int], list[int], int]:
    """A preference row's ``(prompt ids, chosen ids, rejected ids, tokens dropped with whole turns)``.

    The prompt is ``prompt`` or the row's ``prompt_messages`` conversation (:func:`prompt_ids`);
    a conversation whose prompt + longer reply is over ``max_length`` loses its earliest turns
    (:func:`rlhf_core.conversation.fit_turns`). What is still too long is the caller's to cut or refuse.
    """
    prompt = _text(row, "prompt", where)
    chosen, rejected = _text(row, "chosen", where), _text(row, "rejected", where)
    context = row_context(row, where)

    def build(ctx: Messages | None) -> tuple[list[int], list[int], list[int]]:
        p_ids, c_ids = prompt_response_ids(tokenizer, prompt, chosen, fmt, where, context=ctx)
        _, r_ids = prompt_response_ids(tokenizer, prompt, rejected, fmt, where, context=ctx)
        return p_ids, c_ids, r_ids

    if context is None:
        return (*build(None), 0)
    built, dropped = fit_turns(context, build, lambda b: len(b[0]) + max(len(b[1]), len(b[2])), max_length)
    return (*built, dropped)


def tokenize_preference_row(
    row: Mapping[str, Any],
    tokenizer: PreTrainedTokenizerBase,
    *,
    fmt: Format,
    max_length: int,
    truncate: bool = False,
    use_margin: bool = False,
    index: int = 0,
    source: str = "train",
) -> PairExample:
    """One preference row -> :class:`PairExample` (prompt+chosen, prompt+rejected; see :func:`pair_ids`)."""
    row_id = _row_id(row, index)
    where = f"{source}: row {row_id}"
    p_ids, c_ids, r_ids, dropped = pair_ids(row, tokenizer, fmt=fmt, max_length=max_length, where=where)
    longest = p_ids + (c_ids if len(c_ids) >= len(r_ids) else r_ids)
    cut = _fit_length(longest, len(p_ids), max_length=max_length, truncate=truncate, where=where, what="prompt+chosen/rejected")
    p_ids = p_ids[cut:]
    margin = None
    if use_margin:
        raw = row.get("margin")
        margin = 0.0 if _missing(raw) else float(raw)
    return PairExample(
        row_id=row_id, chosen_ids=p_ids + c_ids, rejected_ids=p_ids + r_ids, margin=margin, truncated=dropped + cut
    )


def tokenize_preference_rows(
    rows: Any,
    tokenizer: PreTrainedTokenizerBase,
    *,
    fmt: Format,
    max_length: int,
    truncate: bool = False,
    use_margin: bool = False,
    source: str = "train",
) -> list[PairExample]:
    """All pairs; pairs with chosen == rejected carry no signal and are dropped (all of them -> DataError)."""
    records = rows_to_records(rows, source)
    pairs = [
        tokenize_preference_row(
            r, tokenizer, fmt=fmt, max_length=max_length, truncate=truncate, use_margin=use_margin, index=i, source=source
        )
        for i, r in enumerate(records)
    ]
    kept = [p for p in pairs if p.chosen_ids != p.rejected_ids]
    if not kept:
        raise DataError(
            f"{source}: all {len(pairs)} preference pairs have chosen == rejected; a reward model cannot learn from them"
        )
    if len(kept) < len(pairs):
        dropped = [p.row_id for p in pairs if p.chosen_ids == p.rejected_ids]
        warnings.warn(
            f"{source}: dropped {len(dropped)} pair(s) with chosen == rejected (first: {dropped[0]})",
            stacklevel=2,
        )
    return kept


# --------------------------------------------------------------------------- batching


class LengthBucketedBatches:
    """Deterministic length-bucketed batch order: a function of ``(seed, epoch)`` only.

    ``lengths`` (N,) are per-example token counts. Each epoch: seeded permutation, split into
    windows of ``batch_size * window`` examples, each window sorted by length (longest first)
    and chunked into batches of ``batch_size``, then the batch order is shuffled so long
    batches are not always first. Incomplete last batch kept (losses normalise by content).
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, *, window: int = 32, seed: int = 0) -> None:
        if batch_size < 1 or window < 1:
            raise ConfigError(f"batch_size ({batch_size}) and window ({window}) must be >= 1")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.batch_size = batch_size
        self.window = window
        self.seed = seed

    def __len__(self) -> int:
        """Batches per epoch."""
        return math.ceil(len(self.lengths) / self.batch_size)

    def epoch(self, epoch: int) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.lengths))
        span = self.batch_size * self.window
        batches: list[list[int]] = []
        for start in range(0, len(order), span):
            chunk = order[start : start + span]
            # stable sort so ties keep the seeded order (deterministic across platforms)
            chunk = chunk[np.argsort(-self.lengths[chunk], kind="stable")]
            batches.extend(chunk[i : i + self.batch_size].tolist() for i in range(0, len(chunk), self.batch_size))
        return [batches[i] for i in rng.permutation(len(batches))]


def split_micro_batches(indices: Sequence[int], micro_batch_size: int) -> list[list[int]]:
    """Consecutive slices (similar lengths, since step batches are length-sorted)."""
    return [list(indices[i : i + micro_batch_size]) for i in range(0, len(indices), micro_batch_size)]


def _pad(seqs: Iterable[Sequence[int]], value: int, length: int) -> list[list[int]]:
    return [list(s) + [value] * (length - len(s)) for s in seqs]


def _padded_length(longest: int, multiple: int | None) -> int:
    if multiple and longest % multiple:
        return longest + multiple - longest % multiple
    return longest


def collate_sft(
    examples: Sequence[SFTExample], pad_token_id: int, *, pad_to_multiple_of: int | None = None
) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids`` (B, T), ``attention_mask`` (B, T), ``labels`` (B, T) (-100 on padding)."""
    import torch

    length = _padded_length(max(len(e.input_ids) for e in examples), pad_to_multiple_of)
    return {
        "input_ids": torch.tensor(_pad((e.input_ids for e in examples), pad_token_id, length), dtype=torch.long),
        "attention_mask": torch.tensor(_pad(([1] * len(e.input_ids) for e in examples), 0, length), dtype=torch.long),
        "labels": torch.tensor(_pad((e.labels for e in examples), IGNORE_INDEX, length), dtype=torch.long),
    }


def collate_pairs(
    pairs: Sequence[PairExample], pad_token_id: int, *, pad_to_multiple_of: int | None = None
) -> dict[str, torch.Tensor]:
    """``[chosen; rejected]`` stacked for one forward pass.

    ``input_ids`` / ``attention_mask`` (2B, T): rows ``0..B-1`` are prompt+chosen, rows
    ``B..2B-1`` the matching prompt+rejected; right padding. ``margin`` (B,) when every pair has one.
    """
    import torch

    seqs = [p.chosen_ids for p in pairs] + [p.rejected_ids for p in pairs]
    length = _padded_length(max(len(s) for s in seqs), pad_to_multiple_of)
    batch = {
        "input_ids": torch.tensor(_pad(seqs, pad_token_id, length), dtype=torch.long),
        "attention_mask": torch.tensor(_pad(([1] * len(s) for s in seqs), 0, length), dtype=torch.long),
    }
    if all(p.margin is not None for p in pairs):
        batch["margin"] = torch.tensor([p.margin for p in pairs], dtype=torch.float32)
    return batch


def collate_shared_pairs(
    pairs: Sequence[PairExample], pad_token_id: int, *, pad_to_multiple_of: int | None = None
) -> dict[str, torch.Tensor]:
    """One row per pair, ``[shared prefix | chosen suffix | rejected suffix]``, right-padded.

    ``input_ids`` / ``attention_mask`` (B, T): the row's tokens, 1 on every real token.
    ``prefix_lengths`` (B,): tokens of the shared prefix (P). ``chosen_ends`` (B,): where the
    chosen suffix ends and the rejected one starts (C = len(prompt+chosen)); the row is
    ``P + (C - P) + (len(prompt+rejected) - P)`` tokens. ``margin`` (B,) when every pair has one.
    ``RewardModel.forward_pairs`` builds the 4D mask and position ids from these.
    """
    import torch

    rows, prefixes, ends = [], [], []
    for p in pairs:
        n = p.prefix_length
        rows.append(p.chosen_ids + p.rejected_ids[n:])
        prefixes.append(n)
        ends.append(len(p.chosen_ids))
    length = _padded_length(max(len(r) for r in rows), pad_to_multiple_of)
    batch = {
        "input_ids": torch.tensor(_pad(rows, pad_token_id, length), dtype=torch.long),
        "attention_mask": torch.tensor(_pad(([1] * len(r) for r in rows), 0, length), dtype=torch.long),
        "prefix_lengths": torch.tensor(prefixes, dtype=torch.long),
        "chosen_ends": torch.tensor(ends, dtype=torch.long),
    }
    if all(p.margin is not None for p in pairs):
        batch["margin"] = torch.tensor([p.margin for p in pairs], dtype=torch.float32)
    return batch


def pairs_in_batch(batch: Mapping[str, torch.Tensor]) -> int:
    """Preference pairs in a batch of either layout (one row per pair, or ``[chosen; rejected]``)."""
    rows = int(batch["input_ids"].shape[0])
    return rows if "prefix_lengths" in batch else rows // 2


def count_target_tokens(labels: torch.Tensor) -> int:
    """Targets after the causal shift: ``labels[:, 1:] != -100`` (matches ``losses.sft_loss_sum``)."""
    return int((labels[:, 1:] != IGNORE_INDEX).sum())
