"""PNG figures for the reward-model agreement report (matplotlib stays out of rlhf_core).

matplotlib is imported inside each function with the Agg backend: no display needed, and
importing this module costs nothing on the CLI's ``--help`` path.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rlhf_core.reward.agreement import AgreementReport


def _as_dict(report: AgreementReport | Mapping[str, Any]) -> Mapping[str, Any]:
    return report.to_dict() if isinstance(report, AgreementReport) else report


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_reliability(report: AgreementReport | Mapping[str, Any], path: str | Path) -> Path:
    """Reliability diagram: mean predicted P(chosen) vs observed annotator fraction per bin.

    Top: one point per non-empty bin with the diagonal of perfect calibration and the ECE in
    the title. Bottom: how many pairs fell into each bin. A report without calibration (no
    annotator labels) gets a PNG saying so, so a pipeline writing the figure never breaks on it.
    """
    data = _as_dict(report)
    calibration = data.get("calibration")
    if not calibration:
        return _message_png(path, "No calibration: the held-out pairs carry no annotator labels.")
    bins = calibration["bins"]
    filled = [b for b in bins if b["count"]]
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    try:
        top.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
        top.plot(
            [b["mean_predicted"] for b in filled],
            [b["mean_observed"] for b in filled],
            marker="o",
            color="tab:blue",
            label="reward model",
        )
        top.set_xlim(0, 1)
        top.set_ylim(0, 1)
        top.set_ylabel("observed fraction preferring chosen")
        top.set_title(f"Reward-model calibration (ECE {calibration['ece']:.3f}, n={calibration['n']})")
        top.legend(loc="upper left")
        width = [b["upper"] - b["lower"] for b in bins]
        bottom.bar([b["lower"] for b in bins], [b["count"] for b in bins], width=width, align="edge", color="tab:blue", alpha=0.6)
        bottom.set_xlabel("predicted P(chosen) = sigmoid(r_chosen - r_rejected)")
        bottom.set_ylabel("pairs")
        fig.tight_layout()
        return _save(fig, path)
    finally:
        plt.close(fig)


def plot_reward_distribution(report: AgreementReport | Mapping[str, Any], path: str | Path) -> Path:
    """Overlaid histograms of the rewards of chosen and rejected responses (shared bins)."""
    data = _as_dict(report)
    dist = data["reward_distribution"]
    edges = dist["bin_edges"]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    try:
        for name, color in (("chosen", "tab:green"), ("rejected", "tab:red")):
            ax.stairs(dist[f"{name}_counts"], edges, fill=True, alpha=0.35, color=color, label=f"{name} (mean {dist[name]['mean']:.2f})")
            ax.stairs(dist[f"{name}_counts"], edges, color=color)
        ax.set_xlabel("reward")
        ax.set_ylabel("responses")
        agreement = data["agreement_majority"]["value"]
        ax.set_title(f"Rewards of chosen vs rejected (agreement {agreement:.3f}, n={data['n_pairs']})")
        ax.legend()
        fig.tight_layout()
        return _save(fig, path)
    finally:
        plt.close(fig)


def _message_png(path: str | Path, message: str) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 2))
    try:
        ax.axis("off")
        ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True)
        return _save(fig, path)
    finally:
        plt.close(fig)


def _save(fig: Any, path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=100)
    return out


def plot_gold_vs_sqrt_kl(points: list[Mapping[str, Any]], path: str | Path, *, title: str | None = None) -> Path:
    """The Gao et al. (2022) over-optimisation picture: score against sqrt(KL to the SFT model).

    ``points``: dicts with ``series``, ``label``, ``sqrt_kl``, ``gold`` (optionally ``gold_ci_low`` /
    ``gold_ci_high`` for error bars and ``rm``), e.g. ``MethodComparison.points()``. One line per
    series (PPO checkpoints, best-of-N, ...) ordered by KL; the ``sft`` series is drawn as a dashed
    baseline. Left: the gold score (the truth); right: the reward model's score (the proxy), when
    given. A proxy that keeps rising while gold falls is the reward model being gamed. Without any
    gold score (real data has no gold scorer) the reward-model panel is drawn alone.
    """
    usable = [p for p in points if p.get("sqrt_kl") is not None and (p.get("gold") is not None or p.get("rm") is not None)]
    if not usable:
        return _message_png(path, "No methods with a score and a KL to plot.")
    panels = [(key, label) for key, label in (("gold", "gold score (held-out prompts)"), ("rm", "reward-model score"))
              if any(p.get(key) is not None for p in usable)]
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels) + (0.5 if len(panels) == 1 else 0), 4.5), squeeze=False)
    try:
        series: dict[str, list[Mapping[str, Any]]] = {}
        for p in usable:
            series.setdefault(str(p["series"]), []).append(p)
        for ax, (key, ylabel) in zip(axes[0], panels, strict=True):
            for name, pts in series.items():
                pts = sorted((q for q in pts if q.get(key) is not None), key=lambda q: q["sqrt_kl"])
                if not pts:
                    continue
                xs, ys = [q["sqrt_kl"] for q in pts], [q[key] for q in pts]
                if name == "sft":
                    ax.axhline(ys[0], linestyle="--", color="grey", label=f"SFT ({ys[0]:.3f})")
                    continue
                if key == "gold" and all(q.get("gold_ci_low") is not None and q.get("gold_ci_high") is not None for q in pts):
                    yerr = [[y - q["gold_ci_low"] for y, q in zip(ys, pts)], [q["gold_ci_high"] - y for y, q in zip(ys, pts)]]
                    ax.errorbar(xs, ys, yerr=yerr, marker="o", capsize=3, label=name)
                else:
                    ax.plot(xs, ys, marker="o", label=name)
                for x, y, q in zip(xs, ys, pts):
                    ax.annotate(str(q["label"]).replace(f"{name}-", ""), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
            ax.margins(x=0.15, y=0.1)  # room for the labels of the outermost points (they were clipped)
            ax.set_xlabel("sqrt(KL to SFT model)  [sqrt(nats)]")
            ax.set_ylabel(ylabel)
            ax.legend(fontsize=8)
        fig.suptitle(title or "Gold and reward-model score against sqrt(KL) (Gao et al. 2022)")
        fig.tight_layout()
        return _save(fig, path)
    finally:
        plt.close(fig)


def plot_elo_by_round(rounds: list[Mapping[str, Any]], path: str | Path) -> Path:
    """Elo (SFT = 1000) of each `rlhf iterate` round's new policy and of the champion it started from,
    with intervals, by round; filled where the round promoted the new one. ``rounds``: the round ledger's rows."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [r["round"] for r in rounds]
    ys = [r["elo_new"] for r in rounds]
    lows = [r["elo_new"] - r["elo_new_ci_low"] for r in rounds]
    highs = [r["elo_new_ci_high"] - r["elo_new"] for r in rounds]
    ax.errorbar(xs, ys, yerr=[lows, highs], fmt="none", ecolor="tab:blue", capsize=4)
    for r in rounds:
        ax.plot(r["round"], r["elo_new"], "o", color="tab:blue", fillstyle="full" if r["promoted"] else "none")
    champ = [r for r in rounds if r.get("elo_champion") is not None]
    ax.errorbar([r["round"] - 0.1 for r in champ], [r["elo_champion"] for r in champ],
                yerr=[[r["elo_champion"] - r["elo_champion_ci_low"] for r in champ],
                      [r["elo_champion_ci_high"] - r["elo_champion"] for r in champ]],
                fmt="x", color="tab:orange", capsize=3, label="champion it started from")
    ax.axhline(1000.0, color="grey", linestyle="--", linewidth=1, label="SFT (1000)")
    ax.set_xlabel("round")
    ax.set_ylabel("Elo (gold head-to-heads)")
    ax.set_xticks(xs)
    ax.set_title("New policy per round (filled: promoted to champion)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, fontsize=8, frameon=False)
    fig.tight_layout()
    return _save(fig, path)
