"""Built-in reward functions: fn(prompts, completions, **columns) -> list[float | None].

Columns arrive as lists aligned with `prompts` (TRL's convention); `answer` is the reference
answer of the built-in tasks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence


def _clean(completion: object) -> str:
    """The completion as the model meant it: surrounding white space is not part of it."""
    return completion.strip() if isinstance(completion, str) else ""


def addition_exact(
    prompts: list[str], completions: list[str], answer: Sequence[object], **_: object
) -> list[float | None]:
    """Verifiable: 1.0 iff the completion, stripped of white space, is exactly the answer."""
    return [
        1.0 if _clean(c) == str(a).strip() else 0.0
        for c, a in zip(completions, answer, strict=True)
    ]


def addition_digits(
    prompts: list[str], completions: list[str], answer: Sequence[object], **_: object
) -> list[float | None]:
    """Shaped: the fraction of digit positions right, over the longer of answer and completion.

    1.0 exactly when `addition_exact` is 1.0; a completion that is not a number scores 0.
    """
    out: list[float | None] = []
    for c, a in zip(completions, answer, strict=True):
        c, a = _clean(c), str(a).strip()
        if not (c.isascii() and c.isdigit()) or not a:
            out.append(0.0)
            continue
        right = sum(x == y for x, y in zip(c, a, strict=False))
        out.append(right / max(len(c), len(a)))
    return out


def addition_distance(
    prompts: list[str], completions: list[str], answer: Sequence[object], **_: object
) -> list[float | None]:
    """Graded: closer is better, -log10(1 + |completion - answer|): 0 for the right answer,
    -0.30 off by one, -1.04 off by ten; a completion that is not a number scores -3 (worse
    than any number within 999 of the answer). As a judge it prefers the closer answer, so
    two wrong answers still compare."""
    out: list[float | None] = []
    for c, a in zip(completions, answer, strict=True):
        c, a = _clean(c), str(a).strip()
        if not (c.isascii() and c.isdigit()) or not a.isdigit():
            out.append(-3.0)
            continue
        out.append(-math.log10(1 + abs(int(c) - int(a))))
    return out


BUILTIN_REWARDS: dict[str, Callable[..., list[float | None]]] = {
    "addition_exact": addition_exact,
    "addition_digits": addition_digits,
    "addition_distance": addition_distance,
}
