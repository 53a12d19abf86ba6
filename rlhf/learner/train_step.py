"""One learner iteration on this rank's shard: old log-probs, then epochs x mini-batches of
optimizer steps, each accumulated over micro-batches.

Loss scaling. The algorithm's micro-batch loss is sum(loss_weights * per_token_loss) over its
rows, with weights normalised over the global batch, so the sum over all micro-batches of all
ranks is the global loss. DeepSpeed averages gradients over the data-parallel ranks, so each
micro-batch loss is multiplied by the world size, and `scale_wrt_gas=False` stops it dividing
by an accumulation count. Times `mini_batches`, so every optimizer step sees a full-scale loss.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from rlhf.algorithms.base import Algorithm
from rlhf.models.logprobs import model_token_logprobs
from rlhf.types import TrainBatch

Tensors = dict[str, torch.Tensor]


@dataclass(frozen=True)
class StepSettings:
    micro_batch_size: int
    epochs: int
    mini_batches: int
    temperature: float
    dp_world_size: int


# ---------------------------------------------------------------- plain helpers
def batch_tensors(batch: TrainBatch, device: torch.device | str) -> Tensors:
    """The TrainBatch fields (and extras) as tensors on `device`."""
    arrays = {
        "input_ids": batch.input_ids,
        "attention_mask": batch.attention_mask,
        "completion_mask": batch.completion_mask,
        "loss_weights": batch.loss_weights,
        "advantages": batch.advantages,
        "ref_logprobs": batch.ref_logprobs,
        "sampler_logprobs": batch.sampler_logprobs,
        **batch.extras,
    }
    return {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in arrays.items()}


def split_rows(start: int, stop: int, size: int) -> Iterator[slice]:
    """Consecutive slices of at most `size` rows covering [start, stop)."""
    for s in range(start, stop, size):
        yield slice(s, min(s + size, stop))


def mini_batch_bounds(rows: int, mini_batches: int) -> list[tuple[int, int]]:
    """`mini_batches` contiguous, near-equal row ranges (some empty if rows < mini_batches)."""
    edges = np.linspace(0, rows, mini_batches + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)]


def take_rows(tensors: Tensors, rows: slice) -> Tensors:
    """Rows of every [B, ...] tensor, with token columns trimmed to the longest row.

    Right padding past the longest row carries zero weight; dropping it saves compute.
    """
    width = (
        int(tensors["attention_mask"][rows].sum(-1).max().item()) if rows.stop > rows.start else 0
    )
    total = tensors["input_ids"].shape[1]
    out = {}
    for k, v in tensors.items():
        v = v[rows]
        if v.ndim >= 2 and v.shape[1] == total:
            v = v[:, : max(width, 1)]
        out[k] = v
    return out


def pad_columns(t: torch.Tensor, width: int) -> torch.Tensor:
    return torch.nn.functional.pad(t, (0, width - t.shape[1]))


@torch.no_grad()
def rows_logprobs(
    model, tensors: Tensors, micro_batch_size: int, temperature: float
) -> torch.Tensor:
    """[B, T] target log-probs of all rows, without gradients, micro-batch by micro-batch."""
    width = tensors["input_ids"].shape[1]
    parts = []
    for rows in split_rows(0, tensors["input_ids"].shape[0], micro_batch_size):
        mb = take_rows(tensors, rows)
        lp = model_token_logprobs(model, mb["input_ids"], mb["attention_mask"], temperature)
        parts.append(pad_columns(lp.float(), width))
    return torch.cat(parts) if parts else torch.zeros_like(tensors["loss_weights"])


def sampler_gap(old_logprobs: torch.Tensor, tensors: Tensors) -> dict[str, float]:
    """Sum over completion tokens of |sampler - learner| log-probs, and the token count."""
    mask = tensors["completion_mask"]
    diff = (tensors["sampler_logprobs"] - old_logprobs).abs() * mask
    return {
        "sync/logprob_abs_diff_sum": float(diff.sum().item()),
        "sync/logprob_tokens": float(mask.sum().item()),
    }


def add_metrics(
    total: dict[str, float], metrics: dict[str, torch.Tensor] | dict[str, float], scale: float
) -> None:
    for k, v in metrics.items():
        total[k] = total.get(k, 0.0) + float(v) * scale


# ---------------------------------------------------------------- the step
def train_on_batch(
    engine, algorithm: Algorithm, batch: TrainBatch, s: StepSettings
) -> dict[str, float]:
    """Every optimizer step of one iteration on this rank's rows.

    Collective under ZeRO (forwards gather parameters, backwards reduce gradients): every rank
    must hold the same number of rows, so that all ranks run the same micro-batch sequence.
    """
    tensors = batch_tensors(batch, engine.device)
    rows = tensors["input_ids"].shape[0]
    width = tensors["input_ids"].shape[1]
    metrics: dict[str, float] = {}

    old: torch.Tensor | None = None
    if algorithm.needs_old_logprobs:
        old = rows_logprobs(engine, tensors, s.micro_batch_size, s.temperature)
        metrics.update(sampler_gap(old, tensors))
    else:  # ratio 1 by construction; the gap is measured on the first epoch's forwards
        metrics.update({"sync/logprob_abs_diff_sum": 0.0, "sync/logprob_tokens": 0.0})

    loss_scale = float(s.dp_world_size * s.mini_batches)
    grad_norms: list[float] = []
    lrs: list[float] = []
    for epoch in range(s.epochs):
        for start, stop in mini_batch_bounds(rows, s.mini_batches):
            micro = list(split_rows(start, stop, s.micro_batch_size))
            if not micro:
                continue
            lrs.append(float(engine.get_lr()[0]))
            for i, sl in enumerate(micro):
                engine.set_gradient_accumulation_boundary(i == len(micro) - 1)
                mb = take_rows(tensors, sl)
                logprobs = model_token_logprobs(
                    engine, mb["input_ids"], mb["attention_mask"], s.temperature
                ).float()
                if old is not None:
                    mb_old = old[sl, : logprobs.shape[1]]
                else:
                    mb_old = logprobs.detach()
                    if epoch == 0:
                        gap = sampler_gap(pad_columns(mb_old, width), take_rows_full(tensors, sl))
                        add_metrics(metrics, gap, 1.0)
                loss, algo_metrics = algorithm.loss(logprobs, mb_old, mb)
                engine.backward(loss * loss_scale, scale_wrt_gas=False)
                add_metrics(metrics, algo_metrics, 1.0 / s.epochs)
            engine.step()
            norm = engine.get_global_grad_norm()
            if norm is not None:
                grad_norms.append(float(norm))
    metrics["learner/grad_norm"] = float(np.mean(grad_norms)) if grad_norms else 0.0
    metrics["learner/lr"] = float(np.mean(lrs)) if lrs else float(engine.get_lr()[0])
    return metrics


def take_rows_full(tensors: Tensors, rows: slice) -> Tensors:
    """Rows of every tensor, all columns kept."""
    return {k: v[rows] for k, v in tensors.items()}
