"""Per-token KL estimators (Schulman 2020) for samples drawn from the policy.

With l = log pi_ref - log pi_theta: k1 = -l, k2 = l^2 / 2, k3 = exp(l) - l - 1.
k3 is unbiased for KL(pi_theta || pi_ref) and always >= 0.

k1 used as a loss term has zero expected gradient on-policy (E_pi[grad log pi] = 0), so it
belongs in the reward (as PPO and REINFORCE++ use it); k2 and k3 work as loss terms.
"""

from __future__ import annotations

import numpy as np
import torch

from rlhf.batch import TrainBatch

KL_ESTIMATORS = ("k1", "k2", "k3")

# k3 clamps the log-ratio itself to [-K3_LOG_RATIO_BOUND, K3_LOG_RATIO_BOUND] (as veRL does):
# exp(20) ~ 4.9e8 stays finite in float32, and value and gradient are those of the clamped
# ratio. Beyond the bound the gradient is 0 (that token gets no KL pull), never one of the
# wrong sign, which clamping only the exponent gave (+1 instead of 1 - exp(l)).
K3_LOG_RATIO_BOUND = 20.0


def kl_estimate(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str = "k3"
) -> torch.Tensor:
    log_ratio = ref_logprobs - logprobs
    if kind == "k1":
        return -log_ratio
    if kind == "k2":
        return 0.5 * log_ratio.square()
    if kind == "k3":
        # Both tails: a huge ratio on one token must not turn the loss (or its gradient) to inf.
        clamped = log_ratio.clamp(-K3_LOG_RATIO_BOUND, K3_LOG_RATIO_BOUND)
        # expm1(l) - l == exp(l) - l - 1, but never rounds below 0 (exp(l) - 1 does, by up to
        # an ulp of 1, for small l in float32 / bfloat16).
        return torch.expm1(clamped) - clamped
    raise ValueError(f"unknown KL estimator {kind!r}; allowed: {', '.join(KL_ESTIMATORS)}")


def sequence_kl(batch: TrainBatch, estimator: str) -> np.ndarray:
    """[B, T] per-token KL of the sampled tokens (pre-update policy vs reference), zero
    outside completions. Pre-update log-probs: the learner's if computed, else the sampler's."""
    old = batch["old_logprobs"] if "old_logprobs" in batch else batch["sampler_logprobs"]
    kl = kl_estimate(torch.from_numpy(old), torch.from_numpy(batch["ref_logprobs"]), estimator)
    return kl.numpy() * batch["completion_mask"]
