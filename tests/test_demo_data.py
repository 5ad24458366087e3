"""The shipped demo data (data/demo) and its generator (rlhf_core/demo_data/)."""

from __future__ import annotations

import difflib
import json
import math
import random
from collections import Counter
from itertools import combinations
from pathlib import Path

import pytest

from rlhf_core.config.demo_data import DemoDataConfig
from rlhf_core.config.model import ModelConfig
from rlhf_core.demo_data.annotators import (
    Annotator,
    calibrate_tau,
    expected_agreement,
    label_pairs,
    pairwise_agreement,
    preference_probs,
)
from rlhf_core.demo_data.defects import DEFECT_COUNTS, FOREIGN_PROMPTS, OFF_SUPPORT_PROMPTS
from rlhf_core.demo_data.generate import make_demo_data
from rlhf_core.demo_data.pairs import build_pairs, ranked_pair_kinds
from rlhf_core.demo_data.prompts import TOPICS, build_prompts
from rlhf_core.demo_data.replies import Candidates, trim_to_last_sentence
from rlhf_core.errors import ConfigError
from rlhf_core.gold import gold_score, is_refusal

DEMO = Path(__file__).resolve().parent.parent / "data" / "demo"
FILES = ("demonstrations", "preferences", "rl_prompts")


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def demo() -> dict:
    if not (DEMO / "stats.json").is_file():
        pytest.fail(f"{DEMO}/stats.json is missing: run `python -m rlhf_core.demo_data --out data/demo`")
    data = {name: _read(DEMO / f"{name}.jsonl") for name in FILES}
    data["stats"] = json.loads((DEMO / "stats.json").read_text(encoding="utf-8"))
    return data


def _similarity(a: str, b: str) -> float:
    return difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()


def _naive_agreement(rows: list[list[int]]) -> float:
    per_item = []
    for labels in rows:
        pairs = list(combinations(labels, 2))
        same = sum(a == b for a, b in pairs)
        total = len(pairs)
        per_item.append(same / total)
    return sum(per_item) / len(per_item)


# ----------------------------------------------------------------------------- shipped files


def test_shipped_files_parse_and_match_stats(demo):
    stats = demo["stats"]
    for name in FILES:
        rows = demo[name]
        assert len(rows) == stats["sizes"][name]
        assert all(isinstance(r, dict) and isinstance(r.get("id"), str) for r in rows)
        assert len({r["id"] for r in rows}) == len(rows), f"{name}: ids are unique (duplicates get fresh ids)"
    total_bytes = sum((DEMO / f"{n}.jsonl").stat().st_size for n in FILES)
    assert total_bytes < 5 * 1024 * 1024
    assert (DEMO / "README.md").read_text().count(stats["regenerate"]) == 1


def test_sizes_are_in_the_planned_ranges(demo):
    assert 400 <= len(demo["demonstrations"]) <= 600
    # 2-3 constructed pairs per reply prompt + 2 ranked (sample vs sample) pairs per benign one
    assert 1200 <= len(demo["preferences"]) <= 2000
    assert 0.35 <= demo["stats"]["agreement"]["ranked_pairs"] / len(demo["preferences"]) <= 0.5
    assert 300 <= len(demo["rl_prompts"]) <= 500
    assert 80 <= sum(r.get("split") == "eval" for r in demo["rl_prompts"]) <= 150
    topics = {r.get("topic") for r in demo["preferences"]}
    assert set(TOPICS) | {"harmful"} <= topics


def test_annotator_agreement_is_like_instructgpt(demo):
    labels = [r["annotator_labels"] for r in demo["preferences"] if isinstance(r.get("annotator_labels"), list)]
    assert len(labels) >= 600
    assert all(len(row) == demo["stats"]["config"]["n_annotators"] for row in labels)
    agreement = _naive_agreement(labels)
    assert 0.68 <= agreement <= 0.78
    assert agreement == pytest.approx(demo["stats"]["agreement"]["measured_file"], abs=1e-4)
    # chosen is the majority: every label row has more 1s than 0s.
    assert all(sum(row) * 2 > len(row) for row in labels)


