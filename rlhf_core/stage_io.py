"""A stage's final model directory: the one module that writes it, reads its marker and loads it.

Each training stage (sft, reward, dpo, ppo) ends by writing ``<stage output>/model``
(nanochat's ``checkpoint_manager``: one home for the hand-off between stages)::

    model/
      config.json, model.safetensors   the model in Hugging Face format (a LoRA policy left
                                       unmerged: adapter_config.json + adapter_model.safetensors)
      tokenizer files                  so the directory loads on its own
      rlhf_stage.json                  the stage marker: {"stage": "sft", "step": 4, ...}

The directory is assembled in a hidden temp directory beside it and renamed into place whole
(:func:`save_stage_model`), so a reader sees the previous model or the new one, never half of
one. The marker names the stage that wrote it: a directory of another stage is refused with one
line instead of loading the wrong weights. Resumable training checkpoints
(:mod:`rlhf_core.checkpoint`) carry its ``manifest.json`` instead; readers tell the two apart with
:func:`is_stage_model` / :func:`is_training_checkpoint`.

Standard library at import (tasks/tracking.py reads the names here); torch, transformers and peft
only inside the loaders.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rlhf_core.errors import ModelLoadError, TrainingError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from rlhf_core.config.model import ModelConfig
    from rlhf_core.config.optim import LoraConfig

STAGE_MARKER = "rlhf_stage.json"  # in a stage's final model directory
MODEL_DIR = "model"  # <stage output>/model
CHECKPOINTS_DIR = "checkpoints"  # <stage output>/checkpoints/step-NNNNNN
REWARD_STAGE = "reward"


# ----------------------------------------------------------------------------- the marker
def write_stage_marker(directory: str | Path, stage: str, **extra: Any) -> Path:
    """Write ``rlhf_stage.json`` naming which pipeline stage produced ``directory``."""
    path = Path(directory) / STAGE_MARKER
    path.write_text(json.dumps({"stage": stage, **extra}, indent=2, sort_keys=True) + "\n")
    return path


def read_stage_marker(directory: str | Path) -> dict[str, Any] | None:
    """The stage marker of ``directory``, or None when it has none. Corrupt markers raise ModelLoadError."""
    path = Path(directory) / STAGE_MARKER
    if not path.is_file():
        return None
    try:
        marker = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path}: unreadable stage marker ({type(exc).__name__}: {exc})") from exc
    if not isinstance(marker, dict) or not isinstance(marker.get("stage"), str):
        raise ModelLoadError(f"{path}: stage marker must be a JSON object with a string 'stage'")
    return marker


def is_stage_model(directory: str | Path) -> bool:
    """True for a stage's final model directory (it carries the stage marker)."""
    return (Path(directory) / STAGE_MARKER).is_file()


def is_training_checkpoint(directory: str | Path) -> bool:
    """True for a resumable training checkpoint directory (it carries the checkpoint manifest)."""
    from rlhf_core.checkpoint import MANIFEST

    return (Path(directory) / MANIFEST).is_file()


# ----------------------------------------------------------------------------- saving
def write_stage_model(model: Any, tokenizer: Any | None, directory: str | Path, *, stage: str, **marker: Any) -> Path:
    """Write ``model`` (``save_pretrained``), the tokenizer if given, then the stage marker, in place."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(directory))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(directory))
    write_stage_marker(directory, stage, **marker)
    return directory


def save_stage_model(model: Any, tokenizer: Any | None, final: str | Path, *, stage: str, **marker: Any) -> Path:
    """A stage's final model: :func:`write_stage_model` into a temp directory beside ``final``, renamed into place.

    ``marker`` lands in ``rlhf_stage.json`` beside ``stage`` (e.g. ``step=...``). The rename also
    removes the half-written copies a killed run left (``.tmp-<name>-*``).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    write_stage_model(model, tokenizer, tmp, stage=stage, **marker)
    return replace_dir(tmp, final)


