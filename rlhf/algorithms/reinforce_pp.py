"""REINFORCE++ (Hu et al. 2025, arXiv 2501.03262): no critic; the KL to the reference is a
per-token penalty in the reward; returns are discounted sums of per-token rewards, and the
advantages are normalised over the whole batch (mean and std over every valid completion
token), then used in PPO's clipped surrogate.

baseline="group" is REINFORCE++-baseline: each sequence reward first has its prompt group's
mean subtracted (a variance reduction for several samples per prompt), then the same
global normalisation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from rlhf.algorithms.advantages import (
    discounted_returns,
    group_mean_baseline,
    placed_token_rewards,
    whiten,
)
from rlhf.algorithms.kl import sequence_kl
from rlhf.algorithms.policy import (
    KLCoefficient,
    PolicyGradient,
    PolicyGradientConfig,
    policy_loss_terms,
    set_loss_weights,
    token_mean,
)
from rlhf.batch import TrainBatch

if TYPE_CHECKING:
    from rlhf.config import Config


class ReinforcePPConfig(PolicyGradientConfig):
    name: Literal["reinforce_pp"] = "reinforce_pp"
    beta: KLCoefficient = 0.01
    kl_places = (True,)  # a per-token penalty in the reward, as the paper has it
    baseline: Literal["none", "group"] = Field(
        "none", description="'group' subtracts the prompt's mean reward (REINFORCE++-baseline)"
    )
    gamma: float = Field(1.0, ge=0, le=1, description="discount over completion tokens")

    def check(self, cfg: Config) -> None:
        super().check(cfg)
        if self.baseline == "group" and cfg.samples_per_prompt() < 2:
            raise ValueError(
                "rollout.samples_per_prompt must be >= 2 for reinforce_pp with baseline=group"
            )


class ReinforcePP(PolicyGradient):
    name = "reinforce_pp"
    config = ReinforcePPConfig
    cfg: ReinforcePPConfig

    def prepare(self, batch: TrainBatch) -> dict[str, float]:
        valid, rewards = self.valid_rewards(batch)
        if self.cfg.baseline == "group":
            rewards = group_mean_baseline(rewards, batch.units)
        mask = batch["completion_mask"] * valid[:, None]
        metrics: dict[str, float] = {}
        kl = None
        if self.cfg.beta > 0:
            kl = sequence_kl(batch, self.cfg.kl_estimator)
            metrics["kl"] = token_mean(kl, batch["completion_mask"], valid)
        per_token = placed_token_rewards(batch, rewards, mask, kl, self.cfg.beta)
        returns = discounted_returns(per_token, mask, self.cfg.gamma)
        batch["advantages"] = whiten(returns, mask)
        set_loss_weights(batch, self.cfg, self.max_new_tokens, valid)
        metrics["advantage/return_mean"] = token_mean(returns, mask, valid)
        return metrics

    def loss(self, out, mb):
        per_token, metrics = policy_loss_terms(self.cfg, out, mb)
        loss = (mb["loss_weights"] * per_token).sum()
        metrics["loss/total"] = loss.detach()
        return loss, metrics
