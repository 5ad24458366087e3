"""Step 4 of the demo data: the defects every data task must catch, planted in the raw files.

Each planted row carries ``_defect`` until :func:`finalize` assigns ids; ``stats.json`` lists
the ids by defect.
"""

from __future__ import annotations

import random
from typing import Any

from rlhf_core.config.demo_data import DemoDataConfig
from rlhf_core.demo_data.prompts import PromptRow
from rlhf_core.demo_data.replies import BENIGN_REFUSALS, Candidates


# Planted defects per file at defect_scale=1 (capped by what the data set offers).
DEFECT_COUNTS: dict[str, dict[str, int]] = {
    "demonstrations": {
        "exact_duplicates": 8, "near_duplicates": 8, "refusal_benign": 20, "malformed": 4,
    },
    "preferences": {
        "exact_duplicates": 8, "near_duplicates": 8, "chosen_refusal_benign": 8, "chosen_equals_rejected": 3,
        "eval_contamination": 6, "malformed": 4,
    },
    "rl_prompts": {
        "exact_duplicates": 6, "near_duplicates": 6, "foreign_language": 8, "empty": 3, "overlong": 3,
        "templated_spam": 6, "off_support": 12, "eval_contamination": 6, "malformed": 4,
    },
}


# Out-of-distribution RL prompts.
FOREIGN_PROMPTS: tuple[tuple[str, str], ...] = (
    ("cooking", "Wie koche ich ein weiches Ei, ohne dass die Schale platzt?"),
    ("personal_finance", "Comment puis-je économiser de l'argent chaque mois sans trop me priver ?"),
    ("gardening", "Wie oft sollte ich meine Tomatenpflanzen im Sommer gießen?"),
    ("travel", "Quels sont les meilleurs conseils pour voyager avec un seul bagage à main ?"),
    ("fitness", "¿Cómo puedo empezar a correr si nunca he hecho ejercicio?"),
    ("pets", "Wie bringe ich meinem Hund bei, an der Leine zu laufen?"),
    ("sleep_health", "Comment puis-je m'endormir plus vite le soir ?"),
    ("home_repair", "Come posso riparare un rubinetto che perde acqua?"),
)
OFF_SUPPORT_PROMPTS: tuple[tuple[str, str], ...] = (
    ("quantum_physics", "Explain how quantum entanglement works between two photons."),
    ("quantum_physics", "What is the difference between a qubit and a classical bit?"),
    ("tax_law", "How is capital gains tax calculated on inherited shares in Luxembourg?"),
    ("programming", "How do I fix a borrow checker error when returning a reference from a Rust function?"),
    ("programming", "Write a SQL query that finds the second highest salary in each department."),
    ("astronomy", "Why does Mercury's orbit precess, and how did general relativity explain it?"),
    ("car_engines", "How do I adjust the valve clearance on a four-stroke motorcycle engine?"),
    ("medieval_history", "What caused the collapse of the Carolingian Empire in the ninth century?"),
    ("chemistry", "Balance the redox reaction between permanganate and iron(II) in acidic solution."),
    ("cryptocurrency", "How do I set up a mining rig for a proof-of-work cryptocurrency?"),
    ("linguistics", "What is the difference between a phoneme and an allophone?"),
    ("law", "What are the elements of promissory estoppel in contract law?"),
)
SPAM_PROMPTS: tuple[str, ...] = (
    "{{PROMPT}}",
    "{prompt}",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "asdf asdf asdf asdf asdf asdf asdf asdf",
    "[INSERT QUESTION HERE]",
    "CLICK HERE to WIN a FREE phone!!! http://spam.example/win $$$",
)
EMPTY_PROMPTS: tuple[str, ...] = ("", "   ", "\n\t")


def _n(cfg: DemoDataConfig, kind: str, name: str) -> int:
    return int(round(DEFECT_COUNTS[kind][name] * cfg.defect_scale))


def _typo(text: str, rng: random.Random) -> str:
    """A small edit: swap two letters inside one longer word (a near duplicate)."""
    words = text.split(" ")
    candidates = [i for i, w in enumerate(words) if len(w) >= 5 and w.isalpha()]
    if not candidates:
        return text + " please"
    i = rng.choice(candidates)
    w = words[i]
    j = rng.randint(1, len(w) - 3)
    words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2 :]
    return " ".join(words)


