"""RewardWorker: runs the configured reward functions and reward models over decoded
completions, and the configured pairwise judge over pairs of them."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from rlhf.config import Config
from rlhf.rewards.comparisons import preference_from_rewards
from rlhf.rewards.judges import (
    call_judge,
    checked_probabilities,
    in_both_orders,
    resolve_judge_function,
    summarize,
)
from rlhf.rewards.reward_model_scorer import RewardModelScorer
from rlhf.rewards.scoring import (
    NamedReward,
    resolve_reward_function,
    reward_function_of,
    score_batch,
)
from rlhf.workers.common import WorkerIdentity, setup_worker_process

if TYPE_CHECKING:
    from rlhf.rewards.llm_judge import LLMJudge


class RewardWorker(WorkerIdentity):
    def __init__(self, cfg: Config, index: int) -> None:
        setup_worker_process("reward", cfg, cfg.run.seed)
        self.name = f"reward-{index}"
        self.on_error = cfg.reward.on_error
        self.rewards = [
            NamedReward(f.name, reward_function_of(f), f.weight) for f in cfg.reward_functions()
        ]
        self.rewards += reward_models(cfg)
        self.judge_cfg = cfg.reward.judge
        self.judge_fn = (
            resolve_judge_function(self.judge_cfg.function)
            if self.judge_cfg.kind == "function" and self.judge_cfg.function
            else None
        )
        self.llm_judge: LLMJudge | None = None
        if self.judge_cfg.kind == "llm":
            from rlhf.rewards.llm_judge import LLMJudge

            self.llm_judge = LLMJudge(self.judge_cfg.llm, seed=cfg.run.seed)

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

    def judge(
        self,
        prompts: list[str],
        completions_a: list[str],
        completions_b: list[str],
        columns: dict[str, list[object]],
    ) -> tuple[np.ndarray, dict[str, float]]:
        """P(a > b) for each pair (NaN: no valid answer) under the configured judge."""
        cfg = self.judge_cfg
        if cfg.kind == "reward":
            r_a, m_a = self.score(prompts, completions_a, columns)
            r_b, m_b = self.score(prompts, completions_b, columns)
            probs = preference_from_rewards(r_a, r_b, cfg.tau)
            metrics = {"reward/dropped": m_a["reward/dropped"] + m_b["reward/dropped"]}
        elif cfg.kind == "llm":
            probs, metrics = self._judge_llm(prompts, completions_a, completions_b)
        else:
            if cfg.kind != "function" or self.judge_fn is None:
                raise ValueError(f"reward.judge.kind {cfg.kind!r} is not available on this worker")
            fn, name = self.judge_fn, str(cfg.function)

            def ask(a: list[str], b: list[str]) -> tuple[np.ndarray, dict[str, float]]:
                return call_judge(name, fn, prompts, a, b, columns, self.on_error)

            if cfg.both_orders:
                probs, metrics = in_both_orders(ask, completions_a, completions_b)
            else:
                probs, metrics = ask(completions_a, completions_b)
        return probs, {**metrics, **summarize(probs)}

    def _judge_llm(
        self, prompts: list[str], completions_a: list[str], completions_b: list[str]
    ) -> tuple[np.ndarray, dict[str, float]]:
        """The LLM judge, asked like a function judge: invalid answers (no verdict, too long)
        follow reward.on_error, and both orders are averaged when `both_orders`."""
        judge = self.llm_judge
        if judge is None:
            raise ValueError("reward.judge.kind 'llm' is not available on this worker")
        name = f"llm:{self.judge_cfg.llm.path}"

        def ask(a: list[str], b: list[str]) -> tuple[np.ndarray, dict[str, float]]:
            values, metrics = judge.ask(prompts, a, b)
            probs, checked = checked_probabilities(name, values, len(prompts), self.on_error)
            return probs, {**metrics, **checked}

        if self.judge_cfg.both_orders:
            return in_both_orders(ask, completions_a, completions_b)
        return ask(completions_a, completions_b)

    def shutdown(self) -> None:
        judge, self.llm_judge = self.llm_judge, None
        if judge is not None:
            judge.shutdown()


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
