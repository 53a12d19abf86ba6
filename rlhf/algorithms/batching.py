"""Collate scored rollouts into padded, position-aligned arrays (shared by all algorithms)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rlhf.types import ScoredRollout


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
