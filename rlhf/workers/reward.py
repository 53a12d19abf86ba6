"""RewardWorker: runs the configured reward functions and reward models over decoded
completions."""

from __future__ import annotations

import numpy as np

from rlhf.config import Config
from rlhf.rewards.reward_model import RewardModelScorer
from rlhf.rewards.scoring import NamedReward, resolve_reward_function, score_batch
from rlhf.workers.common import setup_worker_process


class RewardWorker:
    def __init__(self, cfg: Config, index: int) -> None:
        setup_worker_process(cfg.topology.reward.num_cpus, cfg.run.seed)
        self.name = f"reward-{index}"
        self.on_error = cfg.reward.on_error
        self.rewards = [
            NamedReward(f.name, resolve_reward_function(f.name), f.weight)
            for f in cfg.reward.functions
        ]
        self.rewards += reward_models(cfg)

    def ready(self) -> str:
        return self.name

    def score(
        self,
        prompts: list[str],
        completions: list[str],
        columns: dict[str, list[object]],
        functions: list[str] | None = None,
    ) -> tuple[np.ndarray, dict[str, float]]:
        """Weighted reward of each sample (NaN: none valid) and metrics. `functions` names
        other reward functions (weight 1 each) for this call, e.g. evaluation's metric."""
        rewards = self.rewards
        if functions is not None:
            rewards = [NamedReward(f, resolve_reward_function(f), 1.0) for f in functions]
        return score_batch(rewards, prompts, completions, columns, self.on_error)


def reward_models(cfg: Config) -> list[NamedReward]:
    """The configured reward models as reward functions; a folder that cannot be used is an
    error naming `reward.models[i].path`. Named `reward.models[i]:model<i>`, so metrics read
    `reward/model<i>/mean`."""
    return [
        NamedReward(
            f"reward.models[{i}]:model{i}",
            RewardModelScorer(m.path, m.batch_size, m.max_length, f"reward.models[{i}].path"),
            m.weight,
        )
        for i, m in enumerate(cfg.reward.models)
    ]
