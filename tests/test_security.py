"""Security: secrets stay out of every record, unsafe loading is impossible, servers stay on loopback.

* Redaction (`rlhf_core.redact`) and the config validators that refuse a credential in a config.
* The smoke pipeline under `prefect_test_harness` with fake secrets in the environment: no byte
  of any of them in any file of the workspace (MLflow store and artifacts, run directory),
  Prefect's database and result storage, or the Prefect flow-run parameters and artifacts.
* Source checks (AST): `torch.load(..., weights_only=True)` only, no literal
  `trust_remote_code=True`, model weights from safetensors only, no pickle-based loaders.
* Pickle `.bin` weights are refused (and never unpickled); `trust_remote_code` is a per-model
  opt-in that reaches transformers; both servers bind to loopback unless told otherwise.
"""

from __future__ import annotations

import ast
import functools
import inspect
import json
import os
from pathlib import Path

import pytest

from rlhf_core.redact import (
    MASK,
    find_credential,
    find_credentials_in,
    is_secret_key,
    redact,
    redact_text,
    secret_env_values,
)

from .conftest import MODEL_CACHE, REPO

# Fake secrets, long and unique enough that finding one anywhere can only mean a leak.
FAKE_SECRETS = {
    "HF_TOKEN": "hf_FAKEsecurityTestToken0123456789abcdef",
    "HUGGING_FACE_HUB_TOKEN": "hf_FAKEsecondHubToken9876543210zyxwv",
    "MLFLOW_TRACKING_USERNAME": "rlhf-test-user",
    "MLFLOW_TRACKING_PASSWORD": "FAKE-mlflow-pw-7c1e0b2f",
    "MLFLOW_TRACKING_TOKEN": "FAKE-mlflow-token-93ad51c4",
    "PGPASSWORD": "FAKE-pg-pw-51d2e8a0",
    "AWS_SECRET_ACCESS_KEY": "FAKE/aws+secret+key+6e0c1b",
    "RLHF_TEST_DATABASE_URL": "postgresql://rlhf:FAKE-db-url-pw-0b7d@db.internal:5432/mlflow",
}
NEEDLES = [v for k, v in FAKE_SECRETS.items() if k != "MLFLOW_TRACKING_USERNAME"] + ["FAKE-db-url-pw-0b7d"]


# --- redaction --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "secret"),
    [
        ("HF_TOKEN", True), ("hub_token", True), ("MLFLOW_TRACKING_PASSWORD", True), ("PGPASSWORD", True),
        ("api_key", True), ("apiKey", True), ("PREFECT_API_KEY", True), ("PREFECT_API_AUTH_STRING", True),
        ("AWS_SECRET_ACCESS_KEY", True), ("client_secret", True), ("tracking.password", True),
        ("max_new_tokens", False), ("pad_token_id", False), ("tokenizer", False), ("model.tiny.tokenizer", False),
        ("TOKENIZERS_PARALLELISM", False), ("data.max_prompt_tokens", False), ("hub_token_env", False),
        ("HF_TOKEN_PATH", False), ("AWS_ACCESS_KEY_ID", False), ("MLFLOW_TRACKING_USERNAME", False),
        ("sft.optim.max_steps", False),
    ],
)  # fmt: skip
def test_secret_keys_are_told_from_look_alikes(key, secret):
    assert is_secret_key(key) is secret


def test_secret_env_values_take_secret_names_and_url_passwords_only():
    env = {
        "HF_TOKEN": "hf_abcdefghijklmnopqrstuvwxyz012345",
        "PREFECT_API_AUTH_STRING": "admin:correct-horse-battery",
        "DATABASE_URL": "postgresql://u:db-password-123@h/db",
        "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",  # too short / boolean: never masked inside text
        "SOME_TOKEN": "true",
        "PWD": "/work/main/somewhere/long",  # the working directory, not a password
        "HOME": "/root/very-long-home-directory",
    }
    values = secret_env_values(env)
    assert set(values) == {
        "hf_abcdefghijklmnopqrstuvwxyz012345", "admin:correct-horse-battery", "correct-horse-battery", "db-password-123",
    }  # fmt: skip
    assert values == sorted(values, key=len, reverse=True)  # the longest first: masked whole


