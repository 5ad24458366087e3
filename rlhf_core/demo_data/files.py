"""The demo data's outputs: the JSONL files, stats.json and the data/demo README."""

from __future__ import annotations

import json
import platform
from collections import Counter
from pathlib import Path
from typing import Any

from rlhf_core.config.demo_data import DemoDataConfig
from rlhf_core.demo_data.annotators import pairwise_agreement
from rlhf_core.demo_data.prompts import TOPICS
from rlhf_core.gold import is_refusal


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def build_stats(
    cfg: DemoDataConfig, files: dict[str, list[dict[str, Any]]], planted: dict[str, dict[str, list[str]]],
    pref_rows: list[dict[str, Any]], panel_stats: dict[str, Any], *, regenerate: str, sampled_replies: int,
    sampling_s: float, total_s: float,
) -> dict[str, Any]:
    """What stats.json holds: sizes, the panel and its measured agreement, planted ids, how it was made.

    ``files``: the rows written per file (defects planted); ``pref_rows``: the labelled pairs before
    any defect was planted (with their internal ``_kind``/``_gold_*`` fields).
    """
    import torch
    import transformers

    demo_rows, pref_final, rl_rows = files["demonstrations"], files["preferences"], files["rl_prompts"]
    clean_labels = [r["annotator_labels"] for r in pref_rows]
    kinds = Counter(r["_kind"] for r in pref_rows)
    gold_agree = sum(r["_gold_chosen"] >= r["_gold_rejected"] for r in pref_rows) / max(1, len(pref_rows))
    ranked_rows = [r for r in pref_rows if r["_ranked"]]
    file_labels = [r["annotator_labels"] for r in pref_final if isinstance(r.get("annotator_labels"), list)]
    users = Counter(r["user_id"] for r in rl_rows if isinstance(r.get("user_id"), str))
    return {
        "config": json.loads(cfg.model_dump_json()),
        "regenerate": regenerate,
        "sizes": {
            "demonstrations": len(demo_rows), "preferences": len(pref_final), "rl_prompts": len(rl_rows),
            "rl_prompts_eval": sum(r.get("split") == "eval" for r in rl_rows),
            "preferences_eval": sum(r.get("split") == "eval" for r in pref_final),
            "demonstrations_eval": sum(r.get("split") == "eval" for r in demo_rows),
        },
        "topics": sorted(TOPICS),
        "agreement": {
            **panel_stats,
            "measured_clean_pairs": round(pairwise_agreement(clean_labels), 4),
            "measured_file": round(pairwise_agreement(file_labels), 4),
            "majority_agrees_with_gold": round(gold_agree, 4),
            "unanimous_share": round(sum(abs(r["margin"]) == 1.0 for r in pref_rows) / max(1, len(pref_rows)), 4),
            "ranked_pairs": len(ranked_rows),
            "ranked_majority_agrees_with_gold": round(
                sum(r["_gold_chosen"] >= r["_gold_rejected"] for r in ranked_rows) / max(1, len(ranked_rows)), 4),
        },
        "pair_kinds": dict(sorted(kinds.items())),
        "benign_refusals_chosen_by_panel": sum(
            is_refusal(r["chosen"]) and not r["harmful"] for r in pref_rows),
        "planted": planted,
        "rl_prompts_per_user_top5": users.most_common(5),
        "generation": {
            "model": cfg.model.base, "sampled_replies": sampled_replies, "sampling_seconds": round(sampling_s, 1),
            "total_seconds": round(total_s, 1), "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version(),
            "machine": platform.machine(),
        },
    }


