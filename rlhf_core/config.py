"""Config classes shared by every stage: the strict base and the model config.

Each stage's own config class lives next to its code (``rlhf_core/sft/config.py``,
``data_checks/config.py``, ...); ``flows/config.py`` composes them into the
pipeline config. All are pydantic with ``extra="forbid"``, so a misspelled key
fails loudly instead of being ignored (lm-human-preferences shipped that bug).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, GetJsonSchemaHandler

from rlhf_core.redact import CREDENTIAL_PATTERN

DEFAULT_BASE_MODEL = "smollm2-135m-instruct"


class StrictModel(BaseModel):
    """Base for every config: unknown keys are errors, assignments are validated.

    Its JSON schema (the Prefect UI's parameter form, checked by Prefect's server before a
    flow run is created) refuses a credential in every string field (see :func:`_no_credentials`).
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: GetJsonSchemaHandler) -> dict[str, Any]:
        schema = handler(core_schema)
        _no_credentials(handler.resolve_ref_schema(schema))
        _form_labels(handler.resolve_ref_schema(schema))
        return schema


NO_CREDENTIAL_SCHEMA = {
    "description": "no credential (a password in a URL, a token in a query string, an hf_ token): "
    "secrets come from the environment (HF_TOKEN, MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD, ...)",
    "type": "string",  # `not` of a bare pattern would refuse None and numbers too
    "pattern": CREDENTIAL_PATTERN,
}


def _free_text(node: Any) -> bool:
    return isinstance(node, dict) and node.get("type") == "string" and "enum" not in node and "const" not in node


def _no_credentials(node: Any) -> None:
    """Add ``not: {pattern: CREDENTIAL_PATTERN}`` to every string schema under ``node``, in place.

    Pydantic validators run in the flow run, after Prefect has stored its parameters; the
    schema is what the server enforces before (``enforce_parameter_schema``).
    """
    if isinstance(node, dict):
        branches = node.get("anyOf", [])
        if _free_text(node) or any(_free_text(b) for b in branches):
            # On the field, not inside anyOf: the error then names the rule, not "any of the given
            # schemas"; NO_CREDENTIAL_SCHEMA matches strings only, so None and numbers still pass.
            node["not"] = NO_CREDENTIAL_SCHEMA
            return
        for key, value in node.items():
            if key not in ("not", "default", "examples"):
                _no_credentials(value)
    elif isinstance(node, list):
        for value in node:
            _no_credentials(value)


_MARKUP = re.compile(r"``(.+?)``|`(.+?)`|\*\*(.+?)\*\*|(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])")


def plain_text(doc: str) -> str:
    """Docstring prose as a form shows it: reST/Markdown inline markup (````x````, `x`, *x*) dropped."""
    return _MARKUP.sub(lambda m: next(g for g in m.groups() if g is not None), doc)


def _form_labels(node: dict[str, Any]) -> None:
    """Label the Prefect UI form (this schema) by config key, the names used in YAML and ``--set``:
    each field's title is its key (a section's too, not its class name); descriptions are plain text,
    a section's only its docstring's first paragraph (the rest is for readers of the code)."""
    if node.get("description"):
        node["description"] = plain_text(node["description"].split("\n\n", 1)[0]).replace("\n", " ")
    for key, prop in node.get("properties", {}).items():
        prop["title"] = key
        if prop.get("description"):
            prop["description"] = plain_text(prop["description"])


class TinyModelConfig(StrictModel):
    """A randomly initialised Llama-style model for tests and smoke runs."""

    num_layers: int = Field(2, ge=1, description="Transformer blocks.")
    hidden_size: int = Field(64, ge=8, description="Model width.")
    num_heads: int = Field(4, ge=1, description="Attention heads (must divide hidden_size).")
    intermediate_size: int = Field(128, ge=8, description="MLP width.")
    max_position_embeddings: int = Field(512, ge=16, description="Context length.")
    seed: int = Field(0, description="Seed of the random initialisation.")
    tokenizer: str = Field(
        DEFAULT_BASE_MODEL,
        description="Where the tokenizer comes from (any model source, see ModelConfig.base).",
    )


class ModelConfig(StrictModel):
    """Which base model every stage starts from, and how it is loaded.

    A private or gated hub model needs an access token: it comes from the environment
    (``HF_TOKEN``, or ``hf auth login``), never from this config, which is logged and sent
    to Prefect as a parameter (see ``rlhf_core.redact``).
    """

    base: str = Field(
        DEFAULT_BASE_MODEL,
        description=(
            f"'{DEFAULT_BASE_MODEL}' (the default, shipped on PyPI as a GGUF file), 'tiny' "
            "(random model, see `tiny`), a hub id ('org/name'), a local HF directory, "
            "or a path to a .gguf file."
        ),
    )
    gguf_file: str | None = Field(
        None, description="GGUF file name inside `base` when `base` is a directory or hub repo."
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    trust_remote_code: bool = Field(
        False,
        description=(
            "Per-model opt-in to run the Python code a hub repo ships with its weights (custom architectures). "
            "Off by default: that code runs with your permissions; turn it on only for a source you trust."
        ),
    )
    device: str = Field("auto", description="'auto' (cuda if present, else cpu), 'cpu', 'cuda', 'cuda:1', 'mps'.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="'auto' = bfloat16 on CUDA, float32 otherwise."
    )
    cache_dir: Path | None = Field(
        None, description="Where dequantized/converted models are cached (default: <workspace>/models)."
    )
    tiny: TinyModelConfig = Field(default_factory=TinyModelConfig)
