"""Keep secrets out of everything the pipeline records: params, artifacts, config dumps, messages.

Secrets (hub tokens, tracking-server and database passwords) come from the environment
(``HF_TOKEN``, ``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD`` or
``MLFLOW_TRACKING_TOKEN``, ``PGPASSWORD``, ``PREFECT_API_KEY``/``PREFECT_API_AUTH_STRING``, ...),
never from a config: :func:`find_credential` is what the config validators use to refuse a
value that carries one. :func:`redact` is the second line of defence, applied wherever params or
configs are logged or written: it masks

* the value of any mapping key that names a secret (``token``, ``password``, ``secret``,
  ``api_key``, ... but not ``max_new_tokens`` or ``pad_token_id``);
* passwords in URLs (``postgresql://user:***@host/db``) and credentials in query strings
  (``?token=***``);
* anything that looks like a Hugging Face access token (``hf_...``);
* the current values of secret-looking environment variables wherever they occur in a string.

Pure standard library: safe to import from anywhere (the CLI's fast path included).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

MASK = "***"

# Words that make a key (or an environment variable) name a secret ...
_SECRET_WORDS = frozenset(
    {"token", "password", "passwd", "passphrase", "secret", "credential", "credentials", "apikey", "pwd"}
)
_SECRET_SUFFIXES = ("token", "password", "passwd", "secret", "apikey", "passphrase")
# ... pairs of adjacent words that do ...
_SECRET_PAIRS = frozenset(
    {("api", "key"), ("access", "key"), ("private", "key"), ("secret", "key"), ("auth", "string"), ("auth", "token")}
)
# ... and last words that make it name something about a secret, not the secret itself
# (HF_TOKEN_PATH, pad_token_id, hub_token_env: a path, an id, the name of a variable).
_NOT_A_VALUE = frozenset(
    {"env", "var", "variable", "file", "path", "dir", "name", "names", "id", "ids", "type", "count",
     "length", "len", "limit", "size", "budget", "enabled", "disabled", "mode", "timeout", "url", "uri"}
)
# Query-string parameters that carry a credential whatever they are called (S3/GCS/Azure signed URLs).
_SIGNATURE_PARAMS = frozenset(
    {"sig", "signature", "x-amz-signature", "x-amz-credential", "x-amz-security-token", "x-goog-signature",
     "x-goog-credential", "key", "code", "auth"}
)
# `PWD` is the shell's working directory, not a password.
_ENV_NOT_SECRET = frozenset({"PWD", "OLDPWD"})
# Environment values shorter than this are not masked inside other strings: masking "1" or
# "true" everywhere would mangle every path and number (they are still masked under a secret key).
MIN_ENV_SECRET_LENGTH = 8
_BORING_VALUES = frozenset({"true", "false", "yes", "no", "none", "null", "on", "off"})

_WORD_SPLIT = re.compile(r"[^A-Za-z0-9]+|(?<=[a-z0-9])(?=[A-Z])")
# scheme://user:password@  (password may be empty; user may be empty: "redis://:pw@host")
_URL_USERINFO = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/?#@\s]*):(?P<pw>[^@/?#\s]*)@")
_QUERY_PARAM = re.compile(r"(?P<sep>[?&;])(?P<name>[^=&#;\s]+)=(?P<value>[^&#;\s]*)")
_HF_TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{20,}\b")
# `password=...`, `"api_key": "..."`, `token: ...` in free text (the key decides, see is_secret_key).
_KEY_VALUE = re.compile(
    r"(?P<key>[A-Za-z_][A-Za-z0-9_.\-]*)(?P<q1>[\"']?)(?P<sep>\s*[=:]\s*)(?P<q2>[\"']?)(?P<value>[^\s\"',;&}\]]+)"
)


def _words(name: str) -> list[str]:
    return [w.lower() for w in _WORD_SPLIT.split(name) if w]


def is_secret_key(name: str) -> bool:
    """Whether a key or variable name (``hf_token``, ``MLFLOW_TRACKING_PASSWORD``, ``apiKey``) names a secret."""
    words = _words(str(name))
    if not words or words[-1] in _NOT_A_VALUE:
        return False
    # `in`/`endswith`: PGPASSWORD, accesstoken; not `max_new_tokens`, not `tokenizer`.
    if any(w in _SECRET_WORDS or w.endswith(_SECRET_SUFFIXES) for w in words):
        return True
    return any(pair in _SECRET_PAIRS for pair in zip(words, words[1:]))


def _is_secret_query_param(name: str) -> bool:
    return name.lower() in _SIGNATURE_PARAMS or is_secret_key(name)


def secret_env_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """The values to mask wherever they appear: secret-named variables, and passwords in URL-valued ones.

    Longest first, so a secret that contains another is masked whole.
    """
    environ = os.environ if environ is None else environ
    found: set[str] = set()
    for name, value in environ.items():
        if not value:
            continue
        if name.upper() not in _ENV_NOT_SECRET and is_secret_key(name):
            found.add(value)
            # "user:password" (PREFECT_API_AUTH_STRING) and "key=value" forms: the parts too.
            found.update(part for part in re.split(r"[:=]", value, maxsplit=1)[1:])
        for match in _URL_USERINFO.finditer(value):
            found.add(match.group("pw"))
    usable = {v for v in found if len(v) >= MIN_ENV_SECRET_LENGTH and v.lower() not in _BORING_VALUES}
    return sorted(usable, key=len, reverse=True)


def redact_text(text: str, secrets: Iterable[str] | None = None) -> str:
    """``text`` with every credential it carries masked (see the module docstring)."""
    if not text:
        return text
    secrets = secret_env_values() if secrets is None else secrets
    for value in secrets:
        if value and value in text:
            text = text.replace(value, MASK)
    text = _URL_USERINFO.sub(lambda m: f"{m.group('head')}:{MASK}@", text)
    text = _QUERY_PARAM.sub(
        lambda m: f"{m.group('sep')}{m.group('name')}={MASK}" if _is_secret_query_param(m.group("name")) else m.group(0),
        text,
    )
    text = _HF_TOKEN.sub(f"hf_{MASK}", text)
    return _KEY_VALUE.sub(
        lambda m: (
            f"{m.group('key')}{m.group('q1')}{m.group('sep')}{m.group('q2')}{MASK}"
            if is_secret_key(m.group("key")) and m.group("value") != MASK
            else m.group(0)
        ),
        text,
    )


def redact(obj: Any, secrets: Iterable[str] | None = None) -> Any:
    """A copy of ``obj`` (mappings, lists, tuples, strings, scalars) with every secret masked.

    Under a key that names a secret any non-empty value becomes ``***``; strings are masked
    with :func:`redact_text`; other scalars pass through unchanged.
    """
    secrets = secret_env_values() if secrets is None else list(secrets)
    if isinstance(obj, Mapping):
        out = {}
        for key, value in obj.items():
            if is_secret_key(str(key)) and value not in (None, "", False) and not isinstance(value, Mapping):
                out[key] = MASK
            else:
                out[key] = redact(value, secrets)
        return out
    if isinstance(obj, list):
        return [redact(v, secrets) for v in obj]
    if isinstance(obj, tuple):
        return tuple(redact(v, secrets) for v in obj)
    if isinstance(obj, str):
        return redact_text(obj, secrets)
    return obj


def find_credential(value: str) -> str | None:
    """Why ``value`` (a URI, a path, a model id) carries a credential, or None if it does not."""
    if not isinstance(value, str) or not value:
        return None
    match = _URL_USERINFO.search(value)
    if match and match.group("pw"):
        return "embeds a password (user:password@host)"
    for match in _QUERY_PARAM.finditer(value):
        if _is_secret_query_param(match.group("name")) and match.group("value"):
            return f"carries a credential in its query string ('{match.group('name')}=...')"
    if _HF_TOKEN.search(value):
        return "contains what looks like a Hugging Face access token (hf_...)"
    return None


def _any_case(word: str) -> str:
    """``word`` as a case-insensitive regex without inline flags (JSON Schema patterns have none)."""
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c if c in "_-" else re.escape(c) for c in word)


def _credential_pattern() -> str:
    """One regex that matches every value :func:`find_credential` flags (and a little more).

    It goes into the JSON schema of every string config field (``not: {pattern: ...}``), which is
    what Prefect's server checks a deployment's parameters against *before* it creates a flow
    run: a credential typed into the UI's form is refused there, never stored. Pydantic's own
    validator (:func:`find_credential`) runs only after the run exists. In query strings it is
    stricter than :func:`is_secret_key` (a parameter name merely containing a secret word
    matches), so the schema refuses at least what the validator refuses.
    """
    name_chars = r"[^=&#;\s]*"
    words = sorted(_SECRET_WORDS | {"api_key", "api-key", "access_key", "private_key", "auth"})
    secret_name = f"{name_chars}(?:{'|'.join(_any_case(w) for w in words)}){name_chars}"
    signature = "|".join(_any_case(p) for p in sorted(_SIGNATURE_PARAMS))
    return "|".join(
        (
            r"[A-Za-z][A-Za-z0-9+.\-]*://[^:/?#@\s]*:[^@/?#\s]+@",  # scheme://user:password@
            rf"[?&;](?:{secret_name}|{signature})=[^&#;\s]+",  # ?token=..., ?X-Amz-Signature=...
            r"\bhf_[A-Za-z0-9]{20,}\b",  # a Hugging Face access token
        )
    )


CREDENTIAL_PATTERN = _credential_pattern()


def find_credentials_in(tree: Any, prefix: str = "") -> list[tuple[str, str]]:
    """Every ``(dotted.key, reason)`` in a config tree whose value carries a credential."""
    found: list[tuple[str, str]] = []
    if isinstance(tree, Mapping):
        for key, value in tree.items():
            found += find_credentials_in(value, f"{prefix}{key}.")
    elif isinstance(tree, (list, tuple)):
        for i, value in enumerate(tree):
            found += find_credentials_in(value, f"{prefix}{i}.")
    else:
        reason = find_credential(tree) if isinstance(tree, str) else None
        if reason:
            found.append((prefix.rstrip("."), reason))
    return found


def uri_host(uri: str) -> str:
    """``scheme://host[:port]`` of a URI without credentials (for messages)."""
    parts = urlsplit(uri)
    return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}"
