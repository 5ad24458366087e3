"""Thin Prefect tasks: load inputs, call rlhf_core / data_checks, log to MLflow, return paths."""
