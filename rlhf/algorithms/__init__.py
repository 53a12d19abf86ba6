"""Algorithms: pure tensor functions behind one interface, found by name."""

from __future__ import annotations

from rlhf.algorithms.base import Algorithm
from rlhf.algorithms.grpo import GRPO

ALGORITHMS: dict[str, type[Algorithm]] = {GRPO.name: GRPO}


def make_algorithm(cfg, max_new_tokens: int) -> Algorithm:
    try:
        cls = ALGORITHMS[cfg.name]
    except KeyError:
        raise ValueError(
            f"algorithm.name {cfg.name!r} is unknown; allowed: {', '.join(ALGORITHMS)}"
        ) from None
    return cls(cfg, max_new_tokens)


__all__ = ["ALGORITHMS", "Algorithm", "make_algorithm"]
