"""The data stage's curated output is itself valid input: it re-imports and passes every GX suite."""

from __future__ import annotations

from pathlib import Path

from data_checks.check import check_files
from data_checks.stage import run_data_stage
from rlhf_core.config.data import DataConfig

FIXTURES = Path(__file__).parent / "data" / "stage"


def test_curated_files_pass_the_data_check(tmp_path):
    cfg = DataConfig(
        demonstrations=[FIXTURES / "demonstrations.jsonl"],
        preferences=[FIXTURES / "preferences.jsonl"],
        rl_prompts=[FIXTURES / "rl_prompts.jsonl"],
    )
    run_data_stage(cfg, tmp_path)
    curated = [tmp_path / f"{name}.parquet" for name in ("demonstrations", "preferences", "rl_prompts", "eval_prompts")]
    result = check_files(curated, docs_dir=tmp_path / "docs")
    assert result.exit_code == 0, result.to_json()
