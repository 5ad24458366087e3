"""Labelling for iterated online RLHF: tasks, the file and simulated backends, labels -> preferences."""

from __future__ import annotations

import json
import random
from collections import defaultdict
from pathlib import Path

import pytest

from data_checks.schemas import CANONICAL_COLUMNS, schema_for
from rlhf_core.demo_data.annotators import pairwise_agreement
from rlhf_core.errors import DataError
from rlhf_core.gold import gold_score
from rlhf_core.labeling import (
    PREFERENCE_COLUMNS,
    FileLabeler,
    Label,
    LabelError,
    Labeler,
    LabelTask,
    Progress,
    SimulatedLabeler,
    inter_annotator_agreement,
    make_tasks,
    task_id_for,
    to_preferences,
)

from .conftest import REPO

CONVERSATION = [
    {"role": "system", "content": "You are a gardener."},
    {"role": "user", "content": "My tomatoes split."},
    {"role": "assistant", "content": "Water them evenly."},
    {"role": "user", "content": "How often?"},
]


def task(prompt: str = "How do I boil an egg?", a: str = "Boil it for nine minutes.", b: str = "Use a pan.",
         round: int = 1, **meta) -> LabelTask:
    return LabelTask.create(round=round, policy_version="v1", prompt=prompt, prompt_messages=meta.pop("messages", None),
                            reply_a=a, reply_b=b, **meta)


def some_tasks(n: int, round: int = 1) -> list[LabelTask]:
    return [task(f"Question number {i}?", f"Answer {i} one.", f"Answer {i} two.", round=round) for i in range(n)]


def write_labels(path: Path, lines: list[object]) -> None:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines), encoding="utf-8")


# ----------------------------------------------------------------------------- tasks


def test_task_id_is_deterministic_and_names_the_content() -> None:
    t = task()
    assert t.task_id == task().task_id
    assert len(t.task_id) == 16 and int(t.task_id, 16) >= 0
    # A/B order is display, not content: the same comparison has one id
    assert task(a="Use a pan.", b="Boil it for nine minutes.").task_id == t.task_id
    others = {task(round=2).task_id, task(prompt="How do I fry an egg?").task_id, task(a="Boil it.").task_id,
              task(b="Use a pot.").task_id, task(messages=CONVERSATION).task_id,
              LabelTask.create(round=1, policy_version="v2", prompt=t.prompt, prompt_messages=None,
                               reply_a=t.reply_a, reply_b=t.reply_b).task_id}
    assert t.task_id not in others and len(others) == 6
    assert task(harmful=True, topic="cooking").task_id == t.task_id  # carried metadata is not content
    assert t.task_id == task_id_for(1, "v1", t.prompt, None, t.reply_a, t.reply_b)


def test_task_dict_round_trip_and_tampering() -> None:
    t = task(messages=CONVERSATION, harmful=False, topic="gardening", user_id="user_001", split="train")
    d = json.loads(json.dumps(t.to_dict()))
    assert LabelTask.from_dict(d) == t
    with pytest.raises(ValueError, match="does not match the task's content"):
        LabelTask.from_dict({**d, "reply_a": "Something else."})
    with pytest.raises(ValueError, match="unknown keys \\['colour'\\]"):
        LabelTask.from_dict({**d, "colour": "red"})
    with pytest.raises(ValueError, match="reply_b"):
        LabelTask.create(round=1, policy_version="v1", prompt="p", prompt_messages=None, reply_a="x", reply_b="  ")


