"""The records that cross actor boundaries (the training batch is `rlhf.batch.TrainBatch`).

They hold plain Python lists / numpy arrays, never torch tensors: Ray pickles tensors into
the object store (slow), while numpy arrays travel zero-copy.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Prompt:
    """One prompt of a task, with the dataset columns that reward functions receive."""

    text: str
    columns: dict[str, object] = field(default_factory=dict)
    # a chat prompt: the messages ({role, content}) the chat template renders; `text` is
    # then the last user message, what reward functions receive as the prompt
    messages: list[dict[str, str]] | None = None


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
    # per sample: drawn from the policy/reference mixture (IPO-MD, Nash-MD); empty: none were
    from_mixture: list[bool] = field(default_factory=list)
    seconds: float = 0.0  # the worker's wall time for the call (generation and decoding)
    # Multi-turn episodes (`rlhf.envs`): per sample, 1 on each completion token the policy
    # sampled and 0 on the environment's (observations, tool output), which get no loss;
    # empty: every completion token is the policy's
    policy_masks: list[list[int]] = field(default_factory=list)
    # per sample, the environment's reward for the episode (its turns' rewards combined);
    # empty: no environment
    env_rewards: list[float] = field(default_factory=list)
    turns: list[int] = field(default_factory=list)  # per sample, the policy's turns
    # rollout.turn_rewards "per_turn": per sample and completion token, each turn's reward on
    # the turn's last token (their sum is in env_rewards); empty: not placed
    token_rewards: list[list[float]] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)  # the call's (env/* counts)

    def __len__(self) -> int:
        return len(self.completion_ids)
