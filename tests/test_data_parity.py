"""`rlhf data check` is exactly as strict as `rlhf data prepare`: the same rows fail, row by row.

What is compared, per file: the set of the file's rows (its own numbering: JSONL line, CSV line
with the header as line 1, JSON array element) that each command rejects for a *row rule*:

* import rules, shared code in both commands: unreadable line (bad UTF-8, invalid JSON, a
  duplicate key, an unpaired surrogate), not an object, a row that does not fit the file's
  layout (half an HH transcript pair, a bad message list, a ranking with one reply);
* every validation rule of ``data_checks/schemas.py``: id (text, not blank, not a repeat),
  prompt/replies (present, text, not blank, at most ``max_text_chars``), topic/user_id/source
  (text or null), split (train/eval or null), harmful (a boolean), annotator labels (non-empty
  0/1 integers or null), margin (finite number or null), messages (text messages or null),
  chosen != rejected.

`data check`: the rows of every failed expectation except the refusal expectation
(``chosen_if_benign`` / ``response_if_benign``). `data prepare`: the rows in quarantine.jsonl
(stages ``import`` and ``validate``). Not compared, because they are curation, not validation:
refusal scrubbing (check flags those rows; prepare drops them in its refusal step), dedup,
prompt filters, coverage and the per-user cap (prepare only). Id uniqueness is per file in
`data check` and per input (all its files) in `data prepare`, so every input here has one file.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from data_checks.check import check_files
from data_checks.stage import run_data_stage
from rlhf_core.config.data import DataConfig
from rlhf_core.errors import DataError

REFUSAL_COLUMNS = {"chosen_if_benign", "response_if_benign"}
SLOT_KIND = {"preferences": "preferences", "demonstrations": "demonstrations", "rl_prompts": "prompts"}


def check_rows(path: Path, kind: str) -> set[int]:
    """Rows `data check` fails on a row rule (every failing row, not just the JSON's first 20)."""
    result = check_files([path], kind=kind)  # type: ignore[arg-type]
    (f,) = result.files
    assert f.error is None or "no usable rows" in f.error, f.error
    rows: set[int] = set()
    for fail, detail in zip(f.failures, f.details):
        if fail["column"] not in REFUSAL_COLUMNS:
            assert len(detail.rows) == fail["unexpected_count"], fail
            rows.update(detail.rows)
    return rows


def prepare_rows(path: Path, slot: str, out: Path) -> set[int]:
    """Rows `data prepare` quarantines (import + validate) when ``path`` is its only input."""
    cfg = DataConfig(**{"demonstrations": [], "preferences": [], "rl_prompts": [], slot: [path]},
                     prompt_filter={"languages": [], "coverage_method": "off", "max_prompts_per_user": None})
    try:
        report = run_data_stage(cfg, out)
        assert report.balanced
    except DataError as err:  # every row bad: still a quarantine to compare
        assert "no usable rows" in str(err) or "no rows left after curation" in str(err), err
    rows = [json.loads(line) for line in (out / "quarantine.jsonl").read_text().splitlines()]
    assert all(r["stage"] in ("import", "validate") for r in rows)
    return {r["row"] for r in rows}


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


TEXT_VALUES = ["fine text here", "", "   ", "\u00a0\u2003", None, 5, 2.5, True, ["a", "b"], {"k": "v"},
               math.nan, math.inf, "x" * 20_001, "tab\tinside is fine", "\x1c"]
ID_VALUES = ["dup", "dup", " ", "", 7, 1.5, True, None, ["a"], {"a": 1}, math.nan]
LABEL_VALUES = [[1, 0, 1], [True, False], [1, True], [], [2], "10", None, [1.0], 1, [[1]], math.nan]
MARGIN_VALUES = [1.5, -2, 0, "big", True, math.inf, -math.inf, math.nan, None, [1], 10**30]
HARMFUL_VALUES = [True, False, 1, 0, "yes", None, math.nan, [True]]
SPLIT_VALUES = ["train", "eval", "test", None, ["train"], 1, "Train"]
META_VALUES = ["t", None, 5, ["x"], {"a": 1}, True, math.nan]


def _fuzz_rows(rng: random.Random, n: int, columns: dict[str, list]) -> list[dict]:
    rows = []
    for i in range(n):
        row = {"id": f"r{i}", "prompt": f"A question number {i} about rivers?", "chosen": f"Answer {i} is long.",
               "rejected": f"Bad answer {i}.", "topic": "rivers", "split": "train"}
        for col, values in columns.items():
            if rng.random() < 0.35:
                value = rng.choice(values)
                if value is None and rng.random() < 0.5:
                    row.pop(col, None)  # missing key, not null
                else:
                    row[col] = value
        rows.append(row)
    return rows


PREF_COLUMNS = {"id": ID_VALUES, "prompt": TEXT_VALUES, "chosen": TEXT_VALUES, "rejected": TEXT_VALUES,
                "annotator_labels": LABEL_VALUES, "margin": MARGIN_VALUES, "harmful": HARMFUL_VALUES,
                "split": SPLIT_VALUES, "topic": META_VALUES, "user_id": META_VALUES, "source": META_VALUES}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fuzzed_preferences_fail_the_same_rows(tmp_path, seed):
    """Random wrong values in every column (JSON NaN/Infinity included): the same rows fail."""
    rng = random.Random(seed)
    rows = [_fuzz_rows(rng, 1, {})[0] | {"id": f"good{i}", "prompt": f"Good prompt {i}?"} for i in range(3)]
    rows += _fuzz_rows(rng, 60, PREF_COLUMNS)
    rows.append({"id": "same", "prompt": "Same?", "chosen": "Same.", "rejected": " Same. "})
    path = tmp_path / "prefs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    expected_bad = check_rows(path, "preferences")
    assert 10 < len(expected_bad) < len(rows)  # the fuzz really breaks rows, and leaves some good
    assert prepare_rows(path, "preferences", tmp_path / "out") == expected_bad


def test_every_preference_rule_alone(tmp_path):
    """One defect per line, each a different rule; both commands name exactly those lines."""
    good = [{"id": f"g{i}", "prompt": f"Question {i}?", "chosen": f"Yes {i}.", "rejected": f"No {i}."} for i in range(2)]
    bad = [
        {"id": "g0", "prompt": "Repeat id?", "chosen": "a", "rejected": "b"},  # 3: id repeats line 1
        {"id": "b4", "prompt": "Q?", "chosen": 5, "rejected": "b"},  # 4: chosen is a number
        {"id": "b5", "prompt": "Q?", "chosen": [{"role": "assistant", "content": ["x"]}], "rejected": "b"},  # 5
        {"id": "b6", "prompt": "Q?", "chosen": "a", "rejected": "b", "annotator_labels": [True, False]},  # 6
        {"id": "b7", "prompt": "Q?", "chosen": "a", "rejected": "b", "margin": "big"},  # 7
        {"id": "b8", "prompt": "Q?", "chosen": "a", "rejected": "b", "harmful": 1},  # 8: 1 is not a boolean
        {"id": "b9", "prompt": "Q?", "chosen": "a", "rejected": "b", "split": "test"},  # 9
        {"id": "b10", "prompt": "Q?", "chosen": "a", "rejected": "b", "topic": 3},  # 10
        {"id": "b11", "prompt": "  ", "chosen": "a", "rejected": "b"},  # 11
        {"id": "b12", "prompt": "Q?", "chosen": "Same.", "rejected": "Same."},  # 12
        '{"id": "b13", "prompt": "A?", "prompt": "B?", "chosen": "a", "rejected": "b"}',  # 13: duplicate key
        "{not json",  # 14
        {"id": "b15", "prompt": "Q?", "chosen": "a"},  # 15: rejected missing
        {"id": "b16", "prompt": "Q?", "chosen": "a", "rejected": "b", "margin": 1.0, "annotator_labels": [1, 0]},
    ]
    path = _jsonl(tmp_path / "p.jsonl", good + bad)
    assert check_rows(path, "preferences") == set(range(3, 16))
    assert prepare_rows(path, "preferences", tmp_path / "out") == set(range(3, 16))


def test_demonstrations_prompts_and_rankings(tmp_path):
    demos = _jsonl(tmp_path / "d.jsonl", [
        {"prompt": "Q1?", "response": "A1."},
        {"prompt": "Q2?", "response": "A2.", "messages": [{"role": "user", "content": "Q2?"},
                                                        {"role": "assistant", "content": "A2."}]},
        {"prompt": "Q3?", "response": 7},  # 3
        {"prompt": "Q4?", "response": "A4.", "messages": [{"role": "user", "content": 4}]},  # 4: kept? no: invalid list
        {"prompt": "Q5?", "response": "x" * 20_001},  # 5
    ])
    assert check_rows(demos, "demonstrations") == prepare_rows(demos, "demonstrations", tmp_path / "o1") == {3, 4, 5}
    prompts = _jsonl(tmp_path / "r.jsonl", [{"prompt": "Bread?"}, {"prompt": ["x"]}, {"prompt": "Eggs?", "user_id": [1]}])
    assert check_rows(prompts, "prompts") == prepare_rows(prompts, "rl_prompts", tmp_path / "o2") == {2, 3}
    ranks = _jsonl(tmp_path / "k.jsonl", [{"prompt": "A?", "responses": ["x", "y", "z"]},
                                          {"prompt": "B?", "responses": ["x", "x"]},
                                          {"prompt": "C?", "responses": ["only"]}])
    assert check_rows(ranks, "rankings") == prepare_rows(ranks, "preferences", tmp_path / "o3") == {2, 3}


def test_csv_and_json_array_row_numbers(tmp_path):
    """CSV: line numbers counting the header, across a quoted newline; JSON: array elements."""
    csv = tmp_path / "p.csv"
    csv.write_text('id,prompt,chosen,rejected,harmful\na,"two\nlines?",x,y,false\nb,Q?,x,x,false\nc,Q?,x,y,maybe\n',
                   encoding="utf-8")
    assert check_rows(csv, "preferences") == prepare_rows(csv, "preferences", tmp_path / "o1") == {4, 5}
    arr = tmp_path / "p.json"
    arr.write_text(json.dumps([{"prompt": "Q?", "chosen": "x", "rejected": "y"}, 3,
                               {"prompt": "Q2?", "chosen": 1, "rejected": "y"}]), encoding="utf-8")
    assert check_rows(arr, "preferences") == prepare_rows(arr, "preferences", tmp_path / "o2") == {2, 3}
