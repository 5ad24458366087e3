"""Model loading: sources, errors, the tiny factory, device/dtype, and the real default model."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from rlhf_core.config.model import ModelConfig, TinyModelConfig
from rlhf_core.devices import resolve_device, resolve_dtype
from rlhf_core.errors import ConfigError, ModelLoadError
from rlhf_core.generation import chat_reply, sample_replies
from rlhf_core.models import (
    build_tiny_model,
    default_gguf_path,
    load_causal_lm,
    load_tokenizer,
    resolve_source,
)


def test_source_classification(tmp_path):
    assert resolve_source("tiny").kind == "tiny"
    assert resolve_source("smollm2-135m-instruct").kind == "gguf"
    assert resolve_source("HuggingFaceTB/SmolLM2-135M-Instruct").kind == "hub"
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    assert resolve_source(str(hf)) .kind == "hf_dir"


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda p: str(p / "missing.gguf"), "model file not found"),
        (lambda p: str(p / "no" / "such" / "dir"), "model path does not exist"),
        (lambda p: (p / "empty").mkdir() or str(p / "empty"), "not a Hugging Face model directory"),
        (lambda p: (p / "f.bin").write_text("x") and str(p / "f.bin"), "not a directory or a .gguf file"),
    ],
)
def test_bad_model_paths_give_clear_errors(tmp_path, make, expected):
    with pytest.raises(ModelLoadError, match=expected):
        resolve_source(make(tmp_path))


def test_corrupt_gguf_is_a_clear_error(tmp_path, model_cache):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(ModelLoadError, match=r"cannot read GGUF model .*broken\.gguf"):
        load_causal_lm(ModelConfig(base=str(bad)), tmp_path / "cache")


def test_tiny_model_is_deterministic_by_seed(tiny_tokenizer):
    a = build_tiny_model(TinyModelConfig(seed=1), tiny_tokenizer)
    b = build_tiny_model(TinyModelConfig(seed=1), tiny_tokenizer)
    c = build_tiny_model(TinyModelConfig(seed=2), tiny_tokenizer)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert a.config.num_hidden_layers == 2 and a.config.vocab_size == len(tiny_tokenizer)
    # seeding the model does not disturb the caller's RNG stream
    torch.manual_seed(0)
    x = torch.rand(1)
    torch.manual_seed(0)
    build_tiny_model(TinyModelConfig(seed=5), tiny_tokenizer)
    assert torch.equal(torch.rand(1), x)


def test_tiny_heads_must_divide_width(tiny_tokenizer):
    with pytest.raises(ModelLoadError, match="not divisible"):
        build_tiny_model(TinyModelConfig(hidden_size=66, num_heads=4), tiny_tokenizer)


def test_local_hf_directory_round_trip(tmp_path, tiny_model, tiny_tokenizer):
    tiny_model.save_pretrained(tmp_path / "m")
    tiny_tokenizer.save_pretrained(tmp_path / "m")
    cfg = ModelConfig(base=str(tmp_path / "m"))
    loaded = load_causal_lm(cfg, tmp_path, load_tokenizer(cfg, tmp_path))
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, tiny_model(ids).logits)


def test_device_and_dtype_defaults_on_this_machine():
    device = resolve_device("auto")
    if not torch.cuda.is_available():
        assert device.type == "cpu" and resolve_dtype("auto", device) == torch.float32
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda")
    assert resolve_dtype("bfloat16", device) == torch.bfloat16
    with pytest.raises(ConfigError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")


def test_tiny_model_samples_through_the_chat_template(tiny_model, tiny_tokenizer):
    replies = sample_replies(tiny_model, tiny_tokenizer, ["hi", "a longer prompt here"], max_new_tokens=5, seed=0)
    again = sample_replies(tiny_model, tiny_tokenizer, ["hi", "a longer prompt here"], max_new_tokens=5, seed=0)
    assert len(replies) == 2 and replies == again


@pytest.mark.slow
def test_default_model_loads_from_cache_and_replies(model_cache):
    assert default_gguf_path().is_file()
    cfg = ModelConfig()
    started = time.perf_counter()
    tokenizer = load_tokenizer(cfg, model_cache)
    model = load_causal_lm(cfg, model_cache, tokenizer)
    load_seconds = time.perf_counter() - started
    assert type(model).__name__ == "LlamaForCausalLM"
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    assert tokenizer.chat_template, "the cached model must keep its chat template"
    # cached: no GGUF dequantization on this path (that takes ~20 s or more)
    assert load_seconds < 15, load_seconds
    reply = chat_reply(model, tokenizer, "How do I boil an egg?", max_new_tokens=32, temperature=0.7, seed=0)
    words = reply.split()
    assert len(words) >= 5, reply
    assert any(w.strip(".,!*:").lower() in {"egg", "eggs", "boil", "boiling", "water"} for w in words), reply
