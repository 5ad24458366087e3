"""Generate the shipped demo data set (``data/demo/``): prompts, sampled replies, a
simulated annotator panel, and the defects every data task must catch.

Regenerate with ``python -m data_checks.demo --out data/demo --seed 0``
(wired as ``rlhf data make-demo``). The steps:

1. **Prompts** from templates x slots over twelve everyday topics plus a small,
   clearly flagged harmful category; users drawn from a Zipf law so a few users are
   over-represented (the per-user cap has something to act on). Whole slots go to
   train or eval, so eval prompts never share a subject with train prompts by accident.
2. **Replies** sampled from the default base model (SmolLM2-135M-Instruct) through its
   chat template, plus deliberately bad ones: refusals of benign prompts, repetitive
   loops (greedy decoding, or a repeated opening clause), off-topic replies (another
   topic's reply). Harmful prompts get good refusals and the model's own compliance.
3. **Preferences** from a simulated panel of K annotators: annotator k prefers A with
   probability ``sigmoid((gold(A) - gold(B)) / (tau * t_k) + b_k * tanh(dwords / 40) + p_k)``
   (Bradley-Terry on the gold-score gap, a per-annotator temperature ``t_k``, a length
   bias ``b_k`` and a position bias ``p_k``). ``tau`` is solved for so that the expected
   pairwise agreement is ``target_agreement`` (InstructGPT's labelers agreed ~73%,
   Ouyang et al. 2022, sec. 5.1). Every annotator's label is kept; ``chosen`` is the majority.
4. **Defects** planted in the raw files and listed by id in ``stats.json``.

Sampling is seeded (``torch.manual_seed`` per batch), so a run is deterministic on one
machine; another torch build or CPU may sample slightly different text, which is why
the generated files are shipped rather than regenerated in CI.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import platform
import random
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError

from rlhf_core.config.base import StrictModel
from rlhf_core.config.model import ModelConfig
from rlhf_core.errors import ConfigError, UserError
from rlhf_core.gold import gold_components, gold_score, is_refusal

# --------------------------------------------------------------------------- prompts

# Twelve everyday topics, twelve "slots" each (verb phrases that complete the templates).
TOPICS: dict[str, list[str]] = {
    "cooking": [
        "boil an egg", "cook rice on the stove", "make a simple tomato sauce", "bake banana bread",
        "sharpen a kitchen knife", "make a vegetable soup", "cook a steak in a pan", "make pancakes from scratch",
        "store fresh herbs", "make a green salad dressing", "roast vegetables in the oven", "cook dried beans",
    ],
    "travel": [
        "pack for a weekend trip to the mountains", "find cheap flights", "deal with jet lag",
        "plan a road trip across the country", "travel with only a carry-on bag", "choose a hotel in a new city",
        "stay safe while traveling alone", "prepare for a long train journey", "exchange money abroad",
        "plan a camping trip with friends", "learn basic phrases before visiting a foreign country",
        "keep my passport and documents safe",
    ],
    "fitness": [
        "start running as a beginner", "build a simple home workout routine", "stretch after a workout",
        "improve my posture at the desk", "get stronger without a gym", "warm up before lifting weights",
        "stay motivated to exercise", "train for my first 5k race", "do a proper push-up",
        "recover from sore muscles", "start swimming for exercise", "fit exercise into a busy schedule",
    ],
    "personal_finance": [
        "start saving money each month", "make a monthly budget", "pay off credit card debt",
        "build an emergency fund", "reduce my grocery spending", "start investing with a small amount",
        "lower my electricity bill", "track my daily expenses", "save for a down payment on a house",
        "avoid impulse buying", "compare savings accounts", "plan for retirement in my thirties",
    ],
    "gardening": [
        "water tomato plants", "grow herbs on a balcony", "start a compost pile", "keep houseplants alive",
        "get rid of weeds without chemicals", "plant tulip bulbs", "grow lettuce in containers",
        "prune a rose bush", "improve clay soil", "attract bees to my garden", "repot a root-bound plant",
        "protect seedlings from frost",
    ],
    "pets": [
        "train my puppy to sit", "introduce a new cat to my home", "trim my dog's nails",
        "choose food for an older dog", "stop my cat from scratching furniture", "care for a pet hamster",
        "keep my dog calm during fireworks", "clean a fish tank", "teach my dog to walk on a leash",
        "prepare my home for a new rabbit", "brush my cat's teeth", "help my dog lose weight",
    ],
    "home_repair": [
        "fix a leaky faucet", "unclog a bathroom sink", "patch a small hole in drywall",
        "fix a squeaky door hinge", "replace a light switch cover", "seal gaps around a window",
        "fix a running toilet", "hang a heavy mirror on the wall", "repaint a bedroom wall",
        "reset a tripped circuit breaker", "fix a wobbly table leg", "remove mold from bathroom tiles",
    ],
    "study_skills": [
        "study for a math exam", "take better notes in lectures", "stop procrastinating on homework",
        "memorize vocabulary for a language class", "write a good essay outline", "prepare for an oral presentation",
        "study effectively in a group", "manage my time during exam week", "read a textbook chapter efficiently",
        "stay focused while studying at home", "review for a history test", "learn from my mistakes on past exams",
    ],
    "career": [
        "prepare for a first job interview", "write a good cover letter", "ask my manager for a raise",
        "update my resume", "network at a professional event", "handle a difficult coworker",
        "negotiate a job offer", "switch careers in my thirties", "give constructive feedback to a colleague",
        "prepare for a performance review", "find a mentor at work", "balance work and personal life",
    ],
    "cleaning": [
        "clean an oven without harsh chemicals", "organize a small closet", "remove a coffee stain from a carpet",
        "keep my kitchen clean every day", "declutter my bedroom", "wash a down pillow",
        "clean a microwave quickly", "get rid of a musty smell in the basement", "clean windows without streaks",
        "organize my pantry", "descale a kettle", "clean grout between floor tiles",
    ],
    "sleep_health": [
        "fall asleep faster", "build a better bedtime routine", "stop waking up at night",
        "reduce screen time before bed", "take a good power nap", "adjust my sleep after a night shift",
        "make my bedroom better for sleep", "wake up earlier without feeling tired", "cut down on caffeine",
        "relax after a stressful day", "drink more water during the day", "keep a regular sleep schedule on weekends",
    ],
    "photography": [
        "take sharper photos with my phone", "photograph a sunset", "use natural light for portraits",
        "compose a good landscape photo", "take photos of my pets", "edit photos to look more natural",
        "choose a first camera", "photograph food for a blog", "take better photos at night",
        "keep my camera lens clean", "take group photos at a party", "back up my photo collection",
    ],
}
TEMPLATES: tuple[str, ...] = (
    "How do I {x}?",
    "What is the best way to {x}?",
    "Can you give me a few tips to {x}?",
    "I'm a beginner. Explain how to {x}.",
    "What mistakes should I avoid when I try to {x}?",
    "Give me a short step-by-step plan to {x}.",
    "My friend says it is hard to {x}. Where should I start?",
)
# Decorations make prompts less uniform; each (template, slot) pair is used once.
DECORATIONS: tuple[str, ...] = ("", "", "", "", " Thanks!", " I don't have much time.", " Please be specific.")

# Mildly harmful requests, always flagged harmful=True.
HARMFUL_SLOTS: tuple[str, ...] = (
    "pick a lock to break into my neighbor's house", "make a weapon at home to hurt someone",
    "steal a car without getting caught", "shoplift from a store without being noticed",
    "hack into my ex's email account", "make a fake ID", "poison my neighbor's dog",
    "cheat on my exam without getting caught", "forge my boss's signature on a check",
    "secretly track my partner's phone",
)
HARMFUL_TEMPLATES: tuple[str, ...] = (
    "How do I {x}?", "Tell me how to {x}.", "What's the easiest way to {x}?", "Give me step-by-step instructions to {x}.",
)

# The bad replies to benign prompts: refusals and AI boilerplate.
BENIGN_REFUSALS: tuple[str, ...] = (
    "As an AI language model, I cannot provide advice on how to {x}. Please consult a professional.",
    "I'm sorry, but I can't help with that request.",
    "I apologize, but I am unable to assist with this. It is important to consult an expert before you try to {x}.",
    "As an AI, I don't have personal experience, so I cannot answer how to {x}.",
    "I'm sorry, but as a language model I cannot help you {x}.",
)
# The good replies to harmful prompts.
HARMFUL_REFUSALS: tuple[str, ...] = (
    "I can't help with that. It could hurt someone or break the law. If you are dealing with a difficult situation, "
    "talking to someone you trust can help.",
    "I'm sorry, but I can't help with that request because it could cause real harm to other people.",
    "I won't help with that, since it could put people at risk and is likely illegal. I'm happy to help with something else.",
    "I cannot provide instructions for that. It is illegal and could cause real harm.",
)

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


@dataclass
class PromptRow:
    """One prompt plus the internal fields the generator needs (slot, template index)."""

    prompt: str
    topic: str
    user_id: str
    split: str
    harmful: bool
    slot: str
    row: dict[str, Any] = field(default_factory=dict)

    def public(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt, "topic": self.topic, "user_id": self.user_id,
            "source": "demo", "split": self.split, "harmful": self.harmful,
        }


class DemoDataConfig(StrictModel):
    """How big the demo data set is and how it is generated."""

    seed: int = Field(0, description="Seeds prompts, sampling, the annotator panel and the defects.")
    n_prompts_per_topic: int = Field(
        28, ge=1, description="Benign prompts per topic that get sampled replies (demonstrations + preferences)."
    )
    n_harmful_prompts: int = Field(24, ge=0, description="Harmful prompts with replies (refusals + compliance).")
    n_rl_prompts_per_topic: int = Field(27, ge=1, description="Clean benign RL prompts per topic.")
    n_rl_harmful_prompts: int = Field(16, ge=0, description="Harmful RL prompts.")
    eval_slots_per_topic: int = Field(2, ge=1, description="Slots per topic whose prompts all go to eval.")
    eval_fraction: float = Field(0.15, ge=0, le=0.5, description="Share of the reply prompts drawn from eval slots.")
    rl_eval_fraction: float = Field(0.3, ge=0, le=0.6, description="Share of the RL prompts drawn from eval slots.")
    second_sample_fraction: float = Field(
        0.35, ge=0, le=1, description="Share of prompts that get a second sampled reply (sample-vs-sample pairs)."
    )
    greedy_fraction: float = Field(0.25, ge=0, le=1, description="Share of prompts that get a greedy reply (loops).")
    ranked_samples: int = Field(
        2, ge=0, le=8,
        description="Extra sampled replies per benign reply prompt, compared with the prompt's other samples "
        "(InstructGPT's labelers ranked K outputs of the model itself): the on-policy pairs a reward model needs "
        "to tell a better ordinary answer from a worse one, not just a loop or a refusal from an answer.",
    )
    ranked_pairs_per_prompt: int = Field(
        2, ge=0, description="Sample-vs-sample pairs per benign prompt drawn from its samples (raw or trimmed).",
    )
    pairs_per_prompt: tuple[int, int] = Field((2, 3), description="Preference pairs per prompt (min, max).")
    n_annotators: int = Field(5, ge=1, description="Annotators per pair (odd, so the majority is defined).")
    target_agreement: float = Field(
        0.73, gt=0.5, lt=1.0, description="Expected pairwise inter-annotator agreement (InstructGPT: ~0.73)."
    )
    n_users: int = Field(60, ge=2, description="Distinct user ids (Zipf-distributed).")
    user_zipf_exponent: float = Field(
        0.7, gt=0, description="Zipf exponent of prompts per user (0.7: the top user asks ~11% of prompts)."
    )
    max_new_tokens: int = Field(48, ge=1, description="Tokens sampled per reply.")
    temperature: float = Field(0.8, gt=0, description="Sampling temperature of the base model.")
    top_p: float = Field(0.9, gt=0, le=1, description="Nucleus sampling threshold.")
    batch_size: int = Field(16, ge=1, description="Prompts per generate() call.")
    threads: int | None = Field(
        None, ge=1,
        description="torch CPU threads while sampling (None: torch's default). On a shared, oversubscribed "
        "CPU, 1 thread was 6x faster than 2 here (spinning threads wait on descheduled ones).",
    )
    defect_scale: float = Field(1.0, ge=0, description="Multiplies every planted-defect count (0 = none).")
    model: ModelConfig = Field(default_factory=ModelConfig, description="The model that samples the replies.")


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


# --------------------------------------------------------------------------- helpers

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


def pairwise_agreement(labels: list[list[int]]) -> float:
    """Mean share of annotator pairs that gave the same label, over items with >= 2 labels."""
    shares = []
    for row in labels:
        k = len(row)
        if k < 2:
            continue
        ones = sum(row)
        same = ones * (ones - 1) / 2 + (k - ones) * (k - ones - 1) / 2
        shares.append(same / (k * (k - 1) / 2))
    return sum(shares) / len(shares) if shares else float("nan")


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, x))))


def _zipf_users(rng: random.Random, n_users: int, exponent: float, n: int) -> list[str]:
    weights = [1.0 / (rank**exponent) for rank in range(1, n_users + 1)]
    ids = [f"user_{i:03d}" for i in range(n_users)]
    rng.shuffle(ids)  # so the heavy users are not simply user_000, user_001
    return rng.choices(ids, weights=weights, k=n)


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


# --------------------------------------------------------------------------- step 1: prompts


def build_prompts(cfg: DemoDataConfig, rng: random.Random) -> tuple[list[PromptRow], list[PromptRow]]:
    """The prompts that get replies (``pool``) and the clean RL prompts, disjoint by (template, slot)."""
    pool: list[PromptRow] = []
    rl: list[PromptRow] = []

    def combos(topic: str, slots: list[str] | tuple[str, ...], templates: tuple[str, ...], n_eval_slots: int,
               n_pool: int, n_rl: int, harmful: bool) -> None:
        slots = list(slots)
        rng.shuffle(slots)
        eval_slots = set(slots[:n_eval_slots])
        eval_c = [(t, s) for s in slots if s in eval_slots for t in templates]
        train_c = [(t, s) for s in slots if s not in eval_slots for t in templates]
        rng.shuffle(eval_c)
        rng.shuffle(train_c)
        pool_eval = min(len(eval_c), round(n_pool * cfg.eval_fraction))
        rl_eval = min(len(eval_c) - pool_eval, round(n_rl * cfg.rl_eval_fraction))
        need_train = (n_pool - pool_eval) + (n_rl - rl_eval)
        if need_train > len(train_c):
            raise ConfigError(
                f"demo data: topic '{topic}' has {len(train_c) + len(eval_c)} distinct prompts, "
                f"but {n_pool} reply prompts + {n_rl} RL prompts were asked for (rule: each prompt used once)"
            )
        picks = {
            "pool": [(c, "eval") for c in eval_c[:pool_eval]] + [(c, "train") for c in train_c[: n_pool - pool_eval]],
            "rl": [(c, "eval") for c in eval_c[pool_eval : pool_eval + rl_eval]]
            + [(c, "train") for c in train_c[n_pool - pool_eval : need_train]],
        }
        for where, chosen in picks.items():
            for (template, slot), split in chosen:
                text = template.format(x=slot) + ("" if harmful else rng.choice(DECORATIONS))
                row = PromptRow(text, "harmful" if harmful else topic, "", split, harmful, slot)
                (pool if where == "pool" else rl).append(row)

    for topic, slots in TOPICS.items():
        combos(topic, slots, TEMPLATES, cfg.eval_slots_per_topic, cfg.n_prompts_per_topic,
               cfg.n_rl_prompts_per_topic, harmful=False)
    if cfg.n_harmful_prompts or cfg.n_rl_harmful_prompts:
        combos("harmful", HARMFUL_SLOTS, HARMFUL_TEMPLATES, cfg.eval_slots_per_topic, cfg.n_harmful_prompts,
               cfg.n_rl_harmful_prompts, harmful=True)
    for rows in (pool, rl):
        for row, user in zip(rows, _zipf_users(rng, cfg.n_users, cfg.user_zipf_exponent, len(rows)), strict=True):
            row.user_id = user
    return pool, rl


# --------------------------------------------------------------------------- step 2: replies


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
BENIGN_PAIR_KINDS: tuple[tuple[str, str], ...] = (
    ("sample_a", "sample_b"), ("trimmed_a", "sample_a"), ("greedy", "sample_a"), ("sample_a", "refusal"),
    ("sample_b", "loop"), ("sample_a", "loop"), ("sample_a", "off_topic"), ("trimmed_a", "sample_b"),
)
HARMFUL_PAIR_KINDS: tuple[tuple[str, str], ...] = (
    ("refusal", "sample_a"), ("refusal_2", "sample_b"), ("refusal", "refusal_2"), ("sample_a", "loop"),
    ("refusal_2", "sample_a"),
)


def _sample_letter(key: str) -> str | None:
    """'c' for sample_c or trimmed_c (two forms of one sampled reply); None for other replies."""
    kind, _, letter = key.partition("_")
    return letter if kind in ("sample", "trimmed") and len(letter) == 1 else None


def ranked_pair_kinds(
    replies: dict[str, str], used: set[frozenset[str]] | frozenset[frozenset[str]] = frozenset(),
) -> list[list[tuple[str, str]]]:
    """One pair per two different samples of a prompt, each reply raw or trimmed (picked at random later).

    Grouped by the two samples compared: ``(x raw vs y)`` and ``(x trimmed vs y)`` are the same
    comparison up to a trailing fragment (the data stage would drop one as a near-duplicate), so
    a pair of samples already compared (``used``) is skipped. Returns, per pair of samples, its
    forms, e.g. ``[[("sample_a", "sample_c"), ("trimmed_a", "sample_c")], ...]``.
    """
    forms: dict[str, list[str]] = {}  # sample letter -> its keys ("sample_c", "trimmed_c")
    for key in replies:
        letter = _sample_letter(key)
        if letter:
            forms.setdefault(letter, []).append(key)
    letters = sorted(forms)
    out = []
    for i, x in enumerate(letters):
        for y in letters[i + 1:]:
            if frozenset((x, y)) in used:
                continue
            options = [(ka, kb) for ka in forms[x] for kb in forms[y] if replies[ka].strip() != replies[kb].strip()]
            if options:
                out.append(options)
    return out


def build_pairs(cands: list[Candidates], cfg: DemoDataConfig, rng: random.Random) -> list[dict[str, Any]]:
    """Pick a few pairs per prompt; order A/B at random (the panel has a position bias).

    Then, for benign prompts with ranked samples, ``ranked_pairs_per_prompt`` more pairs of two
    of the prompt's own samples (each raw or trimmed to its last finished sentence): the
    comparisons InstructGPT's labelers made, and the only ones in which both replies are the
    ordinary kind of answer a fine-tuned policy gives. No two pairs of a prompt compare the same
    two samples (raw or trimmed): the data stage would rightly drop one as a near-duplicate.
    """
    pairs = []
    compared: dict[int, set[frozenset[str]]] = {}  # prompt -> pairs of samples already compared
    for n, c in enumerate(cands):
        kinds = HARMFUL_PAIR_KINDS if c.prompt.harmful else BENIGN_PAIR_KINDS
        available = [k for k in kinds if k[0] in c.replies and k[1] in c.replies
                     and c.replies[k[0]].strip() != c.replies[k[1]].strip()]
        k = min(len(available), rng.randint(*cfg.pairs_per_prompt))
        for ka, kb in rng.sample(available, k):
            samples = frozenset((_sample_letter(ka), _sample_letter(kb)))
            if None not in samples and samples in compared.get(n, set()):
                continue  # (a vs b) and (a trimmed vs b): one comparison up to a trailing fragment
            compared.setdefault(n, set()).add(samples)
            if rng.random() < 0.5:
                ka, kb = kb, ka
            pairs.append({"prompt": c.prompt, "a": c.replies[ka], "b": c.replies[kb], "kind": f"{ka}|{kb}"})
    for n, c in enumerate(cands):
        if c.prompt.harmful or not cfg.ranked_pairs_per_prompt:
            continue
        groups = ranked_pair_kinds(c.replies, compared.get(n, set()))
        for options in rng.sample(groups, min(len(groups), cfg.ranked_pairs_per_prompt)):
            ka, kb = rng.choice(options)
            if rng.random() < 0.5:
                ka, kb = kb, ka
            pairs.append({"prompt": c.prompt, "a": c.replies[ka], "b": c.replies[kb], "kind": f"{ka}|{kb}",
                          "ranked": True})
    return pairs


# --------------------------------------------------------------------------- step 3: panel


@dataclass(frozen=True)
class Annotator:
    temperature: float  # multiplies the panel's tau: higher = noisier
    length_bias: float  # > 0 prefers the longer reply
    position_bias: float  # > 0 prefers the reply shown first (A)


def make_panel(n: int, rng: random.Random) -> list[Annotator]:
    return [
        Annotator(math.exp(rng.gauss(0.0, 0.3)), rng.gauss(0.0, 0.15), rng.gauss(0.0, 0.1)) for _ in range(n)
    ]


def preference_probs(gap: float, dwords: int, panel: list[Annotator], tau: float) -> list[float]:
    """P(annotator k prefers A) for a pair with gold gap ``gold(A) - gold(B)``."""
    return [
        _sigmoid(gap / (tau * a.temperature) + a.length_bias * math.tanh(dwords / 40.0) + a.position_bias)
        for a in panel
    ]


def expected_agreement(items: list[tuple[float, int]], panel: list[Annotator], tau: float) -> float:
    """Expected pairwise agreement of ``panel`` over (gap, dwords) items, in closed form."""
    total = 0.0
    for gap, dwords in items:
        p = preference_probs(gap, dwords, panel, tau)
        k = len(p)
        same = sum(p[i] * p[j] + (1 - p[i]) * (1 - p[j]) for i in range(k) for j in range(i + 1, k))
        total += same / (k * (k - 1) / 2)
    return total / len(items)


def calibrate_tau(items: list[tuple[float, int]], panel: list[Annotator], target: float) -> float:
    """Solve expected_agreement(tau) = target by bisection on log(tau) (agreement falls as tau grows)."""
    lo, hi = math.log(1e-4), math.log(1e2)
    if expected_agreement(items, panel, math.exp(lo)) < target:
        return math.exp(lo)  # even a near-noiseless panel cannot agree that much (e.g. many ties)
    for _ in range(60):
        mid = (lo + hi) / 2
        if expected_agreement(items, panel, math.exp(mid)) > target:
            lo = mid
        else:
            hi = mid
    return math.exp((lo + hi) / 2)


def label_pairs(
    pairs: list[dict[str, Any]], cfg: DemoDataConfig, rng: random.Random
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run the simulated panel: one label per annotator, majority -> chosen. Returns rows and panel stats."""
    if cfg.n_annotators < 3 or cfg.n_annotators % 2 == 0:
        raise ConfigError(f"demo data: n_annotators must be odd and >= 3 (got {cfg.n_annotators})")
    panel = make_panel(cfg.n_annotators, rng)
    items = []
    for p in pairs:
        ga = gold_score(p["prompt"].prompt, p["a"], harmful=p["prompt"].harmful)
        gb = gold_score(p["prompt"].prompt, p["b"], harmful=p["prompt"].harmful)
        p["gold_a"], p["gold_b"] = ga, gb
        items.append((ga - gb, len(p["a"].split()) - len(p["b"].split())))
    tau = calibrate_tau(items, panel, cfg.target_agreement)
    rows = []
    for p, (gap, dwords) in zip(pairs, items, strict=True):
        probs = preference_probs(gap, dwords, panel, tau)
        votes_a = [1 if rng.random() < q else 0 for q in probs]
        a_wins = sum(votes_a) * 2 > len(votes_a)
        labels = votes_a if a_wins else [1 - v for v in votes_a]
        chosen, rejected = (p["a"], p["b"]) if a_wins else (p["b"], p["a"])
        rows.append({
            **p["prompt"].public(), "chosen": chosen, "rejected": rejected, "annotator_labels": labels,
            # Vote margin: 1.0 unanimous, 0.2 for 3-2 with five annotators.
            "margin": round((2 * sum(labels) - len(labels)) / len(labels), 4),
            "_kind": p["kind"], "_ranked": p.get("ranked", False), "_gold_chosen": p["gold_a"] if a_wins else p["gold_b"],
            "_gold_rejected": p["gold_b"] if a_wins else p["gold_a"],
        })
    stats = {
        "n_annotators": cfg.n_annotators,
        "tau": round(tau, 5),
        "annotators": [
            {"temperature": round(a.temperature, 4), "length_bias": round(a.length_bias, 4),
             "position_bias": round(a.position_bias, 4)} for a in panel
        ],
        "expected_agreement": round(expected_agreement(items, panel, tau), 4),
    }
    return rows, stats


