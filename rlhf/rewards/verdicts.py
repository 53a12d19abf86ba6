"""The LLM judge's text side: the prompt template, the verdict parser, and P(a > b) from the
log-probs at the verdict token. Pure functions (no model), so each is tested by hand."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Literal

Verdict = Literal["A", "B"]

# Each candidate is shown whole, prompt and completion, as the policy wrote it; the question
# comes first and the verdict right after the second candidate. Short on purpose: the tiny
# judge's tokenizer spells words letter by letter and its context is 256 tokens.
DEFAULT_TEMPLATE = "Which is better, A or B?\nA: {prompt}{a}\nB: {prompt}{b}\n"
PLACEHOLDERS = ("{prompt}", "{a}", "{b}")
_PLACEHOLDER = re.compile(r"\{(prompt|a|b)\}")


def missing_placeholders(template: str) -> list[str]:
    return [p for p in PLACEHOLDERS if p not in template]


def fill_template(template: str, prompt: str, a: str, b: str) -> str:
    """The template with {prompt}, {a} and {b} replaced in one pass: inserted text is never
    scanned again (an answer containing "{b}" stays as written), and other braces in the
    template stay literal (no str.format escaping needed)."""
    values = {"prompt": prompt, "a": a, "b": b}
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


# A verdict letter: an upper-case A/B not glued to a word or number; a lower-case a/b only at
# the end or before punctuation ("a" before a word is the article). "A or B", "A/B", "A and B"
# echo the question and are not a verdict.
_LETTER = (
    r"(?P<v>[AB](?![A-Za-z0-9])|[ab](?=\s*(?:$|[.,;:!?)\]*\"'])))"
    r"(?!\s*(?:or|and|vs\.?|/|,)\s*[AaBb](?![A-Za-z0-9]))"
)
_PATTERNS = (
    # at the very start, after punctuation or markup: "A", " b", "[[A]]", "(B).", "**A**"
    re.compile(r"^[\W_]*" + _LETTER),
    # after a cue: "Answer: B", "The better answer is A", "Verdict: [[B]]"
    re.compile(
        r"(?i:\b(?:answer|verdict|better|winner|choice|preferred)\b"
        r"(?:\W+(?:is|answer|output|response|option|one|the))*)[^\w\n]*" + _LETTER
    ),
    # after a colon, e.g. the question echoed first: "Better answer (A or B): A"
    re.compile(r":[^\w\n]*" + _LETTER),
    # the MT-Bench style marker anywhere: "... so my verdict is [[A]]"
    re.compile(r"\[\[\s*" + _LETTER + r"\s*\]\]"),
)


def parse_verdict(text: str) -> tuple[Verdict | None, int]:
    """The first clear verdict in a judge's output and the character offset of its letter;
    (None, -1) when there is none (no answer)."""
    found: tuple[Verdict | None, int] = (None, -1)
    for pattern in _PATTERNS:
        m = pattern.search(text)
        if m and (found[0] is None or m.start("v") < found[1]):
            letter: Verdict = "A" if m.group("v").upper() == "A" else "B"
            found = (letter, m.start("v"))
    return found


def letter_of_token(token_text: str) -> Verdict | None:
    """Which verdict a candidate token spells ("A", " A", "a", "[[B", "B."), if any."""
    core = token_text.strip().strip("[](){}*\"'.,:;!").strip()
    return "A" if core in ("A", "a") else "B" if core in ("B", "b") else None


def _logsumexp(xs: list[float]) -> float:
    top = max(xs)
    return top + math.log(sum(math.exp(x - top) for x in xs))


def probability_from_logprobs(candidates: Iterable[tuple[str, float]]) -> float | None:
    """P(a > b) = p_A / (p_A + p_B) from the top (token text, log-prob) candidates at the
    verdict position, each letter's probability summed over its spellings. None unless both
    letters are among the candidates (the renormalised value would be a guess)."""
    by_letter: dict[Verdict, list[float]] = {"A": [], "B": []}
    for text, logprob in candidates:
        letter = letter_of_token(text)
        if letter is not None and math.isfinite(logprob):
            by_letter[letter].append(logprob)
    if not by_letter["A"] or not by_letter["B"]:
        return None
    # sigmoid(log p_A - log p_B), computed from log-space sums (no underflow)
    diff = _logsumexp(by_letter["A"]) - _logsumexp(by_letter["B"])
    return 1.0 / (1.0 + math.exp(-diff)) if diff > -700 else 0.0


def verdict_probability(
    verdict: Verdict | None, candidates: Iterable[tuple[str, float]]
) -> tuple[float, bool]:
    """P(a > b) for one judge output, and whether it came from log-probs: renormalised over
    A/B when both are candidates, else 1/0 from the parsed verdict, NaN with no verdict."""
    if verdict is None:
        return math.nan, False
    p = probability_from_logprobs(candidates)
    if p is not None:
        return p, True
    return (1.0 if verdict == "A" else 0.0), False