# ----------------------------------------------------------------------------- loading
def load_ppo_checkpoint_policy(
    start_policy: torch.nn.Module, checkpoint: str | Path, *, lora: LoraConfig | None = None
) -> torch.nn.Module:
    """The policy of PPO training checkpoint ``checkpoint``, on ``start_policy`` (a fresh SFT model, modified).

    Checkpoints hold only the trainable weights of (policy + critic) under ``policy.`` / ``critic.``
    / ``value_head.``; the policy part is copied into ``start_policy`` (wrapped in LoRA adapters
    first when the checkpoint holds adapters: pass the PPO run's ``lora`` config). The checkpoint is
    verified (format, stage 'ppo', checksums); weights that do not match the model are a TrainingError.
    """
    import torch
    from safetensors.torch import load_file

    from rlhf_core.checkpoint import WEIGHTS, verify_checkpoint
    from rlhf_core.models import apply_lora

    path = Path(checkpoint)
    verify_checkpoint(path, stage="ppo")
    weights = {k[len("policy."):]: v for k, v in load_file(str(path / WEIGHTS)).items() if k.startswith("policy.")}
    if not weights:
        raise TrainingError(f"{path}: the checkpoint holds no policy weights (the policy was frozen?)")
    model = start_policy
    if any("lora_" in k for k in weights):
        if lora is None:
            raise TrainingError(f"{path}: the checkpoint holds LoRA adapters; pass the PPO run's optim.lora config")
        model = apply_lora(model, lora, task_type="CAUSAL_LM")
    params = dict(model.named_parameters())
    unknown = sorted(set(weights) - set(params))
    if unknown:
        raise TrainingError(f"{path}: {len(unknown)} checkpoint weight(s) not in the policy, e.g. {unknown[:2]} "
                            "(a checkpoint of another model or LoRA setting)")
    with torch.no_grad():
        for name, tensor in weights.items():
            if tensor.shape != params[name].shape:
                raise TrainingError(f"{path}: weight {name} has shape {tuple(tensor.shape)}, the policy {tuple(params[name].shape)}")
            params[name].copy_(tensor)
    return model.eval()


def load_stage_policy(
    directory: str | Path,
    *,
    model: ModelConfig,
    cache_dir: Path,
    tokenizer: Any,
    sft_dir: str | Path,
    lora: LoraConfig | None = None,
) -> torch.nn.Module:
    """A policy from a stage output directory, on ``model``'s device and dtype.

    * a stage model directory (SFT, DPO, PPO full fine-tuning): loaded as is;
    * a LoRA adapter directory (``adapter_config.json``): the adapters on a fresh SFT model
      (``sft_dir``);
    * a PPO training checkpoint (:data:`MANIFEST`, ``<ppo>/checkpoints/step-*``): its policy
      weights on a fresh SFT model (``lora``: the PPO run's ``optim.lora``).
    A reward-model directory is refused with one line (ModelLoadError).
    """
    from rlhf_core.models import load_causal_lm

    directory = Path(directory)
    if not directory.is_dir():
        raise ModelLoadError(f"policy directory not found: {directory}")

    def fresh_sft() -> torch.nn.Module:
        return load_causal_lm(model, cache_dir, tokenizer, path=sft_dir)

    if is_training_checkpoint(directory):
        return load_ppo_checkpoint_policy(fresh_sft(), directory, lora=lora)
    marker = read_stage_marker(directory)
    if marker is not None and marker["stage"] == REWARD_STAGE:
        raise ModelLoadError(
            f"{directory} is a reward model ({STAGE_MARKER} stage='{REWARD_STAGE}'), not a policy to evaluate"
        )
    if (directory / "adapter_config.json").is_file():
        import peft

        try:
            return peft.PeftModel.from_pretrained(fresh_sft(), str(directory)).eval()
        except Exception as exc:
            raise ModelLoadError(f"cannot load LoRA adapters from {directory}: {type(exc).__name__}: {exc}") from exc
    return load_causal_lm(model, cache_dir, tokenizer, path=directory).eval()

def replace_dir(tmp: Path, final: Path) -> Path:
    """Move a fully written ``tmp`` directory to ``final`` (replacing it) with renames only.

    Write ``tmp`` as ``final.parent / ".tmp-<final.name>-*"``: once ``final`` is in place, such
    leftovers of a run killed mid-write (each a whole model) are removed.
    """
    tmp.chmod(0o755)  # mkdtemp makes it owner-only
    if final.exists():
        old = final.with_name(f".old-{final.name}-{time.time_ns()}")
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)
    for stale in [*final.parent.glob(f".tmp-{final.name}-*"), *final.parent.glob(f".old-{final.name}-*")]:
        shutil.rmtree(stale, ignore_errors=True)
    return final
