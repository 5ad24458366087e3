"""Data-parallel training on an existing engine: accelerate (DDP; FSDP or DeepSpeed ZeRO on CUDA).

The SFT and reward-model loops (:func:`rlhf_core.training.run_training_loop`) take an optional
:class:`DataParallel`. With one, every process reads the same *step batch* (the data order is
a pure function of the seed) and trains on its contiguous shard of it; each
micro-batch's loss is ``its_sum / global_step_units * world`` (the step's units are summed over
processes first), so after DDP averages the gradients every process holds exactly the gradient
a single process computes for the whole step batch, up to float summation order. Clipping and
AdamW then run identically everywhere. Rank 0 alone writes checkpoints, the final model and
tracking; the others wait at a barrier.

:class:`~rlhf_core.config.distributed.DistributedConfig` is the part of the pipeline config that asks for it;
:func:`check_distributed` refuses, before anything starts, a setup that cannot work on this
machine (NCCL with fewer CUDA devices than processes, FSDP/DeepSpeed without CUDA, ...).
The Prefect task launches the processes (``torchrun`` / ``accelerate launch``, see
``tasks/distributed.py``); this module only runs inside them.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

from rlhf_core.config.distributed import DistributedConfig
from rlhf_core.errors import ConfigError


def _cuda_devices() -> int:
    import torch  # here, not at import: the config preflight imports this module before any training

    return torch.cuda.device_count()


def resolve_backend(cfg: DistributedConfig, cuda_devices: int | None = None) -> str:
    cuda = _cuda_devices() if cuda_devices is None else cuda_devices
    if cfg.backend != "auto":
        return cfg.backend
    return "nccl" if cuda > 0 else "gloo"


def check_distributed(cfg: DistributedConfig, *, cuda_devices: int | None = None) -> None:
    """Raise a ConfigError naming the problem when ``cfg`` cannot run on this machine."""
    if not cfg.enabled:
        return
    import torch

    cuda = _cuda_devices() if cuda_devices is None else cuda_devices
    backend = resolve_backend(cfg, cuda)
    n = cfg.num_processes
    if backend == "nccl":
        if cuda < n:
            raise ConfigError(
                f"distributed: num_processes={n} with backend nccl needs {n} CUDA devices, this machine has {cuda}; "
                "use backend gloo (CPU) or fewer processes"
            )
        if not torch.distributed.is_nccl_available():
            raise ConfigError("distributed: backend nccl is not available in this torch build; use backend gloo")
    if backend == "gloo" and not torch.distributed.is_gloo_available():
        raise ConfigError("distributed: backend gloo is not available in this torch build")
    if cfg.strategy in ("fsdp", "deepspeed") and (backend != "nccl" or cuda == 0):
        raise ConfigError(
            f"distributed: strategy {cfg.strategy} needs CUDA devices and backend nccl here "
            f"(this machine: {cuda} CUDA device(s), backend {backend}); use strategy ddp"
        )
    if cfg.strategy == "deepspeed" and importlib.util.find_spec("deepspeed") is None:
        raise ConfigError("distributed: strategy deepspeed needs the deepspeed package (pip install deepspeed)")


class DataParallel:
    """A training process's view of its data-parallel group, backed by an accelerate ``Accelerator``."""

    def __init__(self, accelerator: Any) -> None:
        self.accelerator = accelerator
        self.rank = int(accelerator.process_index)
        self.world_size = int(accelerator.num_processes)
        self.device = accelerator.device

    @classmethod
    def from_launcher(cls) -> DataParallel:
        """Join the group that ``torchrun`` / ``accelerate launch`` set up (env: RANK, WORLD_SIZE, ...)."""
        import torch
        from accelerate import Accelerator

        return cls(Accelerator(cpu=not torch.cuda.is_available()))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, indices: Sequence[int]) -> list[int]:
        """This process's contiguous part of a step batch (``ceil(n / world)`` examples, the last may be short).

        Contiguous, so that when each part is a multiple of the micro-batch the processes' micro-batches are
        exactly one process's micro-batches (per-micro-batch terms such as reward centering agree too).
        """
        size = -(-len(indices) // self.world_size)
        return list(indices[self.rank * size : (self.rank + 1) * size])

    def wrap(self, model: Any) -> Any:
        """The model as the engine trains it (DDP / FSDP / DeepSpeed wrapper)."""
        return self.accelerator.prepare_model(model)

    def no_sync(self, model: Any, sync: bool):
        """Skip the gradient all-reduce on all but the last micro-batch of a step."""
        return nullcontext() if sync else self.accelerator.no_sync(model)

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sum of ``values`` over all processes (float64 on the wire)."""
        import torch

        tensor = torch.tensor(list(values), dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
        return tensor.tolist()

    def barrier(self) -> None:
        self.accelerator.wait_for_everyone()

    @contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (e.g. pruning checkpoints), the others after it."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    def close(self) -> None:
        import torch

        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