def test_redact_text_masks_urls_queries_tokens_env_values_and_key_value_pairs():
    secrets = ["s3cr3t-from-env-123"]
    text = (
        "store postgresql://bob:hunter22@db/mlflow, server https://alice:pw@mlflow.example.com/api "
        "signed https://b.s3.amazonaws.com/x?X-Amz-Signature=abcdef&part=2 hub hf_abcdefghijklmnopqrstuvwxyz "
        "env s3cr3t-from-env-123 cli --set password=hunter3 \"api_key\": \"k-123\" max_new_tokens: 8 "
        "plain sqlite:////tmp/ws/mlflow.db postgresql://bob@db/mlflow"
    )
    out = redact_text(text, secrets)
    for leaked in ("hunter22", ":pw@", "abcdef&", "hf_abcdefghij", "s3cr3t-from-env-123", "hunter3", "k-123"):
        assert leaked not in out, (leaked, out)
    assert "postgresql://bob:***@db/mlflow" in out and "https://alice:***@mlflow.example.com/api" in out
    assert "X-Amz-Signature=***&part=2" in out and "password=***" in out
    # what is not a secret is left exactly as it was
    assert "max_new_tokens: 8" in out and "sqlite:////tmp/ws/mlflow.db" in out and "postgresql://bob@db/mlflow" in out


def test_redact_masks_secret_keys_recursively_and_keeps_everything_else():
    tree = {
        "tracking": {"tracking_uri": "http://u:p4ss@h:5000", "password": "x", "experiment": None},
        "hub": {"hf_token": "anything", "token_env": "HF_TOKEN", "empty_token": ""},
        "sft": {"optim": {"max_steps": 3, "lr": 1e-3}, "max_new_tokens": 8},
        "list": ["fine", "see FAKE-env-secret-0001", ("t", 1)],
    }
    out = redact(tree, ["FAKE-env-secret-0001"])
    assert out["tracking"] == {"tracking_uri": "http://u:***@h:5000", "password": MASK, "experiment": None}
    assert out["hub"] == {"hf_token": MASK, "token_env": "HF_TOKEN", "empty_token": ""}
    assert out["sft"] == tree["sft"]
    assert out["list"] == ["fine", f"see {MASK}", ("t", 1)]
    assert tree["tracking"]["password"] == "x"  # a copy: the input is untouched


def test_find_credential_flags_passwords_signed_urls_and_hub_tokens_only():
    assert "password" in find_credential("postgresql://u:pw@h/db")
    assert "password" in find_credential("http://u:pw@mlflow:5000")
    assert "query string" in find_credential("https://x/y.parquet?token=abc")
    assert "Hugging Face" in find_credential("hf_abcdefghijklmnopqrstuvwxyz")
    for fine in ("postgresql://u@h/db", "sqlite:////tmp/mlflow.db", "http://127.0.0.1:5000", "org/model",
                 "data/demo/preferences.jsonl", "https://x/y.parquet?revision=main", ""):
        assert find_credential(fine) is None, fine
    assert find_credentials_in({"a": {"b": ["ok", "http://u:p@h"]}}) == [("a.b.1", find_credential("http://u:p@h"))]


# --- config validators ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "uri", ["postgresql://rlhf:FAKE-pw-1@db:5432/mlflow", "http://u:FAKE-pw-1@mlflow.example.com", "https://h/?token=FAKE-pw-1"]
)
def test_a_tracking_uri_with_a_password_is_refused_in_one_line_naming_the_env_vars(uri):
    from rlhf_core.config.pipeline import load_config
    from rlhf_core.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        load_config("smoke", [f"tracking.tracking_uri={uri}"])
    message = str(err.value)
    assert len(message.splitlines()) == 1
    assert "tracking.tracking_uri" in message
    assert "MLFLOW_TRACKING_USERNAME" in message and "MLFLOW_TRACKING_PASSWORD" in message and "PGPASSWORD" in message
    assert "FAKE-pw-1" not in message  # the refusal does not print the secret either


