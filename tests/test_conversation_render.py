"""Conversations rendered as real chat turns (issue 19 item 1), with the real SmolLM2 tokenizer:
the ``prompt_messages`` contract, prompt ids for every stage (SFT, reward pairs in both layouts, DPO,
PPO prompts, evaluation and best-of-N prompts), left truncation by whole turns, the 'plain' text
rendering, and single-turn ids exactly as before."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest

from rlhf_core.batching import (
    IGNORE_INDEX,
    collate_pairs,
    collate_shared_pairs,
    prompt_ids,
    prompt_response_ids,
    tokenize_preference_row,
    tokenize_preference_rows,
    tokenize_sft_row,
)
from rlhf_core.conversation import fit_turns, plain_text, row_context, turn_cuts
from rlhf_core.errors import DataError

HISTORY = [
    {"role": "user", "content": "My neighbour's dog barks all night."},
    {"role": "assistant", "content": "That sounds exhausting. Have you talked to them?"},
    {"role": "user", "content": "Not yet. What should I say?"},
]
LONG_HISTORY = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "word " * 60},
    {"role": "assistant", "content": "reply " * 60},
    {"role": "user", "content": "Second question, short?"},
    {"role": "assistant", "content": "Second answer."},
    {"role": "user", "content": "Final question?"},
]


def _template(tok, messages, gen):
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)


def _spans(labels):
    out, cur = [], []
    for lab in labels:
        if lab == IGNORE_INDEX:
            if cur:
                out.append(cur)
            cur = []
        else:
            cur.append(lab)
    return out + ([cur] if cur else [])


# ----------------------------------------------------------------------------- single turn unchanged
def test_single_turn_ids_are_the_one_user_turn_as_before(tiny_tokenizer):
    tok = tiny_tokenizer
    text = _template(tok, [{"role": "user", "content": "Name a colour."}], True)
    expected = tok(text, add_special_tokens=False)["input_ids"]
    assert prompt_ids(tok, "Name a colour.", "chat") == expected
    assert prompt_ids(tok, "Name a colour.", "plain") == tok("Name a colour.", add_special_tokens=False)["input_ids"]
    # a one-message conversation is the same single user turn
    one = [{"role": "user", "content": "Name a colour."}]
    assert prompt_ids(tok, "ignored", "chat", context=one) == expected
    p, r = prompt_response_ids(tok, "Name a colour.", "Blue.", "chat")
    assert tok.decode(r) == "Blue.<|im_end|>\n" and p == expected


def test_chat_prompt_ids_for_the_cli_match_the_template_left_padded(tiny_tokenizer):
    from rlhf_core.generation import chat_prompt_ids

    tok = tiny_tokenizer
    prompts = ["hi", "a much longer prompt with more words", "  spaced\n"]
    batch = chat_prompt_ids(tok, prompts)
    side = tok.padding_side
    tok.padding_side = "left"
    try:
        reference = tok([_template(tok, [{"role": "user", "content": p}], True) for p in prompts],
                        return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tok.padding_side = side
    assert batch["input_ids"].tolist() == reference["input_ids"].tolist()
    assert batch["attention_mask"].tolist() == reference["attention_mask"].tolist()


# ----------------------------------------------------------------------------- rendering a conversation
def test_conversation_prompt_is_the_template_of_its_turns_and_the_reply_the_next_turn(tiny_tokenizer):
    tok = tiny_tokenizer
    ids = prompt_ids(tok, "readable rendering", "chat", context=HISTORY)
    assert tok.decode(ids) == _template(tok, HISTORY, True)
    p, r = prompt_response_ids(tok, "readable rendering", "Just ask kindly.", "chat", context=HISTORY)
    assert p == ids
    assert tok.decode(p + r) == _template(tok, [*HISTORY, {"role": "assistant", "content": "Just ask kindly."}], False)
    assert tok.decode(r) == "Just ask kindly.<|im_end|>\n"


def test_plain_format_renders_speakers_and_the_reply_follows_with_eos(tiny_tokenizer):
    tok = tiny_tokenizer
    text = plain_text([{"role": "system", "content": "S."}, *HISTORY])
    assert text == (
        "System: S.\n\nUser: My neighbour's dog barks all night.\n\n"
        "Assistant: That sounds exhausting. Have you talked to them?\n\nUser: Not yet. What should I say?\n\nAssistant:"
    )
    p, r = prompt_response_ids(tok, "x", " Ask kindly.", "plain", context=HISTORY)
    assert tok.decode(p) == plain_text(HISTORY)
    assert r[-1] == tok.eos_token_id and tok.decode(r[:-1]) == " Ask kindly."


def test_a_role_the_template_cannot_render_is_a_data_error_naming_the_row(tiny_tokenizer):
    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
    )
    with pytest.raises(DataError, match=r"row r9: the chat template cannot render this conversation \(roles system, user\).*System role"):
        prompt_ids(tok, "q", "chat", context=[{"role": "system", "content": "s"}, {"role": "user", "content": "q"}],
                   where="row r9")


# ----------------------------------------------------------------------------- the prompt_messages contract
def test_row_context_reads_none_absent_empty_and_parquet_arrays():
    assert row_context({"prompt": "p"}, "r") is None
    assert row_context({"prompt_messages": None}, "r") is None
    assert row_context({"prompt_messages": float("nan")}, "r") is None
    assert row_context({"prompt_messages": []}, "r") is None
    as_array = np.array([dict(m) for m in HISTORY], dtype=object)
    assert row_context({"prompt_messages": as_array}, "r") == HISTORY


@pytest.mark.parametrize(("messages", "rule"), [
    ([{"role": "assistant", "content": "hi"}, {"role": "user", "content": "q"}], "must start with a system or user message"),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "must end with the user turn"),
    ([{"role": "human", "content": "q"}], r"prompt_messages\[0\]\.role 'human' is not one of"),
    ([{"role": "user", "content": 3}], r"prompt_messages\[0\]\.content must be a string"),
    ([{"role": "user"}], r"prompt_messages\[0\] must have 'role' and 'content'"),
    ("Human: hi", "must be a non-empty list"),
])
def test_malformed_conversations_name_the_row_and_rule(messages, rule):
    with pytest.raises(DataError, match=rf"^prefs\.jsonl: row 7: .*{rule}"):
        row_context({"prompt_messages": messages}, "prefs.jsonl: row 7")


def test_turn_cuts_drop_whole_earliest_turns_and_keep_the_system_message():
    cuts = turn_cuts(LONG_HISTORY)
    assert [[m["content"][:6] for m in c] for c in cuts] == [
        ["Be bri", "word w", "reply ", "Second", "Second", "Final "],
        ["Be bri", "Second", "Second", "Final "],
        ["Be bri", "Final "],
    ]
    assert [len(c) for c in turn_cuts(HISTORY)] == [3, 1]
    built, dropped = fit_turns(HISTORY, lambda c: c, len, 2)
    assert built == HISTORY[2:] and dropped == 2  # "length" here counts messages


# ----------------------------------------------------------------------------- reward pairs and DPO
def _pair_row(context=HISTORY, **extra):
    return {"id": "c1", "prompt": "readable", "prompt_messages": context,
            "chosen": "Ask them kindly.", "rejected": "Call the police.", **extra}


def test_reward_pairs_render_the_conversation_in_both_layouts(tiny_tokenizer):
    tok = tiny_tokenizer
    pair = tokenize_preference_row(_pair_row(), tok, fmt="chat", max_length=256)
    context_ids = prompt_ids(tok, "readable", "chat", context=HISTORY)
    assert pair.chosen_ids[: len(context_ids)] == context_ids == pair.rejected_ids[: len(context_ids)]
    assert tok.decode(pair.chosen_ids) == _template(tok, [*HISTORY, {"role": "assistant", "content": "Ask them kindly."}], False)
    assert pair.prefix_length >= len(context_ids) and pair.truncated == 0
    single = tokenize_preference_row(_pair_row(context=None), tok, fmt="chat", max_length=256)
    shared = collate_shared_pairs([pair, single], tok.pad_token_id)
    assert shared["prefix_lengths"].tolist() == [pair.prefix_length, single.prefix_length]
    assert shared["input_ids"][0, : len(pair.chosen_ids)].tolist() == pair.chosen_ids
    two_rows = collate_pairs([pair, single], tok.pad_token_id)
    assert two_rows["input_ids"][2, : len(pair.rejected_ids)].tolist() == pair.rejected_ids


def test_over_long_conversation_loses_whole_earliest_turns_then_fails_or_truncates(tiny_tokenizer):
    tok = tiny_tokenizer
    row = _pair_row(context=LONG_HISTORY)
    whole = tokenize_preference_row(row, tok, fmt="chat", max_length=1024)
    pair = tokenize_preference_row(row, tok, fmt="chat", max_length=80)
    kept = [LONG_HISTORY[0], *LONG_HISTORY[3:]]  # system + the last two exchanges
    assert tok.decode(pair.chosen_ids) == _template(tok, [*kept, {"role": "assistant", "content": "Ask them kindly."}], False)
    assert len(pair.chosen_ids) <= 80
    assert pair.truncated == len(whole.chosen_ids) - len(pair.chosen_ids) > 0
    # only the system message and the final user turn fit
    tight = tokenize_preference_row(row, tok, fmt="chat", max_length=40)
    assert "Second" not in tok.decode(tight.chosen_ids) and "Be brief." in tok.decode(tight.chosen_ids)
    # not even the final turn fits: the row fails naming itself, or loses its oldest tokens
    with pytest.raises(DataError, match=r"train: row c1: prompt\+chosen/rejected has \d+ tokens .* over max_length 20"):
        tokenize_preference_row(row, tok, fmt="chat", max_length=20)
    cut = tokenize_preference_row(row, tok, fmt="chat", max_length=20, truncate=True)
    assert len(cut.chosen_ids) == 20 and cut.chosen_ids == tight.chosen_ids[-20:]


def test_dpo_pairs_render_the_conversation_and_label_only_the_reply(tiny_tokenizer):
    from rlhf_core.dpo.trainer import tokenize_dpo_row

    tok = tiny_tokenizer
    ex = tokenize_dpo_row(_pair_row(), tok, fmt="chat", max_length=256, truncate=False, index=0, source="dpo")
    assert tok.decode(ex.chosen_ids) == _template(tok, [*HISTORY, {"role": "assistant", "content": "Ask them kindly."}], False)
    assert [tok.decode(s) for s in _spans(ex.chosen_labels)] == ["Ask them kindly.<|im_end|>\n"]
    assert [tok.decode(s) for s in _spans(ex.rejected_labels)] == ["Call the police.<|im_end|>\n"]
    short = tokenize_dpo_row(_pair_row(context=LONG_HISTORY), tok, fmt="chat", max_length=80, truncate=False,
                             index=0, source="dpo")
    assert len(short.chosen_ids) <= 80 and "word" not in tok.decode(short.chosen_ids)


def test_preferences_from_a_parquet_with_and_without_the_column(tiny_tokenizer, tmp_path):
    tok = tiny_tokenizer
    rows = [_pair_row(), {**_pair_row(context=None), "id": "c2"}]
    pd.DataFrame(rows).to_parquet(tmp_path / "p.parquet")
    frame = pd.read_parquet(tmp_path / "p.parquet")  # lists of structs come back as numpy arrays
    pairs = tokenize_preference_rows(frame, tok, fmt="chat", max_length=256)
    expected = [tokenize_preference_row(r, tok, fmt="chat", max_length=256) for r in rows]
    assert [p.chosen_ids for p in pairs] == [e.chosen_ids for e in expected]
    old = pd.DataFrame(rows).drop(columns=["prompt_messages"])  # curated before the column existed
    single = tokenize_preference_rows(old, tok, fmt="chat", max_length=256)
    assert single[0].chosen_ids == expected[1].chosen_ids


# ----------------------------------------------------------------------------- SFT
def test_sft_multi_turn_messages_train_every_assistant_turn_and_drop_whole_early_turns(tiny_tokenizer):
    tok = tiny_tokenizer
    messages = [*LONG_HISTORY, {"role": "assistant", "content": "Final answer."}]
    row = {"id": "d1", "prompt": "x", "response": "y", "messages": messages}
    full = tokenize_sft_row(row, tok, fmt="chat", max_length=1024)
    assert [tok.decode(s) for s in _spans(full.labels)] == [
        "reply " * 60 + "<|im_end|>\n", "Second answer.<|im_end|>\n", "Final answer.<|im_end|>\n",
    ]
    short = tokenize_sft_row(row, tok, fmt="chat", max_length=80)
    assert len(short.input_ids) <= 80 and short.truncated == len(full.input_ids) - len(short.input_ids)
    assert tok.decode(short.input_ids).startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nSecond")
    assert [tok.decode(s) for s in _spans(short.labels)] == ["Second answer.<|im_end|>\n", "Final answer.<|im_end|>\n"]


# ----------------------------------------------------------------------------- PPO and evaluation prompts
def test_ppo_prompts_render_conversations_and_cut_whole_turns_to_the_budget(tiny_tokenizer):
    from rlhf_core.generation import prepare_prompts

    tok = tiny_tokenizer
    rows = [{"id": "p1", "prompt": "readable", "prompt_messages": LONG_HISTORY},
            {"id": "p2", "prompt": "Why is the sky blue?", "prompt_messages": None}]
    items = prepare_prompts(rows, tok, "chat", max_prompt_tokens=1024, truncate=False)
    assert items[0].ids == prompt_ids(tok, "readable", "chat", context=LONG_HISTORY) and items[0].context == LONG_HISTORY
    assert items[1].ids == prompt_ids(tok, "Why is the sky blue?", "chat") and items[1].context is None
    cut = prepare_prompts(rows, tok, "chat", max_prompt_tokens=60, truncate=False)
    assert cut[0].context == [LONG_HISTORY[0], *LONG_HISTORY[3:]] and len(cut[0].ids) <= 60
    assert cut[0].ids == prompt_ids(tok, "readable", "chat", context=cut[0].context)
    with pytest.raises(DataError, match=r"prompts: prompt p1 has \d+ tokens, over the 10"):
        prepare_prompts(rows, tok, "chat", max_prompt_tokens=10, truncate=False)


def test_eval_prompts_keep_conversations_through_subset_rows_and_parquet(tiny_tokenizer, tmp_path):
    from rlhf_core.best_of_n import tokenize_prompts
    from rlhf_core.eval_prompts import eval_prompts, select_eval_prompts
    from tasks.stages.eval import read_eval_prompts

    tok = tiny_tokenizer
    rows = [{"id": f"e{i}", "prompt": f"Question {i}?", "prompt_messages": HISTORY if i % 2 else None,
             "harmful": False, "topic": "t"} for i in range(6)]
    pd.DataFrame(rows).to_parquet(tmp_path / "eval_prompts.parquet")
    prompts = eval_prompts(read_eval_prompts(tmp_path / "eval_prompts.parquet"))
    assert prompts.contexts == [HISTORY if i % 2 else None for i in range(6)]
    sub = select_eval_prompts(prompts, 3, seed=0)
    assert [c is not None for c in sub.contexts] == [int(i[1:]) % 2 == 1 for i in sub.ids]
    ids = tokenize_prompts(None, tok, sub.as_rows(), fmt="chat", max_new_tokens=8, max_length=256)
    assert ids == [prompt_ids(tok, p, "chat", context=c) for p, c in zip(sub.prompts, sub.contexts, strict=True)]


def test_reward_retokenisation_renders_the_conversation(tiny_tokenizer):
    from rlhf_core.ppo.score import exchange_ids, retokenize

    tok = tiny_tokenizer
    for fmt in ("chat", "plain"):
        p, r = prompt_response_ids(tok, "x", "Ask kindly.", fmt, context=HISTORY)
        assert exchange_ids(tok, "x", "Ask kindly.", fmt, context=HISTORY) == p + r
    ids, mask = retokenize(["x", "Why?"], ["Ask kindly.", "Because."], tok, "chat", contexts=[HISTORY, None])
    assert ids[0, : int(mask[0].sum())].tolist() == exchange_ids(tok, "x", "Ask kindly.", "chat", context=HISTORY)
    assert ids[1, : int(mask[1].sum())].tolist() == exchange_ids(tok, "Why?", "Because.", "chat")
