"""The pipeline config: every stage's config composed into one, loaded from YAML.

``load_config(path, ["sft.optim.max_steps=10", ...])`` reads a preset, applies
``--set`` overrides (values parsed as YAML scalars), and validates the result.
Every problem becomes one :class:`ConfigError` line naming the file and the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from data_checks.config import DataConfig
from rlhf_core.config import ModelConfig, StrictModel
from rlhf_core.distributed import DistributedConfig
from rlhf_core.errors import ConfigError
from rlhf_core.ppo.config import PPOConfig
from rlhf_core.reward.config import RewardConfig
from rlhf_core.sft.config import SFTConfig
from rlhf_core.dpo.config import DPOConfig
from rlhf_core.evaluation import EvalConfig
from rlhf_core.redact import find_credentials_in, redact, redact_text
from tasks.config import RegistryConfig, TrackingConfig

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_PRESET = "demo"


class PipelineConfig(StrictModel):
    """The whole pipeline: data -> SFT -> reward model -> PPO -> evaluation."""

    name: str = Field("rlhf-pipeline", min_length=1, description="Pipeline name (MLflow experiment, run names).")
    seed: int = Field(0, description="Global seed; every stage derives its own from it.")
    workspace: Path = Field(Path(".rlhf"), description="Where models, runs and the MLflow store live.")
    torch_threads: int | None = Field(
        None, ge=1, description="CPU threads for torch (None = torch's default). 1 is fastest for tiny models."
    )
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    sft: SFTConfig = Field(default_factory=SFTConfig)
    reward: RewardConfig = Field(default_factory=RewardConfig)
    ppo: PPOConfig = Field(default_factory=PPOConfig)
    dpo: DPOConfig = Field(default_factory=DPOConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)

    @property
    def model_cache(self) -> Path:
        return self.model.cache_dir or self.workspace / "models"

    @model_validator(mode="after")
    def _no_secrets(self) -> PipelineConfig:
        """A config is logged, dumped and sent to Prefect as parameters: no value may carry a credential."""
        found = find_credentials_in(self.model_dump(mode="json"))
        if found:
            key, reason = found[0]
            raise PydanticCustomError(
                "secret_in_config",
                "{key}: the value {reason}; secrets come from the environment (HF_TOKEN for the hub, "
                "MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD for MLflow), never from a config",
                {"key": key, "reason": reason},
            )
        return self


def resolve_preset(path_or_name: str | Path | None) -> Path:
    """A path, or the name of a preset under configs/ ('smoke', 'demo', 'hh-rlhf')."""
    if path_or_name is None:
        path_or_name = DEFAULT_PRESET
    candidate = Path(path_or_name)
    if candidate.suffix not in (".yaml", ".yml") and not candidate.exists():
        preset = CONFIG_DIR / f"{path_or_name}.yaml"
        if preset.is_file():
            return preset
        known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
        raise ConfigError(f"config '{path_or_name}' is neither a file nor a preset (presets: {known})")
    return candidate


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ConfigError(f"{path}: config file not found")
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory, expected a YAML config file")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}:{where}: malformed YAML: {problem}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of keys, got {type(raw).__name__}")
    return raw


def apply_override(tree: dict[str, Any], assignment: str) -> None:
    """Apply one ``dotted.key=value`` override in place (value parsed as YAML)."""
    key, sep, value = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set '{assignment}': expected KEY=VALUE, e.g. sft.optim.max_steps=10")
    parts = key.strip().split(".")
    node = tree
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set '{assignment}': '{'.'.join(parts[: i + 1])}' is not a section")
        node = child
    try:
        node[parts[-1]] = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set '{assignment}': value is not valid YAML: {exc}") from exc


def format_validation_error(exc: ValidationError, source: str) -> str:
    """One line per problem: '<source>: <dotted.key>: <message> (got <value>)'."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see `rlhf config show`)"
        else:
            msg = err["msg"]
        # A section-level rule (e.g. two fields that don't fit together) would echo the whole section.
        quiet = err["type"] in ("extra_forbidden", "missing") or isinstance(err.get("input"), dict)
        got = "" if quiet else f" (got {redact_text(repr(err.get('input')))})"
        if err["type"] == "secret_in_config":  # a whole-config rule whose message names the key itself
            lines.append(f"{source}: {msg}")
            continue
        lines.append(f"{source}: {loc}: {msg}{got}")
    return "\n".join(lines)


def load_config(path_or_name: str | Path | None = None, overrides: list[str] | None = None) -> PipelineConfig:
    """Read a preset or YAML file, apply overrides, validate; raise ConfigError on any problem."""
    path = resolve_preset(path_or_name)
    tree = _read_yaml(path)
    for assignment in overrides or []:
        apply_override(tree, assignment)
    try:
        return PipelineConfig.model_validate(tree)
    except ValidationError as exc:
        source = f"{path} (with --set overrides)" if overrides else str(path)
        raise ConfigError(format_validation_error(exc, source)) from exc


def dump_config(cfg: PipelineConfig) -> str:
    """The fully resolved config as YAML (what a run records next to its outputs), secrets masked."""
    return yaml.safe_dump(redact(cfg.model_dump(mode="json")), sort_keys=False)


# --- Checks that need more than the schema: files, the model, the run being resumed --------
# All of them read only the config and the file system (no model is loaded, nothing imported
# that is heavy), so `rlhf config validate`, `rlhf run` and `rlhf eval` run them before any
# server starts, and a run never fails 30 s in for something the config already said.

# Where Hugging Face configs keep the context length (GPT-2 style: n_positions).
_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")
# Keys that may differ between a run and its resume: they move files, not results.
RESUME_IGNORED_KEYS = ("workspace", "model.cache_dir")


def preflight_config(cfg: PipelineConfig, *, data: bool = True) -> None:
    """Raise one ConfigError, a line per problem, for what the config names but cannot work.

    Data files that are missing, directories that are no dataset, empty files, an empty input
    list a stage needs; a model that is not where the config says (or is a corrupt GGUF, or
    pickled weights only); a sequence length past the model's context; a distributed setup this
    machine cannot run. ``data=False`` skips the data files (`rlhf eval` reads a run's curated data).
    """
    problems = (_data_problems(cfg) if data else []) + _model_problems(cfg)
    if problems:
        raise ConfigError("\n".join(problems))
    from rlhf_core.distributed import check_distributed

    check_distributed(cfg.distributed)  # imports torch only when distributed is on


def _data_problems(cfg: PipelineConfig) -> list[str]:
    import os

    needed = {
        "demonstrations": ("sft", cfg.sft.enabled),
        "preferences": ("reward and dpo", cfg.reward.enabled or cfg.dpo.enabled),
        "rl_prompts": ("ppo and eval", (cfg.ppo.enabled and cfg.reward.enabled) or cfg.eval.enabled),
    }
    problems = []
    for name, (stages, wanted) in needed.items():
        paths = getattr(cfg.data, name)
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
        return problems + _length_problems(cfg, model.tiny.max_position_embeddings, "model.tiny.max_position_embeddings")
    try:
        source = resolve_source(model.base, model.gguf_file)
        context, where = _model_context(source, cfg)
    except ModelLoadError as exc:
        key = "model.gguf_file" if model.gguf_file and "gguf_file" in str(exc) else "model.base"
        return [f"{key}: {exc}"]
    return _length_problems(cfg, context, where) if context else []


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
