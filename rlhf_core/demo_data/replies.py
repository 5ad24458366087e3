"""Step 2 of the demo data: every candidate reply of a prompt, by kind.

The model's own samples (raw, and trimmed to their last finished sentence), plus deliberately
bad ones: refusals of benign prompts, repetitive loops (greedy decoding, or a repeated opening
clause), off-topic replies (another topic's reply). Harmful prompts get good refusals and the
model's own compliance. Demonstrations are the best finished version (by gold score) of the
model's first replies.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any

from rlhf_core.demo_data.prompts import PromptRow
from rlhf_core.gold import gold_components, gold_score


# The bad replies to benign prompts: refusals and AI boilerplate.
BENIGN_REFUSALS: tuple[str, ...] = (
    "As an AI language model, I cannot provide advice on how to {x}. Please consult a professional.",
    "I'm sorry, but I can't help with that request.",
    "I apologize, but I am unable to assist with this. It is important to consult an expert before you try to {x}.",
    "As an AI, I don't have personal experience, so I cannot answer how to {x}.",
    "I'm sorry, but as a language model I cannot help you {x}.",
)
# The good replies to harmful prompts.
# The good replies to harmful prompts.
HARMFUL_REFUSALS: tuple[str, ...] = (
    "I can't help with that. It could hurt someone or break the law. If you are dealing with a difficult situation, "
    "talking to someone you trust can help.",
    "I'm sorry, but I can't help with that request because it could cause real harm to other people.",
    "I won't help with that, since it could put people at risk and is likely illegal. I'm happy to help with something else.",
    "I cannot provide instructions for that. It is illegal and could cause real harm.",
)

# Out-of-distribution RL prompts.

_SENTENCE_END = re.compile(r"[.!?](?=[\"')\]*]*(?:\s|$))")
_LIST_MARKER = re.compile(r"(?:^|\s)(?:\d+|[a-z])$")  # "1." / "a." open a list item, they end nothing


def trim_to_last_sentence(text: str, *, min_words: int = 8) -> str:
    """Cut a reply after its last finished sentence, if that leaves ``min_words`` words."""
    text = text.strip()
    ends = [m.end() for m in _SENTENCE_END.finditer(text) if not _LIST_MARKER.search(text[: m.start()])]
    if not ends or ends[-1] == len(text):
        return text
    trimmed = text[: ends[-1]].strip()
    return trimmed if len(trimmed.split()) >= min_words else text


def make_loop(text: str, rng: random.Random) -> str:
    """A looping reply like greedy decoding produces: the opening clause, over and over."""
    words = text.split()
    head = " ".join(words[: rng.randint(3, 7)]).rstrip(",.;") or "I think"
    sep = rng.choice([":\n\n", ". ", ", ", "\n"])
    return (head + sep) * rng.randint(6, 9)


@dataclass
class Candidates:
    """Every reply available for one prompt, by kind."""

    prompt: PromptRow
    replies: dict[str, str]


def ranked_name(j: int) -> str:
    """The candidate key of the ``j``-th ranked sample: sample_c, sample_d, ..."""
    return f"sample_{chr(ord('c') + j)}"


def build_candidates(
    pool: list[PromptRow], sample_a: list[str], sample_b: dict[int, str], greedy: dict[int, str],
    rng: random.Random, ranked: dict[int, list[str]] | None = None,
) -> list[Candidates]:
    """Attach sampled and deliberately bad replies to each reply prompt (``ranked``: extra samples by prompt)."""
    by_topic: dict[str, list[int]] = {}
    for i, p in enumerate(pool):
        by_topic.setdefault(p.topic, []).append(i)
    out = []
    for i, p in enumerate(pool):
        r: dict[str, str] = {"sample_a": sample_a[i]}
        if i in sample_b:
            r["sample_b"] = sample_b[i]
        for j, text in enumerate((ranked or {}).get(i, [])):
            r[ranked_name(j)] = text
        for key in [k for k in r if k.startswith("sample_")]:
            trimmed = trim_to_last_sentence(r[key])
            if trimmed != r[key].strip():
                r["trimmed_" + key[len("sample_"):]] = trimmed
        if i in greedy:
            # Greedy decoding of this model often loops; keep it as a loop if it does.
            key = "loop" if gold_components(p.prompt, greedy[i]).non_repetition < 0.6 else "greedy"
            r[key] = greedy[i]
        if "loop" not in r:
            r["loop"] = make_loop(sample_a[i], rng)
        if p.harmful:
            refusals = rng.sample(HARMFUL_REFUSALS, 2)
            r["refusal"], r["refusal_2"] = refusals
        else:
            r["refusal"] = rng.choice(BENIGN_REFUSALS).format(x=p.slot)
            other_topics = [t for t in by_topic if t != p.topic and t != "harmful"]
            if other_topics:
                r["off_topic"] = sample_a[rng.choice(by_topic[rng.choice(other_topics)])]
        out.append(Candidates(p, r))
    return out


# Which pairs can be built, per prompt kind (A, B); the panel decides who wins.


def demonstrations(cands: list[Candidates]) -> list[dict[str, Any]]:
    """One demonstration per reply prompt: the best (by gold) finished version of the model's own
    first replies, a rejection-sampling style demonstration; harmful prompts get a good refusal."""
    demos = []
    for c in cands:
        if c.prompt.harmful:
            response = c.replies["refusal"]
        else:
            options = [c.replies[k] for k in ("trimmed_a", "sample_a", "sample_b", "greedy") if k in c.replies]
            options = [trim_to_last_sentence(o) for o in options]
            response = max(options, key=lambda o: gold_score(c.prompt.prompt, o))
        demos.append({**c.prompt.public(), "response": response})
    return demos
