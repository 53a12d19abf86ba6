"""The Bradley-Terry preference loss and the pair accuracy it is judged by.

P(chosen preferred) = sigmoid(r_chosen - r_rejected); the loss is its negative log,
-log sigmoid(d) = softplus(-d), computed as softplus for stability at large |d|.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Mean over pairs of -log sigmoid(r_chosen - r_rejected)."""
    return torch.nn.functional.softplus(rejected - chosen).mean()


def pair_accuracy(chosen: Sequence[float], rejected: Sequence[float]) -> float:
    """Fraction of pairs where the chosen completion scores strictly higher (a tie counts
    as wrong: the model did not tell them apart)."""
    if len(chosen) != len(rejected):
        raise ValueError(f"{len(chosen)} chosen scores for {len(rejected)} rejected")
    if not chosen:
        return float("nan")
    return sum(c > r for c, r in zip(chosen, rejected, strict=True)) / len(chosen)