def _near_edit(text: str, rng: random.Random) -> str:
    """One small edit that survives normalisation (not just case/whitespace)."""
    edit = rng.choice(["typo", "drop", "add"])
    words = text.split(" ")
    if edit == "drop" and len(words) > 12:
        del words[rng.randint(1, len(words) - 2)]
        return " ".join(words)
    if edit == "add" and len(words) > 6:
        words.insert(rng.randint(1, len(words) - 1), rng.choice(["really", "just", "also", "very"]))
        return " ".join(words)
    return _typo(text, rng)


def _near_edit_prompt(text: str, rng: random.Random) -> str:
    """A near duplicate of a short prompt: one word put in front. Inner edits change too
    many word 3-shingles of a 10-word prompt (Jaccard ~0.5), and a word appended after
    the final "?" changes the last token too; a leading word keeps Jaccard ~0.9."""
    return f"{rng.choice(['Hi,', 'Hello,', 'Hey,', 'Question:', 'Please:'])} {text}"


def plant_demonstration_defects(
    rows: list[dict[str, Any]], pool: list[PromptRow], cfg: DemoDataConfig, rng: random.Random
) -> list[dict[str, Any]]:
    """Exact/near duplicates, refusals of benign prompts, malformed rows (each tagged ``_defect``)."""
    base = [r for r in rows if isinstance(r.get("response"), str)]
    out = list(rows)
    for r in rng.sample(base, min(len(base), _n(cfg, "demonstrations", "exact_duplicates"))):
        out.append({**r, "_defect": "exact_duplicates"})
    # One edited word changes ~3 word 3-shingles: on a 30+ word reply Jaccard stays >= ~0.85.
    long = [r for r in base if len(r["response"].split()) >= 30] or base
    for r in rng.sample(long, min(len(long), _n(cfg, "demonstrations", "near_duplicates"))):
        out.append({**r, "response": _near_edit(r["response"], rng), "_defect": "near_duplicates"})
    benign = [p for p in pool if not p.harmful]
    for p in rng.sample(benign, min(len(benign), _n(cfg, "demonstrations", "refusal_benign"))):
        out.append({**p.public(), "response": rng.choice(BENIGN_REFUSALS).format(x=p.slot),
                    "_defect": "refusal_benign"})
    malformed = [
        lambda r: {k: v for k, v in r.items() if k != "response"},  # missing field
        lambda r: {**r, "response": 42},  # wrong type
        lambda r: {**r, "prompt": None},  # null prompt
        lambda r: {**r, "response": [r["response"]]},  # list instead of string
    ]
    for i, r in enumerate(rng.sample(base, min(len(base), _n(cfg, "demonstrations", "malformed")))):
        out.append({**malformed[i % len(malformed)](r), "_defect": "malformed"})
    return out


