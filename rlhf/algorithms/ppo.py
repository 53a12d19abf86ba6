"""PPO for language models (Schulman et al. 2017; the RLHF form of Ziegler et al. 2019 and
Ouyang et al. 2022) with a critic trained by its own pool.

Per-token reward: -beta * k1 (the KL to the reference, when it goes in the reward) on every
completion token, plus the sequence reward on the last one. GAE (gamma, lambda) over the
critic's pre-update values gives advantages and value targets (returns). The policy loss is
the clipped surrogate; the critic's is the clipped value loss
  1/2 max((V - R)^2, (clip(V, V_old - eps_v, V_old + eps_v) - R)^2).
beta is fixed, or adapted toward `kl_target` (nats per sequence) over `kl_horizon` samples.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from pydantic import Field

from rlhf.algorithms.advantages import explained_variance, gae, placed_token_rewards, whiten
from rlhf.algorithms.base import ForwardOutput, Tensors
from rlhf.algorithms.kl import kl_estimate, sequence_kl
from rlhf.algorithms.kl_control import KLController
from rlhf.algorithms.policy import (
    KLCoefficient,
    PolicyGradient,
    PolicyGradientConfig,
    policy_loss_terms,
    policy_needs,
    set_loss_weights,
    token_mean,
)
from rlhf.batch import TrainBatch

if TYPE_CHECKING:
    from rlhf.config import Config


class PPOConfig(PolicyGradientConfig):
    name: Literal["ppo"] = "ppo"
    beta: KLCoefficient = 0.01  # the initial one, with an adaptive KL (kl_target)
    kl_target: float | None = Field(
        None, gt=0, description="adaptive KL: target nats per sequence; None = fixed beta"
    )
    kl_horizon: int = Field(10000, gt=0, description="adaptive KL horizon, in samples")
    gamma: float = Field(1.0, ge=0, le=1)
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda")
    value_clip: float = Field(0.2, ge=0, description="clip of V around V_old; 0 = no clipping")
    critic_warmup_iterations: int = Field(
        0, ge=0, description="iterations training only the critic"
    )
    whiten_rewards: bool = Field(False, description="scale sequence rewards to unit std per batch")
    whiten_advantages: bool = Field(True, description="advantages to mean 0, std 1 per batch")

    def check(self, cfg: Config) -> None:
        super().check(cfg)
        if cfg.topology.critic.workers < 1:
            raise ValueError("topology.critic.workers must be >= 1 for ppo (it trains a critic)")


def clipped_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, clip: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token 1/2 max((V-R)^2, (V_clip-R)^2) and a 0/1 mask where the clipped term wins."""
    unclipped = (values - returns).square()
    if clip <= 0:
        return 0.5 * unclipped, torch.zeros_like(unclipped)
    v_clip = old_values + (values - old_values).clamp(-clip, clip)
    clipped = (v_clip - returns).square()
    return 0.5 * torch.maximum(unclipped, clipped), (clipped > unclipped).float()


class PPO(PolicyGradient):
    name = "ppo"
    config = PPOConfig
    cfg: PPOConfig

    def __init__(self, cfg: PPOConfig, max_new_tokens: int) -> None:
        super().__init__(cfg, max_new_tokens)
        self.kl = KLController(cfg.beta, cfg.kl_target, cfg.kl_horizon)
        self._samples = 0

    @property
    def needs(self) -> frozenset[str]:
        return frozenset(policy_needs(self.cfg) | {"values"})

    def critic_only(self, iteration: int) -> bool:
        return iteration < self.cfg.critic_warmup_iterations

    def prepare(self, batch: TrainBatch) -> dict[str, float]:
        cfg = self.cfg
        valid, rewards = self.valid_rewards(batch)
        mask = batch["completion_mask"] * valid[:, None]
        if cfg.whiten_rewards and valid.sum() > 1:
            r = rewards[valid]
            rewards = (rewards - r.mean()) / (r.std() + 1e-8)
        metrics: dict[str, float] = {"kl/coef": self.kl.value}
        kl = None
        if cfg.beta > 0:
            kl = sequence_kl(batch, cfg.kl_estimator)
            metrics["kl"] = token_mean(kl, batch["completion_mask"], valid)
            metrics["kl/sequence"] = float(kl.sum(axis=1)[valid].mean()) if valid.any() else 0.0
        coef_in_reward = self.kl.value if (kl is not None and cfg.kl_in_reward) else 0.0
        per_token = placed_token_rewards(batch, rewards, mask, kl, coef_in_reward)
        values = batch["values"] * mask
        advantages, returns = gae(per_token, values, mask, cfg.gamma, cfg.lam)
        metrics["critic/explained_variance"] = explained_variance(values, returns, mask)
        metrics["critic/value_mean"] = token_mean(values, mask, valid)
        metrics["advantage/abs_mean"] = token_mean(np.abs(advantages), mask, valid)
        if cfg.whiten_advantages:
            advantages = whiten(advantages, mask)
        batch["advantages"] = advantages
        batch["returns"] = returns
        batch["kl_coef"] = np.full(len(batch), 0.0 if cfg.kl_in_reward else self.kl.value)
        set_loss_weights(batch, cfg, self.max_new_tokens, valid)
        self._samples = int(valid.sum())
        return metrics

    def after_iteration(self, record: dict[str, float]) -> dict[str, float]:
        if self.kl.adaptive and "kl/sequence" in record:
            self.kl.update(record["kl/sequence"], self._samples)
        return {"kl/coef_next": self.kl.value}

    def state(self) -> dict[str, float]:
        return {"kl_coef": self.kl.value}

    def load_state(self, state: dict[str, float]) -> None:
        self.kl.value = float(state["kl_coef"])

    def loss(self, out: ForwardOutput, mb: Tensors):
        w = mb["loss_weights"]
        per_token, metrics = policy_loss_terms(self.cfg, out, mb)
        if self.cfg.beta > 0 and not self.cfg.kl_in_reward:
            kl = kl_estimate(out.logprobs, mb["ref_logprobs"], self.cfg.kl_estimator)
            per_token = per_token + mb["kl_coef"][:, None] * kl
            metrics["kl"] = (w * kl).sum().detach()
        loss = (w * per_token).sum()
        metrics["loss/total"] = loss.detach()
        return loss, metrics

    def value_loss(self, out: ForwardOutput, mb: Tensors):
        assert out.values is not None, "the critic's forward gives values"
        w = mb["loss_weights"]
        per_token, clipped = clipped_value_loss(
            out.values, mb["values"], mb["returns"], self.cfg.value_clip
        )
        loss = (w * per_token).sum()
        error = (out.values.detach() - mb["returns"]).square()
        return loss, {
            "critic/loss": loss.detach(),
            "critic/value_error": (w * error).sum(),
            "critic/clip_fraction": (w * clipped).sum(),
        }
