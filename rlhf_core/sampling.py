"""The one sampler: PPO's rollout, best-of-N and the evaluation all draw responses through :func:`sample`.

Shapes: ``B`` prompts, ``P`` prompt tokens (left-padded), ``R`` response tokens (right-padded
after the first EOS), ``V`` vocabulary.

:func:`sample` left-pads token-id prompts, samples with a KV cache (:func:`sample_tokens`) and
masks everything after each row's first EOS (:func:`truncate_after_eos`). Sampling is a manual
loop over a ``DynamicCache`` rather than ``model.generate``. On CPU the two run at the same speed
(bench/README.md), but the manual loop (a) applies exactly the temperature / top-k / top-p
written here, so the distribution the tokens come from is the one
:func:`rlhf_core.ppo.logprobs.policy_logprobs` scores, (b) draws its randomness only through
:func:`sample_from_probs`: from the global torch RNG (which a checkpoint restores: exact
resume), or with ``seeds`` from one generator per row, so that a row's tokens do not depend on
which rows share its batch (PPO: 1 and N data-parallel processes draw the same tokens), and (c)
stops as soon as every row has emitted EOS. ``score_tokens`` / ``keep_hidden`` read the log-probs and the
final hidden states off the loop (PPO's ``rollout_logprobs="sampler"``, see
:mod:`rlhf_core.ppo.logprobs`); neither draws from the RNG.

The chat CLI and the demo-data generator sample through ``model.generate`` instead
(:func:`rlhf_core.generation.sample_replies`): their draws (``torch.multinomial``, transformers'
top-p rule, the generation config's default top-k) differ from these.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from rlhf_core.losses import gather_logprobs


class QueryResponse:
    """Prompt and response tensors joined as the models read them; for classes holding
    ``query_ids``/``query_mask`` (B, P) and ``response_ids``/``response_mask`` (B, R)."""

    @property
    def query_response_ids(self) -> torch.Tensor:
        return torch.cat([self.query_ids, self.response_ids], dim=1)  # (B, P+R)

    @property
    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.query_mask.long(), self.response_mask.long()], dim=1)  # (B, P+R)

    @property
    def response_start(self) -> int:
        return self.query_ids.shape[1]


@dataclass
class Rollout(QueryResponse):
    """One batch of sampled responses (CPU or model device tensors)."""

    query_ids: torch.Tensor  # (B, P) left-padded prompt ids
    query_mask: torch.Tensor  # (B, P) 1 on real prompt tokens
    response_ids: torch.Tensor  # (B, R) pad after the first EOS
    response_mask: torch.Tensor  # (B, R) bool, True up to and including the first EOS
    has_eos: torch.Tensor  # (B,) bool, the response emitted EOS within max_new_tokens
    logprobs: torch.Tensor | None = None  # (B, R) log pi(token) under logits / temperature, from the sampler
    hidden: torch.Tensor | None = None  # (B, R, H) final hidden state that emitted each response token


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists -> left-padded ``ids`` (B, P) and ``mask`` (B, P) (generation continues on the right)."""
    if not sequences or any(len(s) == 0 for s in sequences):
        raise ValueError("left_pad: every sequence needs at least one token")
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, length - len(seq) :] = torch.as_tensor(list(seq), dtype=torch.long)
        mask[row, length - len(seq) :] = 1
    return ids, mask


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) mask -> (B, T) positions counted over real tokens (left padding starts at 0)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def _eos_tensor(eos_id: int | Sequence[int], device: torch.device) -> torch.Tensor:
    ids = [eos_id] if isinstance(eos_id, int) else list(eos_id)
    if not ids:
        raise ValueError("need at least one EOS token id")
    return torch.tensor(ids, dtype=torch.long, device=device)


def truncate_after_eos(
    response_ids: torch.Tensor, eos_id: int | Sequence[int], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask everything after the first EOS of each row.

    response_ids: (B, R) -> ``(ids (B, R), mask (B, R) bool)``. The first EOS itself stays
    valid (emitting it is an action the policy took and is rewarded for); later positions
    become ``pad_id`` and mask False. ``eos_id`` may be one id or several (e.g. ``<|im_end|>``
    and ``<|endoftext|>``). Rows without EOS are kept whole.
    """
    is_eos = torch.isin(response_ids, _eos_tensor(eos_id, response_ids.device))  # (B, R)
    # eos_before[t] = number of EOS strictly before t; valid while it is 0
    eos_before = is_eos.long().cumsum(-1) - is_eos.long()  # (B, R)
    mask = eos_before == 0  # (B, R)
    ids = torch.where(mask, response_ids, torch.full_like(response_ids, pad_id))
    return ids, mask


def filter_logits(logits: torch.Tensor, *, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Top-k then nucleus (top-p) filtering: removed entries become -inf. logits: (B, V) -> (B, V).

    ``top_k=0`` and ``top_p=1.0`` disable each filter. Top-p keeps the smallest set of tokens
    whose probability reaches ``top_p`` (the most likely token always survives), as in
    Holtzman et al. 2020 and transformers' ``TopPLogitsWarper``.
    """
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V)
        cum = sorted_logits.softmax(-1).cumsum(-1)  # (B, V)
        remove_sorted = (cum - sorted_logits.softmax(-1)) >= top_p  # mass before this token already enough
        remove = remove_sorted.scatter(-1, order, remove_sorted)  # back to vocabulary order
        logits = logits.masked_fill(remove, float("-inf"))
    return logits


