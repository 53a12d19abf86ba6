"""Per-token KL estimators (Schulman 2020) for samples drawn from the policy.

With l = log pi_ref - log pi_theta: k1 = -l, k2 = l^2 / 2, k3 = exp(l) - l - 1.
k3 is unbiased for KL(pi_theta || pi_ref) and always >= 0.
"""

from __future__ import annotations

import torch

KL_ESTIMATORS = ("k1", "k2", "k3")


def kl_estimate(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str = "k3"
) -> torch.Tensor:
    log_ratio = ref_logprobs - logprobs
    if kind == "k1":
        return -log_ratio
    if kind == "k2":
        return 0.5 * log_ratio.square()
    if kind == "k3":
        # Clamp only the exponent: a huge ratio on one token must not turn the loss into inf.
        return torch.exp(log_ratio.clamp(max=20.0)) - log_ratio - 1.0
    raise ValueError(f"unknown KL estimator {kind!r}; allowed: {', '.join(KL_ESTIMATORS)}")
