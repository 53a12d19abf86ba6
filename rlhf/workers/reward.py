"""RewardWorker: runs the configured reward functions over decoded completions."""

from __future__ import annotations

import numpy as np

from rlhf.config import Config
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

    def ready(self) -> str:
        return self.name

    def score(
        self, prompts: list[str], completions: list[str], columns: dict[str, list[object]]
    ) -> tuple[np.ndarray, dict[str, float]]:
        return score_batch(self.rewards, prompts, completions, columns, self.on_error)
