"""Scalar reward model trained on preference pairs, and its agreement evaluation."""
