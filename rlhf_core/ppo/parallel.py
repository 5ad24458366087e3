"""Data-parallel PPO: which rows a process samples, and the collectives that make every process agree.

With a :class:`~rlhf_core.distributed.DataParallel` of N processes, one PPO step runs::

    rollout    each process samples, scores and runs the model passes on its contiguous
               shard of the step's rows (whole prompts: samples_per_prompt rows stay together),
               with per-row seeds, so a row's tokens are those one process draws        share
    gather     every process receives the full batch (prompts padded on the left, responses
               on the right, to the global widths; texts and gold as objects)      gather_rollout
    derive     score centring, KL-penalised rewards, GAE and whitening on the full batch, the
               same computation on every process (global statistics)
    update     every process draws the same minibatch permutation, runs its contiguous slice
               of each minibatch (each micro-batch weighted by its share of the *global*
               minibatch's response tokens), then the gradients are summed   all_reduce_gradients
               before clipping and AdamW, which therefore run identically everywhere.

The gradients are summed with an explicit all-reduce rather than a DDP wrapper: the policy is
called through several paths (``PolicyWithValue.forward``, ``model.policy`` for PPO-ptx, the
reference with LoRA adapters disabled), and a process may run no micro-batch of a minibatch
(PPO-ptx chunks are shared out separately), neither of which DDP's hooks allow.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:  # pragma: no cover
    from rlhf_core.distributed import DataParallel

# Elements per all-reduce of the gradients: big enough to amortise the call, small enough that
# the flat copy stays a fraction of the model (32 M fp32 = 128 MB).
BUCKET_ELEMENTS = 32 * 2**20


def rollout_seeds(seed: int, number: int, rows: int) -> list[int]:
    """Sampling seeds of PPO step ``number`` (1-based): one per global row, a pure function of (seed, step, row).

    The same whatever the number of processes and whichever rows share a batch (exact resume too).
    """
    states = [np.random.SeedSequence([seed, number, row]).generate_state(1, np.uint64)[0] for row in range(rows)]
    return [int(s) >> 1 for s in states]  # torch seeds are < 2**64; keep them non-negative int64s


def share(n: int, dist: DataParallel | None) -> range:
    """This process's contiguous share of ``n`` items: ``ceil(n / world)`` (the last may be short, or empty).

    All of them without ``dist``. A rollout batch divides by world size x samples_per_prompt
    (:meth:`~rlhf_core.config.ppo.PPOConfig.check_processes`), so its shares hold whole prompts.
    """
    if dist is None:
        return range(n)
    size = -(-n // dist.world_size)
    return range(min(dist.rank * size, n), min((dist.rank + 1) * size, n))


def _gather_tensor(t: torch.Tensor, dist: DataParallel) -> torch.Tensor:
    """Concatenate equal-shape tensors of every process along dim 0 (bool via uint8: gloo has no bool)."""
    send = t.to(torch.uint8) if t.dtype == torch.bool else t
    parts = [torch.empty_like(send) for _ in range(dist.world_size)]
    torch.distributed.all_gather(parts, send.contiguous())
    out = torch.cat(parts)
    return out.bool() if t.dtype == torch.bool else out


def _pad(t: torch.Tensor, width: int, value: float, *, left: bool) -> torch.Tensor:
    """(b, w, ...) -> (b, width, ...) padded with ``value`` on the left or the right of dim 1."""
    missing = width - t.shape[1]
    if missing == 0:
        return t
    filler = torch.full((t.shape[0], missing, *t.shape[2:]), value, dtype=t.dtype, device=t.device)
    return torch.cat([filler, t] if left else [t, filler], dim=1)


def gather_objects(obj: Any, dist: DataParallel) -> list[Any]:
    """``obj`` of every process, in rank order (picklable, small)."""
    out: list[Any] = [None] * dist.world_size
    torch.distributed.all_gather_object(out, obj)
    return out


def gather_rollout(
    fields: dict[str, Any], dist: DataParallel, *, pad_id: int, query: Sequence[str], response: Sequence[str]
) -> dict[str, Any]:
    """Every process's rows of ``fields``, concatenated in rank order: the full rollout batch on each.

    ``query`` names the (b, P) tensors, left-padded to the global P (``query_ids`` with ``pad_id``,
    the rest with 0); ``response`` the (b, R) ones, right-padded to the global R the same way
    (``response_ids`` with ``pad_id``; masks with False, log-probs and values with 0, which the
    masks hide). Other tensors are (b,); lists (texts, gold) travel as objects.
    """
    lists = {k: v for k, v in fields.items() if not isinstance(v, torch.Tensor)}
    widths = {"P": fields[query[0]].shape[1], "R": fields[response[0]].shape[1]}
    everyone = gather_objects({"widths": widths, "lists": lists}, dist)
    P = max(e["widths"]["P"] for e in everyone)
    R = max(e["widths"]["R"] for e in everyone)
    out: dict[str, Any] = {}
    for name, value in fields.items():
        if not isinstance(value, torch.Tensor):
            parts = [e["lists"][name] for e in everyone]
            out[name] = None if any(p is None for p in parts) else [x for p in parts for x in p]
            continue
        fill = pad_id if name.endswith("_ids") else 0
        if name in query:
            value = _pad(value, P, fill, left=True)
        elif name in response:
            value = _pad(value, R, fill, left=False)
        out[name] = _gather_tensor(value, dist)
    return out


def sum_stats(stats: dict[str, float], dist: DataParallel) -> dict[str, float]:
    """Key-wise sum of every process's ``stats`` (a process may lack a key: it ran no such micro-batch)."""
    total: dict[str, float] = {}
    for part in gather_objects(stats, dist):
        for key, v in part.items():
            total[key] = total.get(key, 0.0) + v
    return dict(sorted(total.items()))


def max_over(value: float, dist: DataParallel) -> float:
    """The largest ``value`` over the processes."""
    t = torch.tensor([value], dtype=torch.float64, device=dist.device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return float(t.item())


@torch.no_grad()
def all_reduce_gradients(params: Sequence[torch.nn.Parameter], dist: DataParallel) -> None:
    """Sum every parameter's gradient over the processes, in place, coalesced into flat buckets.

    A parameter no process computed a gradient for keeps ``grad = None`` (AdamW skips it, as in
    one process); one that only some processes touched gets zeros from the others.
    """
    touched = torch.tensor([p.grad is not None for p in params], dtype=torch.float64, device=dist.device)
    torch.distributed.all_reduce(touched)
    live = [p for p, n in zip(params, touched.tolist(), strict=True) if n > 0]
    for p in live:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    buckets: dict[tuple[torch.dtype, torch.device], list[list[torch.nn.Parameter]]] = {}
    filled: dict[tuple[torch.dtype, torch.device], int] = {}  # elements in each kind's newest bucket
    for p in live:
        kind = (p.grad.dtype, p.grad.device)
        groups = buckets.setdefault(kind, [[]])
        if groups[-1] and filled[kind] + p.numel() > BUCKET_ELEMENTS:
            groups.append([])
            filled[kind] = 0
        groups[-1].append(p)
        filled[kind] = filled.get(kind, 0) + p.numel()
    for groups in buckets.values():
        for group in groups:
            flat = torch.cat([p.grad.reshape(-1) for p in group])
            torch.distributed.all_reduce(flat)
            offset = 0
            for p in group:
                p.grad.copy_(flat[offset : offset + p.numel()].view_as(p.grad))
                offset += p.numel()
