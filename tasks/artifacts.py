"""The one place that names where each stage's outputs live.

Layout of a workspace (default ``./.rlhf``)::

    .rlhf/
      models/               cached HF-format base models (GGUF dequantized once)
      mlflow/mlflow.db      MLflow tracking store (sqlite) ...
      mlflow/artifacts/     ... and its artifact root
      locks/                inter-process locks: two runs at once in one workspace take turns
                            creating the shared stores (Prefect and MLflow databases, experiment)
      runs/<run_id>/        one directory per pipeline run, never shared:
        config.yaml           the fully resolved config
        data/ sft/ reward/ ppo/ eval/   each stage's outputs

Stages hand off through :class:`RunDir` (nanochat's ``load_model("sft")`` idea),
never through globals or ad-hoc paths.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rlhf_core.stage_io import CHECKPOINTS_DIR, MODEL_DIR

STAGES = ("label", "data", "sft", "reward", "ppo", "dpo", "eval")  # label: an `rlhf iterate` round's
OUTPUTS_FILE = "outputs.json"


@dataclass(frozen=True)
class Workspace:
    root: Path

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def mlflow_dir(self) -> Path:
        return self.root / "mlflow"

    @property
    def mlflow_uri(self) -> str:
        return f"sqlite:///{(self.mlflow_dir / 'mlflow.db').resolve()}"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.mlflow_dir / "artifacts"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    def new_run(self, name: str) -> RunDir:
        """Create a fresh, uniquely named run directory (mkdir is atomic: no two runs share one)."""
        self.runs.mkdir(parents=True, exist_ok=True)
        while True:
            run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{name}-{secrets.token_hex(3)}"
            try:
                (self.runs / run_id).mkdir()
            except FileExistsError:
                continue
            return RunDir(self.runs / run_id)

    def run(self, run_id: str) -> RunDir:
        return RunDir(self.runs / run_id)

    def existing_run(self, run_id: str, *, option: str = "--resume") -> RunDir:
        """The run ``run_id`` names: a plain directory name under ``runs/`` that exists (UserError otherwise).

        ``..``, a path, a run of another workspace: refused, so nothing is ever written outside
        ``runs/<run_id>``. ``option`` is how the user gave the id (named in the message).
        """
        from rlhf_core.errors import UserError

        separators = {"/", os.sep, os.altsep, "\0"} - {None}
        if run_id in ("", ".", "..") or any(s in run_id for s in separators):
            raise UserError(f"{option} {run_id!r}: expected a run id (a directory name under {self.runs}), not a path")
        run = RunDir(self.runs / run_id)
        if not run.path.is_dir() or run.path.resolve().parent != self.runs.resolve():
            recent = sorted((p.name for p in self.runs.iterdir() if p.is_dir()), reverse=True)[:3] \
                if self.runs.is_dir() else []
            known = f"latest: {', '.join(recent)}" if recent else "it has no runs yet"
            raise UserError(f"{option} {run_id}: no such run in {self.runs} ({known}); "
                            "a run of another workspace needs --workspace")
        return run

    def try_lock(self, name: str, busy: str):
        """``with ws.try_lock("iterate", "a round is running"):`` one at a time, the second refused (UserError)."""
        return try_file_lock(self.root / "locks" / f"{name}.lock", busy)

    def lock(self, name: str):
        """``with ws.lock("mlflow-store"):`` one process at a time, among all runs using this workspace."""
        return file_lock(self.root / "locks" / f"{name}.lock")


@contextmanager
def try_file_lock(path: Path, busy: str) -> Iterator[None]:
    """Like :func:`file_lock`, but a held lock raises UserError(``busy``) at once instead of waiting."""
    from rlhf_core.errors import UserError

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip()
            raise UserError(busy + (f" ({holder})" if holder else "")) from None
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()}")
            handle.flush()
            yield
        finally:
            handle.truncate(0)
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive inter-process lock (flock) held inside the block; released if the process dies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@dataclass(frozen=True)
class RunDir:
    path: Path

    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    def stage(self, name: str) -> Path:
        """The output directory of one stage, created on first use."""
        if name not in STAGES:
            raise ValueError(f"unknown stage '{name}' (known: {', '.join(STAGES)})")
        directory = self.path / name
        directory.mkdir(parents=True, exist_ok=True)
        return directory

    def model_dir(self, stage: str) -> Path:
        """Where a training stage saves its final model (HF format)."""
        return self.stage(stage) / MODEL_DIR

    def checkpoints(self, stage: str) -> Path:
        return self.stage(stage) / CHECKPOINTS_DIR

    def record_outputs(self, stage: str, outputs: dict[str, str]) -> dict[str, str]:
        """Mark a stage finished: its outputs (name -> path) are written last, atomically.

        Paths inside the run directory are stored relative to it, so a copied or moved workspace
        still finds its own outputs (not the original's).
        """
        path = self.stage(stage) / OUTPUTS_FILE
        root = self.path.resolve()
        stored = {
            name: Path(p).resolve().relative_to(root).as_posix() if Path(p).resolve().is_relative_to(root) else str(p)
            for name, p in outputs.items()
        }
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(stored, indent=2), encoding="utf-8")
        tmp.replace(path)
        return outputs

    def outputs(self, stage: str) -> dict[str, str] | None:
        """A finished stage's outputs, or None if it never finished or an output has gone missing."""
        path = self.path / stage / OUTPUTS_FILE
        if not path.is_file():
            return None
        stored = json.loads(path.read_text(encoding="utf-8"))
        outputs = {name: str(self.path / p) for name, p in stored.items()}  # an absolute p stays as it is
        return outputs if all(Path(p).exists() for p in outputs.values()) else None

    def require(self, stage: str) -> dict[str, str]:
        """The outputs of an earlier stage this one builds on; a clear error if they are not there."""
        outputs = self.outputs(stage)
        if outputs is None:
            from rlhf_core.errors import UserError

            raise UserError(f"{self.path}: stage '{stage}' has not finished in this run (no {stage}/{OUTPUTS_FILE})")
        return outputs


def workspace_from(root: str | os.PathLike[str]) -> Workspace:
    return Workspace(Path(root).expanduser())
