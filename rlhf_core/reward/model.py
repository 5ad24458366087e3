"""A scalar reward model on any causal LM backbone.

The backbone is a transformers ``*ForSequenceClassification`` model with one label (the
trunk plus a linear ``score`` head): that gives HF-format save/load for free, and peft
knows it (``task_type="SEQ_CLS"``). Its own ``forward`` is *not* used, because it finds the
last token through ``pad_token_id`` and SmolLM2's pad token *is* its EOS token, so a
completion ending in EOS would be read one token early. Here the reward is read from the
hidden state of the last position where ``attention_mask`` is 1, which is right for left
and right padding alike, and the head runs on B vectors instead of B x T.

Preference pairs can go through :meth:`RewardModel.forward_pairs` in the shared-prefix layout
(one row ``[prefix | chosen suffix | rejected suffix]`` per pair, see ``rlhf_core.batching``):
a 4D attention mask keeps the rejected suffix from seeing the chosen one and its position ids
restart after the prefix, so both rewards equal those of two separate sequences while the prompt
is computed once. The same layout takes the K replies of one prompt, ``[prefix | reply 1 | ... |
reply K]`` (:meth:`RewardModel.forward_groups`, ``rlhf_core.reward.grouped``): no reply sees
another, and each restarts its positions after the prefix; a pair is K=2. transformers passes a 4D mask through ``create_causal_mask`` untouched, and
the attention kernels read it differently: sdpa takes a boolean "may attend" mask, eager ADDS
the mask to the scores (so it must be 0 / -inf-like floats). Other attention implementations
(flash, flex, paged) and remote-code models may ignore or reject it, so the layout is tried once
per model against separate forwards (:meth:`RewardModel.check_pair_layout`) and refused
with a ConfigError naming ``reward.share_prompt`` when the results differ. The mask reaches every
layer as is, so sliding-window layers (Gemma, Mistral, Qwen2 with ``use_sliding_window``) take
rows up to their window only, and other layer kinds (chunked, linear attention) are refused.

Saved models carry the stage marker of :mod:`rlhf_core.stage_io` (``{"stage": "reward", ...}``) so a
directory from another stage is refused with one clear line instead of loading garbage.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import torch

from rlhf_core.errors import ConfigError, ModelLoadError
from rlhf_core.models import refuse_pickled_weights, unwrap_peft
from rlhf_core.stage_io import REWARD_STAGE, STAGE_MARKER, read_stage_marker, save_stage_model, write_stage_model

_FORMAT_VERSION = 1

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# attention implementations that honour a custom 4D mask: sdpa (boolean), eager (additive)
_MASKED_ATTENTION = ("sdpa", "eager")


# ----------------------------------------------------------------------------- helpers
def _resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype '{dtype}' (use one of {sorted(_DTYPES)})")
    return _DTYPES[dtype]


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last position with ``attention_mask == 1`` in each row: (B, T) -> (B,).

    Works for left padding (index T-1), right padding (index length-1) and any mix.
    """
    T = attention_mask.shape[-1]
    return (T - 1) - attention_mask.ne(0).flip(-1).int().argmax(-1)


