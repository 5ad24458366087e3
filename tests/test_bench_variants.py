"""The bench scripts' own logic: variant parsing, the by-prompt validation split, the overhead breakdown."""

from __future__ import annotations

import pandas as pd
import pytest

from bench.orchestration_overhead import breakdown
from bench.ppo_variants import parse_variant
from bench.rm_variants import split_by_prompt


def test_parse_variant():
    assert parse_variant("base") == ("base", [])
    assert parse_variant("fast:a.b=1,c=x") == ("fast", ["a.b=1", "c=x"])
    with pytest.raises(SystemExit, match="overrides must be key=value"):
        parse_variant("bad:a.b")
    with pytest.raises(SystemExit, match="needs a plain NAME"):
        parse_variant(":a=1")


def test_split_by_prompt_keeps_each_prompt_on_one_side():
    frame = pd.DataFrame({"prompt": [f"p{i // 3}" for i in range(60)], "chosen": range(60)})  # 20 prompts x 3 pairs
    fit, val = split_by_prompt(frame, 0.25, seed=0)
    assert len(fit) + len(val) == 60
    assert set(fit["prompt"]).isdisjoint(val["prompt"])
    assert val["prompt"].nunique() == 5
    again_fit, again_val = split_by_prompt(frame, 0.25, seed=0)
    assert list(again_val["chosen"]) == list(val["chosen"])  # seeded
    _, other_val = split_by_prompt(frame, 0.25, seed=1)
    assert set(other_val["prompt"]) != set(val["prompt"])


def test_overhead_breakdown_splits_engine_from_in_body_tracking():
    runs = {
        "bare": [{"stages_s": 31.0, "stage_bodies_s": {"sft": 10.0, "ppo": 20.0}},
                 {"stages_s": 35.0, "stage_bodies_s": {"sft": 12.0, "ppo": 22.0}}],
        "orchestrated": [{"stages_s": 40.0, "stage_bodies_s": {"sft": 11.0, "ppo": 24.0, "eval": 1.0}},
                         {"stages_s": 44.0, "stage_bodies_s": {"sft": 13.0, "ppo": 26.0, "eval": 1.0}}],
    }
    out = breakdown(runs)
    # medians over the repeats, per stage; a stage one side did not run counts 0 there
    assert out["stage_bodies_s"]["sft"] == {"bare": 11.0, "orchestrated": 12.0, "overhead_s": 1.0}
    assert out["stage_bodies_s"]["ppo"] == {"bare": 21.0, "orchestrated": 25.0, "overhead_s": 4.0}
    assert out["stage_bodies_s"]["eval"] == {"bare": 0.0, "orchestrated": 1.0, "overhead_s": 1.0}
    # outside the bodies: 1 s bare (both repeats), 4 s orchestrated -> 3 s of engine
    assert out["outside_bodies_s"] == {"bare": 1.0, "orchestrated": 4.0}
    assert out["engine_overhead_s"] == 3.0
    assert out["in_body_tracking_overhead_s"] == 6.0
    assert "accounted" not in out  # runs from before the tracking calls were timed


def test_overhead_accounted_directly_from_engine_tracking_calls_and_server_cpu(monkeypatch):
    monkeypatch.setattr("bench.orchestration_overhead.os.cpu_count", lambda: 2)
    runs = {
        "bare": [{"stages_s": 31.0, "stage_bodies_s": {"sft": 10.0, "ppo": 20.0}}],
        "orchestrated": [
            {"stages_s": 40.0, "stage_bodies_s": {"sft": 11.0, "ppo": 25.0}, "server_cpu_s": 2.0,
             "tracking_calls_s": {"sft": 0.5, "ppo": 1.5}},
            {"stages_s": 50.0, "stage_bodies_s": {"sft": 11.0, "ppo": 35.0}, "server_cpu_s": 4.0,
             "tracking_calls_s": {"sft": 1.5, "ppo": 2.5}},
        ],
    }
    out = breakdown(runs)
    assert out["engine_overhead_s"] == 3.0  # outside the bodies: 4 s orchestrated (both), 1 s bare
    assert out["tracking_calls_s"] == {"ppo": 2.0, "sft": 1.0}
    # engine 3 + calls (median of 2 and 4) 3 + server (median 3 CPU-s) over 2 cores 1.5 = 7.5 s of the median 45 s
    assert out["accounted"] == {"engine_s": 3.0, "tracking_calls_s": 3.0, "server_cpu_s": 3.0,
                                "server_share_of_cores_s": 1.5, "overhead_s": 7.5, "overhead_share": round(7.5 / 45, 4)}


def test_fixed_prompts_keeps_the_first_benign_ones(tmp_path):
    from bench.ppo_variants import fixed_prompts

    src = tmp_path / "rl.parquet"
    pd.DataFrame({"id": list("abcde"), "prompt": list("ABCDE"), "harmful": [False, True, None, False, False]}).to_parquet(src)
    out = pd.read_parquet(fixed_prompts(src, 3, tmp_path / "run"))
    assert list(out["id"]) == ["a", "c", "d"]  # b is harmful; a missing flag counts benign
    with pytest.raises(SystemExit, match="only 4 benign prompts"):
        fixed_prompts(src, 5, tmp_path / "run")
    with pytest.raises(SystemExit, match="at least 1"):
        fixed_prompts(src, 0, tmp_path / "run")
