"""RewardModel on real transformers modules with tiny random configs (no mocks)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from rlhf_core.errors import ModelLoadError
from rlhf_core.reward.model import RewardModel, last_token_index
from rlhf_core.stage_io import STAGE_MARKER, write_stage_marker

PAD = EOS = 2  # as in SmolLM2: the pad token is the EOS token
REPO = Path(__file__).resolve().parents[1]


def tiny_causal_lm(seed: int = 0, hidden: int = 32) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
        pad_token_id=PAD,
        eos_token_id=EOS,
        bos_token_id=1,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def random_sequences(seed: int, n: int = 4, max_len: int = 9) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    seqs = []
    for i in range(n):
        length = int(torch.randint(1, max_len + 1, (1,), generator=g))
        s = torch.randint(3, 128, (length,), generator=g)
        if i % 2 == 0:
            s[-1] = EOS  # completions end in EOS == PAD: pooling must not skip it
        seqs.append(s)
    return seqs


def pad_batch(seqs: list[torch.Tensor], side: str, extra: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(len(s) for s in seqs) + extra
    ids = torch.full((len(seqs), T), PAD, dtype=torch.long)
    mask = torch.zeros(len(seqs), T, dtype=torch.long)
    for i, s in enumerate(seqs):
        span = slice(0, len(s)) if side == "right" else slice(T - len(s), T)
        ids[i, span], mask[i, span] = s, 1
    return ids, mask


def single_rewards(rm: RewardModel, seqs: list[torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return torch.stack([rm(s[None], torch.ones(1, len(s), dtype=torch.long))[0] for s in seqs])


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("side", ["left", "right"])
def test_reward_at_last_non_pad_token_equals_unpadded(seed: int, side: str) -> None:
    rm = RewardModel.from_model(tiny_causal_lm(seed), seed=seed).eval()
    seqs = random_sequences(seed)
    expect = single_rewards(rm, seqs)  # (B,)
    ids, mask = pad_batch(seqs, side, extra=seed)
    with torch.no_grad():
        got = rm(ids, mask)
    assert got.shape == (len(seqs),)
    torch.testing.assert_close(got, expect, atol=1e-5, rtol=0)


def test_pooling_uses_attention_mask_not_pad_token_id() -> None:
    """With pad == EOS, transformers' own pooling reads the token before a final EOS; ours does not."""
    rm = RewardModel.from_model(tiny_causal_lm(3)).eval()
    seq = torch.tensor([[5, 6, 7, EOS]])
    mask = torch.ones_like(seq)
    with torch.no_grad():
        ours = rm(seq, mask)
        hf = rm.backbone(input_ids=seq, attention_mask=mask).logits.squeeze(-1)  # pools at token 7
        before_eos = rm(seq[:, :3], mask[:, :3])
    torch.testing.assert_close(hf, before_eos, atol=1e-5, rtol=0)
    assert (ours - hf).abs().item() > 1e-4


def test_last_token_index_left_right_and_mixed() -> None:
    mask = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 1], [0, 1, 1, 0], [1, 1, 1, 1]])
    assert last_token_index(mask).tolist() == [1, 3, 2, 3]


def test_empty_row_refused() -> None:
    rm = RewardModel.from_model(tiny_causal_lm())
    with pytest.raises(ValueError, match="all zeros"):
        rm(torch.tensor([[5, 6]]), torch.tensor([[0, 0]]))


def test_save_load_roundtrip_identical_rewards(tmp_path: Path) -> None:
    rm = RewardModel.from_model(tiny_causal_lm(4), seed=4).eval()
    ids, mask = pad_batch(random_sequences(4), "left")
    with torch.no_grad():
        before = rm(ids, mask)
    rm.save_pretrained(tmp_path / "rm", step=7)
    assert (tmp_path / "rm" / "model.safetensors").is_file()
    marker = json.loads((tmp_path / "rm" / STAGE_MARKER).read_text())
    assert marker["stage"] == "reward" and marker["step"] == 7
    loaded = RewardModel.from_pretrained(tmp_path / "rm").eval()
    with torch.no_grad():
        after = loaded(ids, mask)
    assert torch.equal(before, after)
    assert loaded.config.pad_token_id == PAD


def test_other_stage_directory_fails_clearly(tmp_path: Path) -> None:
    sft_dir = tmp_path / "sft"
    tiny_causal_lm().save_pretrained(sft_dir)
    with pytest.raises(ModelLoadError, match=r"no rlhf_stage\.json") as no_marker:
        RewardModel.from_pretrained(sft_dir)
    assert str(sft_dir) in str(no_marker.value)
    write_stage_marker(sft_dir, "sft")
    with pytest.raises(ModelLoadError, match="'sft' checkpoint, not a reward model") as wrong:
        RewardModel.from_pretrained(sft_dir)
    assert str(sft_dir) in str(wrong.value)
    with pytest.raises(ModelLoadError, match="not found"):
        RewardModel.from_pretrained(tmp_path / "missing")
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / STAGE_MARKER).write_text("{not json")
    with pytest.raises(ModelLoadError, match="unreadable stage marker"):
        RewardModel.from_pretrained(tmp_path / "corrupt")


