"""Resumable training checkpoints: written atomically, verified by checksum, tied to a stage.

Layout (one directory per checkpoint under ``<output_dir>/checkpoints/``)::

    step-000020/
      trainable.safetensors   trainable parameters by name (all weights, or only LoRA adapters)
      optimizer.pt            optimizer.state_dict()   (torch.save, read back with weights_only=True)
      scheduler.pt            scheduler.state_dict()   (idem)
      rng.pt                  torch CPU (+ CUDA) generator states (idem)
      trainer_state.json      step, data position (epoch, batch index, sampler seed), python and
                              numpy RNG states, metric history, run fingerprint
      manifest.json           format, stage, step, sha256 of every file above (written last;
                              the name is :data:`MANIFEST`)

Only *trainable* parameters are stored: frozen weights never change, and the caller hands the
same starting model to a resumed run, so the checkpoint holds exactly what training changed
(for LoRA: the adapters, a few MB). The human-usable model in Hugging Face format is written
by the stage at the end (``<output_dir>/model``, :func:`rlhf_core.stage_io.save_stage_model`).

A checkpoint is assembled in a hidden temp directory and renamed into place, so a crash
mid-write leaves either the previous checkpoint or the new one, never half of one. Loading
re-hashes every file: a truncated or edited checkpoint is refused with a
:class:`CorruptCheckpointError` naming the file, a checkpoint written by another stage with a
TrainingError. When resuming automatically, :func:`latest_valid_checkpoint` skips (and moves
aside as ``corrupt-step-NNNNNN``) corrupt checkpoints and falls back to the newest good one.
A failed write (full disk, I/O error) removes its temp directory and raises a TrainingError
saying which checkpoint is still the last good one; older checkpoints are pruned only after
a new one is complete, so the last good checkpoint is never touched.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import random
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from rlhf_core.errors import TrainingError

CHECKPOINT_FORMAT = "rlhf-checkpoint/1"
MANIFEST = "manifest.json"  # written last: a checkpoint without it is incomplete
WEIGHTS = "trainable.safetensors"
OPTIMIZER = "optimizer.pt"
SCHEDULER = "scheduler.pt"
RNG = "rng.pt"
TRAINER_STATE = "trainer_state.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")

log = logging.getLogger(__name__)


class CorruptCheckpointError(TrainingError):
    """A checkpoint whose files are missing, truncated or edited (checksums do not match)."""


def checkpoint_name(step: int) -> str:
    return f"step-{step:06d}"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters by name; tied weights appear once (``named_parameters`` dedups)."""
    return {name: p.detach().contiguous() for name, p in model.named_parameters() if p.requires_grad}


# --------------------------------------------------------------------------- RNG


def capture_rng_state() -> tuple[dict[str, Any], dict[str, torch.Tensor | list[torch.Tensor]]]:
    """(JSON-able python/numpy states, tensor states for torch CPU/CUDA)."""
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    json_state = {
        "python": [version, list(mt), gauss],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
    }
    tensors: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors["cuda"] = torch.cuda.get_rng_state_all()
    return json_state, tensors


def restore_rng_state(json_state: dict[str, Any], tensors: dict[str, Any]) -> None:
    version, mt, gauss = json_state["python"]
    random.setstate((version, tuple(mt), gauss))
    name, keys, pos, has_gauss, cached = json_state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["torch"])
    if "cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(tensors["cuda"])


