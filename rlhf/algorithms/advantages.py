"""Advantage estimators (pure numpy, controller side).

Sequence estimators work on [B] rewards with [B] group ids (the samples of one prompt):
a NaN reward marks a sample without a valid reward; it takes no part in any statistic and
gets advantage 0 (its loss weight is 0 as well). Token estimators work on [B, T] arrays
aligned with `input_ids`, over the completion tokens given by `mask`.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Scale = Literal["group", "batch", "none"]


def _groups(rewards: np.ndarray, group_ids: np.ndarray):
    """(row indices of the valid samples of each group) for every group."""
    valid = ~np.isnan(rewards)
    for g in np.unique(group_ids):
        idx = np.flatnonzero((group_ids == g) & valid)
        if idx.size:
            yield idx


def group_normalized_advantages(
    rewards: np.ndarray, group_ids: np.ndarray, scale: Scale = "group", eps: float = 1e-6
) -> np.ndarray:
    """GRPO (Shao et al. 2024): A_i = (r_i - mean_g) / (std + eps).

    scale "group": std of the prompt's group (a flat group gets 0 whatever eps is);
    "batch": std of every valid reward of the batch (TRL's scale_rewards="batch");
    "none": no division (Dr. GRPO, Liu et al. 2025). std is the population std (ddof=0).
    """
    rewards = np.asarray(rewards, dtype=np.float64)
    group_ids = np.asarray(group_ids)
    adv = np.zeros_like(rewards)
    for idx in _groups(rewards, group_ids):
        r = rewards[idx]
        centred = r - r.mean()
        if scale == "group":
            std = r.std()
            adv[idx] = centred / (std + eps) if std > 0 else 0.0
        else:
            adv[idx] = centred
    if scale == "batch":
        valid = ~np.isnan(rewards)
        std = rewards[valid].std() if valid.any() else 0.0
        adv = adv / (std + eps) if std > 0 else adv * 0.0
    elif scale not in ("group", "none"):
        raise ValueError(f"scale must be 'group', 'batch' or 'none', got {scale!r}")
    return adv.astype(np.float32)


def rloo_advantages(rewards: np.ndarray, group_ids: np.ndarray) -> np.ndarray:
    """RLOO (Kool et al. 2019; Ahmadian et al. 2024): A_i = r_i - mean of the other samples
    of the prompt. A group with one valid sample has no baseline: advantage 0."""
    rewards = np.asarray(rewards, dtype=np.float64)
    adv = np.zeros_like(rewards)
    for idx in _groups(rewards, np.asarray(group_ids)):
        k = idx.size
        if k < 2:
            continue
        r = rewards[idx]
        adv[idx] = r - (r.sum() - r) / (k - 1)
    return adv.astype(np.float32)


def group_mean_baseline(rewards: np.ndarray, group_ids: np.ndarray) -> np.ndarray:
    """r_i - mean of its group (REINFORCE++ with a group baseline); NaN stays NaN."""
    rewards = np.asarray(rewards, dtype=np.float64)
    out = rewards.copy()
    for idx in _groups(rewards, np.asarray(group_ids)):
        out[idx] = rewards[idx] - rewards[idx].mean()
    return out.astype(np.float32)


def token_rewards(
    sequence_rewards: np.ndarray,
    mask: np.ndarray,
    kl: np.ndarray | None = None,
    kl_coef: float = 0.0,
) -> np.ndarray:
    """[B, T] per-token rewards: -kl_coef * kl on every completion token, plus the sequence
    reward on the last one (NaN rewards count as 0: those rows carry no loss weight)."""
    mask = mask.astype(np.float64)
    out = np.zeros_like(mask)
    if kl is not None and kl_coef:
        out -= kl_coef * kl * mask
    lengths = mask.sum(axis=1).astype(int)
    rows = np.flatnonzero(lengths > 0)
    last = np.array([np.flatnonzero(mask[r])[-1] for r in rows], dtype=int)
    seq = np.nan_to_num(np.asarray(sequence_rewards, dtype=np.float64), nan=0.0)
    out[rows, last] += seq[rows]
    return out


def placed_token_rewards(
    batch,
    sequence_rewards: np.ndarray,
    mask: np.ndarray,
    kl: np.ndarray | None = None,
    kl_coef: float = 0.0,
) -> np.ndarray:
    """`token_rewards`, except that an episode's per-turn rewards (the `turn_rewards` column,
    rollout.turn_rewards=per_turn) sit on each turn's last token instead of in the sum on the
    last one: what the rest of the sequence reward (reward functions) adds stays at the end."""
    if "turn_rewards" not in batch:
        return token_rewards(sequence_rewards, mask, kl, kl_coef)
    turns = batch["turn_rewards"].astype(np.float64) * mask
    rest = np.asarray(sequence_rewards, dtype=np.float64) - turns.sum(axis=1)
    return token_rewards(rest, mask, kl, kl_coef) + turns


def gae(
    rewards: np.ndarray, values: np.ndarray, mask: np.ndarray, gamma: float, lam: float
) -> tuple[np.ndarray, np.ndarray]:
    """Generalised advantage estimation (Schulman et al. 2016) over completion tokens.

    delta_t = r_t + gamma V_{t+1} - V_t, with V = 0 after the last completion token;
    A_t = sum_l (gamma lam)^l delta_{t+l}; returns R_t = A_t + V_t. Zero outside `mask`.
    Tokens outside `mask` inside a completion (an episode's observation tokens) are skipped,
    not ends: t+1 is the next token in `mask`, so a turn's advantage sees the later turns'
    rewards, as if the policy's tokens stood side by side.
    Vectorised over rows: one reverse pass over token positions.
    """
    mask = mask.astype(np.float64)
    inside = mask > 0
    values = values.astype(np.float64) * mask
    rewards = rewards.astype(np.float64) * mask
    b, t = mask.shape
    adv = np.zeros((b, t))
    running = np.zeros(b)
    next_value = np.zeros(b)
    for pos in range(t - 1, -1, -1):
        delta = rewards[:, pos] + gamma * next_value - values[:, pos]
        here = inside[:, pos]
        running = np.where(here, delta + gamma * lam * running, running)
        adv[:, pos] = running * mask[:, pos]
        next_value = np.where(here, values[:, pos], next_value)
    returns = (adv + values) * mask
    return adv.astype(np.float32), returns.astype(np.float32)


def discounted_returns(rewards: np.ndarray, mask: np.ndarray, gamma: float) -> np.ndarray:
    """G_t = sum_{l >= t} gamma^(l-t) r_l over completion tokens (REINFORCE; GAE with
    lam = 1 and V = 0)."""
    adv, _ = gae(rewards, np.zeros_like(rewards), mask, gamma, 1.0)
    return adv


def whiten(
    x: np.ndarray, mask: np.ndarray, shift_mean: bool = True, eps: float = 1e-8
) -> np.ndarray:
    """(x - mean) / std over the entries where mask is 1 (zero elsewhere); with
    shift_mean=False only the scale changes."""
    m = mask.astype(bool)
    if not m.any():
        return np.zeros_like(x, dtype=np.float32)
    sel = x[m].astype(np.float64)
    mean, std = sel.mean(), sel.std()
    out = (x - mean) / (std + eps) if shift_mean else x / (std + eps)
    return (out * m).astype(np.float32)


def explained_variance(values: np.ndarray, returns: np.ndarray, mask: np.ndarray) -> float:
    """1 - Var(R - V) / Var(R) over masked entries (1: perfect critic; <= 0: no better than
    a constant). NaN when the returns do not vary."""
    m = mask.astype(bool)
    r, v = returns[m].astype(np.float64), values[m].astype(np.float64)
    var = r.var() if r.size else 0.0
    return float(1.0 - (r - v).var() / var) if var > 0 else float("nan")
