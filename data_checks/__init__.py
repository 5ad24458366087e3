"""What valid data means: importers, pandera schemas, curation (refusal scrubbing,
dedup, prompt-distribution filtering), Great Expectations suites, and `rlhf data check`."""
