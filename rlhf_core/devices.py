"""Device and dtype choice: CUDA with bf16 when present, else CPU fp32; overridable."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rlhf_core.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    import torch


def resolve_device(spec: str = "auto") -> torch.device:
    """'auto' -> cuda if available else cpu; explicit devices are checked, not trusted."""
    import torch

    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as exc:
        raise ConfigError(f"model.device: unknown device '{spec}' (use auto, cpu, cuda, cuda:N or mps)") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"model.device: '{spec}' requested but CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"model.device: '{spec}' requested but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("model.device: 'mps' requested but MPS is not available on this machine")
    return device


def resolve_dtype(spec: str, device: torch.device) -> torch.dtype:
    """'auto' -> bfloat16 on CUDA (when supported), float32 elsewhere."""
    import torch

    if spec == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[spec]
