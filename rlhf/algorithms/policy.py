"""What every policy-gradient algorithm here shares: its config knobs and the per-token loss.

The per-token loss is PPO's clipped surrogate (Schulman et al. 2017) with DAPO's asymmetric
clip (Yu et al. 2025), optionally weighted by a truncated importance weight between the
learner's and the sampler's log-probs (off-policy correction for an inference engine whose
numbers differ from the learner's; TRL's vLLM importance-sampling correction caps it the
same way), minus an optional entropy bonus. Diagnostics as CleanRL reports them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field

from rlhf.algorithms.aggregation import aggregation_weights
from rlhf.algorithms.base import Algorithm, ForwardOutput, Tensors
from rlhf.batch import TrainBatch
from rlhf.configbase import Section

if TYPE_CHECKING:
    from rlhf.config import Config


# The KL-to-reference block every policy-gradient algorithm shares: declared once here, each
# algorithm sets only its defaults (`beta: KLCoefficient = 0.01`) and where the KL may go.
KLCoefficient = Annotated[
    float, Field(ge=0, description="KL-to-reference coefficient; 0 = none (no reference pool)")
]
KLInReward = Annotated[
    bool, Field(description="the KL as a per-token reward (k1, summed) or as a loss term (k2/k3)")
]
KLEstimator = Annotated[
    Literal["k1", "k2", "k3"],
    Field(description="per-token KL estimate: k1 in the reward, k2 or k3 as a loss term"),
]


class PolicyGradientConfig(Section):
    beta: KLCoefficient = 0.0
    kl_in_reward: KLInReward = True
    kl_estimator: KLEstimator = "k1"
    # where this algorithm can put the KL: (True,) the reward only, (False,) the loss only
    kl_places: ClassVar[tuple[bool, ...]] = (True, False)
    clip_low: float = Field(0.2, ge=0, description="ratio clip below 1 (PPO epsilon)")
    clip_high: float = Field(0.2, ge=0, description="ratio clip above 1; DAPO clip-higher: 0.28")
    loss_aggregation: Literal["token_mean", "sequence_mean", "constant_normalizer"] = "token_mean"
    epochs: int = Field(1, gt=0, description="passes over each iteration's batch")
    mini_batches: int = Field(1, gt=0, description="optimizer steps per epoch")
    mask_truncated_completions: bool = Field(
        False, description="no loss on completions cut at max_new_tokens (DAPO overlong masking)"
    )
    importance_sampling_cap: float | None = Field(
        None,
        ge=0,
        description="truncated importance weight min(pi_learner / pi_sampler, cap) per token; "
        "0 = off; None: 2 with rollout.max_staleness > 0 (samples of an older policy), else off",
    )
    entropy_coef: float = Field(0.0, ge=0, description="entropy bonus in the loss; 0 = off")

    def check(self, cfg: Config) -> None:
        """Checks against the rest of the config (an algorithm adds its own after these)."""
        if self.kl_in_reward not in self.kl_places:
            where = "the reward" if self.kl_places == (True,) else "the loss"
            raise ValueError(
                f"algorithm.kl_in_reward: {getattr(self, 'name', '?')} puts the KL in {where}"
            )
        check_kl_placement(self.kl_estimator, not self.kl_in_reward, self.beta)

    @property
    def multi_step(self) -> bool:
        """Several optimizer steps per batch: old log-probs must be computed before the first."""
        return self.epochs * self.mini_batches > 1


class PolicyGradient(Algorithm):
    """The family's common answers: the stages it needs, its update schedule, whether the
    entropy is trained, and which rows' rewards count."""

    cfg: PolicyGradientConfig

    @property
    def needs(self) -> frozenset[str]:
        return frozenset(policy_needs(self.cfg))

    def valid_rewards(self, batch: TrainBatch) -> tuple[np.ndarray, np.ndarray]:
        """[B] the rows that take part (`valid_rows`), and the rewards with NaN elsewhere."""
        valid = valid_rows(batch, self.cfg)
        return valid, np.where(valid, batch["rewards"], np.nan)

    @property
    def epochs(self) -> int:
        return self.cfg.epochs

    @property
    def mini_batches(self) -> int:
        return self.cfg.mini_batches

    @property
    def entropy_grad(self) -> bool:
        return self.cfg.entropy_coef > 0


