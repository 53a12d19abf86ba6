"""Loss aggregation as per-token weights.

The learner's loss is sum(weights * per_token_loss) over all rows of the global batch, so
computing the weights once, globally, makes the gradient independent of how rows are
sharded over ranks and micro-batches.
"""

from __future__ import annotations

import numpy as np

AGGREGATIONS = ("token_mean", "sequence_mean", "constant_normalizer")


def aggregation_weights(
    completion_mask: np.ndarray, valid_rows: np.ndarray, mode: str, max_new_tokens: int
) -> np.ndarray:
    """[B, T] weights.

    - token_mean: every completion token of the batch counts equally (DAPO).
    - sequence_mean: mean over tokens within a sequence, then over sequences (original GRPO).
    - constant_normalizer: token sums divided by rows * max_new_tokens (Dr. GRPO), no
      length bias.
    """
    mask = completion_mask.astype(np.float32) * valid_rows.astype(np.float32)[:, None]
    n_rows = float(valid_rows.sum())
    if n_rows == 0:
        return np.zeros_like(mask)
    if mode == "token_mean":
        return mask / max(float(mask.sum()), 1.0)
    if mode == "sequence_mean":
        lengths = np.maximum(mask.sum(axis=1, keepdims=True), 1.0)
        return mask / lengths / n_rows
    if mode == "constant_normalizer":
        return mask / (n_rows * float(max_new_tokens))
    raise ValueError(f"unknown loss aggregation {mode!r}; allowed: {', '.join(AGGREGATIONS)}")
