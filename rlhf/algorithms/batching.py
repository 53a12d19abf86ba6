"""Collate scored rollouts into padded, position-aligned arrays (shared by all algorithms)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rlhf.types import ScoredRollout, TrainBatch


@dataclass
class Collated:
    input_ids: np.ndarray
    attention_mask: np.ndarray
    completion_mask: np.ndarray
    ref_logprobs: np.ndarray
    sampler_logprobs: np.ndarray
    rewards: np.ndarray  # [B], NaN = dropped
    group_ids: np.ndarray  # [B], unique across rollouts
    policy_version: int  # the oldest version in the batch


def collate(scored: list[ScoredRollout], pad_id: int) -> Collated:
    rows: list[list[int]] = []
    spans: list[tuple[int, int]] = []
    ref: list[list[float] | None] = []
    samp: list[list[float]] = []
    rewards: list[float] = []
    groups: list[int] = []
    group_offset = 0
    for s in scored:
        r = s.rollout
        for i, (p, c) in enumerate(zip(r.prompt_ids, r.completion_ids, strict=True)):
            rows.append(list(p) + list(c))
            spans.append((len(p), len(p) + len(c)))
            samp.append(r.sampler_logprobs[i])
            ref.append(s.ref_logprobs[i] if s.ref_logprobs is not None else None)
            groups.append(group_offset + r.prompt_index[i])
        rewards.extend(float(x) for x in s.rewards)
        group_offset += max(r.prompt_index, default=-1) + 1

    b, t = len(rows), max(len(x) for x in rows)
    input_ids = np.full((b, t), pad_id, dtype=np.int64)
    attention_mask = np.zeros((b, t), dtype=np.int64)
    completion_mask = np.zeros((b, t), dtype=np.float32)
    ref_lp = np.zeros((b, t), dtype=np.float32)
    samp_lp = np.zeros((b, t), dtype=np.float32)
    for i, (row, (start, end)) in enumerate(zip(rows, spans, strict=True)):
        input_ids[i, : len(row)] = row
        attention_mask[i, : len(row)] = 1
        completion_mask[i, start:end] = 1.0
        samp_lp[i, start:end] = samp[i][: end - start]
        if ref[i] is not None:
            ref_lp[i, start:end] = ref[i][: end - start]
    return Collated(
        input_ids=input_ids,
        attention_mask=attention_mask,
        completion_mask=completion_mask,
        ref_logprobs=ref_lp,
        sampler_logprobs=samp_lp,
        rewards=np.asarray(rewards, dtype=np.float32),
        group_ids=np.asarray(groups, dtype=np.int64),
        policy_version=min(s.rollout.policy_version for s in scored),
    )


def shard_batch(batch: TrainBatch, world_size: int) -> list[TrainBatch]:
    """Equal-sized shards for the learner ranks (DeepSpeed steps in lockstep).

    Missing rows are filled with copies of row 0 whose loss weights are zero, so they add
    nothing to the loss or its gradient.
    """
    rows = len(batch)
    per_rank = -(-rows // world_size)
    pad = per_rank * world_size - rows
    if pad:
        filler = batch.select([0] * pad)
        filler.loss_weights = np.zeros_like(filler.loss_weights)
        filler.advantages = np.zeros_like(filler.advantages)
        filler.completion_mask = np.zeros_like(filler.completion_mask)
        batch = concat_batches([batch, filler])
    return [batch.select(slice(r * per_rank, (r + 1) * per_rank)) for r in range(world_size)]


def concat_batches(parts: list[TrainBatch]) -> TrainBatch:
    """Stack batches row-wise, right-padding the token dimension to the widest."""
    width = max(p.input_ids.shape[1] for p in parts)

    def cat(arrays: list[np.ndarray]) -> np.ndarray:
        padded = [
            np.pad(a, ((0, 0), (0, width - a.shape[1]))) if a.ndim == 2 else a for a in arrays
        ]
        return np.concatenate(padded, axis=0)

    first = parts[0]
    return TrainBatch(
        input_ids=cat([p.input_ids for p in parts]),
        attention_mask=cat([p.attention_mask for p in parts]),
        completion_mask=cat([p.completion_mask for p in parts]),
        loss_weights=cat([p.loss_weights for p in parts]),
        advantages=cat([p.advantages for p in parts]),
        ref_logprobs=cat([p.ref_logprobs for p in parts]),
        sampler_logprobs=cat([p.sampler_logprobs for p in parts]),
        policy_version=min(p.policy_version for p in parts),
        extras={k: cat([p.extras[k] for p in parts]) for k in first.extras},
    )