def test_a_credential_anywhere_in_the_config_is_refused_naming_the_key(tmp_path):
    from rlhf_core.config.pipeline import load_config
    from rlhf_core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"model\.base: the value embeds a password.*HF_TOKEN") as err:
        load_config("smoke", ["model.base=https://me:FAKE-pw-2@models.example.com/m.gguf"])
    assert "FAKE-pw-2" not in str(err.value)
    with pytest.raises(ConfigError, match=r"model\.revision: .*Hugging Face access token"):
        load_config("smoke", ["model.revision=hf_abcdefghijklmnopqrstuvwxyz0123"])
    assert load_config("smoke", ["tracking.tracking_uri=postgresql://rlhf@db:5432/mlflow"])  # a user name is fine


def test_no_config_field_is_a_place_for_a_secret():
    """Secrets come from the environment: no field of any config may be named like one."""
    from pydantic import BaseModel

    from rlhf_core.config.pipeline import PipelineConfig

    def fields(model: type[BaseModel], prefix: str = ""):
        for name, info in model.model_fields.items():
            yield f"{prefix}{name}"
            for arg in [info.annotation, *getattr(info.annotation, "__args__", ())]:
                if isinstance(arg, type) and issubclass(arg, BaseModel):
                    yield from fields(arg, f"{prefix}{name}.")

    names = list(fields(PipelineConfig))
    assert "model.trust_remote_code" in names and len(names) > 50
    assert [n for n in names if is_secret_key(n)] == []


def test_config_dumps_and_cli_errors_are_redacted(monkeypatch, capsys):
    from flows import cli
    from rlhf_core.config.pipeline import PipelineConfig, dump_config, load_config
    from rlhf_core.errors import ConfigError

    cfg = load_config("smoke")
    # a secret that got past validation (constructed directly) is still masked in the dump
    forged = PipelineConfig.model_construct(**{**dict(cfg), "name": "run-hf_abcdefghijklmnopqrstuvwxyz"})
    assert "hf_abcdefghij" not in dump_config(forged)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "FAKE-cli-secret-77")

    def fail(*args, **kwargs):
        raise ConfigError("cannot reach http://u:FAKE-cli-secret-77@h (and FAKE-cli-secret-77)")

    monkeypatch.setattr(cli, "app", fail)
    with pytest.raises(SystemExit):
        cli.main()
    assert "FAKE-cli-secret-77" not in capsys.readouterr().err


def test_deploy_refuses_a_tracking_uri_with_a_password_without_printing_it(tmp_path):
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "flows.cli_servers", "deploy", "-c", "smoke", "-w", str(tmp_path), "--no-worker",
         "--tracking-uri", "http://admin:FAKE-deploy-pw-3@127.0.0.1:1", "--prefect-api-url", "http://127.0.0.1:1/api"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--tracking-uri" in errors[0] and "MLFLOW_TRACKING_PASSWORD" in errors[0], result.stderr
    assert "FAKE-deploy-pw-3" not in result.stdout + result.stderr and "Traceback" not in result.stderr


def test_mlflow_tracker_log_params_masks_secrets(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from tasks.tracking import MlflowTracker

    monkeypatch.setenv("HF_TOKEN", FAKE_SECRETS["HF_TOKEN"])
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("redaction", artifact_location=(tmp_path / "a").as_uri()))
    MlflowTracker(run.info.run_id, uri).log_params(
        {"hub": {"api_token": "tok-123456"}, "uri": "postgresql://u:pw-123456@h/db", "note": FAKE_SECRETS["HF_TOKEN"],
         "sft": {"max_new_tokens": 8}}
    )  # fmt: skip
    params = client.get_run(run.info.run_id).data.params
    assert params == {"hub.api_token": MASK, "uri": "postgresql://u:***@h/db", "note": MASK, "sft.max_new_tokens": "8"}


