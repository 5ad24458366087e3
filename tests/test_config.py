"""Configs: presets validate, overrides apply, and every bad input gives one clear line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rlhf_core.config.pipeline import PipelineConfig, dump_config, load_config
from rlhf_core.config.presets import CONFIG_DIR, preset_names
from rlhf_core.errors import ConfigError

from .conftest import REPO

PRESETS = preset_names()


def test_the_three_presets_exist():
    assert {"smoke", "demo", "hh-rlhf"} <= set(PRESETS)


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_validates(preset):
    cfg = load_config(preset)
    assert isinstance(cfg, PipelineConfig)
    # the dump is itself a valid config that round-trips
    again = PipelineConfig.model_validate(__import__("yaml").safe_load(dump_config(cfg)))
    assert again == cfg


def test_smoke_uses_tiny_model_and_demo_uses_real_one():
    assert load_config("smoke").model.base == "tiny"
    assert load_config("demo").model.base == "smollm2-135m-instruct"


def test_overrides_apply_and_parse_yaml_scalars():
    cfg = load_config("smoke", ["sft.optim.max_steps=7", "seed=3", "model.trust_remote_code=true"])
    assert cfg.sft.optim.max_steps == 7 and cfg.seed == 3 and cfg.model.trust_remote_code is True


def test_partial_override_keeps_the_stage_defaults():
    base = load_config("demo")
    cfg = load_config("demo", ["sft.optim.max_steps=3"])
    assert cfg.sft.optim.max_steps == 3
    assert cfg.sft.optim.learning_rate == base.sft.optim.learning_rate


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["sft.optim.max_stepz=3"], "sft.optim.max_stepz: unknown key"),
        (["sft.optim.max_steps=abc"], "sft.optim.max_steps: Input should be a valid integer"),
        (["sft.optim.max_steps=0"], "sft.optim.max_steps: Input should be greater than or equal to 1"),
        (["model.dtype=float8"], "model.dtype: Input should be"),
        (["nonsense"], "expected KEY=VALUE"),
        (["seed.x=1"], "'seed' is not a section"),
        (["ppo.value_model=shared", "ppo.value_init=reward"], "ppo: Value error, value_model='shared'"),
    ],
)
def test_bad_overrides_name_the_key(overrides, expected):
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        load_config("smoke", overrides)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("a: [\n", "line 2, column 1: malformed YAML"),
        ("- 1\n- 2\n", "top level must be a mapping"),
        ("modle:\n  base: tiny\n", "modle: unknown key"),
        ("seed: [1, 2]\n", "seed: Input should be a valid integer"),
    ],
)
def test_bad_files_name_file_and_problem(tmp_path, content, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value) and expected in str(err.value)


def test_missing_file_directory_and_non_utf8(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    d = tmp_path / "dir.yaml"
    d.mkdir()
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(d)
    b = tmp_path / "latin.yaml"
    b.write_bytes(b"name: caf\xe9\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(b)
    with pytest.raises(ConfigError, match="neither a file nor a preset"):
        load_config("no-such-preset")


def test_empty_file_means_all_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_config(path) == PipelineConfig()


def _rlhf(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True, cwd=REPO, timeout=120
    )


def test_cli_reports_config_errors_as_one_line_and_exit_2(tmp_path):
    out = _rlhf("config", "validate", "--config", "smoke", "--set", "sft.optim.lr=1")
    assert out.returncode == 2
    assert out.stderr.strip().startswith("error:") and "sft.optim.lr: unknown key" in out.stderr
    assert "Traceback" not in out.stderr
    out = _rlhf("config", "validate", "--config", str(tmp_path / "missing.yaml"))
    assert out.returncode == 2 and "config file not found" in out.stderr and "Traceback" not in out.stderr


def test_cli_config_show_prints_resolved_yaml():
    out = _rlhf("config", "show", "--config", "smoke", "--set", "seed=11")
    assert out.returncode == 0, out.stderr
    assert "seed: 11" in out.stdout and "base: tiny" in out.stdout


# --------------------------------------------------------------------------- renamed keys

RENAMED = [("sft", "batch_size", "micro_batch_size"), ("reward", "batch_size", "micro_batch_size"),
           ("ppo", "batch_size", "micro_batch_size"), ("dpo", "batch_size", "micro_batch_size")]


@pytest.mark.parametrize(("stage", "old", "new"), RENAMED)
def test_an_old_key_in_a_file_fails_with_one_line_naming_the_new_key(tmp_path, stage, old, new):
    tree = yaml.safe_load((CONFIG_DIR / "smoke.yaml").read_text())  # the smoke preset as written before the rename
    tree[stage]["optim"][old] = tree[stage]["optim"].pop(new)
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump(tree))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == f"{path}: {stage}.optim.{old} was renamed to {stage}.optim.{new}"


@pytest.mark.parametrize(("stage", "old", "new"), RENAMED)
def test_an_old_key_in_a_set_override_fails_with_one_line_naming_the_new_key(stage, old, new):
    with pytest.raises(ConfigError) as err:
        load_config("smoke", [f"{stage}.optim.{old}=2"])
    message = str(err.value)
    assert message.count("\n") == 0, message
    assert message.endswith(f"(with --set overrides): {stage}.optim.{old} was renamed to {stage}.optim.{new}")


def test_the_cli_names_the_new_key_of_an_old_override():
    out = _rlhf("config", "validate", "--config", "smoke", "--set", "ppo.optim.batch_size=4")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[0].endswith(
        "ppo.optim.batch_size was renamed to ppo.optim.micro_batch_size"
    ), out.stderr
    assert "Traceback" not in out.stderr


def test_every_renamed_key_points_at_a_key_that_exists_and_is_gone_itself():
    from rlhf_core.config.pipeline import RENAMED_KEYS

    flat = _flat(PipelineConfig().model_dump())
    assert RENAMED_KEYS and all(new in flat and old not in flat for old, new in RENAMED_KEYS.items())


def _flat(tree: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in tree.items():
        keys.add(prefix + key)
        if isinstance(value, dict):
            keys |= _flat(value, f"{prefix}{key}.")
    return keys
