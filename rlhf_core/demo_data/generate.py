"""The demo data driver: :func:`make_demo_data` runs steps 1-4 and writes ``data/demo``."""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from rlhf_core.config.demo_data import DemoDataConfig
from rlhf_core.demo_data.annotators import label_pairs
from rlhf_core.demo_data.defects import (
    finalize,
    plant_demonstration_defects,
    plant_preference_defects,
    plant_rl_defects,
)
from rlhf_core.demo_data.files import build_stats, regenerate_command, write_jsonl, write_stats
from rlhf_core.demo_data.pairs import build_pairs
from rlhf_core.demo_data.prompts import build_prompts
from rlhf_core.demo_data.replies import build_candidates, demonstrations
from rlhf_core.demo_data.sampling import sample_pool
from rlhf_core.errors import ConfigError


def demo_config(**fields: Any) -> DemoDataConfig:
    """The generator's settings; an out-of-range one is a one-line ConfigError naming the field."""
    try:
        return DemoDataConfig(**fields)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']} (got {e.get('input')!r})"
                             for e in exc.errors())
        raise ConfigError(f"demo data: {problems}") from exc


def make_demo_data(
    out_dir: Path | str,
    *,
    seed: int = 0,
    n_prompts_per_topic: int = 28,
    cache_dir: Path | str | None = None,
    samples_path: Path | str | None = None,
    log: Callable[[str], None] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Generate the demo data set into ``out_dir``; return the stats (also written to stats.json).

    ``overrides`` are any other :class:`DemoDataConfig` fields (``model=ModelConfig(base="tiny")``,
    ``n_rl_prompts_per_topic=3``, ...). ``cache_dir`` is the model cache (default: the model
    config's ``cache_dir``, else ``.rlhf/models``). ``samples_path``: a JSON file of raw sampled
    replies, reused when it matches the prompts and sampling settings, written otherwise (so the
    post-processing can be changed without sampling again).
    """
    cfg = demo_config(seed=seed, n_prompts_per_topic=n_prompts_per_topic, **overrides)
    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(cache_dir) if cache_dir else (cfg.model.cache_dir or Path(".rlhf/models"))
    t0 = time.perf_counter()
    rng = random.Random(cfg.seed)  # one stream, drawn in this order: every step below consumes it

    pool, rl = build_prompts(cfg, rng)  # step 1
    say(f"demo data: {len(pool)} reply prompts, {len(rl)} clean RL prompts")
    replies = sample_pool(pool, cfg, rng, cache, samples_path, say)  # step 2
    cands = build_candidates(pool, replies.sample_a, replies.sample_b, replies.greedy, rng, replies.ranked)
    demos = demonstrations(cands)
    pref_rows, panel_stats = label_pairs(build_pairs(cands, cfg, rng), cfg, rng)  # step 3

    planted, files = {}, {}  # step 4
    files["demonstrations"], planted["demonstrations"] = finalize(
        plant_demonstration_defects(demos, pool, cfg, rng), "demo", rng)
    files["preferences"], planted["preferences"] = finalize(
        plant_preference_defects(pref_rows, cands, cfg, rng), "pref", rng)
    files["rl_prompts"], planted["rl_prompts"] = finalize(
        plant_rl_defects([p.public() for p in rl], cfg, rng), "rl", rng)
    for name, rows in files.items():
        write_jsonl(out / f"{name}.jsonl", rows)

    stats = build_stats(
        cfg, files, planted, pref_rows, panel_stats, regenerate=regenerate_command(out_dir, cfg, samples_path),
        sampled_replies=replies.count, sampling_s=replies.sampling_s,
        total_s=time.perf_counter() - t0 + replies.reused_s,
    )
    write_stats(out, stats)
    say(f"demo data: wrote {out} in {stats['generation']['total_seconds']:.0f}s; "
        f"agreement {stats['agreement']['measured_file']:.3f}")
    return stats
