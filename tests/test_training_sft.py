"""SFT loop on a tiny random model: invariants (padding, grad accumulation), learning, exact resume,
NaN stop, LoRA, bad input. Tiny models only; each run is a few optimizer steps."""

from __future__ import annotations

import json

import pytest
import torch

from rlhf_core.batching import collate_sft, count_target_tokens, tokenize_sft_rows
from rlhf_core.checkpoint import WEIGHTS, latest_checkpoint, list_checkpoints
from rlhf_core.config.model import TinyModelConfig
from rlhf_core.config.optim import LoraConfig, OptimConfig
from rlhf_core.config.sft import SFTConfig
from rlhf_core.errors import DataError, TrainingError
from rlhf_core.losses import sft_loss_sum
from rlhf_core.models import build_tiny_model
from rlhf_core.sft.train import completion_nll_sum, sft_step_loss, train_sft
from rlhf_core.tracking import InMemoryTracker

from .conftest import CrashAt

SMALL = TinyModelConfig(num_layers=1, hidden_size=32, num_heads=2, intermediate_size=64, max_position_embeddings=256)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # tiny matmuls: a second thread only adds sync overhead (and the CI box is shared)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _rows(n: int = 12) -> list[dict]:
    rows = [{"id": f"r{i}", "prompt": f"What is {i} plus {i}?", "response": f"It is {2 * i}, of course."} for i in range(n)]
    rows.append(
        {
            "id": "chat0",
            "prompt": "Hi",
            "response": "Hello!",
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": "Tell me a number."},
                {"role": "assistant", "content": "Seven."},
            ],
        }
    )
    return rows


def _cfg(**optim) -> SFTConfig:
    base = {"learning_rate": 1e-2, "max_steps": 6, "micro_batch_size": 4, "max_length": 64}
    return SFTConfig(optim=OptimConfig(**{**base, **optim}))


def _model(tokenizer, dtype=torch.float32):
    return build_tiny_model(SMALL, tokenizer).to(dtype)


def _params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------- invariants


def test_padding_does_not_change_the_loss(tiny_tokenizer):
    model = _model(tiny_tokenizer)
    model.eval()
    examples = tokenize_sft_rows(_rows(3), tiny_tokenizer, fmt="chat", max_length=128)
    pad = tiny_tokenizer.pad_token_id
    with torch.no_grad():
        alone = [completion_nll_sum(model, collate_sft([e], pad))[0] for e in examples]
        together = [
            completion_nll_sum(model, {k: v[i : i + 1] for k, v in collate_sft(examples, pad, pad_to_multiple_of=32).items()})[0]
            for i in range(len(examples))
        ]
    for a, b in zip(alone, together, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_labelled_positions_path_equals_full_logits_loss(tiny_tokenizer):
    model = _model(tiny_tokenizer, torch.float64)
    batch = collate_sft(tokenize_sft_rows(_rows(4), tiny_tokenizer, fmt="chat", max_length=128), tiny_tokenizer.pad_token_id)
    fast, n_fast = completion_nll_sum(model, batch)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    reference, n_ref = sft_loss_sum(logits, batch["labels"])
    assert n_fast == n_ref == count_target_tokens(batch["labels"])
    torch.testing.assert_close(fast, reference, rtol=1e-12, atol=1e-10)


def test_grad_accumulation_equals_one_big_batch_fp64(tiny_tokenizer):
    model = _model(tiny_tokenizer, torch.float64)
    examples = tokenize_sft_rows(_rows(6), tiny_tokenizer, fmt="chat", max_length=128)
    pad = tiny_tokenizer.pad_token_id
    big = collate_sft(examples, pad)
    micro = [collate_sft(examples[i : i + 3], pad) for i in range(0, len(examples), 3)]  # 3+3+1, unequal tokens

    model.zero_grad()
    sft_step_loss(model, big, count_target_tokens(big["labels"]))[0].backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    total = sum(count_target_tokens(b["labels"]) for b in micro)
    for b in micro:
        sft_step_loss(model, b, total)[0].backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[n], rtol=0, atol=1e-10, msg=n)