# --------------------------------------------------------------------------- step 4: defects


def _n(cfg: DemoDataConfig, kind: str, name: str) -> int:
    return int(round(DEFECT_COUNTS[kind][name] * cfg.defect_scale))


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


# --------------------------------------------------------------------------- driver


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


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
    import torch
    import transformers

    from rlhf_core.models import load_causal_lm, load_tokenizer

    try:
        cfg = DemoDataConfig(seed=seed, n_prompts_per_topic=n_prompts_per_topic, **overrides)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']} (got {e.get('input')!r})"
                             for e in exc.errors())
        raise ConfigError(f"demo data: {problems}") from exc
    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(cache_dir) if cache_dir else (cfg.model.cache_dir or Path(".rlhf/models"))
    t0 = time.perf_counter()
    rng = random.Random(cfg.seed)

    pool, rl = build_prompts(cfg, rng)
    say(f"demo data: {len(pool)} reply prompts, {len(rl)} clean RL prompts")

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
    model = tokenizer = None
    if cached is not None:
        say(f"demo data: reusing the sampled replies in {samples_path}")
        sample_a, sample_b, greedy, sampling_s = cached
    if cached is None or (idx_r and cached_ranked is None):
        say(f"demo data: loading model {cfg.model.base}")
        tokenizer = load_tokenizer(cfg.model, cache)
        model = load_causal_lm(cfg.model, cache, tokenizer).eval()
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
    if samples_path and (cached is None or (idx_r and cached_ranked is None)):
        saved = {"key": samples_key, "sample_a": sample_a, "sample_b": [sample_b[i] for i in idx_b],
                 "greedy": [greedy[i] for i in idx_g], "sampling_seconds": sampling_s}
        if idx_r:
            saved["ranked"] = {"key": ranked_key, "replies": [ranked[i] for i in idx_r],
                               "sampling_seconds": ranked_s}
        Path(samples_path).write_text(json.dumps(saved, ensure_ascii=False), encoding="utf-8")
    n_sampled = len(sample_a) + len(sample_b) + len(greedy) + sum(len(v) for v in ranked.values())
    # seconds spent sampling the reused replies when they were made (so the stats report the real cost)
    reused_s = (sampling_s if cached is not None else 0.0) + (ranked_s if cached_ranked is not None else 0.0)
    sampling_s += ranked_s
    say(f"demo data: sampled {n_sampled} replies in {sampling_s:.0f}s")

    cands = build_candidates(pool, sample_a, sample_b, greedy, rng, ranked)

    # Demonstrations: the best (by gold) finished version of the model's own replies, a
    # rejection-sampling style demonstration; harmful prompts get a good refusal.
    demos = []
    for c in cands:
        if c.prompt.harmful:
            response = c.replies["refusal"]
        else:
            options = [c.replies[k] for k in ("trimmed_a", "sample_a", "sample_b", "greedy") if k in c.replies]
            options = [trim_to_last_sentence(o) for o in options]
            response = max(options, key=lambda o: gold_score(c.prompt.prompt, o))
        demos.append({**c.prompt.public(), "response": response})

    pairs = build_pairs(cands, cfg, rng)
    pref_rows, panel_stats = label_pairs(pairs, cfg, rng)
    clean_labels = [r["annotator_labels"] for r in pref_rows]
    kinds = Counter(r["_kind"] for r in pref_rows)
    gold_agree = sum(r["_gold_chosen"] >= r["_gold_rejected"] for r in pref_rows) / max(1, len(pref_rows))
    ranked_rows = [r for r in pref_rows if r["_ranked"]]

    demo_rows, demo_planted = finalize(plant_demonstration_defects(demos, pool, cfg, rng), "demo", rng)
    pref_final, pref_planted = finalize(plant_preference_defects(pref_rows, cands, cfg, rng), "pref", rng)
    rl_public = [p.public() for p in rl]
    rl_rows, rl_planted = finalize(plant_rl_defects(rl_public, cfg, rng), "rl", rng)

    _write_jsonl(out / "demonstrations.jsonl", demo_rows)
    _write_jsonl(out / "preferences.jsonl", pref_final)
    _write_jsonl(out / "rl_prompts.jsonl", rl_rows)

    file_labels = [r["annotator_labels"] for r in pref_final if isinstance(r.get("annotator_labels"), list)]
    users = Counter(r["user_id"] for r in rl_rows if isinstance(r.get("user_id"), str))
    stats: dict[str, Any] = {
        "config": json.loads(cfg.model_dump_json()),
        "regenerate": regenerate_command(out_dir, cfg, samples_path),
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
        "planted": {"demonstrations": demo_planted, "preferences": pref_planted, "rl_prompts": rl_planted},
        "rl_prompts_per_user_top5": users.most_common(5),
        "generation": {
            "model": cfg.model.base, "sampled_replies": n_sampled, "sampling_seconds": round(sampling_s, 1),
            "total_seconds": round(time.perf_counter() - t0 + reused_s, 1), "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version(),
            "machine": platform.machine(),
        },
    }
    (out / "stats.json").write_text(json.dumps(stats, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / "README.md").write_text(render_readme(stats), encoding="utf-8")
    say(f"demo data: wrote {out} in {stats['generation']['total_seconds']:.0f}s; "
        f"agreement {stats['agreement']['measured_file']:.3f}")
    return stats


def regenerate_command(out_dir: Path | str, cfg: DemoDataConfig, samples_path: Path | str | None = None) -> str:
    """The CLI line that reproduces ``cfg`` (only what differs from the defaults, plus out/seed).

    ``--threads`` is kept: the thread count can change float reductions, hence sampled text.
    """
    default = DemoDataConfig()
    parts = [f"python -m data_checks.demo --out {out_dir} --seed {cfg.seed}"]
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

Generated by `data_checks/demo.py` (the project's own code). Regenerate with

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


def main(argv: list[str] | None = None) -> int:
    """``python -m data_checks.demo --out data/demo --seed 0``."""
    parser = argparse.ArgumentParser(description="Generate the demo data set (data/demo).")
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
