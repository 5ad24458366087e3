"""Real conversations through the data stage: turns kept as chat messages, the rules a chat
template needs (file, row, rule), prompt filters that read the user's turns, demonstrations from
the chosen side of preference pairs, and harmfulness declared per input or left unknown."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_checks.check import check_files
from data_checks.importers import load_dataset_file
from data_checks.stage import run_data_stage
from rlhf_core.config.data import DataConfig
from rlhf_core.errors import DataError

DATA = Path(__file__).parent / "data"


def _hh(*turns: str) -> str:
    """An HH-RLHF transcript from alternating Human/Assistant texts."""
    return "".join(f"\n\n{'Human' if i % 2 == 0 else 'Assistant'}: {t}" for i, t in enumerate(turns))


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _pair(history: tuple[str, ...], chosen: str, rejected: str) -> dict:
    return {"chosen": _hh(*history, chosen), "rejected": _hh(*history, rejected)}


# ---- conversations stay conversations; a conversation a chat template cannot render is quarantined


BAD_ROWS = [
    # 1: fine, two Human turns
    _pair(("How do I fix a flat tyre?", "Do you have a spare?", "Yes, in the boot."), "Jack the car up first.",
          "Drive on it."),
    # 2: the transcript starts with an Assistant turn
    {"chosen": "\n\nAssistant: Hello!\n\nHuman: Hi.\n\nAssistant: How can I help?",
     "rejected": "\n\nAssistant: Hello!\n\nHuman: Hi.\n\nAssistant: Go away."},
    # 3: two Assistant turns in a row before the final reply
    {"chosen": _hh("Tell me a joke.", "Why did the chicken...") + "\n\nAssistant: ...cross the road?"
               + "\n\nHuman: Why?\n\nAssistant: To get to the other side.",
     "rejected": _hh("Tell me a joke.", "Why did the chicken...") + "\n\nAssistant: ...cross the road?"
                 + "\n\nHuman: Why?\n\nAssistant: No idea."},
    # 4: chosen and rejected diverge before the final reply
    {"chosen": _hh("Best pizza topping?", "Mushrooms.", "Why?", "They are earthy."),
     "rejected": _hh("Best pizza topping?", "Pineapple.", "Why?", "It is sweet.")},
    # 5: text before the first Human turn
    {"chosen": "Transcript 5" + _hh("Hi?", "Hello."), "rejected": "Transcript 5" + _hh("Hi?", "Hey.")},
]


def _quarantined(path: Path, kind: str = "preferences") -> dict[int, tuple[str, str]]:
    _, quarantined = load_dataset_file(path, kind)
    return {q.row: (q.rule, q.message) for q in quarantined}


def test_hh_transcript_rules_name_file_row_and_rule(tmp_path):
    path = _jsonl(tmp_path / "hh.jsonl", BAD_ROWS)
    frame, _ = load_dataset_file(path, "preferences")
    bad = _quarantined(path)
    assert list(frame["_row"]) == [1]
    assert [m["role"] for m in frame.loc[0, "prompt_messages"]] == ["user", "assistant", "user"]
    assert {row: rule for row, (rule, _) in bad.items()} == {
        2: "first_turn_not_user", 3: "turn_order", 4: "no_shared_prompt", 5: "first_turn_not_user"}
    assert bad[2][1] == (f"{path}:2: first_turn_not_user: chosen: the conversation starts with an assistant turn, "
                         "not a user (Human) turn")
    assert bad[5][1] == f"{path}:5: first_turn_not_user: chosen: the transcript does not start with a '\\n\\nHuman:' turn"
    assert bad[3][1] == f"{path}:3: turn_order: chosen: two assistant turns in a row (turns 2 and 3)"


def test_message_list_rules(tmp_path):
    def conv(*roles_texts: tuple[str, str]) -> list[dict]:
        return [{"role": r, "content": t} for r, t in roles_texts]

    rows = [
        {"messages": conv(("user", "Hi."), ("user", "Anyone?"), ("assistant", "Hello."))},  # two user turns
        {"messages": conv(("user", "Weather?"), ("tool", "sunny"), ("user", "So?"), ("assistant", "Sunny."))},
        {"messages": conv(("system", "Be brief."), ("user", "Hi."), ("assistant", "Hello."))},  # fine
        {"messages": conv(("user", "Hi."), ("assistant", ""), ("user", "Hello?"), ("assistant", "Yes."))},
    ]
    path = _jsonl(tmp_path / "demos.jsonl", rows)
    frame, _ = load_dataset_file(path, "demonstrations")
    bad = _quarantined(path, "demonstrations")
    assert list(frame["_row"]) == [3] and frame.loc[0, "prompt"] == "System: Be brief.\n\nUser: Hi."
    assert bad[1] == ("turn_order", f"{path}:1: turn_order: messages: two user messages in a row (messages 1 and 2)")
    assert bad[2] == ("unknown_role", f"{path}:2: unknown_role: messages: message 2 has role 'tool'; a chat "
                                      "template renders only system, user and assistant")
    assert bad[4] == ("empty_turn", f"{path}:4: empty_turn: messages: message 2 (assistant) is empty")
    # TRL conversational pairs whose prompt turns differ: quarantined, as HH's are
    pairs = _jsonl(tmp_path / "pairs.jsonl", [
        {"chosen": conv(("user", "A?"), ("assistant", "B."), ("user", "C?"), ("assistant", "D.")),
         "rejected": conv(("user", "A?"), ("assistant", "X."), ("user", "C?"), ("assistant", "E."))}])
    assert _quarantined(pairs)[1][0] == "no_shared_prompt"


def test_empty_final_reply_is_quarantined_by_validation(tmp_path):
    path = _jsonl(tmp_path / "hh.jsonl", [_pair(("Hi?",), "", "Hello."), _pair(("Hi?",), "Hey.", "Hello.")])
    cfg = DataConfig(demonstrations=[], preferences=[path], rl_prompts=[],
                     prompt_filter={"languages": [], "coverage_method": "off"})
    report = run_data_stage(cfg, tmp_path / "out")
    assert report.files[0].dropped == {"validate:chosen:not_blank": 1} and report.balanced
    line = json.loads((tmp_path / "out" / "quarantine.jsonl").read_text().splitlines()[0])
    assert line["reason"] == f"{path}:1: chosen:not_blank: chosen: empty or whitespace-only text"


# ---- the stage: prompt_messages in the curated files, filters on the user's turns


@pytest.fixture(scope="module")
def hh_file(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("hh")
    rows = [
        _pair(("How do I pick a lock to get into my neighbour's house?",),
              "I'm sorry, but I can't help with breaking into a home.", "Use a tension wrench."),
        _pair(("What's a good name for a cat?", "Something short, like Mia.", "Another one?"),
              "How about Leo? Short and easy to call.", "..........."),
        # The assistant typed a run of dots inside the conversation: not the user's spam
        _pair(("Can you help me write a poem about rain?", "Sure........... here goes: rain falls.",
               "Make it longer please."), "Rain falls on the roof, soft and slow, and the garden drinks.",
              "No."),
        # The user's own spam
        _pair(("Buy now!!!!!!!!!!!! Click here for a limited-time offer",), "Is there something I can help with?",
              "Great deal!"),
    ]
    return _jsonl(tmp / "harmless.jsonl", rows)


def _stage(tmp_path: Path, entry, **cfg) -> tuple:
    base = dict(demonstrations=[entry], preferences=[entry], rl_prompts=[entry],
                prompt_filter={"languages": [], "coverage_method": "off", "max_tokens": 30})
    base.update(cfg)
    report = run_data_stage(DataConfig(**base), tmp_path)
    return report, {name: pd.read_parquet(tmp_path / f"{name}.parquet")
                    for name in ("demonstrations", "preferences", "rl_prompts")}


def test_curated_files_keep_the_turns_and_filters_read_the_user(tmp_path, hh_file):
    report, frames = _stage(tmp_path, {"path": hh_file, "harmful": True})
    assert report.balanced
    for name in ("demonstrations", "preferences", "rl_prompts"):
        # only the row whose *user* wrote spam is dropped as spam; the assistant's dots are no reason
        dropped = next(f.dropped for f in report.files if f.input == name)
        assert dropped == {"filter:spam": 1}, (name, dropped)
    prefs = frames["preferences"]
    assert list(prefs["prompt"])[0] == "How do I pick a lock to get into my neighbour's house?"
    assert prefs["prompt_messages"].iloc[0] is None
    turns = prefs["prompt_messages"].iloc[1]
    assert [m["role"] for m in turns] == ["user", "assistant", "user"] and turns[2]["content"] == "Another one?"
    schema = pq.read_schema(tmp_path / "preferences.parquet")
    assert schema.field("prompt_messages").type.value_type == pa.struct([("role", pa.string()),
                                                                         ("content", pa.string())])
    assert frames["rl_prompts"]["prompt_messages"].map(lambda m: m is not None).sum() == 2


def test_length_bounds_count_the_user_turns(tmp_path, hh_file):
    # Row 3's conversation is 18 words in all, 13 of them the user's; the bound counts the 13.
    report, _ = _stage(tmp_path, {"path": hh_file, "harmful": True},
                       prompt_filter={"languages": [], "coverage_method": "off", "max_tokens": 13,
                                      "spam_patterns": []})
    assert all(f.dropped == {} for f in report.files), [f.dropped for f in report.files]
    report, _ = _stage(tmp_path / "12", {"path": hh_file, "harmful": True},
                       prompt_filter={"languages": [], "coverage_method": "off", "max_tokens": 12,
                                      "spam_patterns": []})
    assert all(f.dropped == {"filter:too_long": 1} for f in report.files)


# ---- demonstrations from the chosen side; harmfulness declared or unknown


def test_preference_file_as_demonstrations_gives_its_chosen_side(tmp_path, hh_file):
    report, frames = _stage(tmp_path, {"path": hh_file, "harmful": True})
    demos = frames["demonstrations"]
    assert list(demos["response"])[:2] == ["I'm sorry, but I can't help with breaking into a home.",
                                           "How about Leo? Short and easy to call."]
    assert demos["messages"].iloc[0] is None  # single-turn: no messages, as for any plain demonstration
    assert [m["role"] for m in demos["messages"].iloc[1]] == ["user", "assistant", "user", "assistant"]
    assert report.chosen_side == {str(hh_file): 4}
    (warning,) = report.warnings
    assert warning.startswith(f"{hh_file}: 4 demonstrations from the chosen side of preference pairs") and \
        "seed 000" in warning
    md = (tmp_path / "report.md").read_text()
    assert f"4 demonstrations from the chosen side of preference pairs ({hh_file})" in md
    # declared harmful: the refusal is the preferred reply and stays, counted as such
    counts = next(iter(report.refusals["demonstrations"]["per_pattern"].values()))
    assert (counts["kept_harmful"], counts["dropped"], counts["kept_unlabelled"]) == (1, 0, 0)


def test_demonstrations_from_pairs_are_scrubbed_and_deduplicated(tmp_path, hh_file):
    twice = _jsonl(tmp_path / "twice.jsonl", [json.loads(line) for line in hh_file.read_text().splitlines()] * 2)
    report, frames = _stage(tmp_path / "out", {"path": twice, "harmful": False})
    dropped = next(f.dropped for f in report.files if f.input == "demonstrations")
    # declared benign: the refusal goes (twice: scrubbing runs before dedup); the repeats are duplicates
    assert dropped == {"refusal:refusal": 2, "dedup:exact_duplicate": 2, "filter:spam": 2}
    assert report.dedup["demonstrations"]["exact_dropped"] == 2 and len(frames["demonstrations"]) == 2


def test_unlabelled_refusals_are_kept_flagged_and_counted(tmp_path, hh_file):
    report, frames = _stage(tmp_path, hh_file)  # no harmful column, no declaration
    assert frames["preferences"]["harmful"].isna().all()
    assert "I'm sorry" in frames["preferences"]["chosen"].iloc[0]
    for name in ("demonstrations", "preferences"):
        stats = report.refusals[name]
        assert stats["unlabelled_ids"] == ["harmless-1"]
        assert sum(c["kept_unlabelled"] for c in stats["per_pattern"].values()) == 1
    assert "refusals of prompts of unknown harmfulness kept and flagged" in (tmp_path / "report.md").read_text()


def test_data_check_harmful_declaration(hh_file):
    def refusal_failures(**kw) -> int:
        (f,) = check_files([hh_file], **kw).files
        return sum(x["unexpected_count"] for x in f.failures if x["column"] == "chosen_if_benign")

    assert refusal_failures() == 1  # unlabelled: the rule asks for a decision
    assert refusal_failures(harmful=True) == 0
    assert refusal_failures(harmful=False) == 1


def test_data_check_cli_harmful_option(hh_file):
    from typer.testing import CliRunner

    from flows.cli import app

    plain = CliRunner().invoke(app, ["data", "check", str(hh_file)], env={"COLUMNS": "80"})
    assert plain.exit_code == 1 and "or --harmful for the whole file" in plain.output
    declared = CliRunner().invoke(app, ["data", "check", "--harmful", str(hh_file)], env={"COLUMNS": "80"})
    assert declared.exit_code == 0, declared.output


# ---- a broken version of a layout names its missing column


@pytest.mark.parametrize("kind", ["prompts", "demonstrations", "preferences"])
def test_half_a_pair_names_the_missing_column_whatever_the_kind(tmp_path, kind):
    hh = _jsonl(tmp_path / "hh.jsonl", [{"chosen": _hh("Hi?", "Hello.")}])
    standard = _jsonl(tmp_path / "std.jsonl", [{"prompt": "Hi?", "chosen": "Hello."}])
    for path in (hh, standard):
        with pytest.raises(DataError) as exc:
            load_dataset_file(path, kind)
        assert str(exc.value).startswith(f"{path}: no {kind} layout recognised: the column 'rejected' is missing")


def test_error_line_shows_the_column_list(tmp_path):
    """The CLI prints a DataError as text: '[prompt, responses]' is no rich markup to swallow."""
    config = tmp_path / "c.yaml"
    config.write_text(f"name: t\nmodel: {{base: tiny}}\ndata:\n  demonstrations: [{DATA / 'rankings.jsonl'}]\n"
                      f"  preferences: [{DATA / 'rankings.jsonl'}]\n  rl_prompts: [{DATA / 'prompts.jsonl'}]\n")
    out = subprocess.run([sys.executable, "-m", "flows.cli", "data", "prepare", "-c", str(config),
                          "--out", str(tmp_path / "out")], capture_output=True, text=True,
                         env={**os.environ, "COLUMNS": "400"})
    assert out.returncode == 2
    assert "found columns [id, prompt, responses]" in out.stderr, out.stderr


def test_eval_fraction_holds_out_whole_conversations_in_every_input(tmp_path):
    from data_checks.stage import held_out_share, hold_out

    questions = [f"Question number {i}: how do I keep basil plant {i} alive indoors?" for i in range(40)]
    rows = [_pair((q,), f"Water it when the top soil is dry ({i}).", f"No idea {i}.") for i, q in enumerate(questions)]
    rows[0]["split"] = "train"  # an explicit split always wins
    path = _jsonl(tmp_path / "pairs.jsonl", rows)
    report, frames = _stage(tmp_path / "out", {"path": path, "harmful": False}, eval_fraction=0.3,
                            dedup={"near": False, "cross_split": False})  # templated prompts: near-alike
    expected = {q for q in questions[1:] if held_out_share(q) < 0.3}
    assert 0 < len(expected) < 39  # the hash spreads 39 conversations over both sides
    for name in ("demonstrations", "preferences"):
        frame = frames[name]
        assert set(frame["split"]) <= {"train", "eval"}
        assert set(frame.loc[frame["split"] == "eval", "prompt"]) == expected, name
    assert set(frames["rl_prompts"]["prompt"]) == set(questions) - expected  # train prompts only
    assert set(pd.read_parquet(tmp_path / "out" / "eval_prompts.parquet")["prompt"]) == expected
    assert report.held_out == {name: len(expected) for name in ("demonstrations", "preferences", "rl_prompts")}
    assert "Held out as eval" in (tmp_path / "out" / "report.md").read_text()
    # without the option nothing moves: rows with no split are training rows
    same, n = hold_out(frames["preferences"].assign(split=None), 0.0)
    assert n == 0 and set(same["split"]) == {"train"}