def test_loop_with_accumulation_reaches_the_same_weights(tiny_tokenizer, tmp_path):
    rows = _rows(8)
    finals = []
    for bs, k in ((4, 1), (2, 2), (1, 4)):
        model = _model(tiny_tokenizer, torch.float64)
        train_sft(_cfg(micro_batch_size=bs, grad_accum_steps=k, max_steps=3, learning_rate=1e-3), model, tiny_tokenizer, rows,
                  output_dir=tmp_path / f"bs{bs}", progress=False)
        finals.append(_params(model))
    for other in finals[1:]:
        for name, value in finals[0].items():
            torch.testing.assert_close(other[name], value, rtol=0, atol=1e-6, msg=name)


# --------------------------------------------------------------------------- learning + outputs


def test_sft_loss_falls_params_change_and_model_is_saved(tiny_tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    model = _model(tiny_tokenizer)
    before = _params(model)
    tracker = InMemoryTracker()
    rows = _rows()
    result = train_sft(_cfg(max_steps=8, warmup_steps=1), model, tiny_tokenizer, rows, output_dir=tmp_path,
                       tracker=tracker, eval_rows=rows[:4], progress=False)

    losses = [v for _, v in tracker.series("sft/loss")]
    assert len(losses) == 8 and [s for s, _ in tracker.series("sft/loss")] == list(range(1, 9))
    assert sum(losses[-2:]) < 0.8 * sum(losses[:2])
    assert result.metrics["sft/eval_loss"] < losses[0]
    assert all(not torch.equal(before[k], v) for k, v in _params(model).items())
    assert result.steps == 8 and result.resumed_from_step == 0 and result.tokens_per_second > 0
    assert tracker.params["sft.optim.learning_rate"] == 1e-2

    marker = json.loads((result.model_dir / "rlhf_stage.json").read_text())
    assert marker["stage"] == "sft" and result.model_dir == tmp_path / "model"
    reloaded = AutoModelForCausalLM.from_pretrained(result.model_dir)
    x = torch.tensor([[1, 2, 3, 4]])
    torch.testing.assert_close(reloaded(input_ids=x).logits, model(input_ids=x).logits)
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["step-000008"]


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora-dropout"])
def test_resume_reproduces_an_uninterrupted_run_bitwise(tiny_tokenizer, tmp_path, lora):
    # LoRA with dropout also exercises the RNG restore (dropout masks after the resume point)
    lora_cfg = LoraConfig(enabled=True, r=4, dropout=0.2) if lora else LoraConfig()
    cfg = _cfg(max_steps=6, micro_batch_size=2, grad_accum_steps=2, warmup_steps=2, checkpoint_every=2, lora=lora_cfg)
    rows = _rows()

    straight = _model(tiny_tokenizer)
    reference = train_sft(cfg, straight, tiny_tokenizer, rows, output_dir=tmp_path / "a", seed=5, progress=False)

    crashed = _model(tiny_tokenizer)
    with pytest.raises(KeyboardInterrupt):
        train_sft(cfg, crashed, tiny_tokenizer, rows, output_dir=tmp_path / "b", tracker=CrashAt(5), seed=5, progress=False)
    assert latest_checkpoint(tmp_path / "b" / "checkpoints").name == "step-000004"

    resumed_model = _model(tiny_tokenizer)
    resumed = train_sft(cfg, resumed_model, tiny_tokenizer, rows, output_dir=tmp_path / "b", seed=5, progress=False)
    assert resumed.resumed_from_step == 4 and resumed.steps == 6
    assert [h["sft/loss"] for h in resumed.history] == [h["sft/loss"] for h in reference.history]
    for name, value in _params(straight).items():
        assert torch.equal(_params(resumed_model)[name], value), name


def test_resume_refuses_changed_data_missing_and_corrupt_checkpoints(tiny_tokenizer, tmp_path):
    cfg = _cfg(max_steps=2, checkpoint_every=1)
    rows = _rows(4)
    train_sft(cfg, _model(tiny_tokenizer), tiny_tokenizer, rows, output_dir=tmp_path, progress=False)
    untouched = _model(tiny_tokenizer)
    with pytest.raises(TrainingError, match=r"the run changed \(.*data: checkpoint"):
        train_sft(cfg, untouched, tiny_tokenizer, _rows(5), output_dir=tmp_path, progress=False)
    fresh = _params(_model(tiny_tokenizer))
    assert all(torch.equal(v, fresh[k]) for k, v in _params(untouched).items())  # refused before loading weights
    with pytest.raises(TrainingError, match=r"checkpoint .*/nowhere does not exist"):
        train_sft(cfg, _model(tiny_tokenizer), tiny_tokenizer, rows, output_dir=tmp_path / "x", resume=tmp_path / "nowhere",
                  progress=False)
    # a corrupt newest checkpoint is moved aside and the previous one is used
    root = tmp_path / "checkpoints"
    weights = latest_checkpoint(root) / WEIGHTS
    weights.write_bytes(weights.read_bytes()[:-8])
    fallback = train_sft(cfg, _model(tiny_tokenizer), tiny_tokenizer, rows, output_dir=tmp_path, progress=False)
    assert fallback.resumed_from_step == 1 and fallback.steps == 2
    assert (root / "corrupt-step-000002").is_dir()
    assert [p.name for p in list_checkpoints(root)] == ["step-000001", "step-000002"]
    # every checkpoint corrupt: refused, naming them (never a silent start over)
    for path in list_checkpoints(root):
        (path / WEIGHTS).write_bytes(b"garbage")
    with pytest.raises(TrainingError, match=r"every checkpoint in .* is corrupt \(step-000002: .*step-000001: "):
        train_sft(cfg, _model(tiny_tokenizer), tiny_tokenizer, rows, output_dir=tmp_path, progress=False)
    # an explicitly named corrupt checkpoint is refused, not replaced by another one
    (root / "corrupt-step-000002").rename(root / "step-000002")
    with pytest.raises(TrainingError, match=r"step-000002/trainable.safetensors is corrupt"):
        train_sft(cfg, _model(tiny_tokenizer), tiny_tokenizer, rows, output_dir=tmp_path,
                  resume=root / "step-000002", progress=False)
    # resume=False starts over instead of reading the corrupt checkpoint
    result = train_sft(cfg, _model(tiny_tokenizer), tiny_tokenizer, rows, output_dir=tmp_path, resume=False, progress=False)
    assert result.resumed_from_step == 0


def test_nan_loss_stops_naming_the_step(tiny_tokenizer, tmp_path):
    model = _model(tiny_tokenizer)
    calls = {"n": 0}

    def poison(module, args, output):  # the 3rd forward pass (= step 3 with no accumulation) goes NaN
        calls["n"] += 1
        return output * float("nan") if calls["n"] == 3 else output

    model.get_input_embeddings().register_forward_hook(poison)
    with pytest.raises(TrainingError, match=r"sft: loss is nan at step 3 \(micro-batch 1/1\); stopped before the update, last checkpoint: .*step-000002"):
        train_sft(_cfg(max_steps=5, checkpoint_every=2), model, tiny_tokenizer, _rows(), output_dir=tmp_path, progress=False)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert not (tmp_path / "model").exists()


def test_lora_trains_only_the_adapters(tiny_tokenizer, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    model = _model(tiny_tokenizer)
    before = _params(model)
    cfg = _cfg(max_steps=3, lora=LoraConfig(enabled=True, r=4, target_modules=["q_proj", "v_proj"]))
    result = train_sft(cfg, model, tiny_tokenizer, _rows(), output_dir=tmp_path, progress=False)

    stored = load_file(str(result.checkpoint_dir / WEIGHTS))
    assert stored and all("lora_" in name for name in stored)
    assert result.trainable_parameters == sum(t.numel() for t in stored.values())
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    merged = AutoModelForCausalLM.from_pretrained(result.model_dir).state_dict()
    for name, value in before.items():
        changed = not torch.equal(merged[name], value)
        assert changed == ("q_proj" in name or "v_proj" in name), name


def test_lora_top_layers_adapts_only_the_top_blocks(tiny_tokenizer, tmp_path):
    from rlhf_core.errors import ConfigError
    from rlhf_core.models import apply_lora

    two_blocks = SMALL.model_copy(update={"num_layers": 2})
    model = build_tiny_model(two_blocks, tiny_tokenizer)
    before = _params(model)
    lora = LoraConfig(enabled=True, r=4, target_modules=["q_proj", "v_proj"], top_layers=1)
    result = train_sft(_cfg(max_steps=3, lora=lora), model, tiny_tokenizer, _rows(), output_dir=tmp_path, progress=False)

    stored = load_file_names(result.checkpoint_dir / WEIGHTS)
    assert stored and all(".layers.1." in name for name in stored), stored
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(result.model_dir).state_dict()
    for name, value in before.items():
        changed = not torch.equal(merged[name], value)
        assert changed == (".layers.1." in name and ("q_proj" in name or "v_proj" in name)), name
    with pytest.raises(ConfigError, match=r"optim.lora.top_layers=3: the model has only 2 transformer blocks"):
        apply_lora(build_tiny_model(two_blocks, tiny_tokenizer), lora.model_copy(update={"top_layers": 3}), task_type="CAUSAL_LM")


def load_file_names(path) -> list[str]:
    from safetensors.torch import load_file

    return list(load_file(str(path)))


def test_bad_input_is_refused_before_training(tiny_tokenizer, tmp_path):
    with pytest.raises(DataError, match=r"sft train data: dataset is empty"):
        train_sft(_cfg(), _model(tiny_tokenizer), tiny_tokenizer, [], output_dir=tmp_path, progress=False)
    long_row = {"id": "huge1", "prompt": "tell me " * 60, "response": "ok"}
    with pytest.raises(DataError, match=r"sft train data: row huge1: sequence has \d+ tokens .* over max_length 64"):
        train_sft(_cfg(), _model(tiny_tokenizer), tiny_tokenizer, _rows(2) + [long_row], output_dir=tmp_path, progress=False)
    assert not tmp_path.joinpath("checkpoints").exists()


def test_bf16_autocast_keeps_fp32_master_weights(tiny_tokenizer, tmp_path):
    # what 'auto' picks on CUDA, forced here on CPU: bf16 compute, fp32 weights and optimizer state
    model = _model(tiny_tokenizer)
    result = train_sft(_cfg(max_steps=4, mixed_precision="bf16"), model, tiny_tokenizer, _rows(), output_dir=tmp_path,
                       progress=False)
    losses = [h["sft/loss"] for h in result.history]
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert losses[-1] < losses[0]


def test_out_of_memory_retries_with_smaller_micro_batch_same_effective_batch(tiny_tokenizer, tmp_path, caplog):
    """A (simulated) OOM on micro-batches above 2 rows: the step is redone in micro-batches of 2."""
    rows = _rows(16)
    reference_model = _model(tiny_tokenizer)
    reference = train_sft(_cfg(max_steps=3, micro_batch_size=2, grad_accum_steps=4), reference_model, tiny_tokenizer, rows,
                          output_dir=tmp_path / "ref", progress=False)

    model = _model(tiny_tokenizer)

    def out_of_memory(module, args):  # what a GPU does when the activations of >2 rows do not fit
        if args[0].shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")

    handle = model.get_input_embeddings().register_forward_pre_hook(out_of_memory)
    with caplog.at_level("WARNING", logger="rlhf_core.training"):
        result = train_sft(_cfg(max_steps=3, micro_batch_size=8), model, tiny_tokenizer, rows, output_dir=tmp_path / "oom",
                           progress=False)
    messages = [r.getMessage() for r in caplog.records]
    assert "sft: out of memory at step 1 with micro-batch 8; retrying the step with micro-batch 4 (2 micro-batches, same effective batch of 8)" in messages
    assert "sft: out of memory at step 1 with micro-batch 4; retrying the step with micro-batch 2 (4 micro-batches, same effective batch of 8)" in messages
    assert len(messages) == 2  # the smaller size is kept: steps 2 and 3 do not hit the error again
    assert [h["train/micro_batch_size"] for h in result.history] == [2.0, 2.0, 2.0]
    assert [h["sft/loss"] for h in result.history] == [h["sft/loss"] for h in reference.history]
    for name, value in _params(reference_model).items():
        assert torch.equal(_params(model)[name], value), name

    handle.remove()
    model.get_input_embeddings().register_forward_pre_hook(lambda module, args: (_ for _ in ()).throw(
        torch.OutOfMemoryError("CUDA out of memory (simulated)")))
    with pytest.raises(TrainingError, match=r"sft: out of memory at step 1 even with micro-batch 1"):
        train_sft(_cfg(max_steps=1, micro_batch_size=2), model, tiny_tokenizer, rows, output_dir=tmp_path / "hopeless",
                  resume=False, progress=False)
