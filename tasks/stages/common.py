"""What the stage bodies share: the tracker they log to, what they hand back, how they load inputs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from rlhf_core.tracking import Tracker

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from rlhf_core.config.pipeline import PipelineConfig


class StageTracker(Tracker, Protocol):
    """A training loop's :class:`~rlhf_core.tracking.Tracker` plus what a stage's own run records
    beside metrics. The MLflow one (tasks.tracking.MlflowTracker) is passed in; with tracking off,
    tasks.tracking.NullStageTracker."""

    run_id: str | None

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...

    def set_tags(self, tags: Mapping[str, Any]) -> None: ...

    def log_dataset(self, frame: Any, path: Path, name: str, context: str | None = None) -> None: ...


@dataclass(frozen=True)
class StageOutputs:
    """What a stage body hands back to its Prefect task.

    ``files`` (name -> path) are what the run directory records for the stage (``RunDir.record_outputs``).
    The task records them only after the stage's tracking run closed cleanly, so a stage counts as
    finished only once its metrics were sent (or kept in the spool) and its model registered.
    """

    files: dict[str, str]
    model_dir: Path | None = None  # a training stage's final model (registered by the task)
    checkpoint_dir: Path | None = None  # its last training checkpoint (logged by the task when configured)
    metrics: dict[str, float] = field(default_factory=dict)  # headline figures (reward: agreement; eval: primary policy)
    report: str = ""  # Markdown for the Prefect run page (data report, evaluation table)


def split_train_eval(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A curated frame's train rows (split "train" or unset) and its eval rows."""
    import pandas as pd

    split = frame["split"].fillna("train") if "split" in frame else pd.Series("train", index=frame.index)
    return frame[split != "eval"], frame[split == "eval"]


def load_policy(cfg: PipelineConfig, model_dir: str):
    """A causal LM from a stage directory ('tiny' = a fresh tiny model) and the tokenizer."""
    from rlhf_core.models import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(cfg.model, cfg.model_cache)
    path = None if model_dir == "tiny" else model_dir
    model = load_causal_lm(cfg.model, cfg.model_cache, tokenizer, path=path)
    return model, tokenizer


def log_curated_inputs(tracker: StageTracker, data_outputs: Mapping[str, str], names: tuple[str, ...], context: str) -> None:
    """Show on a stage's run the curated files it trains or evaluates on (``context``: "training",
    "evaluation"), with the same name and digest as on the data stage's run."""
    import pandas as pd

    for name in names:
        path = Path(data_outputs[name])
        tracker.log_dataset(pd.read_parquet(path), path, name, context)

