"""The data report: what came in, what was kept, and why every other row was dropped.

Invariant (asserted by the tests): for every input file,
``rows_in == rows_kept + sum(dropped.values())``. ``rows_in`` counts canonical rows (a
ranking of K replies counts as its K·(K−1)/2 pairs) plus rows quarantined before they
could be parsed (invalid JSON, bad bytes).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class FileReport:
    file: str
    input: str  # demonstrations | preferences | rl_prompts
    rows_in: int = 0
    rows_kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)  # "<stage>:<rule>" -> rows

    @property
    def balanced(self) -> bool:
        return self.rows_in == self.rows_kept + sum(self.dropped.values())


@dataclass
class DataReport:
    files: list[FileReport] = field(default_factory=list)
    refusals: dict[str, Any] = field(default_factory=dict)  # input -> per-pattern counts
    dedup: dict[str, Any] = field(default_factory=dict)  # input -> exact / near clusters / contamination
    coverage: dict[str, Any] = field(default_factory=dict)
    topic_mix: dict[str, Any] = field(default_factory=dict)  # input -> {"before": {...}, "after": {...}}
    outputs: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)  # step -> seconds
    seconds: float = 0.0
    # Why the stage stopped (one line each: an input with no usable row, an input emptied by
    # curation); empty when it finished. A stopped stage writes no curated files.
    errors: list[str] = field(default_factory=list)
    # file -> demonstrations read from the chosen side of its preference pairs
    chosen_side: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # one line each, for the person running the stage
    # input -> rows without a split that data.eval_fraction put in the eval split
    held_out: dict[str, int] = field(default_factory=dict)

    @property
    def rows_in(self) -> int:
        return sum(f.rows_in for f in self.files)

    @property
    def rows_kept(self) -> int:
        return sum(f.rows_kept for f in self.files)

    @property
    def balanced(self) -> bool:
        return all(f.balanced for f in self.files)

    def totals(self) -> dict[str, dict[str, Any]]:
        """Per input kind: rows in, kept, dropped per reason."""
        out: dict[str, dict[str, Any]] = {}
        for f in self.files:
            t = out.setdefault(f.input, {"rows_in": 0, "rows_kept": 0, "dropped": {}})
            t["rows_in"] += f.rows_in
            t["rows_kept"] += f.rows_kept
            for reason, n in f.dropped.items():
                t["dropped"][reason] = t["dropped"].get(reason, 0) + n
        return out

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["totals"] = self.totals()
        data["rows_in"], data["rows_kept"], data["balanced"] = self.rows_in, self.rows_kept, self.balanced
        data["rows_per_second"] = self.rows_in / self.seconds if self.seconds > 0 else None
        return data

    def write(self, out_dir: Path) -> tuple[Path, Path]:
        json_path, md_path = out_dir / "report.json", out_dir / "report.md"
        json_path.write_text(json.dumps(self.to_json(), indent=2, default=str), encoding="utf-8")
        md_path.write_text(self.to_markdown(), encoding="utf-8")
        return json_path, md_path

    def to_markdown(self) -> str:
        lines = ["# Data report", ""]
        if self.errors:
            lines += ["**The data stage stopped; no curated files were written:**", ""]
            lines += [f"- {e}" for e in self.errors] + [""]
        lines += [f"{self.rows_in} rows in, {self.rows_kept} {'usable' if self.errors else 'kept'}, in "
                  f"{self.seconds:.2f} s (invariant rows_in = kept + dropped: {'ok' if self.balanced else 'VIOLATED'}).",
                  "", "| file | input | in | kept | dropped (reason: rows) |", "|---|---|---:|---:|---|"]
        for f in self.files:
            reasons = ", ".join(f"{k}: {v}" for k, v in sorted(f.dropped.items(), key=lambda kv: -kv[1])) or "-"
            lines.append(f"| {f.file} | {f.input} | {f.rows_in} | {f.rows_kept} | {reasons} |")
        if self.warnings:
            lines += ["", "## Warnings", ""] + [f"- {w}" for w in self.warnings]
        for file, n in self.chosen_side.items():
            lines += ["", f"{n} demonstrations from the chosen side of preference pairs ({file})."]
        if self.held_out:
            lines += ["", "Held out as eval (`data.eval_fraction`, rows with no split): " + ", ".join(
                f"{name} {n}" for name, n in self.held_out.items()) + "."]
        if self.refusals:
            lines += ["", "## Refusals (per pattern: matched / dropped / kept harmful / flagged / kept unlabelled)",
                      ""]
            for name, stats in self.refusals.items():
                for pattern, c in stats.get("per_pattern", {}).items():
                    lines.append(f"- {name}: `{pattern}`: {c['matched']} / {c['dropped']} / "
                                 f"{c['kept_harmful']} / {c['flagged']} / {c['kept_unlabelled']}")
            for name, stats in self.refusals.items():
                if stats.get("unlabelled_ids"):
                    lines.append(f"- {name}: {len(stats['unlabelled_ids'])} refusals of prompts of unknown "
                                 "harmfulness kept and flagged (unlabelled_ids in report.json; declare the "
                                 "input `harmful: true|false` to decide)")
        if self.dedup:
            lines += ["", "## Dedup", ""]
            for name, d in self.dedup.items():
                lines.append(f"- {name}: {d.get('exact_dropped', 0)} exact, {d.get('near_clusters', 0)} near clusters "
                             f"({d.get('near_dropped', 0)} dropped), {d.get('contamination_dropped', 0)} eval rows "
                             "contaminated by train")
        if self.coverage:
            c = self.coverage
            lines += ["", "## Coverage", ""]
            if c.get("skipped"):
                lines.append(f"skipped: {c['skipped']}")
            else:
                lines.append(f"- method {c['method']}, threshold {c['threshold']}: "
                             f"{c['rl_inside_preference_support']}/{c['rl_prompts']} RL prompts inside the "
                             f"preference support ({_pct(c['share_rl_inside'])})")
                lines.append(f"- preference topics reached by kept RL prompts: {c['preference_topics_reached']}/"
                             f"{c['preference_topics']} ({_pct(c['share_preference_topics_reached'])})")
        if self.topic_mix:
            lines += ["", "## Topic mix (before -> after)", ""]
            for name, mix in self.topic_mix.items():
                topics = sorted(set(mix["before"]) | set(mix["after"]))
                lines.append(f"- {name}: " + ", ".join(f"{t} {mix['before'].get(t, 0)}->{mix['after'].get(t, 0)}"
                                                       for t in topics))
        return "\n".join(lines) + "\n"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"
