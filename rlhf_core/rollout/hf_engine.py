"""The ``hf`` rollout engine: :func:`rlhf_core.sampling.sample` on the trained policy, in process."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from rlhf_core.sampling import Rollout, sample


class HFEngine:
    """Samples with the policy module itself, so it always has the current weights.

    ``score_tokens`` / ``keep_hidden``: also read the log-probs / final hidden states off the
    sampling loop (PPO's ``rollout_logprobs='sampler'``); neither changes the tokens drawn.
    """

    name = "hf"

    def __init__(
        self, policy: torch.nn.Module, *, device: torch.device | str | None = None,
        score_tokens: bool = True, keep_hidden: bool = False,
    ) -> None:
        self.policy = policy
        self.device = device
        self.score_tokens = score_tokens
        self.keep_hidden = keep_hidden

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
    ) -> Rollout:
        return sample(
            self.policy, prompt_ids, device=self.device, max_new_tokens=max_new_tokens, eos_id=eos_id, pad_id=pad_id,
            temperature=temperature, top_k=top_k, top_p=top_p, score_tokens=self.score_tokens,
            keep_hidden=self.keep_hidden, seeds=seeds,
        )

    def load_weights(self, policy: torch.nn.Module) -> float:
        if policy is not self.policy:
            raise ValueError("HFEngine.load_weights: the hf engine samples from the module it was built on")
        return 0.0

    def close(self) -> None:
        pass
