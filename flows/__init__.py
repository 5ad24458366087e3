"""Prefect flows composing the tasks, the pipeline config, and the `rlhf` CLI."""
