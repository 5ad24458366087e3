"""The strict base of every config class, and the schema rule that keeps credentials out.

Every config of the pipeline lives in this package, one module per concern (``model``,
``optim``, ``sft``, ``reward``, ``ppo``, ``dpo``, ``data``, ``eval``, ``tracking``,
``distributed``), composed by ``pipeline.PipelineConfig``. All are pydantic with
``extra="forbid"``, so a misspelled key fails loudly instead of being ignored
(lm-human-preferences shipped that bug).
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, GetJsonSchemaHandler

from rlhf_core.redact import CREDENTIAL_PATTERN


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