def test_chosen_beats_rejected_by_gold_on_unanimous_pairs(demo):
    planted = {i for ids in demo["stats"]["planted"]["preferences"].values() for i in ids}
    unanimous = [
        r for r in demo["preferences"]
        if r["id"] not in planted and isinstance(r.get("annotator_labels"), list) and all(r["annotator_labels"])
    ]
    assert len(unanimous) >= 100
    wins = sum(
        gold_score(r["prompt"], r["chosen"], harmful=r["harmful"])
        > gold_score(r["prompt"], r["rejected"], harmful=r["harmful"])
        for r in unanimous
    )
    assert wins / len(unanimous) >= 0.9


def test_harmful_prompts_are_flagged_and_demonstrated_by_refusals(demo):
    harmful_demos = [
        r for r in demo["demonstrations"] if r.get("harmful") is True and isinstance(r.get("response"), str)
    ]
    assert harmful_demos and all(is_refusal(r["response"]) for r in harmful_demos)
    assert any(r.get("harmful") is True for r in demo["rl_prompts"])
    harmful_pairs = [r for r in demo["preferences"] if r.get("harmful") is True and isinstance(r.get("chosen"), str)]
    assert sum(is_refusal(r["chosen"]) for r in harmful_pairs) / len(harmful_pairs) >= 0.6


