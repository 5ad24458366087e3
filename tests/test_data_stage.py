"""The whole data stage on seeded fixtures: every defect is caught, and the report adds up."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from data_checks.schemas import CANONICAL_COLUMNS
from data_checks.stage import run_data_stage
from rlhf_core.config.data import DataConfig
from rlhf_core.errors import DataError

DATA = Path(__file__).parent / "data"
STAGE = DATA / "stage"


def _cfg(**overrides) -> DataConfig:
    # The fixtures' prompts are benign but where a row says harmful: declared so, as a user would.
    base = dict(
        demonstrations=[{"path": STAGE / "demonstrations.jsonl", "harmful": False}, DATA / "demos_messages.jsonl"],
        preferences=[{"path": STAGE / "preferences.jsonl", "harmful": False}, DATA / "rankings.jsonl"],
        rl_prompts=[{"path": STAGE / "rl_prompts.jsonl", "harmful": False}],
        prompt_filter={"max_tokens": 40, "max_prompts_per_user": 3},
    )
    base.update(overrides)
    return DataConfig(**base)


@pytest.fixture(scope="module")
def staged(tmp_path_factory):
    out = tmp_path_factory.mktemp("stage")
    report = run_data_stage(_cfg(), out)
    dropped = [json.loads(line) for line in (out / "dropped.jsonl").read_text().splitlines()]
    return out, report, {d["id"]: d for d in dropped if d["id"]}, dropped


def test_report_invariant_per_file(staged):
    out, report, _, dropped = staged
    saved = json.loads((out / "report.json").read_text())
    assert saved["balanced"] is True
    assert len(saved["files"]) == 5
    for f in saved["files"]:
        assert f["rows_in"] == f["rows_kept"] + sum(f["dropped"].values()), f
        assert f["rows_in"] > 0
    # Every dropped row is in dropped.jsonl once, and the per-reason counts come from it.
    assert len(dropped) == sum(sum(f["dropped"].values()) for f in saved["files"])
    # Rankings count as their pairs: 3 + 1 pairs from 2 ranking rows, all kept.
    rankings = next(f for f in saved["files"] if f["file"].endswith("rankings.jsonl"))
    assert rankings["rows_in"] == 4


def test_each_seeded_defect_is_dropped_by_its_step(staged):
    _, _, by_id, dropped = staged
    expect = {
        "pref-refusal-1": ("refusal", "refusal"),
        "pref-dup-1": ("dedup", "exact_duplicate"),
        "pref-near-1": ("dedup", "near_duplicate"),
        "pref-same-1": ("validate", "chosen_differs_from_rejected"),
        "pref-missing-1": ("validate", "rejected:not_nullable"),
        "pref-empty-1": ("validate", "prompt:not_blank"),
        "pref-type-1": ("validate", "prompt:is_string"),
        "demo-refusal-1": ("refusal", "refusal"),
        "demo-dup-1": ("dedup", "exact_duplicate"),
        "demo-lang-1": ("filter", "language"),
        "demo-spam-1": ("filter", "spam"),
        "rl-contam-1": ("dedup", "contamination"),
        "rl-lang-1": ("filter", "language"),
        "rl-spam-1": ("filter", "spam"),
        "rl-spam-2": ("filter", "spam"),
        "rl-long-1": ("filter", "too_long"),
        "rl-ood-1": ("filter", "coverage"),
        "rl-ood-2": ("filter", "coverage"),
        "rl-cap-4": ("filter", "user_cap"),
        "rl-dup-1": ("dedup", "exact_duplicate"),
        "rl-near-2": ("dedup", "near_duplicate"),
    }
    got = {i: (by_id[i]["stage"], by_id[i]["rule"]) for i in expect if i in by_id}
    assert got == expect
    rules = {(d["stage"], d["rule"]) for d in dropped}
    assert ("import", "invalid_json") in rules and ("import", "utf8") in rules
    for d in dropped:  # every reason names file and row
        assert d["reason"].startswith(f"{d['file']}:{d['row']}: ")


def test_harmful_refusals_are_kept_and_counted(staged):
    out, report, by_id, _ = staged
    demos = pd.read_parquet(out / "demonstrations.parquet")
    prefs = pd.read_parquet(out / "preferences.parquet")
    assert {"demo-harm-1", "demo-harm-2"} <= set(demos["id"])
    assert "pref-harm-1" in set(prefs["id"])
    kept = sum(c["kept_harmful"] for c in report.refusals["demonstrations"]["per_pattern"].values())
    dropped = sum(c["dropped"] for c in report.refusals["demonstrations"]["per_pattern"].values())
    assert (kept, dropped) == (2, 1)


def test_outputs_are_canonical_and_split(staged):
    out, report, _, _ = staged
    for name, kind in [("demonstrations", "demonstrations"), ("preferences", "preferences"),
                       ("rl_prompts", "prompts"), ("eval_prompts", "prompts")]:
        frame = pd.read_parquet(out / f"{name}.parquet")
        assert list(frame.columns) == CANONICAL_COLUMNS[kind]
        assert frame["id"].is_unique and len(frame) > 0
    rl = pd.read_parquet(out / "rl_prompts.parquet")
    ev = pd.read_parquet(out / "eval_prompts.parquet")
    assert set(ev["split"]) == {"eval"} and "eval" not in set(rl["split"].dropna())
    assert not set(ev["prompt"]) & set(rl["prompt"])
    quarantine = [json.loads(line) for line in (out / "quarantine.jsonl").read_text().splitlines()]
    assert {q["rule"] for q in quarantine} >= {"invalid_json", "utf8", "prompt:not_blank"}
    assert "# Data report" in (out / "report.md").read_text()


def test_report_dedup_coverage_and_topic_mix(staged):
    _, report, _, _ = staged
    assert report.dedup["preferences"]["near_clusters"] == 1
    assert report.dedup["rl_prompts"]["contamination_dropped"] == 1
    cluster = report.dedup["rl_prompts"]["clusters"][0]
    assert cluster["ids"] == ["rl-near-1", "rl-near-2"]
    cov = report.coverage
    assert cov["method"] == "tfidf" and cov["threshold"] == 0.2
    assert 0 < cov["share_rl_inside"] < 1
    assert "harmful" in cov["topics_not_reached"]  # no harmful RL prompts in the fixture
    assert cov["preference_topics_reached"] == cov["preference_topics"] - len(cov["topics_not_reached"])
    mix = report.topic_mix["rl_prompts"]
    assert mix["before"]["math"] == 1 and "math" not in mix["after"]


def test_missing_input_file_stops_the_stage_with_one_line(tmp_path):
    with pytest.raises(DataError, match=r"nope\.jsonl: no such file"):
        run_data_stage(_cfg(rl_prompts=[tmp_path / "nope.jsonl"]), tmp_path / "out")


def test_switches_change_what_is_dropped(tmp_path):
    report = run_data_stage(_cfg(
        refusal={"drop_refused_chosen": False},
        dedup={"near": False, "cross_split": False},
        prompt_filter={"max_tokens": 40, "max_prompts_per_user": None, "coverage_method": "off",
                       "languages": []},
    ), tmp_path)
    totals = report.totals()
    assert report.balanced
    assert "filter:coverage" not in totals["rl_prompts"]["dropped"]
    assert "dedup:near_duplicate" not in totals["preferences"]["dropped"]
    assert "filter:language" not in totals["rl_prompts"]["dropped"]
    assert "filter:user_cap" not in totals["rl_prompts"]["dropped"]
    assert report.refusals["preferences"]["per_pattern"][r"\bas an ai language model\b"]["flagged"] == 1
    assert report.coverage == {"skipped": "prompt_filter.coverage_method is 'off'"}


def test_tokenizer_callable_sets_the_length_unit(tmp_path):
    # Characters as "tokens": a 40-token bound now drops most prompts as too long.
    report = run_data_stage(_cfg(prompt_filter={"max_tokens": 40, "coverage_method": "off", "languages": []}),
                            tmp_path, tokenizer=len)
    assert report.totals()["rl_prompts"]["dropped"]["filter:too_long"] > 5


# ---- what counts as a duplicate (DedupConfig semantics)

_A = ("Start with a light stretch, then walk briskly for ten minutes, and add one minute of easy "
      "running every few days until you can run for twenty minutes without stopping.")
_B = ("Buy good shoes first and run every single day as far as you can, because pushing through the "
      "pain is the only way a beginner ever gets any faster at all.")
_C = ("Join a local running club, since a group keeps you motivated and the coaches there will show "
      "you how to warm up and pace yourself on your first few runs.")


def _prefs(rows: list[tuple[str, str, str, str]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["id", "prompt", "chosen", "rejected"])


def test_preference_duplicate_needs_the_prompt_and_both_replies():
    from data_checks.stage import exact_duplicate_of, near_duplicate_of, near_duplicate_row_pairs
    from rlhf_core.config.data import DedupConfig

    p = "How should a complete beginner start running?"
    frame = _prefs([
        ("a", p, _A, _B),
        ("shares-prompt-and-chosen", p, _A, _C),  # a distinct comparison reusing a sampled reply
        ("shares-prompt-and-rejected", p, _C, _B),
        ("swapped", p, _B, _A),  # the same comparison, labels flipped
        ("near", p.replace("complete", "compelte"), _A.replace("briskly", "quickly"), _B + " Really."),
        ("other-prompt", "How do I bake bread?", _A, _B),
    ])
    assert exact_duplicate_of(frame, "preferences") == {3: 0}
    rest = frame.drop(index=3).reset_index(drop=True)
    pairs, est = near_duplicate_row_pairs(rest, "preferences", DedupConfig())
    assert pairs.tolist() == [[0, 3]] and est[0] >= DedupConfig().reply.threshold
    assert near_duplicate_of(len(rest), pairs) == {3: 0}


def test_demonstration_duplicate_needs_prompt_and_response():
    from data_checks.stage import near_duplicate_row_pairs
    from rlhf_core.config.data import DedupConfig

    p = "How should a complete beginner start running?"
    frame = pd.DataFrame([("a", p, _A), ("other-reply", p, _C), ("near", p, _A.replace("ten", "fifteen")),
                          ("other-prompt", "How do I start swimming laps?", _A)], columns=["id", "prompt", "response"])
    pairs, _ = near_duplicate_row_pairs(frame, "demonstrations", DedupConfig())
    assert pairs.tolist() == [[0, 2]]


def test_short_prompt_edits_are_near_duplicates_but_template_siblings_are_not():
    """One typo, added or dropped word in a ~10-word prompt: char 4-grams link it, word 3-grams miss it."""
    from data_checks.stage import near_duplicate_row_pairs
    from rlhf_core.config.data import DedupConfig, ShingleConfig

    base = "How often should I water a cactus that lives on a sunny windowsill?"
    edits = [base.replace("water", "wtaer"), base.replace("a sunny", "a very sunny"),
             base.replace(" that lives", ""), "Hi, " + base]
    # Distinct prompts from one template (char 4-gram Jaccard 0.57 and 0.28). A lone one-word
    # swap ("cactus" -> "fern": 0.77) is as close as a dropped two-word clause (0.80): no
    # lexical measure tells those apart on a 12-word prompt, so it is not asserted either way.
    siblings = [base.replace("cactus", "basil plant").replace("sunny", "cold"),
                "How often should I feed a puppy that lives in a small apartment?"]
    for other, expect in [(e, True) for e in edits] + [(s, False) for s in siblings]:
        frame = pd.DataFrame({"id": ["x", "y"], "prompt": [base, other]})
        found = len(near_duplicate_row_pairs(frame, "rl_prompts", DedupConfig())[0]) == 1
        assert found is expect, other
    coarse = DedupConfig(prompt=ShingleConfig(shingle="word", shingle_size=3, threshold=0.75))
    frame = pd.DataFrame({"id": ["x", "y"], "prompt": [base, edits[0]]})
    assert len(near_duplicate_row_pairs(frame, "rl_prompts", coarse)[0]) == 0


def test_greedy_near_duplicates_keep_a_chain_end():
    """a~b and b~c but not a~c: b goes (duplicate of a); c stays, since the only row it resembles went."""
    import numpy as np

    from data_checks.stage import near_duplicate_of

    assert near_duplicate_of(3, np.array([[0, 1], [1, 2]])) == {1: 0}
    assert near_duplicate_of(3, np.array([[0, 2], [1, 2], [0, 1]])) == {1: 0, 2: 0}


def test_lsh_recall_weight_finds_pairs_just_above_the_threshold():
    """Candidates are verified, so weighting missed pairs more only adds verification work."""
    import random

    from data_checks import dedup

    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(5000)]
    texts = []
    for _ in range(300):  # pairs of 60 distinct words sharing 55: word 1-gram Jaccard 55/65 = 0.846
        words = rng.sample(vocab, 65)
        texts += [" ".join(words[:60]), " ".join(words[:55] + words[60:])]
    kw = dict(shingle="word", shingle_size=1, threshold=0.8, num_perm=128)

    def recall(weights):
        pairs, _ = dedup.near_duplicate_pairs(texts, lsh_weights=weights, **kw)
        return sum(j == i + 1 and i % 2 == 0 for i, j in pairs.tolist()) / 300

    low, high = recall((0.5, 0.5)), recall((0.1, 0.9))
    assert high >= 0.8 and high >= low + 0.15, (low, high)


def test_user_cap_counts_distinct_prompts():
    from data_checks.stage import user_cap_by_prompt

    frame = pd.DataFrame({
        "prompt": ["p1", "p1", "P1!", "p2", "p2", "p3", "p3", "q1"],  # "P1!" normalizes to "p1"
        "user_id": ["u", "u", "u", "u", "u", "u", "u", "v"],
    })
    reasons = user_cap_by_prompt(frame, 2)
    assert reasons.map(lambda r: r is not None).tolist() == [False] * 5 + [True, True, False]
    assert reasons[5][0] == "user_cap"
    assert user_cap_by_prompt(frame, None).isna().all()


def test_user_cap_inputs_and_duplicate_reasons(tmp_path):
    report = run_data_stage(_cfg(prompt_filter={"max_tokens": 40, "max_prompts_per_user": 3,
                                                "user_cap_inputs": ["rl_prompts"]}), tmp_path)
    totals = report.totals()
    assert "filter:user_cap" in totals["rl_prompts"]["dropped"]
    assert "filter:user_cap" not in totals["demonstrations"]["dropped"]  # u1 has 6 demonstrations
    dropped = {d["id"]: d for d in map(json.loads, (tmp_path / "dropped.jsonl").read_text().splitlines())}
    assert "id 'pref-1'" in dropped["pref-dup-1"]["reason"]  # a duplicate names the row it repeats
    assert "id 'rl-near-1'" in dropped["rl-near-2"]["reason"]


def test_user_cap_counts_only_prompts_every_other_step_kept(tmp_path):
    """A heavy user's off-support prompt is dropped for coverage and does not use up their quota."""
    rows = [json.loads(line) for line in (STAGE / "rl_prompts.jsonl").read_text(errors="replace").splitlines()
            if line.startswith("{") and '"rl-bytes"' not in line]
    ood = next(r for r in rows if r["id"] == "rl-ood-1")
    rows.remove(ood)
    first_cap = next(i for i, r in enumerate(rows) if r["id"] == "rl-cap-1")
    rows.insert(first_cap, {**ood, "user_id": "u9"})  # u9's first prompt, ahead of rl-cap-1..4
    path = tmp_path / "rl.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run_data_stage(_cfg(rl_prompts=[path]), tmp_path / "out")
    dropped = {d["id"]: d for d in map(json.loads, (tmp_path / "out" / "dropped.jsonl").read_text().splitlines())}
    assert (dropped["rl-ood-1"]["stage"], dropped["rl-ood-1"]["rule"]) == ("filter", "coverage")
    kept = set(pd.read_parquet(tmp_path / "out" / "rl_prompts.parquet")["id"])
    assert {"rl-cap-1", "rl-cap-2", "rl-cap-3"} <= kept  # cap 3, counted among u9's in-support prompts
    assert dropped["rl-cap-4"]["rule"] == "user_cap"