# --------------------------------------------------------------------------- save


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(
    root: Path,
    *,
    stage: str,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    trainer_state: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write ``root/step-NNNNNN`` atomically (temp dir + rename); prune to the ``keep`` newest."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(step)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=root))
    except OSError as exc:
        raise _write_error(exc, root, final) from exc
    try:
        save_file(trainable_state(model), str(tmp / WEIGHTS), metadata={"stage": stage, "step": str(step)})
        torch.save(optimizer.state_dict(), tmp / OPTIMIZER)
        torch.save(scheduler.state_dict(), tmp / SCHEDULER)
        rng_json, rng_tensors = capture_rng_state()
        torch.save(rng_tensors, tmp / RNG)
        state = {**trainer_state, "step": step, "rng": rng_json}
        (tmp / TRAINER_STATE).write_text(json.dumps(state))
        files = {}
        for name in (WEIGHTS, OPTIMIZER, SCHEDULER, RNG, TRAINER_STATE):
            _fsync(tmp / name)
            files[name] = sha256_file(tmp / name)
        manifest = {
            "format": CHECKPOINT_FORMAT,
            "stage": stage,
            "step": step,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "torch": torch.__version__,
            "files": files,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        _fsync(tmp / MANIFEST)
        if final.exists():  # re-saving a step (a resumed run finishing at the same step)
            old = root / f".old-{final.name}-{os.getpid()}"
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
        _fsync(root)
    except OSError as exc:  # full disk, quota, I/O error: the temp dir goes, older checkpoints stay
        raise _write_error(exc, root, final) from exc
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    for stale in list_checkpoints(root)[:-keep]:
        shutil.rmtree(stale, ignore_errors=True)
    for leftover in root.glob(".tmp-*"):  # from a run killed mid-write
        shutil.rmtree(leftover, ignore_errors=True)
    return final


def _write_error(exc: OSError, root: Path, final: Path) -> TrainingError:
    last = latest_checkpoint(root)
    what = "no space left on device" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else f"{type(exc).__name__}: {exc}"
    kept = f"the last good checkpoint {last} is intact" if last else "no earlier checkpoint exists"
    return TrainingError(
        f"could not write checkpoint {final} ({what}); {kept}; free space and re-run to resume from it"
    )


# --------------------------------------------------------------------------- find / verify / load


def list_checkpoints(root: Path) -> list[Path]:
    """Checkpoint directories under ``root``, oldest first (by step number)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(root: Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def verify_checkpoint(path: Path, *, stage: str) -> dict[str, Any]:
    """The manifest of checkpoint ``path`` after checking format, stage and every checksum."""
    path = Path(path)
    if not path.exists():
        raise TrainingError(f"cannot resume: checkpoint {path} does not exist")
    if not path.is_dir():
        raise TrainingError(f"cannot resume: checkpoint {path} is not a directory")
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise CorruptCheckpointError(f"cannot resume: {path} is not a training checkpoint (no {MANIFEST})")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptCheckpointError(f"cannot resume: {manifest_path} is corrupt ({type(exc).__name__})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != CHECKPOINT_FORMAT:
        raise CorruptCheckpointError(f"cannot resume: {manifest_path} has unknown format (expected {CHECKPOINT_FORMAT})")
    if manifest.get("stage") != stage:
        raise TrainingError(
            f"cannot resume: checkpoint {path} was written by stage '{manifest.get('stage')}', not '{stage}' "
            "(use a separate output directory per stage)"
        )
    files = manifest.get("files")
    if not isinstance(files, dict) or set(files) != {WEIGHTS, OPTIMIZER, SCHEDULER, RNG, TRAINER_STATE}:
        raise CorruptCheckpointError(f"cannot resume: {manifest_path} does not list the expected checkpoint files")
    for name, expected in files.items():
        file = path / name
        if not file.is_file():
            raise CorruptCheckpointError(f"cannot resume: checkpoint file {file} is missing")
        if sha256_file(file) != expected:
            raise CorruptCheckpointError(f"cannot resume: checkpoint file {file} is corrupt (sha256 does not match {MANIFEST})")
    return manifest


def latest_valid_checkpoint(root: Path, *, stage: str) -> Path | None:
    """The newest checkpoint under ``root`` that verifies; corrupt newer ones are moved aside.

    A corrupt checkpoint (a file truncated or edited, e.g. by a disk fault) is renamed to
    ``corrupt-step-NNNNNN`` (kept for inspection, never picked up again) with a warning, and the
    previous one is tried. A checkpoint of another stage raises. None when there is none at
    all; a TrainingError listing them when every checkpoint is corrupt.
    """
    rejected: list[str] = []
    for path in reversed(list_checkpoints(root)):
        try:
            verify_checkpoint(path, stage=stage)
        except CorruptCheckpointError as exc:
            aside = path.with_name(f"corrupt-{path.name}")
            if aside.exists():
                shutil.rmtree(aside, ignore_errors=True)
            path.rename(aside)
            log.warning("%s; moved it to %s and trying the previous checkpoint", exc, aside)
            rejected.append(f"{path.name}: {exc}")
            continue
        return path
    if rejected:
        raise TrainingError(
            f"cannot resume: every checkpoint in {root} is corrupt ({'; '.join(rejected)}); "
            "re-run with resume=False to start over"
        )
    return None


def load_checkpoint(
    path: Path,
    *,
    stage: str,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    check_state: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Verify ``path``, restore weights, optimizer, scheduler and RNG in place; return trainer_state.

    ``check_state(trainer_state)`` runs after verification and before anything is modified,
    so a refused checkpoint (e.g. a different run's) leaves the model untouched.
    """
    path = Path(path)
    verify_checkpoint(path, stage=stage)
    try:
        state = json.loads((path / TRAINER_STATE).read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TrainingError(f"cannot resume: {path / TRAINER_STATE} is unreadable ({exc})") from exc
    if check_state is not None:
        check_state(state)
    weights = load_file(str(path / WEIGHTS))
    params = dict(model.named_parameters())
    trainable = {n for n, p in params.items() if p.requires_grad}
    if set(weights) != trainable:
        missing, extra = sorted(trainable - set(weights)), sorted(set(weights) - trainable)
        raise TrainingError(
            f"cannot resume: checkpoint {path} holds weights of a different model or LoRA setting "
            f"({len(missing)} trainable parameter(s) missing e.g. {missing[:2]}, {len(extra)} unexpected e.g. {extra[:2]})"
        )
    for name, tensor in weights.items():
        if tensor.shape != params[name].shape:
            raise TrainingError(
                f"cannot resume: checkpoint {path}: parameter {name} has shape {tuple(tensor.shape)}, "
                f"model has {tuple(params[name].shape)}"
            )
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor)
    device = next(model.parameters()).device
    try:
        optimizer.load_state_dict(torch.load(path / OPTIMIZER, map_location=device, weights_only=True))
        scheduler.load_state_dict(torch.load(path / SCHEDULER, weights_only=True))
        rng_tensors = torch.load(path / RNG, weights_only=True)
    except (ValueError, KeyError, RuntimeError) as exc:
        raise TrainingError(f"cannot resume: checkpoint {path} does not match this optimizer/run ({exc})") from exc
    restore_rng_state(state["rng"], rng_tensors)
    return state
