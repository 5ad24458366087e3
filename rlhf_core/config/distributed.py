"""Distributed config: how many processes train the SFT, reward-model and DPO stages, on which engine.

The checks that need torch (enough CUDA devices, ...) are ``rlhf_core.distributed.check_distributed``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rlhf_core.config.base import StrictModel


class DistributedConfig(StrictModel):
    """How many processes train each of the SFT, reward-model and DPO stages, and on which engine."""

    num_processes: int = Field(
        1, ge=1, le=1024,
        description="Data-parallel processes for the SFT, reward-model and DPO stages; 1 trains in the task's own process.",
    )
    backend: Literal["auto", "gloo", "nccl"] = Field(
        "auto", description="torch.distributed backend: auto = nccl with CUDA, gloo on CPU."
    )
    strategy: Literal["ddp", "fsdp", "deepspeed"] = Field(
        "ddp", description="ddp (tested here, CPU and CUDA); fsdp / deepspeed (ZeRO) via accelerate on CUDA only."
    )
    deepspeed_zero_stage: int = Field(2, ge=1, le=3, description="ZeRO stage when strategy is deepspeed.")
    main_process_port: int = Field(0, ge=0, le=65535, description="Rendezvous port; 0 picks a free one.")
    timeout_s: int = Field(3600 * 6, ge=10, description="Kill the launched processes after this many seconds.")

    @property
    def enabled(self) -> bool:
        return self.num_processes > 1
