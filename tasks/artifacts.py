"""The one place that names where each stage's outputs live.

Layout of a workspace (default ``./.rlhf``)::

    .rlhf/
      models/               cached HF-format base models (GGUF dequantized once)
      mlflow/mlflow.db      MLflow tracking store (sqlite) ...
      mlflow/artifacts/     ... and its artifact root
      runs/<run_id>/        one directory per pipeline run, never shared:
        config.yaml           the fully resolved config
        data/ sft/ reward/ ppo/ eval/   each stage's outputs

Stages hand off through :class:`RunDir` (nanochat's ``load_model("sft")`` idea),
never through globals or ad-hoc paths.
"""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

STAGES = ("data", "sft", "reward", "ppo", "dpo", "eval")


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
        return self.stage(stage) / "model"

    def checkpoints(self, stage: str) -> Path:
        return self.stage(stage) / "checkpoints"


def workspace_from(root: str | os.PathLike[str]) -> Workspace:
    return Workspace(Path(root).expanduser())
