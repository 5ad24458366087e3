"""PPO stage config."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from rlhf_core.config.base import StrictModel
from rlhf_core.config.optim import OptimConfig, PromptFormat
from rlhf_core.errors import ConfigError


class RolloutConfig(StrictModel):
    """Which engine samples PPO's responses (``rlhf_core.rollout``)."""

    engine: Literal["hf", "vllm"] = Field(
        "hf",
        description=(
            "'hf' = the trainer's own sampler (rlhf_core.sampling, in process); 'vllm' = vLLM in its own venv "
            "and process (make vllm), fed the policy's weights after every update. With vllm the PPO ratio "
            "always uses the trainer's recomputed log-probs."
        ),
    )
    vllm_python: str = Field(
        ".venv-vllm/bin/python",
        description="The Python of the vLLM venv (relative = to the current directory); `make vllm` builds it.",
    )
    kv_cache_gib: int = Field(2, ge=1, description="vLLM's KV cache (GiB of CPU memory, VLLM_CPU_KVCACHE_SPACE).")
    max_model_len: int = Field(1024, ge=16, description="vLLM's context limit (prompt + response tokens).")
    gpu_memory_utilization: float = Field(
        0.3, gt=0, lt=1,
        description=(
            "On CUDA: the share of the process's GPU that vLLM takes for weights and KV cache (the trainer shares "
            "the device and needs the rest). Unused on CPU, where kv_cache_gib sizes the cache."
        ),
    )
    max_logprob_mismatch: float = Field(
        0.5,
        gt=0,
        description=(
            "Stop the run when the largest |engine - trainer| log-prob of a step's response tokens exceeds this "
            "(nats): the engine no longer samples from the trained policy (a failed weight sync). fp32 on CPU "
            "measures ~1e-4."
        ),
    )
    start_timeout_s: float = Field(600.0, gt=0, description="How long the vLLM engine may take to start.")
    request_timeout_s: float = Field(
        1800.0, gt=0,
        description="How long one request to the vLLM engine (a rollout batch, a weight sync) may take before the stage fails.",
    )


