"""Each supported layout imports into the canonical frame (fixtures under tests/data/)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from data_checks.importers import load_dataset_file
from data_checks.schemas import CANONICAL_COLUMNS
from data_checks.validate import validate_frame

DATA = Path(__file__).parent / "data"


def _load(name: str, kind: str):
    frame, quarantined = load_dataset_file(DATA / name, kind)
    assert quarantined == [], [q.message for q in quarantined]
    canon = "preferences" if kind == "rankings" else kind
    assert list(frame.columns) == CANONICAL_COLUMNS[canon] + ["_file", "_row"]
    valid, bad = validate_frame(frame, canon)
    assert bad == [], [q.message for q in bad]
    return valid


def test_trl_standard_preferences_keep_labels_and_harmful_flag():
    df = _load("prefs_trl_standard.jsonl", "preferences")
    assert list(df["id"]) == ["p1", "p2", "p3"]
    assert df.loc[0, "annotator_labels"] == [1, 1, 0] and df.loc[0, "margin"] == 1.5
    assert list(df["harmful"]) == [None, None, True]  # no column, no declaration: unlabelled
    assert list(df["_row"]) == [1, 2, 3]


def test_declared_harmfulness_labels_the_rows_without_their_own():
    frame, _ = load_dataset_file(DATA / "prefs_trl_standard.jsonl", "preferences", harmful=False)
    assert list(frame["harmful"]) == [False, False, True]  # the row's own column wins
    frame, _ = load_dataset_file(DATA / "prefs_hh_rlhf.jsonl", "preferences", harmful=True)
    assert list(frame["harmful"]) == [True, True]


def test_trl_conversational_preferences_take_the_final_assistant_reply():
    df = _load("prefs_trl_conversational.jsonl", "preferences")
    assert df.loc[0, "prompt"] == "What is the capital of France?" and df.loc[0, "prompt_messages"] is None
    assert (df.loc[0, "chosen"], df.loc[0, "rejected"]) == ("Paris.", "Berlin.")
    # A multi-turn prompt stays a conversation; `prompt` is its readable rendering.
    assert df.loc[1, "prompt_messages"] == [
        {"role": "user", "content": "Name a primary colour."},
        {"role": "assistant", "content": "Red."},
        {"role": "user", "content": "Another one?"},
    ]
    assert df.loc[1, "prompt"] == "User: Name a primary colour.\n\nAssistant: Red.\n\nUser: Another one?"


def test_trl_implicit_prompt_is_the_shared_conversation_prefix():
    df = _load("prefs_trl_implicit.jsonl", "preferences")
    assert df.loc[0, "prompt"] == "What colour is the sky?"
    assert (df.loc[0, "chosen"], df.loc[0, "rejected"]) == ("Blue on a clear day.", "Green.")


def test_hh_rlhf_transcripts_split_into_shared_turns_and_final_replies():
    df = _load("prefs_hh_rlhf.jsonl", "preferences")
    # one Human turn: its text, as single-turn data always was
    assert df.loc[0, "prompt"] == "What are some cuss words in english?" and df.loc[0, "prompt_messages"] is None
    assert df.loc[0, "rejected"] == "Here is a list of rude words."
    assert df.loc[1, "prompt_messages"] == [
        {"role": "user", "content": "How do I make tea?"},
        {"role": "assistant", "content": "Boil water first."},
        {"role": "user", "content": "Then what?"},
    ]
    assert df.loc[1, "prompt"] == "User: How do I make tea?\n\nAssistant: Boil water first.\n\nUser: Then what?"
    assert df.loc[1, "chosen"] == "Steep the tea bag for three minutes."


def test_hh_rlhf_preferences_as_demonstrations_take_the_chosen_side():
    df = _load("prefs_hh_rlhf.jsonl", "demonstrations")
    assert df.loc[0, "prompt"] == "What are some cuss words in english?" and df.loc[0, "messages"] is None
    assert df.loc[0, "response"] == "I'd rather not list those, but I can help with something else."
    assert df.loc[1, "messages"][-2:] == [{"role": "user", "content": "Then what?"},
                                          {"role": "assistant", "content": "Steep the tea bag for three minutes."}]
    assert df.loc[1, "response"] == "Steep the tea bag for three minutes."


def test_ultrafeedback_binarized_uses_prompt_id_and_score_margin():
    df = _load("prefs_ultrafeedback.jsonl", "preferences")
    assert list(df["id"]) == ["uf-1", "uf-2"]
    assert df.loc[0, "chosen"].startswith("Red leaves drift")
    assert df.loc[0, "rejected"] == "Autumn is a season."
    assert df.loc[0, "margin"] == pytest.approx(8.5 - 3.0)


def test_rankings_expand_to_all_k_choose_2_pairs_best_first():
    df = _load("rankings.jsonl", "rankings")
    r1 = df[df["id"].str.startswith("r1-")]
    assert len(r1) == 3 and len(df) == 3 + 1  # C(3,2) + C(2,2)
    best = "Keep a regular bedtime and avoid screens an hour before bed."
    assert set(zip(r1["chosen"], r1["rejected"])) == {
        (best, "Try to sleep more."), (best, "Sleep sleep sleep."), ("Try to sleep more.", "Sleep sleep sleep."),
    }
    # The same file read as "preferences" is recognised as rankings too.
    assert len(load_dataset_file(DATA / "rankings.jsonl", "preferences")[0]) == 4


@pytest.mark.parametrize("name", ["demos_prompt_completion.jsonl", "demos_conversational.jsonl",
                                  "demos_messages.jsonl", "demos_prompt_response.csv"])
def test_demonstration_layouts(name):
    df = _load(name, "demonstrations")
    assert df["prompt"].map(lambda p: isinstance(p, str) and p).all()
    assert df["response"].map(lambda p: isinstance(p, str) and p).all()


def test_messages_layout_keeps_messages_and_splits_off_the_last_reply():
    df = _load("demos_messages.jsonl", "demonstrations")
    assert df.loc[0, "response"] == "Eight."
    assert df.loc[0, "prompt"] == "System: You are helpful.\n\nUser: How many legs does a spider have?"
    assert df.loc[0, "messages"][-1] == {"role": "assistant", "content": "Eight."}


def test_csv_parses_booleans_and_empty_cells():
    df = _load("demos_prompt_response.csv", "demonstrations")
    assert list(df["harmful"]) == [False, False]
    assert df.loc[1, "topic"] is None and df.loc[0, "topic"] == "gardening"
    assert list(df["_row"]) == [2, 3]  # CSV line numbers (header is line 1)


def test_prompts_jsonl_and_wrapped_json():
    df = _load("prompts.jsonl", "prompts")
    assert list(df["split"]) == ["train", "eval", None] and df.loc[0, "user_id"] == "u1"
    js = _load("prompts.json", "prompts")
    assert list(js["id"]) == ["j1", "j2"]


def test_parquet_round_trip(tmp_path):
    rows = [json.loads(line) for line in (DATA / "prefs_ultrafeedback.jsonl").read_text().splitlines()]
    path = tmp_path / "uf.parquet"
    pd.DataFrame(rows).to_parquet(path)
    df = _load_path(path, "preferences")
    assert list(df["id"]) == ["uf-1", "uf-2"] and df.loc[1, "rejected"] == "It is a plant thing."


def _load_path(path: Path, kind: str) -> pd.DataFrame:
    frame, quarantined = load_dataset_file(path, kind)
    assert not quarantined
    return validate_frame(frame, kind)[0]


def test_datasets_load_dataset_from_a_local_directory():
    df = _load("hf_dataset_dir", "preferences")
    assert list(df["chosen"]) == ["A banana.", "The Pacific Ocean."]


def test_datasets_save_to_disk_directory(tmp_path):
    import datasets

    ds = datasets.Dataset.from_list([{"prompt": "Say yes.", "completion": "Yes."}])
    ds.save_to_disk(str(tmp_path / "saved"))
    df = _load_path(tmp_path / "saved", "demonstrations")
    assert df.loc[0, "response"] == "Yes."


def test_preference_file_can_feed_rl_prompts():
    df = _load("prefs_hh_rlhf.jsonl", "prompts")
    assert list(df["prompt"])[0] == "What are some cuss words in english?"
    assert [m["role"] for m in df.loc[1, "prompt_messages"]] == ["user", "assistant", "user"]
