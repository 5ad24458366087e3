"""``python -m rlhf_core.demo_data --out data/demo --seed 0`` (also ``rlhf data make-demo``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from rlhf_core.config.demo_data import DemoDataConfig
from rlhf_core.config.model import ModelConfig
from rlhf_core.demo_data.generate import make_demo_data
from rlhf_core.errors import UserError


def main(argv: list[str] | None = None) -> int:
    """``python -m rlhf_core.demo_data --out data/demo --seed 0``."""
    parser = argparse.ArgumentParser(prog="python -m rlhf_core.demo_data",
                                     description="Generate the demo data set (data/demo).")
    parser.add_argument("--out", type=Path, default=Path("data/demo"), help="output directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-prompts-per-topic", type=int, default=28, help="benign prompts with replies per topic")
    parser.add_argument("--n-rl-prompts-per-topic", type=int, default=27)
    parser.add_argument("--ranked-samples", type=int, default=DemoDataConfig().ranked_samples,
                        help="extra samples per benign prompt, compared with each other (on-policy pairs)")
    parser.add_argument("--model", default=None, help="model source (default: smollm2-135m-instruct; 'tiny' for tests)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads while sampling")
    parser.add_argument("--samples", type=Path, default=None,
                        help="JSON file of raw sampled replies: reused if it matches, written otherwise")
    parser.add_argument("--cache-dir", type=Path, default=Path(".rlhf/models"), help="model cache directory")
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {"n_rl_prompts_per_topic": args.n_rl_prompts_per_topic, "threads": args.threads,
                                 "ranked_samples": args.ranked_samples}
    if args.model:
        overrides["model"] = ModelConfig(base=args.model)
    try:
        make_demo_data(args.out, seed=args.seed, n_prompts_per_topic=args.n_prompts_per_topic,
                       cache_dir=args.cache_dir, samples_path=args.samples, **overrides)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