class PPOConfig(StrictModel):
    """PPO against the reward model with a KL penalty to the frozen SFT model.

    One PPO *step* = sample ``rollout_batch_size`` responses, score them, then ``ppo_epochs``
    passes over them in minibatches of ``optim.micro_batch_size * optim.grad_accum_steps`` responses
    (one optimizer update each, micro-batches of ``optim.micro_batch_size``). ``optim.max_steps``
    counts PPO steps; the learning-rate schedule (warmup + cosine) advances once per PPO step.
    """

    enabled: bool = Field(True, description="Run this stage.")
    init_from: str | None = Field(
        None, min_length=1,
        description="A policy stage directory to start from instead of the SFT model (an `rlhf iterate` round sets "
        "it to the champion); the KL reference stays the SFT model, and the final policy is saved merged.",
    )
    optim: OptimConfig = Field(
        default_factory=lambda: OptimConfig(learning_rate=1e-6, max_steps=20),
        description=(
            "Optimizer (policy and value model share it), schedule, micro-batching, checkpointing and LoRA. "
            "max_steps = PPO steps; max_length = prompt + max_new_tokens limit."
        ),
    )
    kl_coef: float = Field(0.05, ge=0, description="Initial KL penalty coefficient (beta).")
    max_new_tokens: int = Field(48, ge=1, description="Tokens sampled per response.")
    rollout_batch_size: int | None = Field(
        None,
        ge=1,
        description=(
            "Responses sampled per PPO step, a multiple of optim.micro_batch_size * optim.grad_accum_steps "
            "(None = exactly that: one minibatch per epoch)."
        ),
    )
    samples_per_prompt: int = Field(
        1,
        ge=1,
        description=(
            "Responses sampled per prompt in a rollout batch (rollout_batch_size / samples_per_prompt prompts a step). "
            "With center_scores, a score > 1 is centered on its sibling samples' mean (leave-one-out), so the "
            "advantage says which answer to the same prompt was better, not which prompt scores high."
        ),
    )
    ppo_epochs: int = Field(4, ge=1, description="Passes over each rollout batch (InstructGPT/TRL: 4).")
    prompt_format: PromptFormat = Field(
        "auto", description="How prompts are rendered for the policy ('chat', 'plain', 'auto'); must match SFT's."
    )
    temperature: float = Field(
        0.7, gt=0, description="Sampling temperature; log-probs are computed from logits / temperature too."
    )
    top_k: int = Field(0, ge=0, description="Sample only from the k most likely tokens (0 = off).")
    top_p: float = Field(1.0, gt=0, le=1.0, description="Nucleus sampling mass (1.0 = off).")
    missing_eos_penalty: float | None = Field(
        None, ge=0, description="Subtracted from the score of responses that never emit EOS (None = off; TRL's option)."
    )
    kl_estimator: Literal["k1", "k2", "k3"] = Field(
        "k1",
        description=(
            "Per-token KL estimator in the reward penalty: k1 = log p - log q (unbiased), k2 = (log r)^2 / 2, "
            "k3 = (r - 1) - log r (unbiased, >= 0); Schulman 2020."
        ),
    )
    adaptive_kl: bool = Field(False, description="Adapt kl_coef towards kl_target (Ziegler et al. 2019).")
    kl_target: float = Field(6.0, gt=0, description="Target sequence KL (nats) of the adaptive controller.")
    kl_horizon: int = Field(10000, ge=1, description="Adaptive controller horizon (in responses).")
    max_kl: float = Field(
        20.0,
        gt=0,
        description="Stop the run early (before updating) when the mean sequence KL to the reference exceeds this (nats).",
    )
    gamma: float = Field(1.0, ge=0, le=1, description="Discount factor of GAE.")
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda.")
    clip_range: float = Field(0.2, gt=0, description="PPO ratio clip epsilon.")
    clip_range_value: float = Field(0.2, gt=0, description="Value clip range around the rollout's values.")
    vf_coef: float = Field(0.1, ge=0, description="Weight of the value loss.")
    entropy_coef: float = Field(0.0, ge=0, description="Weight of the entropy bonus (0 = off).")
    whiten_advantages: bool = Field(True, description="Normalise advantages to zero mean, unit variance per batch.")
    center_scores: bool = Field(
        False,
        description=(
            "Subtract a baseline from each score (after the missing-EOS penalty) before it is added at the last "
            "token: the rollout batch's mean, or with samples_per_prompt > 1 the mean of the prompt's other samples. "
            "A reward model's offset is arbitrary; centered, a value head that starts at 0 is not off by it on every "
            "return, so early advantages do not depend on token position."
        ),
    )
    ptx_coef: float = Field(
        0.0,
        ge=0,
        description="PPO-ptx: weight of the SFT loss on demonstration batches mixed into each update (InstructGPT; 0 = off).",
    )
    rollout_logprobs: Literal["auto", "sampler", "recompute"] = Field(
        "auto",
        description=(
            "Where the rollout's log-probs (and a shared value head's values) come from: 'sampler' reads them off "
            "the sampling loop's logits and hidden states (one policy forward pass less per step; ~3e-5 "
            "nats per token of rounding difference in fp32, logged as ppo/logprob_mismatch), 'recompute' runs a full forward pass "
            "after sampling (PPO ratio exactly 1 at the first minibatch; TRL's way), 'auto' = sampler in fp32, "
            "recompute in bf16/fp16, whose rounding can put the KV-cache pass much further from a full pass."
        ),
    )
    rollout: RolloutConfig = Field(default_factory=RolloutConfig, description="The engine that samples the rollouts.")
    value_model: Literal["separate", "shared"] = Field(
        "separate", description="'separate' critic transformer, or a value head 'shared' on the policy's backbone."
    )
    value_init: Literal["reward", "policy"] = Field(
        "reward", description="Start the separate critic from the reward model (trunk+head) or the policy (trunk)."
    )

    @property
    def minibatch_size(self) -> int:
        """Responses per optimizer update."""
        return self.optim.micro_batch_size * self.optim.grad_accum_steps

    @property
    def rollout_size(self) -> int:
        """Responses sampled per PPO step (``rollout_batch_size`` resolved)."""
        return self.rollout_batch_size or self.minibatch_size

    @model_validator(mode="after")
    def _batches_divide(self) -> PPOConfig:
        minibatch = self.minibatch_size
        if self.rollout_batch_size is not None and self.rollout_batch_size % minibatch:
            raise ValueError(
                f"rollout_batch_size ({self.rollout_batch_size}) must be a multiple of optim.micro_batch_size * "
                f"optim.grad_accum_steps ({minibatch})"
            )
        return self

    @model_validator(mode="after")
    def _samples_divide(self) -> PPOConfig:
        if self.rollout_size % self.samples_per_prompt:
            raise ValueError(
                f"the rollout batch ({self.rollout_size} responses) must be a multiple of samples_per_prompt "
                f"({self.samples_per_prompt})"
            )
        return self

    @model_validator(mode="after")
    def _vllm_engine_fits(self) -> PPOConfig:
        if self.rollout.engine != "vllm":
            return self
        if self.rollout_logprobs == "sampler":
            raise ValueError(
                "rollout_logprobs='sampler' reads the log-probs off the trainer's own sampler; with rollout.engine='vllm' "
                "the trainer recomputes them: set rollout_logprobs to 'auto' or 'recompute'"
            )
        if self.top_k or self.top_p < 1.0:
            # vLLM's log-probs after top-k/top-p are those of the filtered distribution, not the tempered full one
            raise ValueError("rollout.engine='vllm' samples without top_k/top_p filters: set top_k=0 and top_p=1.0")
        return self

    @model_validator(mode="after")
    def _value_init_fits_value_model(self) -> PPOConfig:
        # Checked here so `rlhf config validate` catches it, not the PPO stage after SFT and RM ran.
        if self.value_model == "shared" and self.value_init == "reward":
            raise ValueError(
                "value_model='shared' puts the value head on the policy's hidden states, so it cannot start "
                "from the reward model's head: set value_init='policy' (or value_model='separate')"
            )
        return self

    def check_processes(self, num_processes: int, strategy: str = "ddp") -> None:
        """ConfigError when ``num_processes`` data-parallel processes (``strategy``) cannot train this PPO config.

        Each process samples whole prompts (all ``samples_per_prompt`` samples of a prompt on one
        process, for score centring), an equal share of the rollout batch; gradients are summed
        with an explicit all-reduce over the plain model, so only ddp applies.
        """
        if num_processes <= 1:
            return
        if strategy != "ddp":
            raise ConfigError(
                f"ppo: distributed.strategy {strategy} is not supported for PPO; data-parallel PPO supports ddp "
                "(set distributed.strategy=ddp, or ppo.enabled=false)"
            )
        if self.rollout_size % (num_processes * self.samples_per_prompt):
            raise ConfigError(
                f"ppo: the rollout batch ({self.rollout_size} responses) must be a multiple of "
                f"distributed.num_processes x samples_per_prompt ({num_processes} x {self.samples_per_prompt} = "
                f"{num_processes * self.samples_per_prompt}), so that each process samples whole prompts"
            )
