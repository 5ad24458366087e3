"""Launch a training stage data-parallel (``torchrun`` / ``accelerate launch``) and collect its result.

When ``distributed.num_processes > 1`` the stages of :data:`STAGES` (SFT, the reward model,
DPO) do not train in their own process: :func:`train_distributed` writes the resolved config to
the stage directory, launches ``num_processes`` copies of the worker (``python -m
tasks.distributed_worker``), waits, and reads back rank 0's
:class:`~rlhf_core.training.TrainResult` as JSON (:func:`fit_data_parallel`, what the stage
bodies call). The worker loads the same inputs the in-process stage would (the stage body's
``fit``) and trains with a :class:`~rlhf_core.distributed.DataParallel`; rank 0 logs to the stage's MLflow run and
writes checkpoints and the model, exactly where a 1-process run writes them, so resume, caching
and the later stages do not know the difference.

Launchers: ``torchrun`` for DDP (CPU with gloo, or CUDA with nccl); ``accelerate launch
--use_fsdp`` / ``--use_deepspeed`` for FSDP and DeepSpeed ZeRO (CUDA only, documented, not
tested here: this machine has no GPU).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rlhf_core.config.distributed import DistributedConfig
from rlhf_core.distributed import check_distributed, resolve_backend
from rlhf_core.errors import ConfigError, TrainingError
from rlhf_core.processes import free_port, guarded, stop_tree
from rlhf_core.tracking import Tracker

if TYPE_CHECKING:  # pragma: no cover
    from rlhf_core.training import TrainResult
    from tasks.artifacts import RunDir


@dataclasses.dataclass(frozen=True)
class DistributedStage:
    """A stage that trains data-parallel. Its code is named ``"module:attribute"`` and imported where
    it runs (the stage bodies import this module, so it cannot import them)."""

    fit: str  # what each worker runs: fit(cfg, model_dir, run, tracker, *, dist, progress) -> a TrainResult or a tuple starting with one
    result: str  # the TrainResult class rank 0's result is read back into
    metric_prefix: str  # the stage's metric namespace (``<prefix>/processes``)


# The one place a stage is registered for data-parallel training (launcher, worker --stage, result parsing).
STAGES: dict[str, DistributedStage] = {
    "sft": DistributedStage("tasks.stages.sft:fit", "rlhf_core.sft.train:SFTResult", "sft"),
    "reward": DistributedStage("tasks.stages.reward:fit", "rlhf_core.reward.train:RewardResult", "rm"),
    "dpo": DistributedStage("tasks.stages.dpo:fit", "rlhf_core.training:TrainResult", "dpo"),
    "ppo": DistributedStage("tasks.stages.ppo:fit", "rlhf_core.ppo.trainer:PPOResult", "ppo"),
}

# What each launched process runs: a module of its own, since it imports the stage bodies, which import this one.
WORKER_MODULE = "tasks.distributed_worker"


def distributed_stage(stage: str) -> DistributedStage:
    """``stage``'s entry in :data:`STAGES`; ConfigError naming the stages that can train data-parallel."""
    if stage not in STAGES:
        raise ConfigError(f"distributed: stage '{stage}' cannot train data-parallel (these can: {', '.join(STAGES)})")
    return STAGES[stage]


def load_attribute(name: str) -> Any:
    """The object a ``"module:attribute"`` name refers to."""
    module, _, attribute = name.partition(":")
    return getattr(importlib.import_module(module), attribute)


def launch_command(cfg: DistributedConfig, worker_args: list[str], *, port: int) -> list[str]:
    """The command line that starts ``cfg.num_processes`` workers on this machine."""
    n = str(cfg.num_processes)
    worker = ["-m", WORKER_MODULE, *worker_args]
    if cfg.strategy == "ddp":
        torchrun = [sys.executable, "-m", "torch.distributed.run"]
        return [*torchrun, "--master_addr=127.0.0.1", f"--master_port={port}", f"--nproc_per_node={n}", *worker]
    accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", n, "--num_machines", "1",
                  "--main_process_port", str(port or free_port()), "--multi_gpu"]
    if cfg.strategy == "fsdp":
        accelerate += ["--use_fsdp", "--fsdp_sharding_strategy", "FULL_SHARD"]
    else:
        accelerate += ["--use_deepspeed", "--zero_stage", str(cfg.deepspeed_zero_stage)]
    return [*accelerate, "-m", WORKER_MODULE, *worker_args]


def result_to_json(result: Any) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(result), default=str))