def test_make_tasks_pairs_distinct_replies_and_accounts_for_every_skip() -> None:
    rows = [
        {"prompt": "Four replies?", "harmful": False, "topic": "cooking", "split": "train"},
        {"prompt": "Duplicates?", "harmful": None},
        {"prompt": "All the same?", "harmful": True},
        {"prompt": "Twice?"},
        {"prompt": "Twice?"},  # the same prompt and replies again: the same task
        {"prompt": "How often?", "prompt_messages": CONVERSATION},
    ]
    replies = [
        ["one", "two", "three", "four"],
        ["same", "  same ", "other", ""],  # an identical (whitespace aside) and a blank reply
        ["x", "x"],
        ["p", "q"],
        ["q", "p"],
        ["Daily.", "Weekly."],
    ]
    tasks, acc = make_tasks(rows, replies, round=3, policy_version="ppo-7", pairs_per_prompt=3, seed=0)
    by_prompt = defaultdict(list)
    for t in tasks:
        by_prompt[t.prompt].append(t)
    four = by_prompt["Four replies?"]
    assert len(four) == 3 and len({frozenset((t.reply_a, t.reply_b)) for t in four}) == 3  # distinct unordered pairs
    assert all(t.reply_a != t.reply_b for t in tasks)
    assert [{t.reply_a, t.reply_b} for t in by_prompt["Duplicates?"]] == [{"same", "other"}]
    assert "All the same?" not in by_prompt
    assert len(by_prompt["Twice?"]) == 1
    conv = by_prompt["How often?"]
    assert len(conv) == 1 and conv[0].prompt_messages == CONVERSATION
    assert four[0].topic == "cooking" and four[0].split == "train" and four[0].harmful is False
    assert by_prompt["Duplicates?"][0].harmful is None
    assert all(t.round == 3 and t.policy_version == "ppo-7" for t in tasks)
    assert len({t.task_id for t in tasks}) == len(tasks) == 6

    assert acc == {
        "prompts": 6, "replies": 16, "tasks": 6,
        "skipped_replies": {"blank_reply": 1, "identical_reply": 2},  # "  same " and the second "x"
        "prompts_without_pair": 1,  # "All the same?"
        "pairs_not_drawn": 3,  # C(4, 2) = 6 usable pairs of "Four replies?", 3 drawn
        "skipped_pairs": {"duplicate_task": 1},  # the second "Twice?"
    }
    # nothing silently lost: every drawn pair is a task or a counted duplicate
    assert acc["tasks"] + acc["skipped_pairs"]["duplicate_task"] == 3 + 1 + 1 + 1 + 1

    again, _ = make_tasks(rows, replies, round=3, policy_version="ppo-7", pairs_per_prompt=3, seed=0)
    assert again == tasks  # seeded


def test_make_tasks_randomises_the_shown_order() -> None:
    rows = [{"prompt": f"Prompt {i}?"} for i in range(400)]
    replies = [[f"first {i}", f"second {i}"] for i in range(400)]
    tasks, _ = make_tasks(rows, replies, round=0, policy_version="v0", pairs_per_prompt=1, seed=1)
    shown_first = sum(t.reply_a.startswith("first") for t in tasks) / len(tasks)
    assert 0.43 < shown_first < 0.57  # 400 fair coins: sd 0.025
    other, _ = make_tasks(rows, replies, round=0, policy_version="v0", pairs_per_prompt=1, seed=2)
    assert [t.reply_a for t in other] != [t.reply_a for t in tasks]
    assert {t.task_id for t in other} == {t.task_id for t in tasks}  # same comparisons, other display


def test_make_tasks_bad_prompt_rows_name_the_row() -> None:
    with pytest.raises(DataError, match=r"prompt_rows\[1\]: 'prompt' must be non-blank text"):
        make_tasks([{"prompt": "ok?"}, {"prompt": " "}], [["a", "b"], ["a", "b"]], round=0, policy_version="v",
                   pairs_per_prompt=1, seed=0)
    with pytest.raises(DataError, match=r"prompt_rows\[0\]: 'prompt_messages' must end with the user turn"):
        make_tasks([{"prompt": "ok?", "prompt_messages": CONVERSATION[:3]}], [["a", "b"]], round=0, policy_version="v",
                   pairs_per_prompt=1, seed=0)
    with pytest.raises(DataError, match=r"prompt_rows\[0\]: 'harmful' must be true, false or null"):
        make_tasks([{"prompt": "ok?", "harmful": "yes"}], [["a", "b"]], round=0, policy_version="v",
                   pairs_per_prompt=1, seed=0)
    with pytest.raises(ValueError, match="2 prompt rows but 1 reply lists"):
        make_tasks([{"prompt": "a?"}, {"prompt": "b?"}], [["a", "b"]], round=0, policy_version="v",
                   pairs_per_prompt=1, seed=0)