def sample_next_token(
    logits: torch.Tensor,
    *,
    temperature: float,
    top_k: int = 0,
    top_p: float = 1.0,
    generators: Sequence[torch.Generator] | None = None,
) -> torch.Tensor:
    """One token per row from (B, V) logits -> (B,). ``temperature == 0`` is greedy.

    ``generators``: one per row (see :func:`sample_from_probs`); None = the global torch RNG.
    """
    if temperature == 0:
        return logits.argmax(-1)
    filtered = filter_logits(logits.float() / temperature, top_k=top_k, top_p=top_p)
    return sample_from_probs(filtered.softmax(-1), generators)


def row_generators(seeds: Sequence[int], device: torch.device | str) -> list[torch.Generator]:
    """One seeded ``torch.Generator`` on ``device`` per row."""
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]


def sample_from_probs(probs: torch.Tensor, generators: Sequence[torch.Generator] | None = None) -> torch.Tensor:
    """One index per row of (B, V) probabilities -> (B,), by inverting the CDF with one uniform per row.

    Same distribution as ``torch.multinomial(probs, 1)`` but much faster on CPU for a large
    vocabulary (bench/README.md): multinomial's CPU kernel dominates the sampling loop of a
    small model otherwise. ``right=True`` picks the first index whose
    CDF exceeds ``u``, so a zero-probability (filtered) token can never be drawn.
    ``generators``: row ``i`` draws its uniform from ``generators[i]`` (one draw per call), so
    its token depends on its own probabilities and generator only; None = the global torch RNG.
    """
    cdf = probs.cumsum(-1)  # (B, V)
    if generators is None:
        u = torch.rand(probs.shape[0], 1, device=probs.device, dtype=cdf.dtype)  # (B, 1)
    else:
        if len(generators) != probs.shape[0]:
            raise ValueError(f"sample_from_probs: {len(generators)} generators for {probs.shape[0]} rows")
        u = torch.cat([torch.rand(1, 1, generator=g, device=probs.device, dtype=cdf.dtype) for g in generators])
    u = u * cdf[:, -1:]  # (B, 1) in [0, total)
    return torch.searchsorted(cdf, u, right=True).clamp(max=probs.shape[-1] - 1).squeeze(-1)


@dataclass
class Sampled:
    """What :func:`sample_tokens` returns: the tokens, and what the loop read off along the way."""

    tokens: torch.Tensor  # (B, R) sampled ids, pad_id after a row's EOS
    logprobs: torch.Tensor | None  # (B, R) log-softmax(logits / temperature) at each sampled token (score_tokens)
    hidden: torch.Tensor | None  # (B, R, H) final hidden state at the position that emitted each token (keep_hidden)


