"""Algorithms: pure tensor functions behind one interface, found by name.

Each algorithm module owns its config block (a pydantic model whose `name` is the
discriminator), its checks against the rest of the config, and what it needs.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from rlhf.algorithms.base import Algorithm, ForwardOutput
from rlhf.algorithms.grpo import GRPO, GRPOConfig
from rlhf.algorithms.ppo import PPO, PPOConfig
from rlhf.algorithms.preference import (
    IPO,
    IPOMD,
    IPOConfig,
    IPOMDConfig,
    NashMD,
    NashMDConfig,
    OnlineDPO,
    OnlineDPOConfig,
)
from rlhf.algorithms.reinforce_pp import ReinforcePP, ReinforcePPConfig
from rlhf.algorithms.rloo import RLOO, RLOOConfig

ALGORITHMS: dict[str, type[Algorithm]] = {
    cls.name: cls for cls in (GRPO, PPO, RLOO, ReinforcePP, OnlineDPO, IPO, IPOMD, NashMD)
}

AlgorithmConfig = Annotated[
    GRPOConfig
    | PPOConfig
    | RLOOConfig
    | ReinforcePPConfig
    | OnlineDPOConfig
    | IPOConfig
    | IPOMDConfig
    | NashMDConfig,
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


__all__ = ["ALGORITHMS", "Algorithm", "AlgorithmConfig", "ForwardOutput", "make_algorithm"]