# ----------------------------------------------------------------------------- file backend


def test_file_labeler_round_trip(tmp_path: Path) -> None:
    labeler = FileLabeler(tmp_path)
    assert isinstance(labeler, Labeler)
    tasks = [task(messages=CONVERSATION, prompt="How often?", harmful=False, topic="gardening", split="train"),
             *some_tasks(3)]
    labeler.submit(tasks, "round-1")
    folder = tmp_path / "round-1"
    readme = (folder / "README.txt").read_text()
    assert "labels.jsonl" in readme and '"choice": "a"' in readme and "4 comparisons" in readme
    lines = (folder / "tasks.jsonl").read_text().splitlines()
    assert [LabelTask.from_dict(json.loads(x)) for x in lines] == tasks
    assert labeler.progress("round-1") == Progress(labelled_tasks=0, total_tasks=4, labels=0)
    assert labeler.collect("round-1") == []

    t0, t1, t2, _ = tasks
    write_labels(folder / "labels.jsonl", [
        {"task_id": t0.task_id, "choice": "a", "annotator": "ann"},
        {"task_id": t0.task_id, "choice": "a", "annotator": "bob", "note": "clearer"},
        {"task_id": t1.task_id, "choice": "b", "annotator": "ann"},
        "",  # blank lines are fine
        {"task_id": t2.task_id, "choice": "tie", "annotator": "ann"},
    ])
    progress = labeler.progress("round-1")
    assert progress == Progress(labelled_tasks=3, total_tasks=4, labels=4) and not progress.complete
    labels = labeler.collect("round-1")
    assert labels[1] == Label(t0.task_id, "a", "bob", note="clearer")
    frame, acc = to_preferences(tasks, labels)
    assert list(frame["id"]) == [t0.task_id, t1.task_id]
    assert frame.loc[0, "chosen"] == t0.reply_a and frame.loc[1, "chosen"] == t1.reply_b
    assert frame.loc[0, "prompt_messages"] == CONVERSATION and frame.loc[0, "topic"] == "gardening"
    assert acc["dropped"] == {"unlabelled": 1, "all_tie": 1, "even_split": 0}
    schema_for("preferences").validate(frame, lazy=True)


# (labels.jsonl lines after a good first line, the line at fault, the rule, text the message names)
BAD_LABELS = {
    "unknown_task": ([{"task_id": "0000000000000000", "choice": "a", "annotator": "ann"}], 2, "unknown_task",
                     "'0000000000000000' is not a task of batch 'round-1'"),
    "same_label_twice": ([{"task_id": "T0", "choice": "a", "annotator": "ann"}], 2, "duplicate_label",
                         "already labelled task T0 on line 1 (no label is imported twice)"),
    "changed_mind": ([{"task_id": "T1", "choice": "a", "annotator": "bob"},
                      {"task_id": "T0", "choice": "b", "annotator": "ann"}], 3, "duplicate_label", "on line 1"),
    "invalid_choice": ([{"task_id": "T1", "choice": "A", "annotator": "ann"}], 2, "invalid_choice",
                       "choice 'A' is not one of"),
    "not_json": (['{"task_id": "T1", "choice": "a"'], 2, "malformed_line", "not a JSON object"),
    "not_an_object": (['["T1", "a", "ann"]'], 2, "malformed_line", "expected a JSON object, got list"),
    "duplicate_key": (['{"task_id": "T1", "choice": "a", "choice": "b", "annotator": "ann"}'], 2, "malformed_line",
                      "key 'choice' appears twice"),
    "missing_annotator": ([{"task_id": "T1", "choice": "a"}], 2, "missing_field", "missing ['annotator']"),
    "blank_annotator": ([{"task_id": "T1", "choice": "a", "annotator": " "}], 2, "bad_field",
                        "annotator must be non-blank text"),
    "typo_key": ([{"task_id": "T1", "choice": "a", "annotator": "ann", "notes": "x"}], 2, "unknown_field",
                 "unknown keys ['notes']"),
    "not_utf8": ([b'{"task_id": "T1", "choice": "a", "annotator": "\xff"}'], 2, "malformed_line", "not UTF-8"),
}


