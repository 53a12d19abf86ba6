"""Preferences between samples of one prompt, and the pairs a preference loss trains on.

A judge compares two completions of a prompt and returns P(a > b) in [0, 1]. `Comparisons`
holds those answers for pairs of rows of a sampled batch (rows of one unit, i.e. one
prompt); `build_pairs` turns them into (chosen, rejected, target) triples by a rule:

- best_vs_worst: one pair per prompt, its best and worst sample by mean win probability
  against the prompt's other samples (Borda); the target is the judge's P(best > worst).
- all: every compared pair, oriented so the chosen sample is the one the judge prefers.

Pairs the judge could not decide (P missing) or calls a tie (|P - 1/2| <= tie_margin) are
dropped and counted: a tie carries no preference, and with soft targets it would only pull
the two samples' log-ratios together.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np

PAIR_RULES = ("best_vs_worst", "all")


@dataclass
class Comparisons:
    """Judge answers: P(row a > row b) for each compared pair (NaN: no valid answer)."""

    a: np.ndarray  # [N] int64, row index in the sampled batch
    b: np.ndarray  # [N] int64
    prob: np.ndarray  # [N] float64

    def __post_init__(self) -> None:
        self.a = np.asarray(self.a, dtype=np.int64)
        self.b = np.asarray(self.b, dtype=np.int64)
        self.prob = np.asarray(self.prob, dtype=np.float64)
        if not (self.a.shape == self.b.shape == self.prob.shape):
            raise ValueError("comparisons: a, b and prob must have the same length")

    def __len__(self) -> int:
        return int(self.a.shape[0])


@dataclass
class Pairs:
    chosen: np.ndarray  # [P] row index
    rejected: np.ndarray  # [P] row index
    target: np.ndarray  # [P] P(chosen > rejected), >= 1/2
    dropped_ties: int = 0
    dropped_invalid: int = 0

    def __len__(self) -> int:
        return int(self.chosen.shape[0])


def unit_pairs(units: np.ndarray, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Every unordered pair of rows within each unit (rows in batch order): what a judge
    compares. `rows` restricts the candidates (e.g. valid samples only)."""
    units = np.asarray(units)
    candidates = np.arange(len(units)) if rows is None else np.asarray(rows)
    a, b = [], []
    for u in np.unique(units[candidates]):
        members = candidates[units[candidates] == u]
        for i, j in combinations(members.tolist(), 2):
            a.append(i)
            b.append(j)
    return np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)


def preference_from_rewards(r_a: np.ndarray, r_b: np.ndarray, tau: float) -> np.ndarray:
    """A scalar reward as a judge (Bradley-Terry): P(a > b) = sigmoid((r_a - r_b) / tau).
    NaN where either reward is missing."""
    z = (np.asarray(r_a, np.float64) - np.asarray(r_b, np.float64)) / tau
    with np.errstate(over="ignore", invalid="ignore"):
        return 1.0 / (1.0 + np.exp(-z))


def comparisons_from_rewards(rewards: np.ndarray, units: np.ndarray, tau: float) -> Comparisons:
    a, b = unit_pairs(units)
    return Comparisons(a, b, preference_from_rewards(rewards[a], rewards[b], tau))


def build_pairs(
    comparisons: Comparisons, units: np.ndarray, rule: str, tie_margin: float = 0.0
) -> Pairs:
    """(chosen, rejected, target) triples from judge answers, per `rule` (PAIR_RULES)."""
    if rule not in PAIR_RULES:
        raise ValueError(f"unknown pair rule {rule!r}; allowed: {', '.join(PAIR_RULES)}")
    c = comparisons
    valid = np.isfinite(c.prob)
    tie = valid & (np.abs(c.prob - 0.5) <= tie_margin)
    chosen: list[int] = []
    rejected: list[int] = []
    target: list[float] = []
    if rule == "all":
        keep = valid & ~tie
        a_wins = c.prob >= 0.5
        for i in np.flatnonzero(keep):
            w, lose = (c.a[i], c.b[i]) if a_wins[i] else (c.b[i], c.a[i])
            chosen.append(int(w))
            rejected.append(int(lose))
            target.append(float(max(c.prob[i], 1.0 - c.prob[i])))
        return Pairs(
            _ints(chosen), _ints(rejected), np.asarray(target), int(tie.sum()), int((~valid).sum())
        )

    units = np.asarray(units)
    dropped_ties = dropped_invalid = 0
    pair_units = units[c.a] if len(c) else np.zeros(0, np.int64)
    for u in np.unique(pair_units):
        idx = np.flatnonzero((pair_units == u) & valid)
        if idx.size == 0:
            dropped_invalid += 1
            continue
        # Borda: each row's mean probability of beating the rows it was compared with
        wins: dict[int, list[float]] = {}
        for i in idx:
            wins.setdefault(int(c.a[i]), []).append(c.prob[i])
            wins.setdefault(int(c.b[i]), []).append(1.0 - c.prob[i])
        rows = sorted(wins)
        score = np.array([np.mean(wins[r]) for r in rows])
        best, worst = rows[int(np.argmax(score))], rows[int(np.argmin(score))]
        p = _prob(c, idx, best, worst)
        if best == worst or p is None or abs(p - 0.5) <= tie_margin:
            dropped_ties += 1
            continue
        chosen.append(best)
        rejected.append(worst)
        target.append(p)
    return Pairs(_ints(chosen), _ints(rejected), np.asarray(target), dropped_ties, dropped_invalid)


def _prob(c: Comparisons, idx: np.ndarray, x: int, y: int) -> float | None:
    """P(x > y) from the answers at `idx`, None if that pair was not (validly) compared."""
    for i in idx:
        if c.a[i] == x and c.b[i] == y:
            return float(c.prob[i])
        if c.a[i] == y and c.b[i] == x:
            return float(1.0 - c.prob[i])
    return None


def _ints(values: list[int]) -> np.ndarray:
    return np.asarray(values, dtype=np.int64)
