"""Reward functions for tests, loaded by the reward workers as 'tests.rewards_for_tests:...'."""

from __future__ import annotations


def distinct_tokens(prompts: list[str], completions: list[str], **_: object) -> list[float]:
    """The number of distinct characters in the completion, over 4: varied for any policy."""
    return [len(set(c)) / 4.0 for c in completions]


def exact_answer_judge(
    prompts: list[str], completions_a: list[str], completions_b: list[str], answer, **_: object
) -> list[float]:
    """A pairwise judge: 1 if only a is the right answer, 0 if only b is, else 1/2."""
    out = []
    for a, b, right in zip(completions_a, completions_b, answer, strict=True):
        ra, rb = a.strip() == str(right), b.strip() == str(right)
        out.append(0.5 if ra == rb else 1.0 if ra else 0.0)
    return out


def first_position_judge(
    prompts: list[str], completions_a: list[str], completions_b: list[str], **_: object
) -> list[float]:
    """A judge with pure position bias: always 0.8 for whichever answer is shown first."""
    return [0.8] * len(prompts)


def broken_judge(prompts: list[str], completions_a: list[str], completions_b: list[str], **_):
    """Out-of-range, NaN and non-numeric answers, cycling."""
    return [[1.5, float("nan"), "x", 0.25][i % 4] for i in range(len(prompts))]


def gated_addition_exact(
    prompts: list[str], completions: list[str], answer, **kwargs: object
) -> list[float | None]:
    """The built-in exact-answer reward, held while the file named by $RLHF_TEST_GATE exists
    (at most 10 minutes): a test that makes the file stops the run at its next scoring, so
    it can kill the run mid-way whatever the machine's speed."""
    import os
    import time
    from pathlib import Path

    from rlhf.rewards.builtin import addition_exact

    gate = os.environ.get("RLHF_TEST_GATE")
    deadline = time.monotonic() + 600
    while gate and Path(gate).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return addition_exact(prompts, completions, answer, **kwargs)