@pytest.mark.parametrize("case", sorted(BAD_LABELS))
def test_bad_labels_name_file_line_and_rule(tmp_path: Path, case: str) -> None:
    lines, line_no, rule, detail = BAD_LABELS[case]
    labeler = FileLabeler(tmp_path)
    tasks = some_tasks(2)
    labeler.submit(tasks, "round-1")
    ids = {"T0": tasks[0].task_id, "T1": tasks[1].task_id}
    path = tmp_path / "round-1" / "labels.jsonl"
    body = [json.dumps({"task_id": ids["T0"], "choice": "a", "annotator": "ann"}).encode()]
    for x in lines:
        raw = x if isinstance(x, bytes) else (x if isinstance(x, str) else json.dumps(x)).encode()
        for name, tid in ids.items():
            raw = raw.replace(f'"{name}"'.encode(), f'"{tid}"'.encode())
        body.append(raw)
    path.write_bytes(b"\n".join(body) + b"\n")
    for read in (labeler.collect, labeler.progress):  # a waiting round fails as clearly as the import
        with pytest.raises(LabelError) as info:
            read("round-1")
        message = str(info.value)
        assert message.startswith(f"{path}:{line_no}: {rule}: "), message
        assert detail.replace("T0", ids["T0"]) in message
        assert isinstance(info.value, DataError) and "\n" not in message


def test_every_bad_line_is_counted(tmp_path: Path) -> None:
    labeler = FileLabeler(tmp_path)
    tasks = some_tasks(2)
    labeler.submit(tasks, "b")
    write_labels(tmp_path / "b" / "labels.jsonl", [
        {"task_id": "nope", "choice": "a", "annotator": "ann"},
        {"task_id": tasks[0].task_id, "choice": "x", "annotator": "ann"},
        {"task_id": tasks[0].task_id, "choice": "b", "annotator": "ann"},
        "not json",
        {"task_id": "nope either", "choice": "a", "annotator": "ann"},
    ])
    with pytest.raises(LabelError) as info:
        labeler.collect("b")
    assert [(p.line, p.rule) for p in info.value.problems] == [
        (1, "unknown_task"), (2, "invalid_choice"), (4, "malformed_line"), (5, "unknown_task")]
    assert str(info.value).endswith("(and 3 more: 1 invalid_choice, 1 malformed_line, 1 unknown_task; "
                                    "lines 2 invalid_choice, 4 malformed_line, 5 unknown_task)")


def test_a_line_being_written_is_waited_for_not_imported(tmp_path: Path) -> None:
    labeler = FileLabeler(tmp_path)
    tasks = some_tasks(2)
    labeler.submit(tasks, "b")
    done = json.dumps({"task_id": tasks[0].task_id, "choice": "a", "annotator": "ann"})
    (tmp_path / "b" / "labels.jsonl").write_text(done + '\n{"task_id": "' + tasks[1].task_id[:5])
    assert labeler.progress("b") == Progress(labelled_tasks=1, total_tasks=2, labels=1)
    with pytest.raises(LabelError, match=r"labels.jsonl:2: malformed_line"):
        labeler.collect("b")


