"""Does iterated online RLHF improve the champion? The demo's rounds, figure by figure.

Runs `rlhf iterate -c demo --rounds N --labeler simulated` on a workspace whose registry has a
champion (``--workspace``; without one, `rlhf run -c demo` first makes it), unless ``--summarize``
only reads rounds that ran already. Then, per round, from its ``eval/eval.json`` and samples:

* the new policy's and the champion's gold score with 95% bootstrap intervals, and each one's
  gold delta vs SFT; the paired gold win rate of the new policy over the champion (same prompts);
* Elo (SFT = 1000, gold head-to-heads) of both; labels, inter-annotator agreement, the decision;
* the round's wall time (from the run's MLflow parent run, or the ledger's order when untracked).

Writes ``bench/results/iterate_demo.json`` and prints a table. The gold scorer is the demo's
(``rlhf_core/gold.py``); real data has none, and then only the Elo from labels would tell.

    PYTHONPATH=$PWD .venv/bin/python bench/iterate_demo.py --workspace /tmp/ws_demo --rounds 2
    PYTHONPATH=$PWD .venv/bin/python bench/iterate_demo.py --workspace /tmp/ws_demo --summarize
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "iterate_demo.json"


def _gold_by_prompt(samples: Path) -> dict[str, dict[str, float]]:
    """method -> prompt id -> the policy's gold score (one sample per prompt in the evaluation)."""
    out: dict[str, dict[str, float]] = {}
    for line in samples.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        out.setdefault(row["method"], {})[row["id"]] = row["policy_gold"]
    return out


def paired_win_rate(a: dict[str, float], b: dict[str, float], seed: int = 0) -> dict[str, float]:
    """Share of common prompts where ``a`` scores above ``b`` (ties count half), with a bootstrap interval."""
    from rlhf_core.stats import estimate

    common = sorted(set(a) & set(b))
    wins = [1.0 if a[k] > b[k] else 0.5 if a[k] == b[k] else 0.0 for k in common]
    est = estimate(wins, n_boot=2000, seed=seed)
    return {"value": est.value, "ci_low": est.ci_low, "ci_high": est.ci_high, "n": len(common)}


def round_figures(run: Path, row: dict[str, Any]) -> dict[str, Any]:
    result = json.loads((run / "eval" / "eval.json").read_text(encoding="utf-8"))
    reports = result["reports"]
    gold = _gold_by_prompt(run / "eval" / "samples.jsonl")

    def est(method: str, key: str) -> dict[str, float]:
        return {k: reports[method]["estimates"][key][k] for k in ("value", "ci_low", "ci_high")}

    return {
        "round": row["round"], "run": row["run"], "champion_before": row["champion_before"],
        "new_version": row["new_version"], "promoted": row["promoted"], "labels": row["labels"],
        "rows_added": row["rows_added"], "inter_annotator_agreement": row["inter_annotator_agreement"],
        "new_mean_gold": est("ppo", "mean_gold"), "champion_mean_gold": est("champion", "mean_gold"),
        "new_gold_delta_vs_sft": est("ppo", "gold_delta"), "champion_gold_delta_vs_sft": est("champion", "gold_delta"),
        "new_gold_win_rate_vs_champion": paired_win_rate(gold["ppo"], gold["champion"]),
        "elo_new": [row["elo_new"], row["elo_new_ci_low"], row["elo_new_ci_high"]],
        "elo_champion": [row["elo_champion"], row["elo_champion_ci_low"], row["elo_champion_ci_high"]],
        "n_eval_prompts": reports["ppo"]["n_prompts"],
    }


def _fmt(e: dict[str, float]) -> str:
    return f"{e['value']:.3f} [{e['ci_low']:.3f}, {e['ci_high']:.3f}]"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workspace", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--summarize", action="store_true", help="only read the rounds the workspace has")
    ap.add_argument("--name", default="rlhf-demo", help="the pipeline whose rounds to read (the config's name)")
    args = ap.parse_args()
    rlhf = [sys.executable, "-m", "flows.cli"]
    wall = None
    if not args.summarize:
        started = time.perf_counter()
        subprocess.run([*rlhf, "iterate", "-c", "demo", "-w", str(args.workspace), "--rounds", str(args.rounds),
                        "--labeler", "simulated"], cwd=ROOT, check=True)
        wall = time.perf_counter() - started
    from tasks.iterate import read_ledger

    ledger = read_ledger(args.workspace / "iterate" / args.name / "rounds.jsonl")
    rounds = [round_figures(args.workspace / "runs" / row["run"], row) for row in ledger]
    out = {"benchmark": "iterate_demo", "command": " ".join(["python bench/iterate_demo.py", *sys.argv[1:]]),
           "rounds": rounds, "wall_seconds_all_rounds": wall}
    RESULTS.write_text(json.dumps(out, indent=2), encoding="utf-8")
    for r in rounds:
        print(f"round {r['round']}: {r['labels']} labels (agreement {r['inter_annotator_agreement']:.3f}), "
              f"{'promoted' if r['promoted'] else 'kept'}")
        print(f"  gold  new {_fmt(r['new_mean_gold'])}  champion {_fmt(r['champion_mean_gold'])}")
        print(f"  new beats champion on {_fmt(r['new_gold_win_rate_vs_champion'])} of "
              f"{r['new_gold_win_rate_vs_champion']['n']} prompts")
        print(f"  Elo   new {r['elo_new'][0]:.0f} [{r['elo_new'][1]:.0f}, {r['elo_new'][2]:.0f}]  "
              f"champion {r['elo_champion'][0]:.0f} [{r['elo_champion'][1]:.0f}, {r['elo_champion'][2]:.0f}]")
    print(f"written: {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
