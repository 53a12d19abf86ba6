"""Reward functions (TRL's signature) and the scoring that runs them."""

from rlhf.rewards.builtin import BUILTIN_REWARDS

__all__ = ["BUILTIN_REWARDS"]