def test_resubmitting_the_same_tasks_resumes_and_other_tasks_refuse(tmp_path: Path) -> None:
    labeler = FileLabeler(tmp_path)
    tasks = some_tasks(3)
    labeler.submit(tasks, "round-2")
    labels_file = tmp_path / "round-2" / "labels.jsonl"
    write_labels(labels_file, [{"task_id": tasks[0].task_id, "choice": "b", "annotator": "ann"}])
    before = (tmp_path / "round-2" / "tasks.jsonl").read_bytes()
    labeler.submit(list(reversed(tasks)), "round-2")  # a resumed round: same tasks, any order
    assert (tmp_path / "round-2" / "tasks.jsonl").read_bytes() == before
    assert labeler.progress("round-2").labelled_tasks == 1  # what was labelled is kept
    with pytest.raises(DataError, match=r"round-2/tasks.jsonl: batch 'round-2' already exists with different "
                                        r"tasks \(3 there, 2 submitted, 2 in common\)"):
        labeler.submit(tasks[:2], "round-2")
    with pytest.raises(DataError, match="already exists with different tasks"):
        labeler.submit(some_tasks(3, round=4), "round-2")
    assert (tmp_path / "round-2" / "tasks.jsonl").read_bytes() == before


def test_file_labeler_refuses_unknown_batches_bad_names_and_empty_or_repeated_tasks(tmp_path: Path) -> None:
    labeler = FileLabeler(tmp_path)
    with pytest.raises(DataError, match="batch 'round-9' was never submitted"):
        labeler.progress("round-9")
    for name in ("../escape", "a/b", "", ".."):
        with pytest.raises(DataError, match="batch name"):
            labeler.submit(some_tasks(1), name)
    with pytest.raises(DataError, match="no tasks to label"):
        labeler.submit([], "round-1")
    t = some_tasks(1)[0]
    with pytest.raises(DataError, match="listed twice"):
        labeler.submit([t, t], "round-1")
    assert not (tmp_path / "round-1").exists()


def test_an_edited_tasks_file_is_refused(tmp_path: Path) -> None:
    labeler = FileLabeler(tmp_path)
    tasks = some_tasks(2)
    labeler.submit(tasks, "b")
    path = tmp_path / "b" / "tasks.jsonl"
    lines = path.read_text().splitlines()
    edited = json.loads(lines[1])
    edited["reply_a"] = "A reply someone changed."
    path.write_text(lines[0] + "\n" + json.dumps(edited) + "\n")
    with pytest.raises(LabelError, match=r"tasks.jsonl:2: bad_task: task_id .* does not match"):
        labeler.collect("b")


# ----------------------------------------------------------------------------- labels -> preferences


def test_to_preferences_majority_ties_and_accounting_by_hand() -> None:
    t = some_tasks(6)

    def lab(i: int, choice: str, who: str) -> Label:
        return Label(t[i].task_id, choice, who)

    labels = [
        lab(0, "a", "carol"), lab(0, "b", "ann"), lab(0, "a", "bob"),  # A 2-1
        lab(1, "tie", "ann"), lab(1, "b", "bob"), lab(1, "tie", "carol"),  # B on one vote, two abstain
        lab(2, "tie", "ann"), lab(2, "tie", "bob"),  # all tie
        lab(3, "a", "ann"), lab(3, "b", "bob"), lab(3, "tie", "carol"),  # even split
        lab(4, "b", "ann"),  # one label is a majority
        # t[5]: nobody labelled it
    ]
    frame, acc = to_preferences(t, labels)
    assert list(frame["task_id"]) == [t[0].task_id, t[1].task_id, t[4].task_id]
    row = frame.set_index("task_id")
    r0, r1, r4 = row.loc[t[0].task_id], row.loc[t[1].task_id], row.loc[t[4].task_id]
    assert (r0["chosen"], r0["rejected"]) == (t[0].reply_a, t[0].reply_b)
    assert r0["annotator_labels"] == [0, 1, 1]  # ann, bob, carol
    assert r0["margin"] == pytest.approx(1 / 3) and r0["agreement"] == pytest.approx(2 / 3) and r0["n_labels"] == 3
    assert (r1["chosen"], r1["rejected"]) == (t[1].reply_b, t[1].reply_a)
    assert r1["annotator_labels"] == [1] and r1["margin"] == pytest.approx(1 / 3)
    assert r1["agreement"] == pytest.approx(1 / 3)
    assert r4["chosen"] == t[4].reply_b and r4["agreement"] == 1.0 and r4["margin"] == 1.0
    assert set(frame["source"]) == {"online"} and set(frame["round"]) == {1} and set(frame["policy_version"]) == {"v1"}
    assert acc == {"tasks": 6, "labels": 12, "rows": 3, "tie_votes": 5,
                   "dropped": {"unlabelled": 1, "all_tie": 1, "even_split": 1}}
    assert acc["rows"] + sum(acc["dropped"].values()) == acc["tasks"]  # every task accounted for
    schema_for("preferences").validate(frame, lazy=True)


