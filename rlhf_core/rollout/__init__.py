"""Rollout engines: what samples PPO's responses, behind one interface.

``engine.generate(prompt_ids, *, seeds, ...) -> Rollout`` fills ``Rollout.logprobs`` with each
sampled token's log-prob under log-softmax(logits / temperature) (the unfiltered, tempered
distribution), ``engine.load_weights(policy)`` after every policy update, ``engine.close()``
at the end of the stage (on error and interrupt too).

- ``hf`` (:class:`~rlhf_core.rollout.hf_engine.HFEngine`): :func:`rlhf_core.sampling.sample` on the
  trained policy itself, in process; ``load_weights`` has nothing to do.
- ``vllm`` (:class:`~rlhf_core.rollout.vllm_engine.VLLMEngine`): vLLM in its own venv and process
  (``make vllm``), fed the policy's full (LoRA-merged) weights after every update.

Importing this module imports neither torch nor vLLM (the config preflight calls
:func:`vllm_venv_problem`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from rlhf_core.config.ppo import RolloutConfig
    from rlhf_core.sampling import Rollout

INSTALL_VLLM = "make vllm"


class RolloutEngine(Protocol):
    name: str  # the config's name for it: "hf", "vllm"

    def generate(
        self,
        prompt_ids: Sequence[Sequence[int]],
        *,
        seeds: Sequence[int] | None,
        max_new_tokens: int,
        eos_id: int | Sequence[int],
        pad_id: int,
        temperature: float,
        top_k: int,
        top_p: float,
    ) -> Rollout: ...

    def load_weights(self, policy: torch.nn.Module) -> float:
        """Make the engine sample from ``policy``'s current weights; the seconds it took."""
        ...

    def close(self) -> None: ...


def vllm_venv_problem(cfg: RolloutConfig, key: str = "ppo.rollout.engine") -> str | None:
    """One line when the vLLM engine's venv (``cfg.vllm_python``) is not there, naming the config ``key``
    that asked for the engine (None: it is there). Whether the engine is wanted is the caller's question."""
    python = Path(cfg.vllm_python).expanduser()
    if python.is_file():
        return None
    where = "" if python.is_absolute() else f" (relative to {Path.cwd()})"
    return (
        f"{key} is 'vllm' but its venv's Python {cfg.vllm_python}{where} does not exist: "
        f"run `{INSTALL_VLLM}` (or set ppo.rollout.vllm_python)"
    )
