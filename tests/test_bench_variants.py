"""The settings-comparison scripts' own logic: variant parsing and the by-prompt validation split."""

from __future__ import annotations

import pandas as pd
import pytest

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