# --- the pipeline, scanned --------------------------------------------------------------------


def _files_containing(root: Path, needles: list[str]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            hits = [n for n in needles if n.encode() in data]
            if hits:
                found[str(path)] = hits
    return found


@pytest.fixture(scope="module")
def smoke_run_with_secrets(tmp_path_factory):
    """The smoke pipeline with fake secrets in the environment; what it recorded, where."""
    workspace = tmp_path_factory.mktemp("ws-secrets")
    saved = {k: os.environ.get(k) for k in FAKE_SECRETS}
    os.environ.update(FAKE_SECRETS)
    os.environ.setdefault("PREFECT_HOME", str(workspace / "prefect"))
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, PREFECT_SERVER_DATABASE_CONNECTION_URL, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    from flows.stages import rlhf_pipeline
    from rlhf_core.config.pipeline import load_config

    cfg = load_config("smoke", [f"workspace={workspace}", f"model.cache_dir={MODEL_CACHE}"])
    cwd = os.getcwd()
    os.chdir(REPO)  # the preset's data paths are relative to the repo
    try:
        with prefect_test_harness(server_startup_timeout=180), temporary_settings(
            updates={PREFECT_LOCAL_STORAGE_PATH: workspace / "prefect-results"}
        ):
            result = rlhf_pipeline(cfg)
            prefect_db = Path(PREFECT_SERVER_DATABASE_CONNECTION_URL.value().split(":///", 1)[1])
            with get_client(sync_client=True) as client:
                flow_runs = client.read_flow_runs()
                artifacts = client.read_artifacts()
    finally:
        os.chdir(cwd)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    # the harness keeps its database until the process exits: scanned after its logs were flushed
    return workspace, result, prefect_db, flow_runs, artifacts


def test_no_secret_in_any_file_the_pipeline_wrote(smoke_run_with_secrets):
    workspace, result, prefect_db, _, _ = smoke_run_with_secrets
    assert result["mlflow_run_id"] and os.path.isdir(result["run_dir"])
    assert (workspace / "mlflow" / "mlflow.db").is_file() and (workspace / "prefect-results").is_dir()
    assert prefect_db.is_file()
    for root in (workspace, prefect_db.parent):
        assert _files_containing(root, NEEDLES) == {}, f"secrets found under {root}"
    # the scan is real: it does find what is there (the run id is recorded in the Prefect DB)
    assert _files_containing(prefect_db.parent, [Path(result["run_dir"]).name])


def test_no_secret_in_prefect_parameters_or_artifacts(smoke_run_with_secrets):
    _, result, _, flow_runs, artifacts = smoke_run_with_secrets
    names = {run.name for run in flow_runs}
    assert len(flow_runs) >= 7, names  # the pipeline and its six stage subflows
    blob = json.dumps([run.parameters for run in flow_runs], default=str)
    blob += json.dumps([[a.key, a.description, a.data] for a in artifacts], default=str)
    assert '"config"' in blob and "model" in blob
    assert [n for n in NEEDLES if n in blob] == []


def test_no_secret_in_mlflow_params_tags_or_artifacts(smoke_run_with_secrets):
    from mlflow.tracking import MlflowClient

    _, result, _, _, _ = smoke_run_with_secrets
    client = MlflowClient(result["tracking_uri"])
    runs = client.search_runs([result["experiment_id"]])
    assert len(runs) >= 7
    blob = json.dumps([[r.data.params, r.data.tags] for r in runs])
    assert "model.base" in blob and [n for n in NEEDLES if n in blob] == []


# --- source checks ----------------------------------------------------------------------------

SCANNED = ("rlhf_core", "tasks", "flows", "data_checks", "bench")
PRODUCT = ("rlhf_core", "tasks", "flows", "data_checks")
# from_pretrained of these reads model weights: safetensors only (or a GGUF file).
WEIGHT_LOADERS = ("AutoModel", "ForCausalLM", "ForSequenceClassification", "PreTrainedModel")
# Loaders that unpickle, hence run code from the file.
UNSAFE_CALLS = {
    ("pickle", "load"), ("pickle", "loads"), ("dill", "load"), ("dill", "loads"), ("joblib", "load"),
    ("yaml", "load"), ("yaml", "unsafe_load"), ("yaml", "full_load"), ("pd", "read_pickle"), ("pandas", "read_pickle"),
}  # fmt: skip


@functools.cache
def _python_files(packages=SCANNED) -> list[tuple[Path, ast.Module]]:
    return list(_parse(packages))


def _parse(packages):
    for package in packages:
        for path in sorted((REPO / package).rglob("*.py")):
            rel = path.relative_to(REPO)
            if any(part.startswith(".") or part in ("__pycache__", "site-packages") for part in rel.parts):
                continue  # virtualenvs of the benchmarks (bench/.venv-*), caches
            yield rel, ast.parse(path.read_text(encoding="utf-8"), filename=str(rel))


def _calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node


def _dotted(func) -> tuple[str, str] | None:
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
        return func.value.id, func.attr
    return None


def _kw(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_true(node) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def test_every_torch_load_passes_weights_only_true():
    bad, seen = [], 0
    for rel, tree in _python_files():
        torch_names = {"torch"} | {
            a.asname for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names if a.name == "torch" and a.asname
        }
        load_names = {
            a.asname or a.name for n in ast.walk(tree)
            if isinstance(n, ast.ImportFrom) and n.module == "torch" for a in n.names if a.name == "load"
        }  # fmt: skip
        for call in _calls(tree):
            dotted = _dotted(call.func)
            if (dotted and dotted[0] in torch_names and dotted[1] == "load") or (
                isinstance(call.func, ast.Name) and call.func.id in load_names
            ):
                seen += 1
                if not _is_true(_kw(call, "weights_only")):
                    bad.append(f"{rel}:{call.lineno}")
    assert seen >= 3  # the checkpoint loader's calls, at least: the check looks at real code
    assert bad == [], f"torch.load without weights_only=True (unpickles arbitrary code): {bad}"


def test_no_code_turns_trust_remote_code_on_by_itself():
    bad = []
    for rel, tree in _python_files():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and _is_true(_kw(node, "trust_remote_code")):
                bad.append(f"{rel}:{node.lineno}")
            if isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values):
                    if isinstance(key, ast.Constant) and key.value == "trust_remote_code" and _is_true(value):
                        bad.append(f"{rel}:{node.lineno}")
    assert bad == [], f"trust_remote_code=True hard-coded (it must come from model.trust_remote_code): {bad}"


def test_model_weights_load_from_safetensors_only_and_nothing_unpickles():
    unsafe_weights, unsafe_calls, seen = [], [], 0
    for rel, tree in _python_files(PRODUCT):
        for call in _calls(tree):
            dotted = _dotted(call.func)
            if dotted and dotted[1] == "from_pretrained" and any(w in dotted[0] for w in WEIGHT_LOADERS):
                seen += 1
                if not (_is_true(_kw(call, "use_safetensors")) or _kw(call, "gguf_file") is not None):
                    unsafe_weights.append(f"{rel}:{call.lineno} {dotted[0]}.from_pretrained")
            if dotted in UNSAFE_CALLS:
                unsafe_calls.append(f"{rel}:{call.lineno} {'.'.join(dotted)}")
            if dotted and dotted[1] == "load" and _is_true(_kw(call, "allow_pickle")):
                unsafe_calls.append(f"{rel}:{call.lineno} {'.'.join(dotted)}(allow_pickle=True)")
    assert seen >= 4
    assert unsafe_weights == [], f"from_pretrained may fall back to pickle .bin weights: {unsafe_weights}"
    assert unsafe_calls == [], f"pickle-based loaders: {unsafe_calls}"


class _Payload:
    """What a malicious pytorch_model.bin carries: unpickling it creates a file (it could do anything)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_bin_weights_are_refused_and_never_unpickled(tmp_path, tiny_model):
    import torch

    from rlhf_core.config.model import ModelConfig
    from rlhf_core.errors import ModelLoadError
    from rlhf_core.models import load_causal_lm
    from rlhf_core.reward.model import RewardModel

    model_dir = tmp_path / "pickled"
    tiny_model.config.save_pretrained(model_dir)
    marker = tmp_path / "code-ran"
    state = dict(tiny_model.state_dict())
    state["__payload__"] = _Payload(str(marker))
    torch.save(state, model_dir / "pytorch_model.bin")
    (model_dir / "rlhf_stage.json").write_text(json.dumps({"stage": "reward"}))
    with pytest.raises(ModelLoadError, match="pickled"):
        load_causal_lm(ModelConfig(base="tiny"), MODEL_CACHE, path=model_dir)
    with pytest.raises(ModelLoadError, match="pickled"):
        load_causal_lm(ModelConfig(base=str(model_dir)), MODEL_CACHE)
    with pytest.raises(ModelLoadError, match="pickled"):
        RewardModel.from_pretrained(model_dir)
    assert not marker.exists(), "a pickled weights file was unpickled"
    # the payload is real: plain unpickling runs it
    torch.load(model_dir / "pytorch_model.bin", weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("trust", [False, True])
def test_trust_remote_code_is_a_per_model_opt_in_passed_to_transformers(tmp_path, monkeypatch, tiny_model, trust):
    import transformers

    from rlhf_core.config.model import ModelConfig
    from rlhf_core.models import load_causal_lm, load_tokenizer

    model_dir = tmp_path / "model"
    tiny_model.config.save_pretrained(model_dir)
    seen = {}

    def fake(kind, result):
        def from_pretrained(location, *args, **kwargs):
            seen[kind] = kwargs
            return result
        return classmethod(lambda cls, *a, **k: from_pretrained(*a, **k))

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake("model", tiny_model))
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", fake("tokenizer", _FakeTokenizer()))
    cfg = ModelConfig(base=str(model_dir), trust_remote_code=trust)
    assert ModelConfig().trust_remote_code is False  # off unless a config turns it on
    load_tokenizer(cfg, MODEL_CACHE)
    load_causal_lm(cfg, MODEL_CACHE)
    assert seen["model"]["trust_remote_code"] is trust and seen["model"]["use_safetensors"] is True
    assert seen["tokenizer"]["trust_remote_code"] is trust


class _FakeTokenizer:
    pad_token = "<pad>"
    eos_token = "<eos>"


# --- servers ----------------------------------------------------------------------------------


def test_servers_bind_to_loopback_by_default():
    from flows import cli_servers, servers

    assert servers.DEFAULT_HOST == "127.0.0.1"
    for fn in (servers.start_servers, servers.start_prefect_server, servers.start_mlflow_server):
        assert inspect.signature(fn).parameters["host"].default == "127.0.0.1", fn.__name__
    import typer

    app = typer.Typer()
    cli_servers.register(app)
    ui = next(c for c in app.registered_commands if c.name == "ui").callback
    default = inspect.signature(ui).parameters["host"].default
    assert getattr(default, "default", default) == "127.0.0.1"
    assert "127.0.0.1" in cli_servers.LOOPBACK


def test_readme_security_section_links_the_authentication_guide():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Security", 1)[1].split("\n## ", 1)[0]
    assert "infra/README.md" in section and "HF_TOKEN" in section and "weights_only" in section
    guide = (REPO / "infra" / "README.md").read_text(encoding="utf-8")
    assert "authentication" in guide.lower() and "PREFECT_SERVER_API_AUTH_STRING" in guide
