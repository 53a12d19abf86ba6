"""Reward functions for tests, loaded by the reward workers as 'tests.rewards_for_tests:...'."""

from __future__ import annotations


def distinct_tokens(prompts: list[str], completions: list[str], **_: object) -> list[float]:
    """The number of distinct characters in the completion, over 4: varied for any policy."""
    return [len(set(c)) / 4.0 for c in completions]