def test_from_causal_lm_dir_copies_trunk_and_inits_head(tmp_path: Path) -> None:
    lm = tiny_causal_lm(5, hidden=64)
    lm.save_pretrained(tmp_path / "sft")
    write_stage_marker(tmp_path / "sft", "sft")
    rm = RewardModel.from_causal_lm_dir(tmp_path / "sft", dtype="float32", device="cpu", seed=1)
    for name, tensor in lm.model.state_dict().items():
        assert torch.equal(rm.trunk.state_dict()[name], tensor), name
    w = rm.head.weight.detach()
    assert w.shape == (1, 64)
    std = 1 / (64 + 1) ** 0.5
    assert 0.5 * std < w.std().item() < 1.5 * std  # small-normal, not the default init's 0.02
    again = RewardModel.from_causal_lm_dir(tmp_path / "sft", dtype=torch.float32, device="cpu", seed=1)
    other = RewardModel.from_causal_lm_dir(tmp_path / "sft", dtype=torch.float32, device="cpu", seed=2)
    assert torch.equal(again.head.weight, w) and not torch.equal(other.head.weight, w)
    rm.save_pretrained(tmp_path / "rm")
    with pytest.raises(ModelLoadError, match="is a reward model checkpoint"):
        RewardModel.from_causal_lm_dir(tmp_path / "rm", dtype=torch.float32, device="cpu")


def test_the_expected_missing_score_head_is_not_reported_and_verbosity_is_restored(tmp_path: Path) -> None:
    """A fresh head is the point of from_causal_lm_dir: transformers' "LOAD REPORT ... MISSING"
    warning (printed in every pipeline run before) would only alarm a reader of the log."""
    import io
    import logging

    from transformers.utils import logging as hf_logging

    tiny_causal_lm(5, hidden=64).save_pretrained(tmp_path / "sft")
    before = hf_logging.get_verbosity()
    seen = io.StringIO()
    handler = logging.StreamHandler(seen)  # transformers' own handler holds the stderr it first saw
    hf_logging.get_logger().addHandler(handler)
    try:
        RewardModel.from_causal_lm_dir(tmp_path / "sft", dtype="float32", device="cpu")
        hf_logging.get_logger("transformers.modeling_utils").warning("still heard")  # the handler works
    finally:
        hf_logging.get_logger().removeHandler(handler)
    assert "LOAD REPORT" not in seen.getvalue() and "still heard" in seen.getvalue(), seen.getvalue()
    assert hf_logging.get_verbosity() == before


def test_gradient_checkpointing_passthrough_gives_same_grads() -> None:
    ids, mask = pad_batch(random_sequences(6), "right")

    def head_grad(checkpointing: bool) -> torch.Tensor:
        rm = RewardModel.from_model(tiny_causal_lm(6)).train()
        if checkpointing:
            rm.gradient_checkpointing_enable()
            assert rm.is_gradient_checkpointing
        else:
            assert not rm.is_gradient_checkpointing
        rm(ids, mask).sum().backward()
        return rm.trunk.layers[0].self_attn.q_proj.weight.grad.clone()

    torch.testing.assert_close(head_grad(True), head_grad(False), atol=1e-6, rtol=1e-5)


def test_lora_wrapping_through_backbone(tmp_path: Path) -> None:
    peft = pytest.importorskip("peft")
    rm = RewardModel.from_model(tiny_causal_lm(8)).eval()
    ids, mask = pad_batch(random_sequences(8), "left")
    with torch.no_grad():
        before = rm(ids, mask)
    rm.backbone = peft.get_peft_model(
        rm.backbone, peft.LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    )
    with torch.no_grad():
        torch.testing.assert_close(rm(ids, mask), before)  # LoRA B starts at 0
    rm.train()
    rm(ids, mask).sum().backward()
    trained = {n for n, p in rm.named_parameters() if p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0}
    assert any("lora_" in n for n in trained) and any("score" in n for n in trained)
    assert not any(p.requires_grad for n, p in rm.named_parameters() if "embed_tokens" in n)
    with pytest.raises(ValueError, match="merge_lora"):
        rm.save_pretrained(tmp_path / "x")
    with torch.no_grad():
        for n, p in rm.named_parameters():
            if "lora_B" in n:
                p.add_(0.1)  # make the adapters matter before merging
        rm.eval()
        adapted = rm(ids, mask)
    rm.merge_lora()
    rm.save_pretrained(tmp_path / "merged")
    reloaded = RewardModel.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids, mask), adapted, atol=1e-5, rtol=1e-5)


def test_tiny_model_with_real_tokenizer_padding_invariance(tiny_tokenizer) -> None:
    """build_tiny_model + the SmolLM2 tokenizer (pad == EOS), batches padded by the tokenizer itself."""
    from rlhf_core.config.model import ModelConfig
    from rlhf_core.models import build_tiny_model

    cfg = ModelConfig(base="tiny")
    tokenizer = tiny_tokenizer
    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # the case pad_token_id pooling gets wrong
    rm = RewardModel.from_model(build_tiny_model(cfg.tiny, tokenizer), pad_token_id=tokenizer.pad_token_id).eval()
    texts = ["Hello there!", "A much longer answer about boiling eggs, step by step.", "ok"]
    texts = [t + tokenizer.eos_token for t in texts]
    singles = []
    with torch.no_grad():
        for t in texts:
            enc = tokenizer(t, return_tensors="pt")
            singles.append(rm(enc["input_ids"], enc["attention_mask"])[0])
        for side in ("left", "right"):
            tokenizer.padding_side = side
            enc = tokenizer(texts, return_tensors="pt", padding=True)
            torch.testing.assert_close(rm(enc["input_ids"], enc["attention_mask"]), torch.stack(singles), atol=1e-5, rtol=0)
