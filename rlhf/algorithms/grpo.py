"""GRPO (Shao et al. 2024, arXiv 2402.03300): group-normalised advantages, the clipped
surrogate, and a KL loss term to the reference (k3 by default).

Variants by config: Dr. GRPO (Liu et al. 2025: scale_rewards="none", constant_normalizer),
DAPO (Yu et al. 2025: clip_high=0.28, token_mean, mask_truncated_completions, dynamic
sampling of groups whose rewards all agree), TRL's batch-level reward scaling.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import Field, field_validator

from rlhf.algorithms.advantages import group_normalized_advantages
from rlhf.algorithms.kl import kl_estimate
from rlhf.algorithms.policy import (
    KLEstimator,
    KLInReward,
    PolicyGradient,
    PolicyGradientConfig,
    policy_loss_terms,
    set_loss_weights,
)
from rlhf.batch import TrainBatch

if TYPE_CHECKING:
    from rlhf.config import Config


class GRPOConfig(PolicyGradientConfig):
    name: Literal["grpo"] = "grpo"
    kl_in_reward: KLInReward = False
    kl_estimator: KLEstimator = "k3"
    kl_places = (False,)  # a loss term, as the paper has it
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group",
        description="divide centred rewards by the group's std, the batch's, or not (Dr. GRPO)",
    )
    dynamic_sampling: Literal["off", "drop", "refill"] = Field(
        "off",
        description="groups whose rewards all agree: keep, drop (no loss, counted), or drop and "
        "generate more prompts to refill the batch (DAPO)",
    )
    max_refill_rounds: int = Field(3, ge=1, description="extra generate rounds for 'refill'")

    @field_validator("scale_rewards", mode="before")
    @classmethod
    def _bool_scale(cls, v: object) -> object:
        # the earlier boolean form: True = group std, False = Dr. GRPO
        return {True: "group", False: "none"}.get(v, v) if isinstance(v, bool) else v

    def check(self, cfg: Config) -> None:
        super().check(cfg)
        if cfg.samples_per_prompt() < 2:
            raise ValueError(
                "rollout.samples_per_prompt must be >= 2 for grpo (advantages compare samples of a prompt)"
            )


def flat_groups(rewards: np.ndarray, units: np.ndarray) -> np.ndarray:
    """[B] True on rows whose group's valid rewards all agree (no learning signal)."""
    flat = np.zeros(len(rewards), dtype=bool)
    valid = ~np.isnan(rewards)
    for u in np.unique(units):
        rows = units == u
        r = rewards[rows & valid]
        flat[rows] = r.size == 0 or bool(np.all(r == r[0]))
    return flat


class GRPO(PolicyGradient):
    name = "grpo"
    config = GRPOConfig
    cfg: GRPOConfig

    def keep_units(self, batch: TrainBatch) -> np.ndarray | None:
        if self.cfg.dynamic_sampling == "off":
            return None
        return ~flat_groups(self.valid_rewards(batch)[1], batch.units)

    @property
    def refill_rounds(self) -> int:
        return self.cfg.max_refill_rounds if self.cfg.dynamic_sampling == "refill" else 0

    def prepare(self, batch: TrainBatch) -> dict[str, float]:
        valid, rewards = self.valid_rewards(batch)
        flat = flat_groups(rewards, batch.units)
        if self.cfg.dynamic_sampling != "off":
            valid &= ~flat
            rewards = np.where(valid, rewards, np.nan)
        adv = group_normalized_advantages(rewards, batch.units, self.cfg.scale_rewards)
        set_loss_weights(batch, self.cfg, self.max_new_tokens, valid)
        batch["advantages"] = adv[:, None] * batch["completion_mask"]
        groups = len(np.unique(batch.units))
        return {
            "advantage/abs_mean": float(np.abs(adv[valid]).mean()) if valid.any() else 0.0,
            "batch/flat_group_fraction": len(np.unique(batch.units[flat])) / max(groups, 1),
        }

    def loss(self, out, mb):
        w = mb["loss_weights"]
        per_token, metrics = policy_loss_terms(self.cfg, out, mb)
        if self.cfg.beta > 0:
            kl = kl_estimate(out.logprobs, mb["ref_logprobs"], self.cfg.kl_estimator)
            per_token = per_token + self.cfg.beta * kl
            metrics["kl"] = (w * kl).sum().detach()
        loss = (w * per_token).sum()
        metrics["loss/total"] = loss.detach()
        return loss, metrics
