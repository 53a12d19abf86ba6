"""RLOO (Kool et al. 2019, "Buy 4 REINFORCE samples, get a baseline for free!"; Ahmadian et
al. 2024, arXiv 2402.14740): each sample's baseline is the mean reward of the other k-1
samples of its prompt, an unbiased baseline with no critic.

The KL to the reference goes into the reward (the paper's form: r - beta * sum_t k1_t,
before the baseline) or, with kl_in_reward=false, into the loss as a k2/k3 term (as GRPO).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np

from rlhf.algorithms.advantages import rloo_advantages
from rlhf.algorithms.kl import kl_estimate, sequence_kl
from rlhf.algorithms.policy import (
    PolicyGradient,
    PolicyGradientConfig,
    policy_loss_terms,
    set_loss_weights,
    token_mean,
)
from rlhf.batch import TrainBatch

if TYPE_CHECKING:
    from rlhf.config import Config


class RLOOConfig(PolicyGradientConfig):
    name: Literal["rloo"] = "rloo"

    def check(self, cfg: Config) -> None:
        super().check(cfg)
        if cfg.samples_per_prompt() < 2:
            raise ValueError(
                "rollout.samples_per_prompt must be >= 2 for rloo (the baseline is the other samples)"
            )


class RLOO(PolicyGradient):
    name = "rloo"
    config = RLOOConfig
    cfg: RLOOConfig

    def prepare(self, batch: TrainBatch) -> dict[str, float]:
        valid, rewards = self.valid_rewards(batch)
        metrics: dict[str, float] = {}
        if self.cfg.beta > 0 and self.cfg.kl_in_reward:
            kl = sequence_kl(batch, self.cfg.kl_estimator)
            rewards = rewards - self.cfg.beta * kl.sum(axis=1)
            metrics["kl"] = token_mean(kl, batch["completion_mask"], valid)
        adv = rloo_advantages(rewards, batch.units)
        set_loss_weights(batch, self.cfg, self.max_new_tokens, valid)
        batch["advantages"] = adv[:, None] * batch["completion_mask"]
        metrics["advantage/abs_mean"] = float(np.abs(adv[valid]).mean()) if valid.any() else 0.0
        return metrics

    def loss(self, out, mb):
        w = mb["loss_weights"]
        per_token, metrics = policy_loss_terms(self.cfg, out, mb)
        if self.cfg.beta > 0 and not self.cfg.kl_in_reward:
            kl = kl_estimate(out.logprobs, mb["ref_logprobs"], self.cfg.kl_estimator)
            per_token = per_token + self.cfg.beta * kl
            metrics["kl"] = (w * kl).sum().detach()
        loss = (w * per_token).sum()
        metrics["loss/total"] = loss.detach()
        return loss, metrics
