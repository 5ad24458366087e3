"""Tokenisation, completion-only label masking, length bucketing and collation (rlhf_core.batching)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from rlhf_core.batching import (
    IGNORE_INDEX,
    LengthBucketedBatches,
    collate_pairs,
    collate_sft,
    count_target_tokens,
    split_micro_batches,
    tokenize_preference_rows,
    tokenize_sft_row,
    tokenize_sft_rows,
)
from rlhf_core.errors import DataError, TooLongError


def _spans(labels: list[int]) -> list[list[int]]:
    """Contiguous runs of labelled tokens."""
    spans, current = [], []
    for label in labels:
        if label == IGNORE_INDEX:
            if current:
                spans.append(current)
            current = []
        else:
            current.append(label)
    return spans + ([current] if current else [])


def test_plain_format_labels_only_the_response(tiny_tokenizer):
    row = {"id": "a1", "prompt": "Name a colour.", "response": " Blue."}
    ex = tokenize_sft_row(row, tiny_tokenizer, fmt="plain", max_length=64)
    prompt_len = len(tiny_tokenizer("Name a colour.", add_special_tokens=False)["input_ids"])
    assert ex.labels[:prompt_len] == [IGNORE_INDEX] * prompt_len
    assert ex.labels[prompt_len:] == ex.input_ids[prompt_len:]
    assert ex.input_ids[-1] == tiny_tokenizer.eos_token_id  # the model learns to stop
    assert tiny_tokenizer.decode(ex.labels[prompt_len:-1]) == " Blue."


def test_chat_single_turn_labels_the_assistant_reply_and_its_end_token(tiny_tokenizer):
    row = {"id": "c1", "prompt": "Name a colour.", "response": "Blue."}
    ex = tokenize_sft_row(row, tiny_tokenizer, fmt="chat", max_length=128)
    spans = _spans(ex.labels)
    assert len(spans) == 1
    assert tiny_tokenizer.decode(spans[0]) == "Blue.<|im_end|>\n"
    first = ex.labels.index(spans[0][0])
    assert tiny_tokenizer.decode(ex.input_ids[:first]).endswith("<|im_start|>assistant\n")
    assert "Name a colour." in tiny_tokenizer.decode(ex.input_ids[:first])


def test_chat_multi_turn_trains_only_assistant_turns(tiny_tokenizer):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Italy?"},
        {"role": "assistant", "content": "Rome."},
    ]
    row = {"id": "m1", "prompt": "Capital of France?", "response": "Paris.", "messages": messages}
    ex = tokenize_sft_row(row, tiny_tokenizer, fmt="chat", max_length=256)
    decoded = [tiny_tokenizer.decode(s) for s in _spans(ex.labels)]
    assert decoded == ["Paris.<|im_end|>\n", "Rome.<|im_end|>\n"]
    unlabelled = tiny_tokenizer.decode([t for t, lab in zip(ex.input_ids, ex.labels, strict=True) if lab == IGNORE_INDEX])
    for text in ("Be brief.", "Capital of France?", "And of Italy?"):
        assert text in unlabelled
    assert "Paris." not in unlabelled and "Rome." not in unlabelled


def test_messages_as_numpy_array_and_dataframe_input(tiny_tokenizer):
    messages = np.array([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}], dtype=object)
    df = pd.DataFrame(
        [
            {"id": "d1", "prompt": "Hi", "response": "Hello!", "messages": messages},
            {"id": "d2", "prompt": "Bye", "response": "Goodbye!", "messages": None},
        ]
    )
    examples = tokenize_sft_rows(df, tiny_tokenizer, fmt="chat", max_length=128)
    assert [e.row_id for e in examples] == ["d1", "d2"]
    assert tiny_tokenizer.decode(_spans(examples[0].labels)[0]) == "Hello!<|im_end|>\n"


def test_bad_rows_name_the_row_and_rule(tiny_tokenizer):
    with pytest.raises(DataError, match=r"row x9: messages\[0\].role 'robot'"):
        tokenize_sft_rows(
            [{"id": "x9", "prompt": "p", "response": "r", "messages": [{"role": "robot", "content": "beep"}]}],
            tiny_tokenizer, fmt="chat", max_length=64,
        )
    with pytest.raises(DataError, match=r"row x8: column 'response' is empty"):
        tokenize_sft_rows([{"id": "x8", "prompt": "p", "response": "  "}], tiny_tokenizer, fmt="chat", max_length=64)
    with pytest.raises(DataError, match=r"empty \(0 rows\)"):
        tokenize_sft_rows([], tiny_tokenizer, fmt="chat", max_length=64)


def test_too_long_is_a_clear_error_unless_truncating(tiny_tokenizer):
    row = {"id": "long7", "prompt": "word " * 80, "response": "Short answer."}
    with pytest.raises(DataError, match=r"row long7: sequence has \d+ tokens \(prompt/context \d+ \+ response \d+\), over max_length 40"):
        tokenize_sft_row(row, tiny_tokenizer, fmt="chat", max_length=40)
    full = tokenize_sft_row(row, tiny_tokenizer, fmt="chat", max_length=512)
    cut = tokenize_sft_row(row, tiny_tokenizer, fmt="chat", max_length=40, truncate=True)
    assert len(cut.input_ids) == 40 and cut.truncated == len(full.input_ids) - 40
    assert cut.input_ids == full.input_ids[-40:]  # cut from the left...
    assert _spans(cut.labels) == _spans(full.labels)  # ...and the response is intact
    huge = {"id": "long8", "prompt": "Hi", "response": "word " * 80}
    with pytest.raises(TooLongError, match=r"row long8: .*response alone has \d+ tokens, over max_length 40"):
        tokenize_sft_row(huge, tiny_tokenizer, fmt="chat", max_length=40, truncate=True)


def test_preference_pairs_share_the_prompt_and_identical_pairs_are_refused(tiny_tokenizer):
    rows = [
        {"id": "p1", "prompt": "Say hi", "chosen": "Hi there!", "rejected": "No.", "margin": 2.0},
        {"id": "p2", "prompt": "Say bye", "chosen": "Same", "rejected": "Same", "margin": None},
    ]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pairs = tokenize_preference_rows(rows, tiny_tokenizer, fmt="chat", max_length=64, use_margin=True)
    assert [p.row_id for p in pairs] == ["p1"]
    assert any("dropped 1 pair" in str(w.message) for w in caught)
    p = pairs[0]
    prompt_len = len(p.chosen_ids) - len(tiny_tokenizer("Hi there!<|im_end|>\n", add_special_tokens=False)["input_ids"])
    assert p.chosen_ids[:prompt_len] == p.rejected_ids[:prompt_len]
    assert p.margin == 2.0
    with pytest.raises(DataError, match=r"all 1 preference pairs have chosen == rejected"):
        tokenize_preference_rows(rows[1:], tiny_tokenizer, fmt="chat", max_length=64)
    with pytest.raises(DataError, match=r"empty"):
        tokenize_preference_rows(pd.DataFrame(columns=["id", "prompt", "chosen", "rejected"]), tiny_tokenizer, fmt="chat", max_length=64)


def test_collate_sft_pads_right_and_masks_padding(tiny_tokenizer):
    rows = [{"id": "s", "prompt": "Hi", "response": "Yo"}, {"id": "l", "prompt": "Hello there friend", "response": "Greetings to you"}]
    examples = tokenize_sft_rows(rows, tiny_tokenizer, fmt="chat", max_length=128)
    batch = collate_sft(examples, tiny_tokenizer.pad_token_id, pad_to_multiple_of=8)
    B, T = batch["input_ids"].shape
    assert B == 2 and T % 8 == 0 and T >= max(len(e.input_ids) for e in examples)
    n_short = len(examples[0].input_ids)
    assert batch["attention_mask"][0].tolist() == [1] * n_short + [0] * (T - n_short)
    assert (batch["labels"][0, n_short:] == IGNORE_INDEX).all()
    assert count_target_tokens(batch["labels"]) == sum(e.n_targets for e in examples)


def test_collate_pairs_stacks_chosen_then_rejected(tiny_tokenizer):
    rows = [
        {"id": f"p{i}", "prompt": f"Q{i}", "chosen": "good " * (i + 1), "rejected": "bad", "margin": float(i)}
        for i in range(3)
    ]
    pairs = tokenize_preference_rows(rows, tiny_tokenizer, fmt="chat", max_length=64, use_margin=True)
    batch = collate_pairs(pairs, tiny_tokenizer.pad_token_id)
    assert batch["input_ids"].shape[0] == 6
    for i, p in enumerate(pairs):
        assert batch["input_ids"][i, : len(p.chosen_ids)].tolist() == p.chosen_ids
        assert batch["input_ids"][3 + i, : len(p.rejected_ids)].tolist() == p.rejected_ids
        assert int(batch["attention_mask"][3 + i].sum()) == len(p.rejected_ids)
    assert batch["margin"].tolist() == [0.0, 1.0, 2.0]


def test_length_bucketing_is_deterministic_complete_and_reduces_padding():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 200, size=203).tolist()
    sampler = LengthBucketedBatches(lengths, 8, window=8, seed=3)
    epoch0 = sampler.epoch(0)
    assert epoch0 == LengthBucketedBatches(lengths, 8, window=8, seed=3).epoch(0)
    assert epoch0 != sampler.epoch(1) and epoch0 != LengthBucketedBatches(lengths, 8, window=8, seed=4).epoch(0)
    for e in (0, 1):
        flat = sorted(i for batch in sampler.epoch(e) for i in batch)
        assert flat == list(range(len(lengths)))  # every example exactly once per epoch
    assert len(epoch0) == len(sampler) == 26

    def padded_tokens(batches):
        return sum(len(b) * max(lengths[i] for i in b) for b in batches)

    unbucketed = LengthBucketedBatches(lengths, 8, window=1, seed=3).epoch(0)  # only within-batch sort
    assert padded_tokens(epoch0) < 0.8 * padded_tokens(unbucketed)


def test_split_micro_batches_keeps_order():
    assert split_micro_batches([5, 3, 9, 1, 7], 2) == [[5, 3], [9, 1], [7]]