def result_from_json(cls: type, data: dict[str, Any]) -> Any:
    fields = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in data.items() if k in fields}
    values["model_dir"] = Path(values["model_dir"])
    if values.get("checkpoint_dir"):
        values["checkpoint_dir"] = Path(values["checkpoint_dir"])
    return cls(**values)


def fit_data_parallel(stage: str, cfg: Any, model_dir: str, run: RunDir, tracker: Tracker, tracking_uri: str | None) -> TrainResult:
    """``stage`` trained by ``cfg.distributed.num_processes`` processes; rank 0's result.

    Rank 0 logs into ``tracker``'s MLflow run (its ``run_id``, at ``tracking_uri``) when it has one.
    """
    entry = distributed_stage(stage)
    data = train_distributed(
        stage, cfg, model_dir=model_dir, run_dir=str(run.path), mlflow_run_id=getattr(tracker, "run_id", None),
        tracking_uri=tracking_uri,
    )
    tracker.log_metrics({f"{entry.metric_prefix}/processes": float(data["world_size"])}, step=int(data["steps"]))
    return result_from_json(load_attribute(entry.result), data)


def train_distributed(
    stage: str, cfg: Any, *, model_dir: str, run_dir: str, mlflow_run_id: str | None, tracking_uri: str | None
) -> dict[str, Any]:
    """Train ``stage`` with ``cfg.distributed.num_processes`` processes; rank 0's result as a dict.

    Raises ConfigError (before starting anything) for a stage not in :data:`STAGES` or a setup
    that cannot run here, and TrainingError naming the exit code and the log file when a worker fails.
    """
    distributed_stage(stage)
    dist = cfg.distributed
    check_distributed(dist)
    from tasks.artifacts import RunDir

    out = RunDir(Path(run_dir)).stage(stage)
    config_path = out / "distributed-config.json"
    result_path = out / "distributed-result.json"
    log_path = out / "distributed.log"
    config_path.write_text(cfg.model_dump_json())
    result_path.unlink(missing_ok=True)
    args = ["--stage", stage, "--config", str(config_path), "--model-dir", model_dir, "--run-dir", run_dir,
            "--result", str(result_path)]
    if mlflow_run_id:
        args += ["--mlflow-run-id", mlflow_run_id, "--tracking-uri", str(tracking_uri)]
    port = dist.main_process_port or free_port()
    command = launch_command(dist, args, port=port)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path.cwd()), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    if cfg.torch_threads:
        env["OMP_NUM_THREADS"] = str(cfg.torch_threads)
    started = time.perf_counter()
    with open(log_path, "w") as log:
        log.write(f"$ {' '.join(command)}\n")
        log.flush()
        # Guarded: a SIGKILL of this process SIGTERMs the launcher, which stops its workers. Any
        # other way out (Ctrl-C, SIGTERM, a timeout) stops the launcher and, after a grace period,
        # every worker it had: they run in sessions of their own and would otherwise live on.
        proc = subprocess.Popen(guarded(command), stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            proc.wait(timeout=dist.timeout_s)
        except subprocess.TimeoutExpired as exc:
            stop_tree(proc)
            raise TrainingError(
                f"{stage}: the {dist.num_processes}-process run did not finish in {dist.timeout_s} s; log: {log_path}"
            ) from exc
        except BaseException:
            stop_tree(proc)
            raise
    if proc.returncode != 0 or not result_path.is_file():
        cause = worker_error(log_path.read_text(errors="replace"))
        raise TrainingError(
            f"{stage}: {dist.num_processes}-process training (backend {resolve_backend(dist)}, {dist.strategy}) "
            f"exited with code {proc.returncode}: {cause.strip()}; full log: {log_path}"
        )
    result = json.loads(result_path.read_text())
    result["launch_seconds"] = time.perf_counter() - started
    return result


_RAISED = re.compile(r"^(?:\[rank(\d+)\]: )?(?:[\w.]+\.)?(\w+(?:Error|Exception|Interrupt)): (.+)$")


def worker_error(log: str) -> str:
    """The first exception a worker raised (``rank N: DataError: ...``), not the launcher's summary."""
    for line in log.splitlines():
        match = _RAISED.match(line.strip())
        if match and match.group(2) != "ChildFailedError":
            rank = f"rank {match.group(1)}: " if match.group(1) else ""
            return f"{rank}{match.group(2)}: {match.group(3)}"
    lines = [line for line in log.strip().splitlines() if line.strip("= ")]
    return lines[-1] if lines else "no output"