def policy_needs(cfg: PolicyGradientConfig) -> set[str]:
    """Stage columns of a policy-gradient algorithm: rewards; reference log-probs for a KL;
    pre-update log-probs for a KL in the reward (its estimate is taken from them) or for
    several optimizer steps per batch."""
    needs = {"rewards"}
    if cfg.beta > 0:
        needs.add("ref_logprobs")
        if cfg.kl_in_reward:
            needs.add("old_logprobs")
    if cfg.multi_step:
        needs.add("old_logprobs")
    return needs


def check_kl_placement(estimator: str, in_loss: bool, beta: float) -> None:
    """k1 as a loss term has zero expected gradient on-policy (E[grad log pi] = 0): it adds
    only noise. It belongs in the reward; the loss takes k2 or k3."""
    if in_loss and beta > 0 and estimator == "k1":
        raise ValueError(
            "algorithm.kl_estimator: k1 as a loss term has zero expected gradient on-policy; "
            "use k2 or k3 in the loss (or put the KL in the reward)"
        )


def clipped_surrogate(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    clip_low: float,
    clip_high: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token -min(rho A, clip(rho, 1-lo, 1+hi) A), and 0/1 masks of the tokens where the
    lower (rho < 1-lo, A < 0) or upper (rho > 1+hi, A > 0) clip binds."""
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high) * advantages
    loss = -torch.minimum(unclipped, clipped)
    binds = clipped < unclipped
    return loss, (binds & (ratio < 1.0)).float(), (binds & (ratio > 1.0)).float()


def valid_rows(batch: TrainBatch, cfg: PolicyGradientConfig) -> np.ndarray:
    """Rows that take part in the loss: a valid reward, and not truncated if masked."""
    valid = ~np.isnan(batch["rewards"])
    if cfg.mask_truncated_completions:
        valid &= batch["truncated"] == 0
    return valid


def set_loss_weights(
    batch: TrainBatch, cfg: PolicyGradientConfig, max_new_tokens: int, valid: np.ndarray
) -> None:
    batch["loss_weights"] = aggregation_weights(
        batch["completion_mask"], valid, cfg.loss_aggregation, max_new_tokens
    )


def token_mean(x: np.ndarray, mask: np.ndarray, valid: np.ndarray) -> float:
    """Mean of x over the completion tokens of valid rows (a per-token diagnostic)."""
    m = mask * valid[:, None]
    return float((x * m).sum() / m.sum()) if m.sum() > 0 else 0.0


def policy_loss_terms(
    cfg: PolicyGradientConfig, out: ForwardOutput, mb: Tensors
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token loss (before weighting) and diagnostics (weighted sums)."""
    w = mb["loss_weights"]
    lp = out.logprobs
    # One optimizer step per batch: the pre-update log-probs are this forward's (ratio 1).
    old = mb["old_logprobs"] if "old_logprobs" in mb else lp.detach()
    per_token, low, high = clipped_surrogate(lp, old, mb["advantages"], cfg.clip_low, cfg.clip_high)
    log_ratio = (lp - old).detach()
    metrics = {
        "policy/clip_fraction_low": (w * low).sum(),
        "policy/clip_fraction_high": (w * high).sum(),
        "policy/approx_kl": (w * (torch.exp(log_ratio) - 1.0 - log_ratio)).sum(),
    }
    if cfg.importance_sampling_cap:
        raw = torch.exp(old - mb["sampler_logprobs"]).detach()
        is_weight = raw.clamp(max=cfg.importance_sampling_cap)
        per_token = per_token * is_weight
        metrics["offpolicy/is_weight"] = (w * is_weight).sum()
        metrics["offpolicy/capped_fraction"] = (w * (raw > cfg.importance_sampling_cap)).sum()
    metrics["loss/policy"] = (w * per_token).sum()
    if out.entropy is not None:
        metrics["policy/entropy"] = (w * out.entropy.detach()).sum()
        if cfg.entropy_coef > 0:
            per_token = per_token - cfg.entropy_coef * out.entropy
    return per_token, {k: v.detach() for k, v in metrics.items()}