def shared_prefix_layout(
    attention_mask: torch.Tensor, prefix_lengths: torch.Tensor, reply_ends: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Attention, positions and reward indices of right-padded ``[prefix | reply 1 | ... | reply K]`` rows.

    attention_mask: (B, T), 1 on the row's tokens; prefix_lengths P (B,); reply_ends E (B, K):
    the prefix is ``[0, P)``, reply k is ``[E[k-1], E[k])`` (reply 0 starts at P). A preference
    pair is K=2: ``[prefix | chosen suffix | rejected suffix]``. Each row needs
    ``0 <= P < E[0] < E[1]`` (two replies at least), non-decreasing ends, and its last end at the
    row length: a row with fewer replies than K ends in empty replies (ends equal to its length).
    Returns

    * ``allowed`` (B, 1, T, T) bool: query i may attend key j. Causal, padding keys masked, and
      a reply's tokens see the prefix and their own reply only (never another reply).
      Padding queries count as the last reply's, so no row is fully masked (no NaN).
    * ``position_ids`` (B, T): each reply continues from the prefix as in its own sequence
      (``0..E[0]-1``, then ``P..``, restarting at P for every reply); padding gets 0.
    * ``reward_index`` (B, K) = E - 1: where each reply's reward is read.
    * ``has_reply`` (B, K) bool: false for the empty replies of a row with fewer than K.
    """
    B, T = attention_mask.shape
    K = reply_ends.shape[-1]
    device = attention_mask.device
    idx = torch.arange(T, device=device)  # (T,)
    real = attention_mask.ne(0)  # (B, T)
    lengths = real.sum(-1)  # (B,)
    P = prefix_lengths.to(device).view(B, 1)  # (B, 1)
    E = reply_ends.to(device).view(B, K)  # (B, K)
    if not torch.equal(real, idx.view(1, T) < lengths.view(B, 1)):
        raise ValueError("shared_prefix_layout: rows must be right-padded (attention_mask 1...1 0...0)")
    if K < 2:
        raise ValueError(f"shared_prefix_layout: reply_ends must be (B, K) with K >= 2, got {tuple(reply_ends.shape)}")
    starts = torch.cat([P, E[:, :-1]], dim=1)  # (B, K): where each reply starts
    has_reply = E > starts  # (B, K)
    n_replies = has_reply.sum(-1)  # (B,)
    empty_last = torch.equal(has_reply, torch.arange(K, device=device).view(1, K) < n_replies.view(B, 1))
    bad = (P.view(B) < 0) | (E < starts).any(-1) | (n_replies < 2) | (E[:, -1] != lengths)  # (B,)
    if bool(bad.any()) or not empty_last:
        raise ValueError(
            "shared_prefix_layout: each row needs 0 <= prefix_length < reply_end[0] < reply_end[1] <= ..., empty "
            f"replies only at the end, and its last reply ending at the row length (got prefix {prefix_lengths.tolist()}, "
            f"reply ends {reply_ends.tolist()}, length {lengths.tolist()})"
        )
    # (B, T): the reply each position falls in; the prefix counts as reply 0's, padding as the last reply's
    reply_of = (E.unsqueeze(1) <= idx.view(1, T, 1)).sum(-1)  # (B, T), K past the last end
    reply_of = torch.minimum(reply_of, (n_replies - 1).view(B, 1))
    in_prefix = idx.view(1, T) < P  # (B, T)
    causal = idx.view(T, 1) >= idx.view(1, T)  # (T, T)
    same_reply = reply_of.unsqueeze(2) == reply_of.unsqueeze(1)  # (B, T, T)
    allowed = causal.unsqueeze(0) & real.unsqueeze(1) & (in_prefix.unsqueeze(1) | same_reply)  # (B, T, T)
    position_ids = idx.view(1, T) - starts.gather(1, reply_of) + P  # (B, T); the prefix keeps 0..P-1
    position_ids = position_ids.masked_fill(~real, 0)
    return allowed.unsqueeze(1), position_ids, E - 1, has_reply


def init_reward_head(head: torch.nn.Linear, *, seed: int = 0) -> None:
    """Small-normal init, std = 1/sqrt(hidden + 1) (lm-human-preferences' reward head), bias 0.

    The initial rewards are then O(1) and nearly independent of the backbone's scale. The
    draw uses its own generator on CPU, so it is deterministic by ``seed`` on any device and
    leaves the global RNG alone.
    """
    gen = torch.Generator().manual_seed(seed)
    std = 1.0 / math.sqrt(head.in_features + 1)
    with torch.no_grad():
        weight = torch.randn(head.weight.shape, generator=gen, dtype=torch.float32) * std
        head.weight.copy_(weight.to(head.weight.dtype))
        if head.bias is not None:
            head.bias.zero_()


# ----------------------------------------------------------------------------- the model
class RewardModel(torch.nn.Module):
    """Scalar reward r(x, y) from a causal LM trunk and a linear head.

    ``backbone`` is a one-label ``*ForSequenceClassification`` model (or a peft model around
    one). For LoRA, wrap it in place::

        rm.backbone = peft.get_peft_model(rm.backbone, peft.LoraConfig(task_type="SEQ_CLS", ...))

    (``task_type="SEQ_CLS"`` keeps the ``score`` head trainable and saved). Merge before
    :meth:`save_pretrained` with :meth:`merge_lora`.
    """

    def __init__(self, backbone: torch.nn.Module) -> None:
        super().__init__()
        inner = unwrap_peft(backbone)
        if not hasattr(inner, "base_model_prefix") or not isinstance(getattr(inner, "score", None), torch.nn.Linear):
            raise TypeError(
                f"RewardModel needs a transformers *ForSequenceClassification model with a linear "
                f"'score' head, got {type(inner).__name__} (use RewardModel.from_model for a causal LM)"
            )
        if inner.score.out_features != 1:
            raise ValueError(f"reward head must have one output, got num_labels={inner.score.out_features}")
        self.backbone = backbone

    # -- parts ------------------------------------------------------------------------
    @property
    def transformers_model(self) -> torch.nn.Module:
        """The ``*ForSequenceClassification`` model (under any peft wrapper)."""
        return unwrap_peft(self.backbone)

    @property
    def trunk(self) -> torch.nn.Module:
        model = self.transformers_model
        return getattr(model, model.base_model_prefix)

    @property
    def head(self) -> torch.nn.Module:
        return self.transformers_model.score

    @property
    def config(self) -> Any:
        return self.transformers_model.config

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def set_pad_token_id(self, pad_token_id: int | None) -> None:
        """Record the tokenizer's pad id in the config (saved with the model; pooling never uses it)."""
        if pad_token_id is not None:
            self.config.pad_token_id = pad_token_id

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None, **kwargs: Any) -> None:
        """Pass-through to transformers' activation (gradient) checkpointing: recompute layers in backward.

        transformers >= 5.2x names it ``activation_checkpointing_enable`` (extra options such as
        ``every_n_layers`` go through ``kwargs``); older versions only have the old name.
        """
        model = self.transformers_model
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=gradient_checkpointing_kwargs, **kwargs)
        else:  # pragma: no cover - older transformers
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gradient_checkpointing_kwargs, **kwargs)

    def gradient_checkpointing_disable(self) -> None:
        model = self.transformers_model
        if hasattr(model, "activation_checkpointing_disable"):
            model.activation_checkpointing_disable()
        else:  # pragma: no cover - older transformers
            model.gradient_checkpointing_disable()

    @property
    def is_gradient_checkpointing(self) -> bool:
        model = self.transformers_model
        if hasattr(type(model), "is_activation_checkpointing"):
            return bool(model.is_activation_checkpointing)
        return bool(getattr(model, "is_gradient_checkpointing", False))  # pragma: no cover - older transformers

    def merge_lora(self) -> None:
        """Fold LoRA adapters into the weights and drop the peft wrapper (no-op without one)."""
        if self.backbone is not self.transformers_model:
            self.backbone = self.backbone.merge_and_unload()

    # -- forward ----------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        *,
        prefix_lengths: torch.Tensor | None = None,
        chosen_ends: torch.Tensor | None = None,
        reply_ends: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """input_ids: (B, T) int; attention_mask: (B, T) 1 for real tokens -> rewards (B,).

        Position ids are counted over real tokens only, so a left-padded sequence sees the
        same positions as unpadded (exact for absolute embeddings, not just for RoPE).

        With ``prefix_lengths`` and ``chosen_ends`` the rows are shared-prefix pairs and this is
        :meth:`forward_pairs` (rewards (2B,)); with ``prefix_lengths`` and ``reply_ends`` they are
        a prompt's replies and this is :meth:`forward_groups` (rewards (B, K)). Both are reachable
        through ``forward`` because a DistributedDataParallel wrapper only synchronises gradients
        of calls to ``forward``.
        """
        if chosen_ends is not None and reply_ends is not None:
            raise ValueError("RewardModel: pass chosen_ends (pairs) or reply_ends (a prompt's replies), not both")
        if (prefix_lengths is None) != (chosen_ends is None and reply_ends is None):
            raise ValueError("RewardModel: prefix_lengths goes with chosen_ends (pairs) or reply_ends (a prompt's replies)")
        if chosen_ends is not None:
            return self.forward_pairs(input_ids, attention_mask, prefix_lengths, chosen_ends)
        if reply_ends is not None:
            return self.forward_groups(input_ids, attention_mask, prefix_lengths, reply_ends)
        return self.head(self._pooled(input_ids, attention_mask)).squeeze(-1)  # (B,)

    def _pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Hidden state at each row's last real token: (B, T) -> (B, H)."""
        if input_ids.shape != attention_mask.shape or input_ids.dim() != 2:
            raise ValueError(
                f"RewardModel: input_ids {tuple(input_ids.shape)} and attention_mask "
                f"{tuple(attention_mask.shape)} must both be (B, T)"
            )
        lengths = attention_mask.ne(0).sum(-1)  # (B,)
        if bool((lengths == 0).any()):
            raise ValueError("RewardModel: a row of attention_mask is all zeros (empty sequence)")
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, T)
        out = self.trunk(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        )
        hidden = out.last_hidden_state  # (B, T, H)
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        return hidden[rows, last_token_index(attention_mask).to(hidden.device)]  # (B, H)

    def forward_pairs(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        prefix_lengths: torch.Tensor,
        chosen_ends: torch.Tensor,
    ) -> torch.Tensor:
        """Rewards of B shared-prefix pair rows (``rlhf_core.batching.collate_shared_pairs``).

        input_ids, attention_mask: (B, T), right-padded rows ``[prefix | chosen suffix | rejected
        suffix]``; prefix_lengths, chosen_ends: (B,) (see :func:`shared_prefix_layout`).
        Returns (2B,): the B chosen rewards, then the B rejected ones (the two-row layout's order).
        """
        lengths = attention_mask.ne(0).sum(-1)  # (B,): the rejected suffix ends the row
        reply_ends = torch.stack([chosen_ends.to(lengths.device), lengths], dim=1)  # (B, 2)
        hidden = self._pooled_replies(input_ids, attention_mask, prefix_lengths, reply_ends)  # (B, 2, H)
        return self.head(hidden.transpose(0, 1).reshape(-1, hidden.shape[-1])).squeeze(-1)  # (2B,)

    def forward_groups(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        prefix_lengths: torch.Tensor,
        reply_ends: torch.Tensor,
    ) -> torch.Tensor:
        """Rewards of the K replies of B prompts, one row each (``rlhf_core.reward.grouped.collate_shared_groups``).

        input_ids, attention_mask: (B, T), right-padded rows ``[prefix | reply 1 | ... | reply K]``;
        prefix_lengths: (B,); reply_ends: (B, K) (see :func:`shared_prefix_layout`). Returns (B, K);
        the empty slots of a row with fewer replies repeat its last reply's reward.
        """
        return self.head(self._pooled_replies(input_ids, attention_mask, prefix_lengths, reply_ends)).squeeze(-1)

    @property
    def attention_implementation(self) -> str | None:
        return getattr(self.config, "_attn_implementation", None)

    def _pooled_replies(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prefix_lengths: torch.Tensor, reply_ends: torch.Tensor
    ) -> torch.Tensor:
        """Hidden states at each reply's last token: (B, T) shared-prefix rows -> (B, K, H)."""
        impl = self.attention_implementation
        if impl not in _MASKED_ATTENTION:
            raise ConfigError(_no_pair_layout(self, f"attention implementation '{impl}' does not take a custom 4D mask"))
        if input_ids.shape != attention_mask.shape or input_ids.dim() != 2:
            raise ValueError(
                f"RewardModel: input_ids {tuple(input_ids.shape)} and attention_mask "
                f"{tuple(attention_mask.shape)} must both be (B, T)"
            )
        _check_layer_types(self, input_ids.shape[1])
        allowed, position_ids, reward_index, _ = shared_prefix_layout(attention_mask, prefix_lengths, reply_ends)
        if impl == "eager":  # eager adds the mask to the attention scores
            dtype = self.trunk.get_input_embeddings().weight.dtype
            mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
            mask.masked_fill_(~allowed, torch.finfo(dtype).min)
        else:
            mask = allowed
        out = self.trunk(input_ids=input_ids, attention_mask=mask, position_ids=position_ids, use_cache=False)
        hidden = out.last_hidden_state  # (B, T, H)
        rows = torch.arange(hidden.shape[0], device=hidden.device).view(-1, 1)  # (B, 1)
        return hidden[rows, reward_index.to(hidden.device)]  # (B, K, H)

    def check_pair_layout(self) -> None:
        """Refuse (ConfigError) a backbone on which the shared-prefix layout computes something else.

        Runs two tiny made-up prompts, one with three replies and one with two (a reply that is a
        token-prefix of the other; a padded row with an empty slot), both ways: one shared-prefix
        row per prompt against one sequence per reply, in eval mode without gradients (no RNG is
        drawn), and compares the pooled hidden states (the head is left out: a zero head would
        hide any difference). A pair is the two-reply case. Done once per model and attention
        implementation.
        """
        impl = self.attention_implementation
        if getattr(self, "_pair_layout_checked", None) == impl:
            return
        if impl not in _MASKED_ATTENTION:
            raise ConfigError(_no_pair_layout(self, f"attention implementation '{impl}' does not take a custom 4D mask"))
        from rlhf_core.reward.grouped import PromptGroup, collate_group_rows, collate_shared_groups

        vocab = int(self.trunk.get_input_embeddings().weight.shape[0])
        gen = torch.Generator().manual_seed(0)
        ids = tuple(torch.randint(0, vocab, (12,), generator=gen).tolist())
        groups = [
            PromptGroup("probe-0", ("a", "b"), (ids[:5], ids[:3] + ids[5:7], ids[:3] + ids[7:8]), ((0, 1), (2, 0))),
            PromptGroup("probe-1", ("c",), (ids[:5], ids[:5] + ids[8:10]), ((0, 1),)),  # a token-prefix of the other
        ]
        device = self.device
        rows = {k: v.to(device) for k, v in collate_group_rows(groups, 0).items()}
        shared = {k: v.to(device) for k, v in collate_shared_groups(groups, 0).items()}
        has_reply = shared["compared"].sum(1).add(shared["compared"].sum(2)) > 0  # (B, K): the filled slots
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                expected = self._pooled(rows["input_ids"], rows["attention_mask"])[rows["reply_rows"]][has_reply].float()
                try:
                    got = self._pooled_replies(
                        shared["input_ids"], shared["attention_mask"], shared["prefix_lengths"], shared["reply_ends"]
                    )[has_reply].float()
                except (RuntimeError, ValueError, TypeError) as exc:
                    raise ConfigError(_no_pair_layout(self, f"it fails on a 4D mask ({type(exc).__name__}: {exc})")) from exc
        finally:
            self.train(was_training)
        scale = float(expected.abs().max().clamp(min=1e-6))
        error = float((got - expected).abs().max()) / scale
        tolerance = 1e-3 if self.dtype in (torch.float32, torch.float64) else 5e-2
        if not error <= tolerance:  # also catches NaN
            raise ConfigError(_no_pair_layout(
                self,
                f"its hidden states differ from two separate sequences by {error:.2g} (relative; tolerance {tolerance})",
            ))
        self._pair_layout_checked = impl

    # -- construction -----------------------------------------------------------------
    @classmethod
    def from_model(cls, model: torch.nn.Module, *, pad_token_id: int | None = None, seed: int = 0) -> RewardModel:
        """Wrap an in-memory model.

        A ``*ForSequenceClassification`` model with one label is used as is (its head kept);
        a causal LM (e.g. ``build_tiny_model``) gets the same trunk weights in a fresh
        sequence-classification model with a newly initialised head.
        """
        if isinstance(getattr(unwrap_peft(model), "score", None), torch.nn.Linear):
            rm = cls(model)
        else:
            rm = cls(_seqcls_from_causal_lm(model, seed=seed))
        rm.set_pad_token_id(pad_token_id)
        return rm

    @classmethod
    def from_causal_lm_dir(
        cls,
        path: str | Path,
        *,
        dtype: torch.dtype | str | None = torch.float32,
        device: torch.device | str = "cpu",
        trust_remote_code: bool = False,
        pad_token_id: int | None = None,
        seed: int = 0,
    ) -> RewardModel:
        """A fresh reward model initialised from a base/SFT causal LM directory (HF format).

        The trunk weights come from ``path``; the head is new (see :func:`init_reward_head`).
        A directory that already holds a reward model is refused: use :meth:`from_pretrained`.
        """
        from transformers import AutoModelForSequenceClassification

        directory = _check_dir(path)
        marker = read_stage_marker(directory)
        if marker is not None and marker["stage"] == REWARD_STAGE:
            raise ModelLoadError(
                f"{directory} is a reward model checkpoint ({STAGE_MARKER} stage='{REWARD_STAGE}'); "
                "load it with RewardModel.from_pretrained, or point at an SFT/base model"
            )
        from transformers.utils import logging as hf_logging

        # The score head is missing from an SFT/base checkpoint by design (init_reward_head sets it):
        # transformers' "LOAD REPORT ... score.weight MISSING" warning would only alarm.
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            backbone = AutoModelForSequenceClassification.from_pretrained(
                str(directory),
                num_labels=1,
                dtype=_resolve_dtype(dtype),
                use_safetensors=True,
                trust_remote_code=trust_remote_code,
            )
        except Exception as exc:  # transformers raises many types for a bad directory
            raise ModelLoadError(f"cannot load a reward model backbone from {directory}: {type(exc).__name__}: {exc}") from exc
        finally:
            hf_logging.set_verbosity(verbosity)
        init_reward_head(backbone.score, seed=seed)
        rm = cls(backbone)
        rm.set_pad_token_id(pad_token_id)
        return rm.to(torch.device(device))

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        dtype: torch.dtype | str | None = torch.float32,
        device: torch.device | str = "cpu",
        trust_remote_code: bool = False,
    ) -> RewardModel:
        """Reload a reward model written by :meth:`save_pretrained`.

        Raises ModelLoadError naming the directory when it is missing, has no stage marker,
        or was written by another stage (an SFT or PPO checkpoint, say).
        """
        from transformers import AutoModelForSequenceClassification

        directory = _check_dir(path)
        marker = read_stage_marker(directory)
        if marker is None:
            raise ModelLoadError(
                f"{directory} is not a reward model checkpoint: no {STAGE_MARKER} "
                f"(expected stage '{REWARD_STAGE}')"
            )
        if marker["stage"] != REWARD_STAGE:
            raise ModelLoadError(
                f"{directory} holds a '{marker['stage']}' checkpoint, not a reward model "
                f"({STAGE_MARKER} stage='{marker['stage']}', expected '{REWARD_STAGE}')"
            )
        try:
            backbone = AutoModelForSequenceClassification.from_pretrained(
                str(directory), dtype=_resolve_dtype(dtype), use_safetensors=True, trust_remote_code=trust_remote_code
            )
        except Exception as exc:
            raise ModelLoadError(f"cannot load reward model from {directory}: {type(exc).__name__}: {exc}") from exc
        return cls(backbone).to(torch.device(device))

    def save_pretrained(
        self, path: str | Path, *, tokenizer: Any | None = None, atomic: bool = False, **marker_extra: Any
    ) -> Path:
        """Write HF format (config.json + model.safetensors), the tokenizer if given, and the marker.

        ``marker_extra`` lands in the stage marker (e.g. ``step=...``, ``base=...``). ``atomic``:
        write beside ``path`` and rename into place (:func:`rlhf_core.stage_io.save_stage_model`,
        a stage's final model) instead of writing into ``path``.
        """
        if self.backbone is not self.transformers_model:
            raise ValueError("RewardModel.save_pretrained: LoRA adapters are still separate; call merge_lora() first")
        model = self.transformers_model
        save = save_stage_model if atomic else write_stage_model
        return save(
            model,
            tokenizer,
            path,
            stage=REWARD_STAGE,
            format_version=_FORMAT_VERSION,
            architecture=type(model).__name__,
            pooling="last attention_mask token",
            **marker_extra,
        )


