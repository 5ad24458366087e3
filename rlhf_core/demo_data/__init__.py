"""Generate the shipped demo data set (``data/demo/``): prompts, sampled replies, a simulated
annotator panel, and the defects every data task must catch.

Regenerate with ``python -m rlhf_core.demo_data --out data/demo --seed 0`` (wired as
``rlhf data make-demo``); :func:`rlhf_core.demo_data.generate.make_demo_data` runs the steps,
one module each:

1. :mod:`.prompts`: the synthetic world (twelve everyday topics, a small flagged harmful
   category, Zipf-distributed users) and its prompts, split train/eval by subject.
2. :mod:`.sampling`: replies sampled from the default base model (SmolLM2-135M-Instruct) through
   its chat template, kept in ``samples.json``; :mod:`.replies`: the deliberately bad replies
   beside them (refusals of benign prompts, loops, off-topic replies) and the demonstrations.
3. :mod:`.pairs`: which replies are compared; :mod:`.annotators`: a simulated panel of K
   annotators labels them (Bradley-Terry on the gold-score gap, calibrated to InstructGPT's ~73%
   agreement); ``chosen`` is the majority.
4. :mod:`.defects`: defects planted in the raw files, listed by id in ``stats.json``;
   :mod:`.files`: the JSONL files, ``stats.json`` and the README.

The settings are :class:`rlhf_core.config.demo_data.DemoDataConfig`. Torch is imported only
where a model is sampled.
"""
