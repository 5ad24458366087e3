"""Step 2 of the demo data, the model part: sampled replies, and the file that keeps them.

Sampling is seeded (``torch.manual_seed`` per batch), so a run is deterministic on one machine;
another torch build or CPU may sample slightly different text, which is why the generated files
are shipped rather than regenerated in CI, and why the raw replies are kept (``samples.json``):
while they match the prompts and sampling settings they are reused, and every file is rebuilt
byte for byte without the model.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhf_core.config.demo_data import DemoDataConfig
from rlhf_core.demo_data.prompts import PromptRow


def sample_all(
    prompts: list[str], model: Any, tokenizer: Any, cfg: DemoDataConfig, *, greedy: bool, seed: int,
    log: Callable[[str], None],
) -> list[str]:
    """Sample one reply per prompt in batches; each batch seeded from ``seed`` and its index."""
    from rlhf_core.generation import sample_replies

    out: list[str] = []
    n_batches = math.ceil(len(prompts) / cfg.batch_size)
    start = time.perf_counter()
    for b in range(n_batches):
        chunk = prompts[b * cfg.batch_size : (b + 1) * cfg.batch_size]
        out += sample_replies(
            model, tokenizer, chunk, max_new_tokens=cfg.max_new_tokens,
            temperature=0.0 if greedy else cfg.temperature, top_p=cfg.top_p, seed=seed * 10_007 + b,
        )
        elapsed = time.perf_counter() - start
        log(f"  {'greedy' if greedy else 'sample'} batch {b + 1}/{n_batches}: {elapsed:.0f}s elapsed, "
            f"eta {elapsed / (b + 1) * (n_batches - b - 1):.0f}s")
    return out


@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    """torch's CPU thread count set to ``n`` (None: unchanged) inside the block, restored after."""
    import torch

    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _sample_everything(
    texts: list[str], idx_b: list[int], idx_g: list[int], model: Any, tokenizer: Any, cfg: DemoDataConfig,
    say: Callable[[str], None],
) -> tuple[list[str], dict[int, str], dict[int, str]]:
    """First samples for every prompt, second samples for ``idx_b``, greedy replies for ``idx_g``."""
    with _torch_threads(cfg.threads):
        sample_a = sample_all(texts, model, tokenizer, cfg, greedy=False, seed=cfg.seed * 3, log=say)
        sample_b = dict(zip(idx_b, sample_all([texts[i] for i in idx_b], model, tokenizer, cfg, greedy=False,
                                              seed=cfg.seed * 3 + 1, log=say), strict=True))
        greedy = dict(zip(idx_g, sample_all([texts[i] for i in idx_g], model, tokenizer, cfg, greedy=True,
                                            seed=cfg.seed * 3 + 2, log=say), strict=True))
    return sample_a, sample_b, greedy


def _sample_ranked(
    texts: list[str], idx_r: list[int], model: Any, tokenizer: Any, cfg: DemoDataConfig, say: Callable[[str], None],
) -> dict[int, list[str]]:
    """``cfg.ranked_samples`` more samples for each prompt in ``idx_r`` (seeds after the first three passes)."""
    with _torch_threads(cfg.threads):
        passes = [sample_all([texts[i] for i in idx_r], model, tokenizer, cfg, greedy=False,
                             seed=cfg.seed * 3 + 3 + j, log=say) for j in range(cfg.ranked_samples)]
    return {i: [p[n] for p in passes] for n, i in enumerate(idx_r)}


def _read_samples(path: Path | str | None) -> dict[str, Any]:
    """The raw replies an earlier run saved (``samples.json``), or {} if there is no such file."""
    if not path or not Path(path).is_file():
        return {}
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _load_samples(
    saved: dict[str, Any], key: dict[str, Any]
) -> tuple[list[str], dict[int, str], dict[int, str], float] | None:
    """Replies saved by an earlier run with the same prompts and sampling settings, else None."""
    if saved.get("key") != key:
        return None
    return (saved["sample_a"], dict(zip(key["idx_b"], saved["sample_b"], strict=True)),
            dict(zip(key["idx_g"], saved["greedy"], strict=True)), float(saved.get("sampling_seconds", 0.0)))


def _load_ranked(saved: dict[str, Any], key: dict[str, Any]) -> tuple[dict[int, list[str]], float] | None:
    """The ranked samples saved beside the first ones (``samples.json`` -> ``ranked``), if ``key`` matches."""
    ranked = saved.get("ranked") or {}
    if ranked.get("key") != key:
        return None
    return (dict(zip(key["idx_r"], ranked["replies"], strict=True)), float(ranked.get("sampling_seconds", 0.0)))