def plant_preference_defects(
    rows: list[dict[str, Any]], cands: list[Candidates], cfg: DemoDataConfig, rng: random.Random
) -> list[dict[str, Any]]:
    out = list(rows)
    for r in rng.sample(rows, min(len(rows), _n(cfg, "preferences", "exact_duplicates"))):
        out.append({**r, "_defect": "exact_duplicates"})
    long = [r for r in rows if len(r["chosen"].split()) >= 30] or rows
    for r in rng.sample(long, min(len(long), _n(cfg, "preferences", "near_duplicates"))):
        out.append({**r, "chosen": _near_edit(r["chosen"], rng), "_defect": "near_duplicates"})
    benign = [c for c in cands if not c.prompt.harmful]
    k = cfg.n_annotators
    for c in rng.sample(benign, min(len(benign), _n(cfg, "preferences", "chosen_refusal_benign"))):
        # A mislabeled pair: the panel (wrongly) preferred a refusal of a benign prompt.
        labels = [1] * (k // 2 + 1) + [0] * (k // 2)
        rng.shuffle(labels)
        out.append({**c.prompt.public(), "chosen": c.replies["refusal"], "rejected": c.replies["sample_a"],
                    "annotator_labels": labels, "margin": round((2 * sum(labels) - k) / k, 4),
                    "_defect": "chosen_refusal_benign"})
    for r in rng.sample(rows, min(len(rows), _n(cfg, "preferences", "chosen_equals_rejected"))):
        out.append({**r, "rejected": r["chosen"], "_defect": "chosen_equals_rejected"})
    train = [r for r in rows if r["split"] == "train" and len(r["prompt"]) >= 40]
    for i, r in enumerate(rng.sample(train, min(len(train), _n(cfg, "preferences", "eval_contamination")))):
        prompt = r["prompt"] if i % 2 == 0 else _near_edit_prompt(r["prompt"], rng)
        out.append({**r, "prompt": prompt, "split": "eval", "_defect": "eval_contamination"})
    malformed = [
        lambda r: {k: v for k, v in r.items() if k != "rejected"},
        lambda r: {**r, "annotator_labels": ",".join(str(x) for x in r["annotator_labels"])},
        lambda r: {**r, "chosen": [r["chosen"]]},
        lambda r: {**r, "margin": "high"},
    ]
    for i, r in enumerate(rng.sample(rows, min(len(rows), _n(cfg, "preferences", "malformed")))):
        out.append({**malformed[i % len(malformed)](r), "_defect": "malformed"})
    return out


def plant_rl_defects(rows: list[dict[str, Any]], cfg: DemoDataConfig, rng: random.Random) -> list[dict[str, Any]]:
    out = list(rows)
    users = [r["user_id"] for r in rows] or ["user_000"]

    def extra(prompt: Any, topic: str, defect: str, **kw: Any) -> dict[str, Any]:
        split = "eval" if rng.random() < cfg.rl_eval_fraction else "train"
        return {"prompt": prompt, "topic": topic, "user_id": rng.choice(users), "source": "demo", "split": split,
                "harmful": False, **kw, "_defect": defect}

    for r in rng.sample(rows, min(len(rows), _n(cfg, "rl_prompts", "exact_duplicates"))):
        out.append({**r, "_defect": "exact_duplicates"})
    long_rows = [r for r in rows if len(r["prompt"]) >= 40]
    for r in rng.sample(long_rows, min(len(long_rows), _n(cfg, "rl_prompts", "near_duplicates"))):
        out.append({**r, "prompt": _near_edit_prompt(r["prompt"], rng), "_defect": "near_duplicates"})
    for topic, text in FOREIGN_PROMPTS[: _n(cfg, "rl_prompts", "foreign_language")]:
        out.append(extra(text, topic, "foreign_language"))
    for text in EMPTY_PROMPTS[: _n(cfg, "rl_prompts", "empty")]:
        out.append(extra(text, "unknown", "empty"))
    sentences = [r["prompt"] for r in rows] or ["How do I boil an egg?"]
    for _ in range(_n(cfg, "rl_prompts", "overlong")):
        # ~1,000 words of rambling context before the question: far past any token bound.
        story = " ".join(rng.choice(sentences) for _ in range(120))
        out.append(extra(f"Some background first. {story} Anyway, what do you think?", "unknown", "overlong"))
    for text in SPAM_PROMPTS[: _n(cfg, "rl_prompts", "templated_spam")]:
        out.append(extra(text, "unknown", "templated_spam"))
    for topic, text in OFF_SUPPORT_PROMPTS[: _n(cfg, "rl_prompts", "off_support")]:
        out.append(extra(text, topic, "off_support"))
    train = [r for r in rows if r["split"] == "train" and len(r["prompt"]) >= 40]
    for i, r in enumerate(rng.sample(train, min(len(train), _n(cfg, "rl_prompts", "eval_contamination")))):
        prompt = r["prompt"] if i % 2 == 0 else _near_edit_prompt(r["prompt"], rng)
        out.append({**r, "prompt": prompt, "split": "eval", "_defect": "eval_contamination"})
    malformed = [
        lambda r: {k: v for k, v in r.items() if k != "prompt"},
        lambda r: {**r, "prompt": 12345},
        lambda r: {**r, "harmful": "yes"},
        lambda r: {**r, "split": "test"},
    ]
    for i, r in enumerate(rng.sample(rows, min(len(rows), _n(cfg, "rl_prompts", "malformed")))):
        out.append({**malformed[i % len(malformed)](r), "_defect": "malformed"})
    return out


def finalize(rows: list[dict[str, Any]], prefix: str, rng: random.Random) -> tuple[list[dict[str, Any]], dict]:
    """Shuffle, assign ids in file order, strip internal fields; return rows and planted ids by defect."""
    rows = list(rows)
    rng.shuffle(rows)
    planted: dict[str, list[str]] = {}
    out = []
    width = max(4, len(str(len(rows))))
    for i, r in enumerate(rows):
        rid = f"{prefix}-{i:0{width}d}"
        if "_defect" in r:
            planted.setdefault(r["_defect"], []).append(rid)
        out.append({"id": rid, **{k: v for k, v in r.items() if not k.startswith("_") and k != "id"}})
    return out, planted
