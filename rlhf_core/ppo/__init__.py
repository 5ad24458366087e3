"""PPO against the reward model with a KL penalty to the frozen SFT model.

The PPO step as a numbered recipe, one module per step (import them directly; this package
``__init__`` stays import-light; the stage's config is ``rlhf_core.config.ppo``):

1. ``rollout``  sampling with a KV cache, ``truncate_after_eos``, ``policy_logprobs``
2. ``score``    reward model on prompt + response, re-tokenisation, missing-EOS penalty
3. ``kl``       KL estimators k1/k2/k3, ``kl_penalized_rewards``, fixed/adaptive controllers,
                ``reference_logprobs`` (LoRA: adapters disabled, no second copy)
4. ``value``    separate critic or shared value head; ``gae``: ``compute_gae``
5. ``loss``     clipped policy / value losses, entropy, PPO-ptx, explained variance
6. ``experience`` ``Experience`` (one step's tensors grouped by role) and ``make_experience``:
                rollout -> score -> KL-penalised rewards -> values/GAE, one finiteness check
7. ``trainer``  ``train_ppo``: ``make_experience`` -> ``ppo_update`` (minibatch epochs) ->
                ``step_metrics``, on the shared ``training.RunState`` (resume, checkpoints, progress)
"""