@dataclass
class SampledReplies:
    """The model's replies to the reply prompts (by pool index) and the seconds they took."""

    sample_a: list[str]  # one per prompt
    sample_b: dict[int, str]  # second samples
    greedy: dict[int, str]
    ranked: dict[int, list[str]]  # the extra samples of benign prompts, compared with each other
    sampling_s: float  # every reply; for reused replies, what sampling them cost the run that made them
    reused_s: float  # the part of sampling_s that reused replies cost earlier

    @property
    def count(self) -> int:
        return len(self.sample_a) + len(self.sample_b) + len(self.greedy) + sum(len(v) for v in self.ranked.values())


def _load_model(cfg: DemoDataConfig, cache: Path, say: Callable[[str], None]) -> tuple[Any, Any]:
    from rlhf_core.models import load_causal_lm, load_tokenizer

    say(f"demo data: loading model {cfg.model.base}")
    tokenizer = load_tokenizer(cfg.model, cache)
    return load_causal_lm(cfg.model, cache, tokenizer).eval(), tokenizer


def _save_samples(
    path: Path | str, key: dict[str, Any], ranked_key: dict[str, Any], replies: SampledReplies, first_s: float,
    ranked_s: float,
) -> None:
    """Write ``samples.json``: the raw replies and the keys under which a later run may reuse them."""
    saved = {"key": key, "sample_a": replies.sample_a, "sample_b": [replies.sample_b[i] for i in key["idx_b"]],
             "greedy": [replies.greedy[i] for i in key["idx_g"]], "sampling_seconds": first_s}
    if ranked_key["idx_r"]:
        saved["ranked"] = {"key": ranked_key, "replies": [replies.ranked[i] for i in ranked_key["idx_r"]],
                           "sampling_seconds": ranked_s}
    Path(path).write_text(json.dumps(saved, ensure_ascii=False), encoding="utf-8")


def sample_pool(
    pool: list[PromptRow], cfg: DemoDataConfig, rng: random.Random, cache: Path, samples_path: Path | str | None,
    say: Callable[[str], None],
) -> SampledReplies:
    """Every sampled reply of the reply prompts: from ``samples_path`` where it matches the prompts and
    sampling settings, else sampled from ``cfg.model`` (loaded from ``cache``) and saved there."""
    texts = [p.prompt for p in pool]
    idx_b = sorted(rng.sample(range(len(pool)), round(len(pool) * cfg.second_sample_fraction)))
    idx_g = sorted(rng.sample(range(len(pool)), round(len(pool) * cfg.greedy_fraction)))
    t_sample = time.perf_counter()
    samples_key = {"prompts": texts, "idx_b": idx_b, "idx_g": idx_g, "model": cfg.model.base,
                   "max_new_tokens": cfg.max_new_tokens, "temperature": cfg.temperature, "top_p": cfg.top_p,
                   "seed": cfg.seed}
    saved_samples = _read_samples(samples_path)
    cached = _load_samples(saved_samples, samples_key)
    # The ranked samples (a later addition) have their own key, so adding them did not resample the
    # rest; they are reused only beside matching first samples (same prompts, model and settings).
    idx_r = [i for i, p in enumerate(pool) if not p.harmful] if cfg.ranked_samples else []
    ranked_key = {"idx_r": idx_r, "n": cfg.ranked_samples, "first_seed": cfg.seed * 3 + 3}
    cached_ranked = _load_ranked(saved_samples, ranked_key) if idx_r and cached else None
    must_sample = cached is None or bool(idx_r and cached_ranked is None)
    model = tokenizer = None
    if cached is not None:
        say(f"demo data: reusing the sampled replies in {samples_path}")
        sample_a, sample_b, greedy, sampling_s = cached
    if must_sample:
        model, tokenizer = _load_model(cfg, cache, say)
    if cached is None:
        sample_a, sample_b, greedy = _sample_everything(texts, idx_b, idx_g, model, tokenizer, cfg, say)
        sampling_s = time.perf_counter() - t_sample
    if cached_ranked is not None:
        ranked, ranked_s = cached_ranked
    elif idx_r:
        t_ranked = time.perf_counter()
        ranked = _sample_ranked(texts, idx_r, model, tokenizer, cfg, say)
        ranked_s = time.perf_counter() - t_ranked
    else:
        ranked, ranked_s = {}, 0.0
    # seconds spent sampling the reused replies when they were made (so the stats report the real cost)
    reused_s = (sampling_s if cached is not None else 0.0) + (ranked_s if cached_ranked is not None else 0.0)
    replies = SampledReplies(sample_a, sample_b, greedy, ranked, sampling_s + ranked_s, reused_s)
    if samples_path and must_sample:
        _save_samples(samples_path, samples_key, ranked_key, replies, sampling_s, ranked_s)
    say(f"demo data: sampled {replies.count} replies in {replies.sampling_s:.0f}s")
    return replies
