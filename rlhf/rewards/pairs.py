"""Preference pairs for reward-model training: read from JSONL, or built from a task.

JSONL: one object per line, {"prompt": ..., "chosen": ..., "rejected": ...} (strings; other
keys are ignored; blank lines are skipped). Held-out pairs are those of held-out *prompts*,
so the accuracy measures prompts the model never trained on.

Built from a task with numeric answers (the built-in addition): chosen = the right answer,
rejected = wrong answers shaped like a policy's real mistakes (near misses: off by one, off
by ten, one wrong digit, a dropped or an extra digit, and some non-numbers); training pairs
on the task's training prompts, held-out pairs on its evaluation prompts.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rlhf.data.tasks import Task

KEYS = ("prompt", "chosen", "rejected")


@dataclass(frozen=True)
class Pair:
    prompt: str
    chosen: str
    rejected: str
    kind: str = ""  # built-in pairs: which kind of wrong answer `rejected` is


class PairsFileError(ValueError):
    """A pairs file that cannot be used; the message names the file and line."""


# ---------------------------------------------------------------- JSONL
def _pair_of_line(line: str, where: str) -> Pair:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as err:
        raise PairsFileError(f"{where}: not valid JSON ({err.msg})") from None
    if not isinstance(obj, dict):
        raise PairsFileError(
            f"{where}: expected an object with keys {', '.join(KEYS)}; got {type(obj).__name__}"
        )
    for key in KEYS:
        if key not in obj:
            raise PairsFileError(f"{where}: missing key {key!r} (needs {', '.join(KEYS)})")
        if not isinstance(obj[key], str):
            raise PairsFileError(
                f"{where}: {key!r} must be a string; got {type(obj[key]).__name__}"
            )
    if obj["chosen"] == obj["rejected"]:
        raise PairsFileError(f"{where}: 'chosen' and 'rejected' are the same text")
    return Pair(obj["prompt"], obj["chosen"], obj["rejected"])


def read_pairs(path: str | Path) -> list[Pair]:
    p = Path(path).expanduser()
    if not p.is_file():
        raise PairsFileError(f"pairs file {str(p)!r} does not exist")
    pairs = []
    with p.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                pairs.append(_pair_of_line(line, f"{p} line {number}"))
    if not pairs:
        raise PairsFileError(f"pairs file {str(p)!r} holds no pairs")
    return pairs


def split_by_prompt(
    pairs: list[Pair], held_out_fraction: float, seed: int
) -> tuple[list[Pair], list[Pair]]:
    """(training, held-out) pairs; a prompt's pairs all go to one side. A fraction above 0
    holds out at least one prompt; every split keeps at least one training prompt."""
    prompts = list(dict.fromkeys(p.prompt for p in pairs))
    n_held = round(held_out_fraction * len(prompts))
    if held_out_fraction > 0:
        n_held = max(1, n_held)
    if n_held >= len(prompts):
        raise PairsFileError(
            f"held_out_fraction={held_out_fraction} of {len(prompts)} distinct prompts "
            "leaves no prompt to train on"
        )
    order = np.random.default_rng(seed).permutation(len(prompts))
    held = {prompts[i] for i in order[:n_held]}
    return [p for p in pairs if p.prompt not in held], [p for p in pairs if p.prompt in held]


# ---------------------------------------------------------------- wrong answers to a number
def _off_by(step: int) -> Callable[[str, np.random.Generator], str | None]:
    def make(answer: str, rng: np.random.Generator) -> str | None:
        n = int(answer)
        sign = 1 if n < step or rng.random() < 0.5 else -1
        return str(n + sign * step)

    return make


def _no_leading_zero(text: str) -> bool:
    return len(text) == 1 or not text.startswith("0")


def _wrong_digit(answer: str, rng: np.random.Generator) -> str | None:
    i = int(rng.integers(len(answer)))
    digits = [d for d in "0123456789" if d != answer[i]]
    text = answer[:i] + str(rng.choice(digits)) + answer[i + 1 :]
    return text if _no_leading_zero(text) else None


def _dropped_digit(answer: str, rng: np.random.Generator) -> str | None:
    options = [answer[:i] + answer[i + 1 :] for i in range(len(answer))]
    options = [t for t in options if t and _no_leading_zero(t)]
    return str(rng.choice(options)) if options else None


def _extra_digit(answer: str, rng: np.random.Generator) -> str | None:
    i = int(rng.integers(len(answer) + 1))
    text = answer[:i] + str(rng.integers(10)) + answer[i:]
    return text if _no_leading_zero(text) else None


def _non_number(answer: str, rng: np.random.Generator) -> str | None:
    # What a policy emits when it has not learned the format: nothing (EOS at once), a bare
    # operator, or the answer run on into another symbol. No white space: the exact-match
    # reward strips it, so " 58" would be a right answer.
    return str(rng.choice(["", "+", "=", f"{answer}+", f"{answer}=", f"+{answer}"]))


WRONG_ANSWERS: dict[str, Callable[[str, np.random.Generator], str | None]] = {
    "off_by_one": _off_by(1),
    "off_by_ten": _off_by(10),
    "wrong_digit": _wrong_digit,
    "dropped_digit": _dropped_digit,
    "extra_digit": _extra_digit,
    "non_number": _non_number,
}


def wrong_answers(answer: str, k: int, rng: np.random.Generator) -> list[tuple[str, str]]:
    """k distinct (kind, wrong answer) for a numeric answer; kinds are drawn without
    replacement (then again), so a prompt's rejected answers differ in kind where they can."""
    found: dict[str, str] = {}
    kinds = list(WRONG_ANSWERS)
    for _ in range(20 * k):  # a kind may give nothing or a repeat; a few retries suffice
        if len(found) == k:
            break
        if not kinds:
            kinds = list(WRONG_ANSWERS)
        kind = kinds.pop(int(rng.integers(len(kinds))))
        text = WRONG_ANSWERS[kind](answer, rng)
        if text is not None and text != answer and text not in found:
            found[text] = kind
    return [(kind, text) for text, kind in found.items()]


