"""The algorithm interface: a controller half (numpy, cheap) and a learner half (pure torch).

An algorithm says what it needs (`needs`: the stage columns the controller must fill in:
rewards, reference log-probs, old log-probs, critic values), turns the filled batch into
training targets (`prepare`: advantages, loss weights, returns), and gives the loss of one
micro-batch (`loss`, and `value_loss` when it trains a critic).

Losses are weighted sums over the micro-batch (`loss_weights` carries the aggregation rule,
normalised over the global batch), so summing over micro-batches and ranks gives the global
loss; metrics come back as weighted sums with the same weights, so they add up the same way.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from rlhf.batch import TrainBatch
from rlhf.rewards.comparisons import Comparisons

Tensors = dict[str, torch.Tensor]

# The stage table: each column a stage fills before the algorithm's `prepare`, and the pool
# that computes it, in the order the stages are set off. An algorithm's `needs` names columns
# of it; the stages the controller runs (rlhf.driver.stages), the pools a run starts and the
# config's checks all follow from it.
STAGES: dict[str, str] = {
    "rewards": "reward",
    "preferences": "reward",  # the judge's answers (comparisons, not a batch column)
    "ref_logprobs": "reference",
    "old_logprobs": "learner",
    "values": "critic",
}
ALWAYS_STARTED = ("rollout", "learner", "reward")  # generate, train, and score or judge


def stage_table(reference_from_base: bool = False) -> dict[str, str]:
    """`STAGES`, or with LoRA's reference from the base (`Config.reference_from_base`) the
    reference log-probs from the learner, its adapters switched off: no reference pool."""
    return {**STAGES, "ref_logprobs": "learner"} if reference_from_base else dict(STAGES)


def started_pools(needs: Iterable[str], table: dict[str, str] = STAGES) -> list[str]:
    """The pools a run with these stage columns starts: the three every run has, and the
    reference or critic pool when a stage of `table` (a `stage_table`) needs it."""
    wanted = set(ALWAYS_STARTED) | {table[column] for column in needs}
    return [p for p in (*ALWAYS_STARTED, "reference", "critic") if p in wanted]


@dataclass
class ForwardOutput:
    """What the learner's forward pass gives a loss: [B, T] tensors at target positions."""

    logprobs: torch.Tensor | None = None  # log p(token t | tokens < t), with grad
    entropy: torch.Tensor | None = None  # of the next-token distribution at t (grad if asked)
    values: torch.Tensor | None = None  # a critic's V(state before token t), with grad


@dataclass(frozen=True)
class SamplingMixture:
    """Sample from pi_mix proportional to pi_theta^(1-coef) * pi_ref^coef, token by token:
    the last `samples` of each prompt's samples (IPO-MD, Nash-MD)."""

    coef: float
    samples: int


class Algorithm(ABC):
    name: ClassVar[str]
    config: ClassVar[type]  # its config block, whose `name` field is `name`

    def __init__(self, cfg: Any, max_new_tokens: int) -> None:
        self.cfg = cfg
        self.max_new_tokens = max_new_tokens

    # ------------------------------------------------------------------ what it needs
    @property
    @abstractmethod
    def needs(self) -> frozenset[str]:
        """Stage columns (of `STAGES`) the controller must fill before `prepare`."""

    @property
    def epochs(self) -> int:
        """Passes over each iteration's batch."""
        return 1

    @property
    def mini_batches(self) -> int:
        """Optimizer steps per pass."""
        return 1

    @property
    def sampling_mixture(self) -> SamplingMixture | None:
        """Whether some samples come from the policy/reference geometric mixture."""
        return None

    @property
    def trains_critic(self) -> bool:
        return "values" in self.needs

    @property
    def entropy_grad(self) -> bool:
        """Whether the loss differentiates through the entropy (else it is a diagnostic)."""
        return False

    def critic_only(self, iteration: int) -> bool:
        """True while only the critic trains (PPO's critic warm-up)."""
        return False

    # ------------------------------------------------------------------ controller half
    def arrange(
        self, batch: TrainBatch, comparisons: Comparisons | None
    ) -> tuple[TrainBatch, dict[str, float]]:
        """The rows to train on, from the sampled batch (and a judge's answers, when the
        algorithm needs preferences): the preference algorithms build pairs here."""
        return batch, {}

    @abstractmethod
    def prepare(self, batch: TrainBatch) -> dict[str, float]:
        """Fill `advantages`, `loss_weights` (and e.g. `returns`) into the batch; metrics."""

    def keep_units(self, batch: TrainBatch) -> np.ndarray | None:
        """Optional filter on units after rewards (DAPO's dynamic sampling): a [B] bool mask
        of rows to keep, or None to keep all."""
        return None

    @property
    def refill_rounds(self) -> int:
        """Extra generate rounds the controller may run to replace units `keep_units`
        drops (0: filtered units are only dropped, in `prepare`)."""
        return 0

    def after_iteration(self, record: dict[str, float]) -> dict[str, float]:
        """Update controller-side state from an iteration's metrics (an adaptive KL)."""
        return {}

    def state(self) -> dict[str, float]:
        """Controller-side state that later iterations depend on, for a checkpoint."""
        return {}

    def load_state(self, state: dict[str, float]) -> None:
        """The state `state()` returned (a resumed run)."""
        return None

    # ------------------------------------------------------------------ learner half
    @abstractmethod
    def loss(self, out: ForwardOutput, mb: Tensors) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Policy loss of one micro-batch and its metrics (weighted sums)."""

    def value_loss(
        self, out: ForwardOutput, mb: Tensors
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError(f"{self.name} trains no critic")
