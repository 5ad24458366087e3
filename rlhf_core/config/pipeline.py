"""The pipeline config: every stage's config composed into one, loaded from YAML.

``load_config(path, ["sft.optim.max_steps=10", ...])`` reads a preset, applies
``--set`` overrides (values parsed as YAML scalars), and validates the result.
Every problem becomes one :class:`ConfigError` line naming the file and the key (a key
renamed since, :data:`RENAMED_KEYS`, names its new spelling). The checks that need more than
the schema (files, the model, the run being resumed) are in ``flows/preflight.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from rlhf_core.config.base import StrictModel
from rlhf_core.config.presets import CONFIG_DIR, DEFAULT_PRESET, preset_names
from rlhf_core.config.data import DataConfig
from rlhf_core.config.distributed import DistributedConfig
from rlhf_core.config.dpo import DPOConfig
from rlhf_core.config.eval import EvalConfig
from rlhf_core.config.iterate import IterateConfig
from rlhf_core.config.model import ModelConfig
from rlhf_core.config.ppo import PPOConfig
from rlhf_core.config.reward import RewardConfig
from rlhf_core.config.sft import SFTConfig
from rlhf_core.config.tracking import RegistryConfig, TrackingConfig
from rlhf_core.errors import ConfigError
from rlhf_core.redact import find_credentials_in, redact, redact_text


# Keys a config may still carry from before they were renamed: old dotted key -> new one. Such a
# key fails validation like any unknown key, with a message naming the new one.
RENAMED_KEYS: dict[str, str] = {
    f"{stage}.optim.batch_size": f"{stage}.optim.micro_batch_size" for stage in ("sft", "reward", "ppo", "dpo")
}


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
    iterate: IterateConfig = Field(default_factory=IterateConfig)

    @property
    def model_cache(self) -> Path:
        return self.model.cache_dir or self.workspace / "models"

    @property
    def eval_engine(self) -> str:
        """The engine that samples the evaluation: ``eval.engine``, else the PPO stage's (``ppo.rollout.engine``)."""
        return self.eval.engine or self.ppo.rollout.engine

    def vllm_used_by(self) -> list[str]:
        """The enabled stages that sample with the vLLM engine (``ppo``, ``eval``)."""
        return [stage for stage, used in (("ppo", self.ppo.enabled and self.ppo.rollout.engine == "vllm"),
                                          ("eval", self.eval.enabled and self.eval_engine == "vllm")) if used]

    @model_validator(mode="after")
    def _eval_engine_fits(self) -> PipelineConfig:
        if self.eval.enabled and self.eval_engine == "vllm" and (self.eval.top_k or self.eval.top_p < 1.0):
            source = "eval.engine" if self.eval.engine else "ppo.rollout.engine (eval.engine unset)"
            raise PydanticCustomError(
                "eval_engine_filters",
                "{source} is 'vllm', which samples without top_k/top_p filters: set eval.top_k=0 and eval.top_p=1.0, "
                "or eval.engine=hf",
                {"source": source},
            )
        return self

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
    """A path, or the name of a preset under configs/ (:func:`preset_names`)."""
    if path_or_name is None:
        path_or_name = DEFAULT_PRESET
    candidate = Path(path_or_name)
    if candidate.suffix not in (".yaml", ".yml") and not candidate.exists():
        preset = CONFIG_DIR / f"{path_or_name}.yaml"
        if preset.is_file():
            return preset
        known = ", ".join(preset_names())
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
        if err["type"] == "extra_forbidden" and loc in RENAMED_KEYS:
            lines.append(f"{source}: {loc} was renamed to {RENAMED_KEYS[loc]}")
            continue
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
