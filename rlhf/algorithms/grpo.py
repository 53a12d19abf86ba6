"""GRPO (Shao et al. 2024): group-normalised advantages, clipped ratio, k3 KL to the reference.

Variants by config: Dr. GRPO (scale_rewards=False, constant_normalizer), DAPO clip-higher
(clip_high=0.28) and token-level aggregation (token_mean, the default).
"""

from __future__ import annotations

import numpy as np
import torch

from rlhf.algorithms.advantages import group_normalized_advantages
from rlhf.algorithms.aggregation import aggregation_weights
from rlhf.algorithms.base import Algorithm
from rlhf.algorithms.batching import collate
from rlhf.algorithms.kl import kl_estimate
from rlhf.types import ScoredRollout, TrainBatch


def clipped_surrogate(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    clip_low: float,
    clip_high: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token -min(rho A, clip(rho, 1-lo, 1+hi) A) and a 0/1 mask of clipped tokens."""
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high) * advantages
    loss = -torch.minimum(unclipped, clipped)
    was_clipped = (clipped < unclipped).float()
    return loss, was_clipped


class GRPO(Algorithm):
    name = "grpo"

    def build_batch(
        self, scored: list[ScoredRollout], pad_id: int
    ) -> tuple[TrainBatch, dict[str, float]]:
        c = collate(scored, pad_id)
        valid = ~np.isnan(c.rewards)
        adv = group_normalized_advantages(c.rewards, c.group_ids, scale=self.cfg.scale_rewards)
        weights = aggregation_weights(
            c.completion_mask, valid, self.cfg.loss_aggregation, self.max_new_tokens
        )
        batch = TrainBatch(
            input_ids=c.input_ids,
            attention_mask=c.attention_mask,
            completion_mask=c.completion_mask,
            loss_weights=weights,
            advantages=(adv[:, None] * c.completion_mask).astype(np.float32),
            ref_logprobs=c.ref_logprobs,
            sampler_logprobs=c.sampler_logprobs,
            policy_version=c.policy_version,
        )
        # Groups whose valid rewards are all equal carry no learning signal (DAPO's dynamic
        # sampling drops them; here they are reported).
        flat = 0
        groups = np.unique(c.group_ids)
        for g in groups:
            r = c.rewards[(c.group_ids == g) & valid]
            flat += int(r.size > 0 and np.all(r == r[0]))
        metrics = {
            "advantage/abs_mean": float(np.abs(adv[valid]).mean()) if valid.any() else 0.0,
            "batch/flat_group_fraction": flat / max(len(groups), 1),
        }
        return batch, metrics

    def loss(self, logprobs, old_logprobs, batch):
        weights = batch["loss_weights"]
        pg, was_clipped = clipped_surrogate(
            logprobs, old_logprobs, batch["advantages"], self.cfg.clip_low, self.cfg.clip_high
        )
        per_token = pg
        metrics = {
            "loss/policy": (weights * pg).sum().detach(),
            "policy/clip_fraction": (weights * was_clipped).sum().detach(),
        }
        if self.cfg.beta > 0:
            kl = kl_estimate(logprobs, batch["ref_logprobs"], self.cfg.kl_estimator)
            per_token = per_token + self.cfg.beta * kl
            metrics["kl"] = (weights * kl).sum().detach()
        loss = (weights * per_token).sum()
        metrics["loss/total"] = loss.detach()
        return loss, metrics
