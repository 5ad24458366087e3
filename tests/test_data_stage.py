"""The whole data stage on seeded fixtures: every defect is caught, and the report adds up."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from data_checks.config import DataConfig
from data_checks.schemas import CANONICAL_COLUMNS
from data_checks.stage import run_data_stage
from rlhf_core.errors import DataError

DATA = Path(__file__).parent / "data"
STAGE = DATA / "stage"


def _cfg(**overrides) -> DataConfig:
    base = dict(
        demonstrations=[STAGE / "demonstrations.jsonl", DATA / "demos_messages.jsonl"],
        preferences=[STAGE / "preferences.jsonl", DATA / "rankings.jsonl"],
        rl_prompts=[STAGE / "rl_prompts.jsonl"],
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
