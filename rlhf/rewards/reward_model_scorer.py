"""A reward model as a reward function: `fn(prompts, completions, **columns) -> list[float]`,
so `score_batch` runs it with the same weighting and failure policy as any function.

It scores prompt + completion (see `rlhf.models.reward_model` for the exact tokens and the
position read) in batches, without gradients, in eval mode. Threads: the reward worker has
already limited torch to its CPU share (`setup_worker_process`); the scorer adds none.
"""

from __future__ import annotations

from pathlib import Path

from rlhf.models.reward_model import encode, load_reward_model, pad_id_of, score_rows


class RewardModelScorer:
    def __init__(
        self,
        path: str | Path,
        batch_size: int = 64,
        max_length: int = 256,
        field: str = "reward model",
    ) -> None:
        self.model, self.tokenizer = load_reward_model(path, field)
        self.pad = pad_id_of(self.tokenizer)
        self.batch_size = batch_size
        self.max_length = max_length

    def __call__(self, prompts: list[str], completions: list[str], **_: object) -> list[float]:
        rows = encode(self.tokenizer, prompts, completions, self.max_length)
        return score_rows(self.model, rows, self.pad, self.batch_size)
