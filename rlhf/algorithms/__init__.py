"""Algorithms: pure tensor functions behind one interface, found by name.

Each algorithm module owns its config block (a pydantic model whose `name` is the
discriminator), its checks against the rest of the config, and what it needs.
"""

from __future__ import annotations

import functools
import operator
from typing import Annotated

from pydantic import Field

from rlhf.algorithms.base import Algorithm, ForwardOutput
from rlhf.algorithms.grpo import GRPO
from rlhf.algorithms.ppo import PPO
from rlhf.algorithms.preference import (
    IPO,
    IPOMD,
    NashMD,
    OnlineDPO,
)
from rlhf.algorithms.reinforce_pp import ReinforcePP
from rlhf.algorithms.rloo import RLOO

# One entry per algorithm: the registry by name and the config union both come from it.
REGISTERED: tuple[type[Algorithm], ...] = (
    GRPO,
    PPO,
    RLOO,
    ReinforcePP,
    OnlineDPO,
    IPO,
    IPOMD,
    NashMD,
)
ALGORITHMS: dict[str, type[Algorithm]] = {cls.name: cls for cls in REGISTERED}

# the `algorithm` block: one of the registered configs, chosen by its `name`
AlgorithmConfig = Annotated[
    functools.reduce(operator.or_, (cls.config for cls in REGISTERED)),
    Field(discriminator="name"),
]


def make_algorithm(cfg, max_new_tokens: int) -> Algorithm:
    try:
        cls = ALGORITHMS[cfg.name]
    except KeyError:
        raise ValueError(
            f"algorithm.name {cfg.name!r} is unknown; allowed: {', '.join(ALGORITHMS)}"
        ) from None
    return cls(cfg, max_new_tokens)


__all__ = [
    "ALGORITHMS",
    "REGISTERED",
    "Algorithm",
    "AlgorithmConfig",
    "ForwardOutput",
    "make_algorithm",
]