@torch.no_grad()
def sample_tokens(
    model: torch.nn.Module,
    query_ids: torch.Tensor,
    query_mask: torch.Tensor,
    *,
    max_new_tokens: int,
    eos_id: int | Sequence[int],
    pad_id: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    score_tokens: bool = False,
    keep_hidden: bool = False,
    seeds: Sequence[int] | None = None,
) -> Sampled:
    """Sample up to ``max_new_tokens`` per row with a KV cache. (B, P), (B, P) -> :class:`Sampled`, R <= max_new_tokens.

    ``query_ids`` must be left-padded. Stops early once every row has emitted EOS; tokens
    sampled after a row's EOS are replaced by ``pad_id`` (apply :func:`truncate_after_eos`
    for the mask). Draws from the global torch RNG, or with ``seeds`` (one int per row) from a
    generator per row seeded with it (the same draws whatever ``score_tokens`` and ``keep_hidden`` say). ``score_tokens``: also the log-prob of each sampled token under
    the tempered, *unfiltered* distribution (what :func:`rlhf_core.ppo.logprobs.policy_forward` computes; top-k/top-p
    only choose which tokens can be drawn). ``keep_hidden``: also the final hidden state that
    produced each token's logits (what a shared value head reads).
    """
    from transformers import DynamicCache

    if query_ids.shape != query_mask.shape or query_ids.dim() != 2:
        raise ValueError(f"sample_tokens: query ids {tuple(query_ids.shape)} and mask {tuple(query_mask.shape)} must be (B, P)")
    if bool((query_mask[:, -1] == 0).any()):
        raise ValueError("sample_tokens: queries must be left-padded (a row ends in padding)")
    if score_tokens and temperature <= 0:
        raise ValueError("sample_tokens: score_tokens needs temperature > 0 (greedy decoding has no sampling distribution)")
    if seeds is not None and len(seeds) != query_ids.shape[0]:
        raise ValueError(f"sample_tokens: {len(seeds)} seeds for {query_ids.shape[0]} prompts (one per row)")
    device = query_ids.device
    eos = _eos_tensor(eos_id, device)
    mask = query_mask.long()
    positions = position_ids_from_mask(mask)  # (B, P)
    cache = DynamicCache(config=getattr(model, "config", None))
    out = model(
        input_ids=query_ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
        use_cache=True, logits_to_keep=1, output_hidden_states=keep_hidden,
    )
    next_pos = positions[:, -1:] + 1  # (B, 1)
    finished = torch.zeros(query_ids.shape[0], dtype=torch.bool, device=device)  # (B,)
    tokens: list[torch.Tensor] = []
    logprobs: list[torch.Tensor] = []
    hidden: list[torch.Tensor] = []
    generators = row_generators(seeds, device) if seeds is not None else None
    for _ in range(max_new_tokens):
        logits = out.logits[:, -1, :]  # (B, V)
        token = sample_next_token(logits, temperature=temperature, top_k=top_k, top_p=top_p, generators=generators)  # (B,)
        token = torch.where(finished, torch.full_like(token, pad_id), token)
        tokens.append(token)
        if score_tokens:
            logprobs.append(gather_logprobs((logits.float() / temperature).unsqueeze(1), token.unsqueeze(1)).squeeze(1))
        if keep_hidden:
            hidden.append(out.hidden_states[-1][:, -1, :])  # (B, H)
        finished = finished | torch.isin(token, eos)
        if bool(finished.all()) or len(tokens) == max_new_tokens:
            break
        mask = torch.cat([mask, torch.ones_like(token).unsqueeze(1)], dim=1)  # (B, P+t)
        out = model(
            input_ids=token.unsqueeze(1), attention_mask=mask, position_ids=next_pos,
            past_key_values=out.past_key_values, use_cache=True, output_hidden_states=keep_hidden,
        )
        next_pos = next_pos + 1
    return Sampled(
        tokens=torch.stack(tokens, dim=1),
        logprobs=torch.stack(logprobs, dim=1) if score_tokens else None,
        hidden=torch.stack(hidden, dim=1) if keep_hidden else None,
    )


def sample(
    model: torch.nn.Module,
    prompt_ids: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    eos_id: int | Sequence[int],
    pad_id: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    score_tokens: bool = False,
    keep_hidden: bool = False,
    device: torch.device | str | None = None,
    seeds: Sequence[int] | None = None,
) -> Rollout:
    """B token-id prompts -> the :class:`Rollout` of one sampled response each (the module docstring).

    The prompts are left-padded with ``pad_id`` (:func:`left_pad`) and moved to ``device``
    (default: the model's); ``score_tokens`` / ``keep_hidden`` fill ``Rollout.logprobs`` /
    ``Rollout.hidden`` from the sampling loop (see :func:`sample_tokens`). ``seeds``: None =
    the global torch RNG; one int per prompt = row ``i`` draws from its own generator seeded
    with ``seeds[i]``, so its response does not depend on the other rows of the batch (up to
    float noise in the logits).
    """
    if device is None:
        device = next(model.parameters()).device
    query_ids, query_mask = left_pad(prompt_ids, pad_id)  # (B, P)
    query_ids, query_mask = query_ids.to(device), query_mask.to(device)
    sampled = sample_tokens(
        model, query_ids, query_mask, max_new_tokens=max_new_tokens, eos_id=eos_id, pad_id=pad_id,
        temperature=temperature, top_k=top_k, top_p=top_p, score_tokens=score_tokens, keep_hidden=keep_hidden,
        seeds=seeds,
    )
    ids, mask = truncate_after_eos(sampled.tokens, eos_id, pad_id)  # (B, R)
    has_eos = (torch.isin(ids, _eos_tensor(eos_id, ids.device)) & mask).any(-1)  # (B,)
    return Rollout(
        query_ids=query_ids, query_mask=query_mask, response_ids=ids, response_mask=mask, has_eos=has_eos,
        logprobs=sampled.logprobs, hidden=sampled.hidden,
    )
