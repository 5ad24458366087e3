"""The data stage's curated output is itself valid input: it re-imports and passes every GX suite
(but the refusal rule on the refusals of unlabelled prompts it kept and flagged)."""

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
    report = run_data_stage(cfg, tmp_path)
    curated = [tmp_path / f"{name}.parquet" for name in ("demonstrations", "preferences", "rl_prompts", "eval_prompts")]
    result = check_files(curated, docs_dir=tmp_path / "docs")
    # Refusals of unlabelled prompts are kept (flagged) by the stage; the check still asks for a
    # decision on exactly those rows (the refusal rule), and on nothing else.
    flagged = {name: len(report.refusals[name]["unlabelled_ids"]) for name in ("demonstrations", "preferences")}
    assert all(flagged.values()), flagged
    for f, name in zip(result.files, ("demonstrations", "preferences", "rl_prompts", "eval_prompts")):
        failed = {(x["column"], x["unexpected_count"]) for x in f.failures}
        reply = {"demonstrations": "response", "preferences": "chosen"}.get(name)
        assert failed == ({(f"{reply}_if_benign", flagged[name])} if reply else set()), (name, f.failures)
    # Declared harmful (what the flag means for the rows without a label), every file passes.
    assert check_files(curated, harmful=True).exit_code == 0
