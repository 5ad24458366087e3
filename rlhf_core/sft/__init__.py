"""Supervised fine-tuning on demonstrations (completion-only loss)."""