def write_stats(out: Path, stats: dict[str, Any]) -> None:
    """stats.json and the README rendered from it."""
    (out / "stats.json").write_text(json.dumps(stats, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / "README.md").write_text(render_readme(stats), encoding="utf-8")


def regenerate_command(out_dir: Path | str, cfg: DemoDataConfig, samples_path: Path | str | None = None) -> str:
    """The CLI line that reproduces ``cfg`` (only what differs from the defaults, plus out/seed).

    ``--threads`` is kept: the thread count can change float reductions, hence sampled text.
    """
    default = DemoDataConfig()
    parts = [f"python -m rlhf_core.demo_data --out {out_dir} --seed {cfg.seed}"]
    for name in ("n_prompts_per_topic", "n_rl_prompts_per_topic", "ranked_samples", "threads"):
        if getattr(cfg, name) != getattr(default, name):
            parts.append(f"--{name.replace('_', '-')} {getattr(cfg, name)}")
    if cfg.model.base != default.model.base:
        parts.append(f"--model {cfg.model.base}")
    if samples_path:
        parts.append(f"--samples {samples_path}")
    return " ".join(parts)


def render_readme(stats: dict[str, Any]) -> str:
    """The data/demo README, filled in from the stats of the run that wrote the files."""
    s, a, g, cfg = stats["sizes"], stats["agreement"], stats["generation"], stats["config"]
    planted = "\n".join(
        f"| {file} | {kind} | {len(ids)} |" for file, kinds in stats["planted"].items() for kind, ids in kinds.items()
    )
    return f"""# Demo data

Generated by `rlhf_core/demo_data/` (the project's own code). Regenerate with

```
{stats['regenerate']}
```

(or `rlhf data make-demo`). `samples.json` holds the model's raw sampled replies: while it
matches the prompts and sampling settings, the command reuses it and rebuilds every file
byte for byte on any machine in seconds, without the model (a test checks this, so a change
to the generator or the gold scorer shows up as a data diff). Delete it to sample again:
sampling is seeded, but another torch build, CPU or thread count may sample slightly
different text, which is why the files are shipped.
`stats.json` holds every figure below, the panel's parameters, and the id of every planted defect.

## Files (TRL "standard" JSONL + the canonical columns of docs/ARCHITECTURE.md)

| file | rows | eval rows | columns |
|---|---|---|---|
| demonstrations.jsonl | {s['demonstrations']} | {s['demonstrations_eval']} | id, prompt, response, topic, user_id, source, split, harmful |
| preferences.jsonl | {s['preferences']} | {s['preferences_eval']} | id, prompt, chosen, rejected, annotator_labels, margin, topic, user_id, source, split, harmful |
| rl_prompts.jsonl | {s['rl_prompts']} | {s['rl_prompts_eval']} | id, prompt, topic, user_id, source, split, harmful |

Counts include the planted defects (raw files; the data stage curates them).

## How it was made

- **Prompts**: {len(stats['topics'])} everyday topics ({', '.join(stats['topics'])}) x 7 question
  templates x 12 subjects each, plus a small `harmful` category (flagged `harmful: true`). Whole
  subjects go to train or eval. Users follow a Zipf law (a few users ask a lot: top RL users
  {', '.join(f'{u} {n}' for u, n in stats['rl_prompts_per_user_top5'][:3])}).
- **Replies**: `{g['model']}` sampled through its chat template (temperature {cfg['temperature']},
  top_p {cfg['top_p']}, {cfg['max_new_tokens']} new tokens, batches of {cfg['batch_size']}): {g['sampled_replies']}
  replies in {g['sampling_seconds']:.0f} s ({g['total_seconds']:.0f} s in all; torch {g['torch']},
  transformers {g['transformers']}). Bad replies: refusals of benign prompts, loops (greedy decoding or a
  repeated opening clause), off-topic replies (another topic's reply). Harmful prompts: good refusals vs the
  model's own compliance. Demonstrations are the best finished version (by gold score) of the model's first
  replies (the ranked samples below are only compared, never demonstrated).
- **Ranked comparisons** (InstructGPT's labelers ranked K outputs of the model): {cfg['ranked_samples']} more
  samples for every benign prompt, and {a['ranked_pairs']} pairs ({cfg['ranked_pairs_per_prompt']} per prompt) that
  compare two of a prompt's own samples, each raw or trimmed to its last finished sentence. These are the
  pairs in which both replies are ordinary answers, as a fine-tuned policy's are; the panel's majority
  agrees with the gold scorer on {a['ranked_majority_agrees_with_gold']:.1%} of them.
- **Preference labels**: a simulated panel of {a['n_annotators']} annotators. Annotator k prefers A with
  probability `sigmoid((gold(A) - gold(B)) / (tau * t_k) + b_k * tanh(dwords / 40) + p_k)` (gold score from
  `rlhf_core/gold.py`, per-annotator temperature t_k, length bias b_k, position bias p_k); tau = {a['tau']}
  solved so the expected agreement is {cfg['target_agreement']}. `annotator_labels` keeps every vote
  (1 = preferred `chosen`); `chosen` is the majority; `margin` = (votes for - votes against) / annotators.

## Measured

- Pairwise inter-annotator agreement: **{a['measured_file']:.3f}** over the file
  ({a['measured_clean_pairs']:.3f} before defects were planted; InstructGPT's labelers: ~0.73).
- Majority choice agrees with the gold scorer on {a['majority_agrees_with_gold']:.1%} of pairs;
  {a['unanimous_share']:.1%} of pairs are unanimous.

## Planted defects (ids in stats.json -> planted)

| file | defect | rows |
|---|---|---|
{planted}
"""