def test_half_labelled_batch_keeps_what_was_labelled(tmp_path: Path) -> None:
    labeler = FileLabeler(tmp_path)
    tasks = some_tasks(10)
    labeler.submit(tasks, "round-5")
    write_labels(tmp_path / "round-5" / "labels.jsonl",
                 [{"task_id": t.task_id, "choice": "a", "annotator": "ann"} for t in tasks[:4]])
    assert labeler.progress("round-5") == Progress(4, 10, 4)
    frame, acc = to_preferences(tasks, labeler.collect("round-5"))
    assert len(frame) == 4 and acc["dropped"]["unlabelled"] == 6
    assert list(frame["chosen"]) == [t.reply_a for t in tasks[:4]]


def test_to_preferences_refuses_labels_it_cannot_place() -> None:
    tasks = some_tasks(2)
    with pytest.raises(DataError, match="is not one of the 2 tasks given"):
        to_preferences(tasks, [Label("ffff", "a", "ann")])
    with pytest.raises(DataError, match="labelled twice by the same annotator"):
        to_preferences(tasks, [Label(tasks[0].task_id, "a", "ann"), Label(tasks[0].task_id, "a", "ann")])
    with pytest.raises(ValueError, match="choice must be one of"):
        Label(tasks[0].task_id, "A", "ann")


def test_empty_frame_has_the_columns() -> None:
    frame, acc = to_preferences(some_tasks(2), [])
    assert frame.empty and list(frame.columns[:12]) == CANONICAL_COLUMNS["preferences"]
    assert acc["dropped"]["unlabelled"] == 2


def test_preference_columns_are_the_canonical_ones() -> None:
    assert PREFERENCE_COLUMNS == CANONICAL_COLUMNS["preferences"]


def test_inter_annotator_agreement() -> None:
    def labs(task_id: str, choices: str) -> list[Label]:
        return [Label(task_id, {"A": "a", "B": "b", "T": "tie"}[c], f"p{k}") for k, c in enumerate(choices)]

    # AAB: 1 of 3 pairs alike; ABT: 0 of 3; AA: 1 of 1; a single label does not count
    labels = labs("t1", "AAB") + labs("t2", "ABT") + labs("t3", "AA") + labs("t4", "B")
    assert inter_annotator_agreement(labels) == pytest.approx((1 / 3 + 0 + 1) / 3)
    assert inter_annotator_agreement(labs("t4", "B")) is None
    assert inter_annotator_agreement([]) is None
    # with only a/b votes it is the demo data's measure
    rng = random.Random(0)
    rows = [[rng.randint(0, 1) for _ in range(rng.randint(1, 5))] for _ in range(50)]
    labels = [lab for i, row in enumerate(rows) for lab in labs(f"t{i}", "".join("AB"[v] for v in row))]
    assert inter_annotator_agreement(labels) == pytest.approx(pairwise_agreement(rows))


