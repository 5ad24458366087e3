"""PPO against the reward model with a KL penalty to the frozen SFT model."""
