"""The algorithm interface: a controller half (cheap, numpy) and a learner half (pure torch).

- `build_batch` runs in the controller: scored rollouts -> TrainBatch (advantages, loss
  weights, anything the loss needs in `extras`).
- `loss` runs in every learner rank on a micro-batch: the policy's per-token log-probs (with
  grad) plus that micro-batch's tensors -> a scalar that is already weighted, so summing it
  over micro-batches and ranks gives the global loss.

Adding an algorithm (PPO with a critic, RLOO, online DPO, IPO-MD) means one module and a
registry entry; the learner and controller stay as they are.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch

from rlhf.types import ScoredRollout, TrainBatch


class Algorithm(ABC):
    name: ClassVar[str]

    def __init__(self, cfg, max_new_tokens: int) -> None:
        self.cfg = cfg
        self.max_new_tokens = max_new_tokens

    @property
    def needs_reference(self) -> bool:
        return getattr(self.cfg, "beta", 0.0) > 0

    @property
    def needs_old_logprobs(self) -> bool:
        """Whether the learner must compute pre-update log-probs before its first step."""
        return True

    @abstractmethod
    def build_batch(
        self, scored: list[ScoredRollout], pad_id: int
    ) -> tuple[TrainBatch, dict[str, float]]:
        """Controller side. Returns the batch and metrics about it (e.g. advantage stats)."""

    @abstractmethod
    def loss(
        self,
        logprobs: torch.Tensor,
        old_logprobs: torch.Tensor,
        batch: dict[str, torch.Tensor],
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Learner side. `batch` holds the TrainBatch fields (and extras) as tensors.

        Metrics are returned as weighted sums (same weights as the loss) so that they, too,
        add up across micro-batches and ranks.
        """
