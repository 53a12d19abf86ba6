"""The few records that cross actor boundaries.

They hold plain Python lists / numpy arrays, never torch tensors: Ray pickles tensors into
the object store (slow), while numpy arrays travel zero-copy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Prompt:
    """One prompt of a task, with the dataset columns that reward functions receive."""

    text: str
    columns: dict[str, object] = field(default_factory=dict)


@dataclass
class Rollout:
    """Samples from one rollout worker for one generate call, prompt-major (n per prompt)."""

    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    sampler_logprobs: list[list[float]]  # per completion token, as the sampler saw it
    finish_reasons: list[str]  # "stop" | "length"
    prompt_index: list[int]  # which prompt of the call (the GRPO group) each sample answers
    policy_version: int  # the weights version that produced every sample of this rollout
    completion_texts: list[str] = field(default_factory=list)  # decoded, for reward functions
    worker: str = ""

    def __len__(self) -> int:
        return len(self.completion_ids)


@dataclass
class ScoredRollout:
    """A rollout plus what the reward pool and reference pool said about it."""

    rollout: Rollout
    rewards: np.ndarray  # [N] float32; NaN where no valid reward exists (sample dropped)
    ref_logprobs: list[list[float]] | None  # per completion token; None if beta == 0


@dataclass
class TrainBatch:
    """Padded arrays ready for the learner. Row i is sample i; columns are token positions.

    `loss_weights` carries the whole loss-aggregation rule (token-mean, sequence-mean, ...):
    the learner's loss is sum(loss_weights * per_token_loss) over every micro-batch of every
    rank, so any sharding gives exactly the gradient of the global loss.
    """

    input_ids: np.ndarray  # [B, T] int64, prompt + completion, right-padded
    attention_mask: np.ndarray  # [B, T] int64
    completion_mask: np.ndarray  # [B, T] float32, 1 on completion tokens (targets)
    loss_weights: np.ndarray  # [B, T] float32, zero outside completions and on dropped rows
    advantages: np.ndarray  # [B, T] float32 (per token; sequence advantages are broadcast)
    ref_logprobs: np.ndarray  # [B, T] float32 at target positions (zeros if unused)
    sampler_logprobs: np.ndarray  # [B, T] float32 at target positions (for diagnostics)
    policy_version: int = 0
    extras: dict[str, np.ndarray] = field(default_factory=dict)  # algorithm-specific

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def select(self, rows: np.ndarray | list[int] | slice) -> TrainBatch:
        """A sub-batch of rows (for sharding across ranks and splitting micro-batches)."""

        def take(a: np.ndarray) -> np.ndarray:
            return a[rows]

        return TrainBatch(
            input_ids=take(self.input_ids),
            attention_mask=take(self.attention_mask),
            completion_mask=take(self.completion_mask),
            loss_weights=take(self.loss_weights),
            advantages=take(self.advantages),
            ref_logprobs=take(self.ref_logprobs),
            sampler_logprobs=take(self.sampler_logprobs),
            policy_version=self.policy_version,
            extras={k: take(v) for k, v in self.extras.items()},
        )
