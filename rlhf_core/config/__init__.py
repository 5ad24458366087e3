"""Every config of the pipeline, one module per concern; torch-free (tests/test_imports.py).

``base`` (StrictModel, the no-credential schema rule), ``model``, ``optim`` (shared by every
training stage), ``sft``, ``reward``, ``ppo``, ``dpo``, ``data``, ``eval``, ``tracking``
(MLflow tracking and registry), ``distributed``, and ``pipeline``: ``PipelineConfig``
composing them, YAML presets, ``--set`` overrides and the one-line config errors. Import
from the module that defines a class; this package ``__init__`` re-exports nothing.

Imports flow one way (tests/test_import_direction.py): flows -> tasks -> rlhf_core /
data_checks -> rlhf_core.config, which imports nothing else from the project but the
standard-library modules ``rlhf_core.errors`` and ``rlhf_core.redact``.
"""
