"""Built-in reward functions: fn(prompts, completions, **columns) -> list[float | None].

Columns arrive as lists aligned with `prompts` (TRL's convention); `answer` is the reference
answer of the built-in tasks (and of GSM8K-style prompt files, for `final_number`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from decimal import Decimal, InvalidOperation


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


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
GSM8K_MARK = "####"  # GSM8K's solutions end "#### <number>"


def last_number(text: str) -> Decimal | None:
    """The last number written in `text` (thousands commas allowed), or None."""
    found = _NUMBER.findall(text)
    if not found:
        return None
    try:
        return Decimal(found[-1].replace(",", ""))
    except InvalidOperation:
        return None


def final_number(
    prompts: list[str], completions: list[str], answer: Sequence[object], **_: object
) -> list[float | None]:
    """Verifiable, for word problems: 1.0 iff the completion's last number equals the answer's
    (after GSM8K's '####' when there is one; 72, 72.0 and 72.00 are equal); None where the
    answer holds no number (the reward does not apply)."""
    out: list[float | None] = []
    for c, a in zip(completions, answer, strict=True):
        want = last_number(str(a).rsplit(GSM8K_MARK, 1)[-1])
        if want is None:
            out.append(None)
            continue
        got = last_number(c) if isinstance(c, str) else None
        out.append(1.0 if got == want else 0.0)
    return out


BUILTIN_REWARDS: dict[str, Callable[..., list[float | None]]] = {
    "final_number": final_number,
    "addition_exact": addition_exact,
    "addition_digits": addition_digits,
    "addition_distance": addition_distance,
}