def test_users_are_skewed_so_a_per_user_cap_acts(demo):
    counts = Counter(r.get("user_id") for r in demo["rl_prompts"])
    top, median = counts.most_common(1)[0][1], sorted(counts.values())[len(counts) // 2]
    assert top >= 5 * median and top >= 30


def _by_id(rows: list[dict]) -> dict[str, dict]:
    return {r["id"]: r for r in rows}


def _planted(demo: dict, name: str) -> dict[str, list[str]]:
    return demo["stats"]["planted"][name]


@pytest.mark.parametrize("name", FILES)
def test_planted_defect_counts(demo, name):
    planted = _planted(demo, name)
    assert {k: len(v) for k, v in planted.items()} == DEFECT_COUNTS[name]
    ids = {r["id"] for r in demo[name]}
    assert all(i in ids for v in planted.values() for i in v)


def _text(r: dict, name: str) -> str:
    if name == "demonstrations":
        return f"{r.get('prompt')}\n{r.get('response')}"
    if name == "preferences":
        return f"{r.get('prompt')}\n{r.get('chosen')}\n{r.get('rejected')}"
    return str(r.get("prompt"))


@pytest.mark.parametrize("name", FILES)
def test_planted_duplicates_really_duplicate_another_row(demo, name):
    rows = demo[name]
    planted = _planted(demo, name)
    texts = Counter(_text(r, name) for r in rows)
    by_id = _by_id(rows)
    for rid in planted["exact_duplicates"]:
        assert texts[_text(by_id[rid], name)] >= 2, rid
    for rid in planted["near_duplicates"]:
        row = by_id[rid]
        mine = _text(row, name)
        assert texts[mine] == 1, f"{rid} is a near, not exact, duplicate"
        # Replies are edited under the same prompt; RL prompts are the text itself.
        others = [_text(o, name) for o in rows if o is not row and (name == "rl_prompts" or o["prompt"] == row["prompt"])]
        assert max(_similarity(mine, o) for o in others) >= 0.9, rid


def test_planted_demonstration_and_preference_content_defects(demo):
    demos = _by_id(demo["demonstrations"])
    for rid in _planted(demo, "demonstrations")["refusal_benign"]:
        assert is_refusal(demos[rid]["response"]) and demos[rid]["harmful"] is False
    for rid in _planted(demo, "demonstrations")["malformed"]:
        r = demos[rid]
        assert not (isinstance(r.get("prompt"), str) and isinstance(r.get("response"), str))
    prefs = _by_id(demo["preferences"])
    for rid in _planted(demo, "preferences")["chosen_refusal_benign"]:
        assert is_refusal(prefs[rid]["chosen"]) and prefs[rid]["harmful"] is False
    for rid in _planted(demo, "preferences")["chosen_equals_rejected"]:
        assert prefs[rid]["chosen"] == prefs[rid]["rejected"]
    train_prompts = [r["prompt"] for r in demo["preferences"] if r.get("split") == "train" and isinstance(r.get("prompt"), str)]
    for rid in _planted(demo, "preferences")["eval_contamination"]:
        assert prefs[rid]["split"] == "eval"
        assert max(_similarity(prefs[rid]["prompt"], t) for t in train_prompts) >= 0.9
    for rid in _planted(demo, "preferences")["malformed"]:
        r = prefs[rid]
        well_formed = all(isinstance(r.get(k), str) for k in ("prompt", "chosen", "rejected")) and isinstance(
            r.get("annotator_labels"), list
        ) and isinstance(r.get("margin"), (int, float))
        assert not well_formed, rid


def test_planted_rl_prompt_defects(demo):
    rows = _by_id(demo["rl_prompts"])
    planted = _planted(demo, "rl_prompts")
    foreign = {text for _, text in FOREIGN_PROMPTS}
    assert {rows[i]["prompt"] for i in planted["foreign_language"]} <= foreign
    assert all(rows[i]["prompt"].strip() == "" for i in planted["empty"])
    assert all(len(rows[i]["prompt"].split()) > 500 for i in planted["overlong"])
    off_topics = {t for t, _ in OFF_SUPPORT_PROMPTS}
    assert all(rows[i]["topic"] in off_topics and rows[i]["topic"] not in TOPICS for i in planted["off_support"])
    assert all("{" in rows[i]["prompt"] or len(set(rows[i]["prompt"].lower().split())) <= 4
               or "http" in rows[i]["prompt"] or "INSERT" in rows[i]["prompt"] for i in planted["templated_spam"])
    train = [r["prompt"] for r in rows.values() if r.get("split") == "train" and isinstance(r.get("prompt"), str)]
    for rid in planted["eval_contamination"]:
        assert rows[rid]["split"] == "eval"
        assert max(_similarity(rows[rid]["prompt"], t) for t in train) >= 0.9
    for rid in planted["malformed"]:
        r = rows[rid]
        ok = isinstance(r.get("prompt"), str) and isinstance(r.get("harmful"), bool) and r.get("split") in ("train", "eval")
        assert not ok, rid
    # Clean rows (not planted) are well formed and in the preference topics.
    planted_ids = {i for v in planted.values() for i in v}
    clean = [r for r in rows.values() if r["id"] not in planted_ids]
    assert all(isinstance(r["prompt"], str) and r["prompt"].strip() for r in clean)
    assert {r["topic"] for r in clean} <= set(TOPICS) | {"harmful"}


def test_train_and_eval_subjects_do_not_overlap_in_clean_rl_prompts(demo):
    planted = {i for v in _planted(demo, "rl_prompts").values() for i in v}
    clean = [r for r in demo["rl_prompts"] if r["id"] not in planted]
    subjects = {s for slots in TOPICS.values() for s in slots}
    where: dict[str, set[str]] = {}
    for r in clean:
        for s in subjects:
            if s in r["prompt"]:
                where.setdefault(s, set()).add(r["split"])
    assert where and all(len(splits) == 1 for splits in where.values())


# ----------------------------------------------------------------------------- generator logic


def test_pairwise_agreement_matches_naive_count():
    rng = random.Random(0)
    rows = [[rng.randint(0, 1) for _ in range(5)] for _ in range(200)]
    assert pairwise_agreement(rows) == pytest.approx(_naive_agreement(rows), abs=1e-12)
    assert pairwise_agreement([[1, 1, 1], [0, 0, 0]]) == 1.0
    assert pairwise_agreement([[1, 0]]) == 0.0


def test_calibrated_panel_hits_the_target_agreement():
    rng = random.Random(1)
    items = [(rng.uniform(-1, 1), rng.randint(-30, 30)) for _ in range(300)]
    panel = [Annotator(1.0, 0.0, 0.0), Annotator(1.3, 0.1, -0.05), Annotator(0.8, -0.1, 0.05)]
    for target in (0.65, 0.73, 0.85):
        tau = calibrate_tau(items, panel, target)
        assert expected_agreement(items, panel, tau) == pytest.approx(target, abs=1e-6)
    # Closed form vs simulation: sample labels with the calibrated tau and measure.
    tau = calibrate_tau(items, panel, 0.73)
    labels = []
    for _ in range(20):
        for gap, dwords in items:
            labels.append([int(rng.random() < p) for p in preference_probs(gap, dwords, panel, tau)])
    assert pairwise_agreement(labels) == pytest.approx(0.73, abs=0.015)


def test_trim_to_last_sentence():
    assert trim_to_last_sentence("Boil water. Add the egg. Wait nine minutes and then") == (
        "Boil water. Add the egg. Wait nine minutes and then"  # too short after trimming: kept
    )
    long = "Put the egg in a pot of cold water and bring it to a boil. Then simmer for nine minutes and"
    assert trim_to_last_sentence(long) == "Put the egg in a pot of cold water and bring it to a boil."
    listy = "Here is a plan that is easy to follow for anyone:\n\n1. Save money each month.\n\n2."
    assert trim_to_last_sentence(listy).endswith("Save money each month.")


def test_ranked_pairs_compare_two_different_samples_once_each():
    replies = {"sample_a": "A reply that is cut", "sample_b": "Another", "sample_c": "Third reply. And cut",
               "trimmed_a": "A reply.", "trimmed_c": "Third reply.", "loop": "x x x", "refusal": "no"}
    groups = ranked_pair_kinds(replies)
    letters = [frozenset(k.split("_")[1] for k in options[0]) for options in groups]
    assert sorted(map(sorted, letters)) == [["a", "b"], ["a", "c"], ["b", "c"]]  # never a sample vs its own trim
    by_letters = dict(zip(letters, groups, strict=True))
    assert sorted(by_letters[frozenset("ac")]) == sorted(
        [("sample_a", "sample_c"), ("sample_a", "trimmed_c"), ("trimmed_a", "sample_c"), ("trimmed_a", "trimmed_c")])
    # a pair of samples the prompt's other pairs already compare is not compared again (its twin
    # up to a trailing fragment would be dropped as a near-duplicate by the data stage)
    assert len(ranked_pair_kinds(replies, {frozenset("ab")})) == 2
    same = {"sample_a": "Same.", "sample_c": "Same."}
    assert ranked_pair_kinds(same) == []


def test_build_pairs_adds_ranked_pairs_for_benign_prompts_only():
    cfg = DemoDataConfig(ranked_pairs_per_prompt=2)
    pool, _ = build_prompts(cfg, random.Random(0))
    benign = next(p for p in pool if not p.harmful)
    harmful = next(p for p in pool if p.harmful)
    replies = {"sample_a": "One reply here", "sample_b": "Two", "sample_c": "Three", "sample_d": "Four",
               "trimmed_a": "One reply.", "loop": "l l l", "refusal": "I can't help with that.",
               "refusal_2": "No.", "off_topic": "Other"}
    cands = [Candidates(benign, dict(replies)), Candidates(harmful, dict(replies))]
    pairs = build_pairs(cands, cfg, random.Random(1))
    ranked = [p for p in pairs if p.get("ranked")]
    assert len(ranked) == 2 and all(p["prompt"] is benign for p in ranked)
    compared = [frozenset(k.partition("_")[2] for k in p["kind"].split("|")) for p in pairs if p["prompt"] is benign]
    sample_pairs = [c for c in compared if c <= set("abcd") and len(c) == 2]
    assert len(sample_pairs) == len(set(sample_pairs))  # no two pairs compare the same two samples
    assert len(build_pairs(cands, cfg.model_copy(update={"ranked_pairs_per_prompt": 0}), random.Random(1))) == (
        len(pairs) - 2)


def test_prompts_are_unique_and_split_by_subject():
    cfg = DemoDataConfig()
    pool, rl = build_prompts(cfg, random.Random(0))
    texts = [p.prompt for p in pool + rl]
    assert len(texts) == len(set(texts))
    assert len(pool) == cfg.n_prompts_per_topic * len(TOPICS) + cfg.n_harmful_prompts
    split_of: dict[str, set[str]] = {}
    for p in pool + rl:
        split_of.setdefault(p.slot, set()).add(p.split)
    assert all(len(s) == 1 for s in split_of.values())


def test_bad_generator_configs_are_clear_errors():
    with pytest.raises(ConfigError, match="topic '.*' has 84 distinct prompts"):
        build_prompts(DemoDataConfig(n_prompts_per_topic=60, n_rl_prompts_per_topic=40), random.Random(0))
    with pytest.raises(ConfigError, match="n_annotators must be odd"):
        label_pairs([], DemoDataConfig(n_annotators=4), random.Random(0))
    # out-of-range settings are one-line errors naming the field, before any model is loaded
    with pytest.raises(ConfigError, match=r"demo data: ranked_samples: .*greater than or equal to 0 \(got -1\)"):
        make_demo_data(Path("/nonexistent/never-written"), ranked_samples=-1)


def _tiny_run(out: Path, model_cache: Path, seed: int = 3) -> dict:
    return make_demo_data(
        out, seed=seed, n_prompts_per_topic=1, n_rl_prompts_per_topic=1, n_harmful_prompts=2,
        n_rl_harmful_prompts=1, max_new_tokens=6, batch_size=16, threads=1, defect_scale=0.5,
        model=ModelConfig(base="tiny"), cache_dir=model_cache, log=lambda _msg: None,
    )


def test_generator_end_to_end_on_the_tiny_model(tmp_path, model_cache):
    stats = _tiny_run(tmp_path / "a", model_cache)
    for name in FILES:
        rows = _read(tmp_path / "a" / f"{name}.jsonl")
        assert len(rows) == stats["sizes"][name] > 0
        planted = stats["planted"][name]
        for kind, n in DEFECT_COUNTS[name].items():
            # defect_scale=0.5 halves every count, capped by what the tiny set offers.
            assert len(planted.get(kind, [])) <= math.ceil(n * 0.5) + 1
        assert sum(len(v) for v in planted.values()) > 0
    prefs = _read(tmp_path / "a" / "preferences.jsonl")
    labels = [r["annotator_labels"] for r in prefs if isinstance(r.get("annotator_labels"), list)]
    assert labels and all(len(x) == 5 for x in labels)
    assert stats["agreement"]["expected_agreement"] == pytest.approx(0.73, abs=0.01)
    assert (tmp_path / "a" / "README.md").read_text().startswith("# Demo data")
    # Deterministic by seed: a second run writes the same bytes.
    _tiny_run(tmp_path / "b", model_cache)
    for name in FILES:
        assert (tmp_path / "a" / f"{name}.jsonl").read_bytes() == (tmp_path / "b" / f"{name}.jsonl").read_bytes()


def _fail_if_sampling(msg: str) -> None:
    # Fail fast instead of sampling from the real model for minutes.
    assert "loading model" not in msg, "data/demo/samples.json no longer matches the prompts/settings"


def test_shipped_files_rebuild_byte_for_byte_from_the_shipped_samples(demo, tmp_path):
    """The raw model replies are shipped (samples.json); everything downstream of sampling
    (bad replies, gold scores, the panel, defects) must reproduce the shipped files exactly.
    If this fails after changing rlhf_core/demo_data/ or rlhf_core/gold.py, regenerate with
    the command in data/demo/README.md and commit the new files."""
    cfg = demo["stats"]["config"]
    samples = tmp_path / "samples.json"
    samples.write_bytes((DEMO / "samples.json").read_bytes())
    stats = make_demo_data(
        tmp_path / "out", seed=cfg["seed"], n_prompts_per_topic=cfg["n_prompts_per_topic"],
        n_rl_prompts_per_topic=cfg["n_rl_prompts_per_topic"], threads=cfg["threads"],
        samples_path=samples, log=_fail_if_sampling,
    )
    assert samples.read_bytes() == (DEMO / "samples.json").read_bytes()
    for name in FILES:
        assert (tmp_path / "out" / f"{name}.jsonl").read_bytes() == (DEMO / f"{name}.jsonl").read_bytes(), name
    assert stats["planted"] == demo["stats"]["planted"]


def test_make_demo_cli_rebuilds_the_shipped_files_from_the_shipped_samples(tmp_path):
    """`rlhf data make-demo` has the generator's defaults (ranked samples included) and reuses --samples."""
    import subprocess
    import sys

    samples = tmp_path / "samples.json"
    samples.write_bytes((DEMO / "samples.json").read_bytes())
    out = subprocess.run(
        [sys.executable, "-m", "flows.cli", "data", "make-demo", "--out", str(tmp_path / "out"), "--threads", "1",
         "--samples", str(samples), "--cache-dir", str(tmp_path / "no-models")],
        capture_output=True, text=True, cwd=DEMO.parent.parent, timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "loading model" not in out.stdout  # nothing sampled: every reply came from samples.json
    for name in FILES:
        assert (tmp_path / "out" / f"{name}.jsonl").read_bytes() == (DEMO / f"{name}.jsonl").read_bytes(), name
    bad = subprocess.run([sys.executable, "-m", "flows.cli", "data", "make-demo", "--ranked-samples", "9"],
                         capture_output=True, text=True, cwd=DEMO.parent.parent, timeout=120)
    assert bad.returncode == 2 and "ranked-samples" in bad.stderr and "Traceback" not in bad.stderr
