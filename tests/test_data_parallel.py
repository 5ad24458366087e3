"""`data.num_proc`: the data stage's heaviest per-row step (language detection) in worker
processes (`datasets.Dataset.map(num_proc=...)`) must not change a single output."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest

from data_checks.prompt_filter import detect_languages
from data_checks.stage import INPUTS, run_data_stage
from rlhf_core.config.data import DataConfig, PromptFilterConfig
from rlhf_core.config.pipeline import load_config

REPO = Path(__file__).resolve().parent.parent
OUTPUTS = ("demonstrations", "preferences", "rl_prompts", "eval_prompts")


def _demo_data_config(**update) -> DataConfig:
    cfg = load_config("demo").data
    # The preset names files relative to the repo root; pytest may run from elsewhere.
    paths = {name: [p if p.is_absolute() else REPO / p for p in getattr(cfg, name)] for name in INPUTS}
    return cfg.model_copy(update={**paths, **update})


def test_num_proc_is_validated_and_defaults_to_one():
    assert DataConfig().num_proc == 1
    with pytest.raises(ValueError, match="num_proc"):
        DataConfig(num_proc=0)


def test_detect_languages_gives_the_same_list_in_worker_processes():
    texts = [
        "How do I boil an egg so the yolk stays soft?",
        "Wie koche ich ein Ei, damit das Eigelb weich bleibt?",
        "Comment faire cuire un oeuf pour que le jaune reste mou ?",
        "¿Cómo hiervo un huevo para que la yema quede blanda?",
        "12345 !!!",  # nothing to detect: every language scores 0
        None,  # not text
        "Give me three tips for keeping basil alive on a windowsill.",
    ] * 3
    candidates = PromptFilterConfig().language_candidates
    serial = detect_languages(texts, candidates)
    assert detect_languages(texts, candidates) == serial  # reproducible call to call (see _detect)
    environ, before = os.environ, dict(os.environ)
    assert detect_languages(texts, candidates, num_proc=2) == serial
    # datasets' map(num_proc=...) swaps os.environ for a copy; the one object other modules hold is put back
    assert os.environ is environ and dict(os.environ) == before
    assert [code for code, _ in serial[:6]] == ["en", "de", "fr", "es", "", ""]


@pytest.fixture(scope="module")
def curated_twice(tmp_path_factory):
    runs = {}
    for num_proc in (1, 2):
        out = tmp_path_factory.mktemp(f"demo-np{num_proc}")
        report = run_data_stage(_demo_data_config(num_proc=num_proc), out, tokenizer=None)
        runs[num_proc] = (out, report)
    return runs


def test_num_proc_2_curates_the_demo_data_exactly_like_num_proc_1(curated_twice):
    (out1, report1), (out2, _) = curated_twice[1], curated_twice[2]
    # the language filter has work to do on the demo data, so the comparison means something
    assert any(key == "filter:language" for f in report1.files for key in f.dropped)
    for name in OUTPUTS:
        one, two = pd.read_parquet(out1 / f"{name}.parquet"), pd.read_parquet(out2 / f"{name}.parquet")
        assert len(one) > 0
        pd.testing.assert_frame_equal(one, two, check_exact=True)
    for name in ("dropped.jsonl", "quarantine.jsonl"):
        assert (out1 / name).read_bytes() == (out2 / name).read_bytes(), name

    def comparable(out: Path) -> dict:
        report = json.loads((out / "report.json").read_text())
        for key in ("outputs", "timings", "seconds", "rows_per_second"):  # paths and clocks differ
            report.pop(key)
        return report

    assert comparable(out1) == comparable(out2)