# ----------------------------------------------------------------------------- simulated panel


def demo_prompt_replies() -> tuple[list[dict], list[list[str]]]:
    """Prompts of the shipped demo preferences with every distinct reply compared for them
    (samples, refusals, loops, off-topic replies: clear gold gaps and close ones)."""
    replies: dict[str, list[str]] = defaultdict(list)
    rows: dict[str, dict] = {}
    for line in (REPO / "data" / "demo" / "preferences.jsonl").read_text().splitlines():
        r = json.loads(line)
        prompt = r.get("prompt")
        if not isinstance(prompt, str) or not isinstance(r.get("harmful"), bool):
            continue  # the file's planted defects
        rows[prompt] = {"prompt": prompt, "harmful": r["harmful"]}
        for key in ("chosen", "rejected"):
            if isinstance(r.get(key), str) and r[key].strip() and r[key] not in replies[prompt]:
                replies[prompt].append(r[key])
    prompts = sorted(rows)[:200]
    return [rows[p] for p in prompts], [replies[p] for p in prompts]


def test_simulated_panel_agrees_as_calibrated_and_follows_gold() -> None:
    rows, replies = demo_prompt_replies()
    tasks, acc = make_tasks(rows, replies, round=1, policy_version="v1", pairs_per_prompt=2, seed=0)
    assert len(tasks) >= 300, acc
    labeler = SimulatedLabeler(n_annotators=3, target_agreement=0.73, seed=0)
    assert isinstance(labeler, Labeler)
    labeler.submit(tasks, "round-1")
    assert labeler.progress("round-1") == Progress(len(tasks), len(tasks), 3 * len(tasks))
    labels = labeler.collect("round-1")
    assert {lab.annotator for lab in labels} == {"sim-0", "sim-1", "sim-2"}
    assert labeler.panel_stats("round-1")["expected_agreement"] == pytest.approx(0.73, abs=1e-6)
    # per-task agreement is 1 or 1/3 (sd <= 1/3): the mean of ~400 tasks is within 0.05 of its expectation
    assert inter_annotator_agreement(labels) == pytest.approx(0.73, abs=0.05)

    frame, pacc = to_preferences(tasks, labels)
    assert pacc["rows"] == len(tasks)  # three a/b voters always have a majority
    gaps = [gold_score(r.prompt, r.chosen, harmful=r.harmful) - gold_score(r.prompt, r.rejected, harmful=r.harmful)
            for r in frame.itertuples()]
    decided = [g for g in gaps if g != 0]
    assert sum(g > 0 for g in decided) / len(decided) > 0.7  # the demo data's panel: ~0.9 with five annotators
    # the clearer the gold gap, the more often the majority follows it
    wide = [g for g in decided if abs(g) > 0.3]
    assert sum(g > 0 for g in wide) / len(wide) > 0.9
    schema_for("preferences").validate(frame, lazy=True)

    # a new process with the same seed (a resumed round) labels the batch identically
    again = SimulatedLabeler(n_annotators=3, target_agreement=0.73, seed=0)
    again.submit(tasks, "round-1")
    assert again.collect("round-1") == labels
    again.submit(list(reversed(tasks)), "round-1")  # idempotent
    with pytest.raises(DataError, match="already exists with different tasks"):
        again.submit(tasks[:5], "round-1")
    with pytest.raises(DataError, match="never submitted"):
        again.collect("round-2")


def test_simulated_panel_settings_are_checked() -> None:
    from rlhf_core.errors import ConfigError

    with pytest.raises(ConfigError, match="n_annotators must be >= 2"):
        SimulatedLabeler(n_annotators=1)
    with pytest.raises(ConfigError, match="target_agreement"):
        SimulatedLabeler(target_agreement=0.4)
    assert len(SimulatedLabeler(n_annotators=2).panel) == 2