HELD_OUT_REJECTED_PER_PROMPT = 2


def task_pairs(task: Task, rejected_per_prompt: int, seed: int) -> tuple[list[Pair], list[Pair]]:
    """(training pairs on the task's training prompts, held-out pairs on its eval prompts).
    The held-out pairs are the same whatever `rejected_per_prompt` is (two per prompt), so
    accuracies of models trained with different settings compare."""

    def build(prompts, rng, rejected_per_prompt: int) -> list[Pair]:
        out = []
        for prompt in prompts:
            answer = task.target(prompt).strip()
            if not (answer.isascii() and answer.isdigit()):
                raise ValueError(
                    f"task {task.name!r} has a non-numeric answer {answer!r}: built-in pairs "
                    "need numbers; give reward_model_training.pairs"
                )
            for kind, text in wrong_answers(answer, rejected_per_prompt, rng):
                out.append(Pair(prompt.text, answer, text, kind))
        return out

    rng = np.random.default_rng(seed)
    # separate streams: the held-out pairs do not depend on how many training prompts exist
    train_rng, held_rng = (np.random.default_rng(s) for s in rng.integers(2**32, size=2))
    return (
        build(task.train_prompts, train_rng, rejected_per_prompt),
        build(task.eval_prompts, held_rng, HELD_OUT_REJECTED_PER_PROMPT),
    )


def sampled_pairs(
    prompts: list[str], answers: list[str], completions: list[str], kind: str = "policy_sample"
) -> list[Pair]:
    """Pairs from a policy's own samples: each distinct wrong completion of a prompt (text
    stripped, compared with the right answer) against that answer. The rejected answers are
    then the mistakes the policy makes, in the proportions it makes them."""
    seen: set[tuple[str, str]] = set()
    out = []
    for prompt, answer, completion in zip(prompts, answers, completions, strict=True):
        text = completion.strip()
        if text != answer and (prompt, text) not in seen:
            seen.add((prompt, text))
            out.append(Pair(prompt, answer, text, kind))
    return out
