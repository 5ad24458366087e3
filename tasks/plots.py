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