def _check_layer_types(rm: RewardModel, length: int) -> None:
    """A custom 4D mask reaches every layer as is: it replaces a sliding window, so rows must fit in it."""
    layer_types = set(getattr(rm.config, "layer_types", None) or ())
    if layer_types - {"full_attention", "sliding_attention"}:
        raise ConfigError(_no_pair_layout(rm, f"its layer types {sorted(layer_types)} need their own masks"))
    window = getattr(rm.config, "sliding_window", None)
    if "sliding_attention" in layer_types and window and length > window:
        raise ConfigError(_no_pair_layout(
            rm, f"a row of {length} tokens is longer than its sliding window ({window}), which a 4D mask would override"
        ))


def _no_pair_layout(rm: RewardModel, why: str) -> str:
    return (
        f"reward.share_prompt: the {type(rm.transformers_model).__name__} backbone cannot score a preference pair "
        f"(or a prompt's replies) as one shared-prefix row: {why}; set reward.share_prompt=false (one row per reply)"
    )


def _check_dir(path: str | Path) -> Path:
    directory = Path(path)
    if not directory.is_dir():
        raise ModelLoadError(f"model directory not found: {directory}")
    refuse_pickled_weights(directory)
    return directory


def _seqcls_from_causal_lm(causal_lm: torch.nn.Module, *, seed: int) -> torch.nn.Module:
    """Same trunk weights, one-label sequence-classification model, fresh small-normal head."""
    from transformers import AutoModelForSequenceClassification

    causal_lm = unwrap_peft(causal_lm)
    config = getattr(causal_lm, "config", None)
    prefix = getattr(causal_lm, "base_model_prefix", None)
    if config is None or not prefix or not hasattr(causal_lm, prefix):
        raise TypeError(f"RewardModel.from_model: {type(causal_lm).__name__} is not a transformers model")
    config = copy.deepcopy(config)
    config.num_labels = 1
    param = next(causal_lm.parameters())
    try:
        seqcls = AutoModelForSequenceClassification.from_config(config, dtype=param.dtype)
    except ValueError as exc:
        raise TypeError(f"RewardModel.from_model: no sequence-classification variant of {type(causal_lm).__name__}: {exc}") from exc
    getattr(seqcls, seqcls.base_model_prefix).load_state_dict(getattr(causal_lm, prefix).state_dict(), strict=True)
    init_reward_head(seqcls.score, seed=seed)
    return seqcls.to(param.device)
