"""Errors a user can act on.

Anything raised as a :class:`UserError` is printed by the CLI as one line
(``error: <message>``) with a non-zero exit code, never as a bare traceback.
The message names what is wrong and where (file, row, key, rule).
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input (config, data, paths, checkpoints).

    ``log_file``: where the full log (the traceback) went, when the error ended a run whose
    log has one (`rlhf run` sets it); the CLI names it on a second line.
    ``run_id``: the run a stage failed in (`rlhf run`/`rlhf eval` set it), and ``resume``: the
    command that carries that run on once the cause is fixed (the CLI sets it, printed last).
    """

    exit_code: int = 2
    log_file: str | None = None
    run_id: str | None = None
    resume: str | None = None


class ConfigError(UserError):
    """A config file is missing, malformed, or has an unknown key or wrong type."""


class ModelLoadError(UserError):
    """A model or tokenizer could not be located or loaded."""


class DataError(UserError):
    """A data file is missing, unreadable, or violates its contract."""


class TooLongError(DataError):
    """A row does not fit the token limit, even after the truncation the settings allow."""


class TrainingError(UserError):
    """Training cannot start or had to stop (bad checkpoint, NaN loss, ...)."""

    exit_code = 3
