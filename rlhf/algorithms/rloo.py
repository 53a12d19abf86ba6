"""RLOO (Kool et al. 2019, "Buy 4 REINFORCE samples, get a baseline for free!"; Ahmadian et
al. 2024, arXiv 2402.14740): each sample's baseline is the mean reward of the other k-1
samples of its prompt, an unbiased baseline with no critic.

The KL to the reference goes into the reward (the paper's form: r - beta * sum_t k1_t,
before the baseline) or, with kl_in_reward=false, into the loss as a k2/k3 term (as GRPO).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from pydantic import Field

from rlhf.algorithms.advantages import rloo_advantages
from rlhf.algorithms.kl import kl_estimate
from rlhf.algorithms.policy import (
    PolicyGradient,
    PolicyGradientConfig,
    check_kl_placement,
    policy_loss_terms,
    policy_needs,
    set_loss_weights,
    token_mean,
    valid_rows,
)
from rlhf.batch import TrainBatch

if TYPE_CHECKING:
    from rlhf.config import Config


class RLOOConfig(PolicyGradientConfig):
    name: Literal["rloo"] = "rloo"
    beta: float = Field(0.0, ge=0, description="KL coefficient; 0 skips the reference pool")
    kl_in_reward: bool = Field(True, description="KL in the reward (k1 sum) or a loss term")
    kl_estimator: Literal["k1", "k2", "k3"] = Field(
        "k1", description="k1 in the reward; use k2/k3 when kl_in_reward is false"
    )

    def check(self, cfg: Config) -> None:
        check_kl_placement(self.kl_estimator, not self.kl_in_reward, self.beta)
        if cfg.rollout.samples_per_prompt < 2:
            raise ValueError(
                "rollout.samples_per_prompt must be >= 2 for rloo (the baseline is the other samples)"
            )


def sequence_kl(batch: TrainBatch, estimator: str) -> np.ndarray:
    """[B, T] per-token KL of the sampled tokens (pre-update policy vs reference), zero
    outside completions. Pre-update log-probs: the learner's if computed, else the sampler's."""
    old = batch["old_logprobs"] if "old_logprobs" in batch else batch["sampler_logprobs"]
    kl = kl_estimate(torch.from_numpy(old), torch.from_numpy(batch["ref_logprobs"]), estimator)
    return kl.numpy() * batch["completion_mask"]


class RLOO(PolicyGradient):
    name = "rloo"
    cfg: RLOOConfig

    @property
    def needs(self) -> frozenset[str]:
        return frozenset(policy_needs(self.cfg, self.cfg.beta, self.cfg.kl_in_reward))

    def prepare(self, batch: TrainBatch) -> dict[str, float]:
        valid = valid_rows(batch, self.cfg)
        rewards = np.where(valid, batch["rewards"], np.nan)
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
