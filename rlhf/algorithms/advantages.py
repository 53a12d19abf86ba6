"""Advantage estimators over groups of samples that answer the same prompt (pure numpy).

A NaN reward marks a sample with no valid reward (the reward pool dropped it); it takes no
part in its group's statistics and gets advantage 0 (its loss weight is 0 as well).
"""

from __future__ import annotations

import numpy as np


def group_normalized_advantages(
    rewards: np.ndarray, group_ids: np.ndarray, scale: bool = True, eps: float = 1e-6
) -> np.ndarray:
    """GRPO: A_i = (r_i - mean_g) / (std_g + eps) over the samples of prompt g.

    `scale=False` gives Dr. GRPO (no division by the std). std is the population std
    (ddof=0); a group whose rewards are all equal gets advantage 0.
    """
    rewards = np.asarray(rewards, dtype=np.float64)
    group_ids = np.asarray(group_ids)
    adv = np.zeros_like(rewards)
    for g in np.unique(group_ids):
        idx = np.flatnonzero((group_ids == g) & ~np.isnan(rewards))
        if idx.size == 0:
            continue
        r = rewards[idx]
        centred = r - r.mean()
        std = r.std()
        if not scale:
            adv[idx] = centred
        elif std > 0:  # a flat group is 0 whatever eps is (no 0/0)
            adv[idx] = centred / (std + eps)
    return adv.astype(np.float32)
