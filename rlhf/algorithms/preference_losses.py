"""Pairwise preference losses as pure tensor functions of the pair's log-ratio margin.

Notation (../shared/PAPERS.md): h(y) = log pi_theta(y|x) - log pi_ref(y|x), summed over the
completion's tokens (or averaged, with length normalisation); for a pair, the margin
Delta = h(y_w) - h(y_l); sigma is the logistic function; p is the target probability that
y_w is preferred (1 for a hard label, a judge's P(y_w > y_l) for a soft one).

Every function returns the per-pair loss (no reduction): the caller weights and sums.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSS_TYPES = ("sigmoid", "ipo", "hinge", "robust", "bco")
# Losses whose target can be a probability; the others take hard labels (y_w wins).
SOFT_TARGET_LOSSES = ("sigmoid", "ipo")


def sigmoid_loss(
    margin: torch.Tensor, beta: float, target: torch.Tensor, label_smoothing: float = 0.0
) -> torch.Tensor:
    """DPO (Rafailov et al. 2023): -log sigma(beta Delta), as a cross-entropy against target p:
    -p log sigma(beta Delta) - (1-p) log sigma(-beta Delta). Conservative DPO's label smoothing
    eps moves the target towards 1/2: p' = (1-eps) p + eps (1-p) (with p = 1 this is cDPO's
    -(1-eps) log sigma(beta Delta) - eps log sigma(-beta Delta))."""
    p = (1.0 - label_smoothing) * target + label_smoothing * (1.0 - target)
    x = beta * margin
    return -(p * F.logsigmoid(x) + (1.0 - p) * F.logsigmoid(-x))


def ipo_loss(margin: torch.Tensor, beta: float, target: torch.Tensor) -> torch.Tensor:
    """IPO (Azar et al. 2023) with a preference probability (online IPO and IPO-MD,
    Calandriello et al. 2024): (Delta - (p - 1/2) / beta)^2, beta playing IPO's tau. A hard
    label (p = 1) gives IPO's target 1/(2 beta)."""
    return (margin - (target - 0.5) / beta) ** 2


def hinge_loss(margin: torch.Tensor, beta: float) -> torch.Tensor:
    """SLiC's calibration hinge as RSO uses it (Liu et al. 2023): max(0, 1 - beta Delta)."""
    return F.relu(1.0 - beta * margin)


def robust_loss(margin: torch.Tensor, beta: float, flip_rate: float) -> torch.Tensor:
    """Robust DPO (Chowdhury et al. 2024) for labels flipped with probability eps < 1/2:
    [(1-eps) L(beta Delta) - eps L(-beta Delta)] / (1 - 2 eps), L(x) = -log sigma(x). Its
    expectation over the noisy labels is the clean DPO loss (unbiased)."""
    x = beta * margin
    return ((1.0 - flip_rate) * -F.logsigmoid(x) - flip_rate * -F.logsigmoid(-x)) / (
        1.0 - 2.0 * flip_rate
    )


def bco_loss(
    h_chosen: torch.Tensor, h_rejected: torch.Tensor, beta: float, shift: torch.Tensor
) -> torch.Tensor:
    """BCO, paired form (Jung et al. 2024): implicit rewards r = beta h, classified against a
    shift delta (a running mean of r): -log sigma(r_w - delta) - log sigma(-(r_l - delta))."""
    return -F.logsigmoid(beta * h_chosen - shift) - F.logsigmoid(-(beta * h_rejected - shift))


def pair_loss(
    loss_type: str,
    h_chosen: torch.Tensor,
    h_rejected: torch.Tensor,
    beta: float,
    target: torch.Tensor,
    label_smoothing: float = 0.0,
    flip_rate: float = 0.0,
    shift: torch.Tensor | None = None,
) -> torch.Tensor:
    """The per-pair loss of `loss_type` (LOSS_TYPES)."""
    margin = h_chosen - h_rejected
    if loss_type == "sigmoid":
        return sigmoid_loss(margin, beta, target, label_smoothing)
    if loss_type == "ipo":
        return ipo_loss(margin, beta, target)
    if loss_type == "hinge":
        return hinge_loss(margin, beta)
    if loss_type == "robust":
        return robust_loss(margin, beta, flip_rate)
    if loss_type == "bco":
        if shift is None:
            raise ValueError("the bco loss needs its reward shift")
        return bco_loss(h_chosen, h_rejected, beta, shift)
    raise ValueError(f"unknown preference loss {loss_type!r}; allowed: {', '.join(LOSS_TYPES)}")


def nash_md_loss(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    beta: float,
    preference: torch.Tensor,
) -> torch.Tensor:
    """Nash-MD's policy-gradient loss (Munos et al. 2023), per sequence y sampled from
    pi_theta and compared with y' from the mixture, P = P(y > y'):
    beta * stopgrad(sum_t (log pi_theta(y_t) - log pi_ref(y_t))) * sum_t log pi_theta(y_t)
      - (P - 1/2) * sum_t log pi_theta(y_t).
    The first term is REINFORCE with the sequence's log-ratio as reward (its gradient is that
    of KL(pi_theta || pi_ref) in expectation). TRL pairs each token's log-ratio with its own
    log-prob only, which drops the later tokens' log-ratios and so is not that gradient in
    expectation. The second term pushes up sequences that beat the mixture's, down those
    that lose."""
    lp = logprobs * mask
    kl_reward = ((logprobs - ref_logprobs).detach() * mask).sum(-1)
    return beta * kl_reward * lp.sum(-1) - (preference - 0.5) * lp.sum(-1)
