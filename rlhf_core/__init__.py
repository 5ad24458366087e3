"""Pure RLHF algorithms and training loops (torch + transformers + peft only).

Importing this package is cheap: it must not import prefect, mlflow or
great_expectations (tests/test_imports.py enforces it), and submodules that
need torch import it themselves.
"""
