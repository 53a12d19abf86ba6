"""A DeepSpeed rank's work on its `Shard`: epochs x optimizer steps, each accumulated over
micro-batches, following the plan every rank shares (`rlhf.batch.plan_shards`); and
no-grad forward passes over a shard (old log-probs, critic values).

Generic over what is trained: a `forward` turns a micro-batch into a `ForwardOutput`
(log-probs and entropy for the policy, values for a critic) and a `loss` scores it.

Loss scaling. A micro-batch loss is sum(loss_weights * per_token_loss) over its rows, with
weights normalised over the global batch (and rescaled per optimizer step by the plan), so
the sum over all micro-batches of all ranks is the step's global loss. DeepSpeed averages
gradients over the data-parallel ranks, so each micro-batch loss is multiplied by the world
size, and `scale_wrt_gas=False` stops it dividing by an accumulation count.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from rlhf.algorithms.base import ForwardOutput
from rlhf.batch import COLUMNS, Shard, TrainBatch, trimmed_width
from rlhf.telemetry.metrics import average_steps

Tensors = dict[str, torch.Tensor]
Forward = Callable[[torch.nn.Module, Tensors], ForwardOutput]
Loss = Callable[[ForwardOutput, Tensors], tuple[torch.Tensor, dict[str, torch.Tensor]]]


@dataclass(frozen=True)
class StepSettings:
    role: str  # metric prefix: "learner" | "critic"
    dp_world_size: int
    measure_sampler_gap: bool = False  # policy without precomputed old log-probs


# ---------------------------------------------------------------- plain helpers
def to_tensors(batch: TrainBatch, device: torch.device | str) -> Tensors:
    """Every column of the batch as a tensor on `device`."""
    return {
        k: torch.from_numpy(np.require(v, requirements=["C", "W"])).to(device)
        for k, v in batch.columns.items()
    }


def take_rows(tensors: Tensors, rows: slice) -> Tensors:
    """Rows of every column; token columns trimmed to the micro-batch's longest row
    (right padding past it carries zero weight; dropping it saves compute)."""
    width = trimmed_width(tensors["attention_mask"][rows].sum(-1))
    return {
        k: v[rows, :width] if COLUMNS[k].role == "token" else v[rows] for k, v in tensors.items()
    }


def pad_columns(t: torch.Tensor, width: int) -> torch.Tensor:
    return torch.nn.functional.pad(t, (0, width - t.shape[1]))


def sampler_gap(logprobs: torch.Tensor, mb: Tensors) -> dict[str, float]:
    """Sum over completion tokens of |sampler - learner| log-probs, and the token count.
    Rows sampled from a policy/reference mixture are left out: their sampler log-probs are
    the mixture's, not the policy's."""
    mask = mb["completion_mask"]
    if "from_mixture" in mb:
        mask = mask * (1.0 - mb["from_mixture"])[:, None]
    diff = (mb["sampler_logprobs"] - logprobs.detach()).abs() * mask
    return {
        "sync/logprob_abs_diff_sum": float(diff.sum().item()),
        "sync/logprob_tokens": float(mask.sum().item()),
    }


# ---------------------------------------------------------------- no-grad passes
@torch.no_grad()
def forward_rows(engine, shard: Shard, forward: Forward, field: str) -> np.ndarray:
    """[rows, T] `field` ("logprobs" | "values") of every row of the shard, following its
    micro-batch plan (under ZeRO-3 a forward is a collective: every rank runs as many)."""
    tensors = to_tensors(shard.batch, engine.device)
    width = shard.batch.width
    parts = []
    for step in shard.micro_batches():
        for rows in step:
            out = getattr(forward(engine, take_rows(tensors, rows)), field)
            parts.append(pad_columns(out.float(), width))
    if not parts:
        return np.zeros((len(shard.batch), width), dtype=np.float32)
    return torch.cat(parts).cpu().numpy()


# ---------------------------------------------------------------- the step
def train_on_shard(
    engine,
    shard: Shard,
    forward: Forward,
    loss_fn: Loss,
    s: StepSettings,
    before_first_step: Callable[[], None] | None = None,
) -> dict[str, float]:
    """Every optimizer step of one iteration on this rank's rows. `before_first_step` runs
    once the first step's gradients are complete, before the optimizer uses them (tests
    read the gradients there)."""
    tensors = to_tensors(shard.batch, engine.device)
    steps: list[dict[str, float]] = []
    gap = {"sync/logprob_abs_diff_sum": 0.0, "sync/logprob_tokens": 0.0}
    for epoch in range(shard.epochs):
        for micro in shard.micro_batches():
            step: dict[str, float] = {f"{s.role}/lr": float(engine.get_lr()[0])}
            for i, rows in enumerate(micro):
                engine.set_gradient_accumulation_boundary(i == len(micro) - 1)
                mb = take_rows(tensors, rows)
                out = forward(engine, mb)
                loss, metrics = loss_fn(out, mb)
                engine.backward(loss * s.dp_world_size, scale_wrt_gas=False)
                for k, v in metrics.items():
                    step[k] = step.get(k, 0.0) + float(v)
                if s.measure_sampler_gap and epoch == 0 and out.logprobs is not None:
                    for k, v in sampler_gap(out.logprobs, mb).items():
                        gap[k] += v
            if before_first_step is not None and not steps:
                before_first_step()
            engine.step()
            norm = engine.get_global_grad_norm()
            if norm is not None:
                step[f"{s.role}/grad_norm"] = float(norm)
            steps.append(step)
    metrics = average_steps(steps)
    if s.measure_sampler_gap:
        metrics.update(gap)
    return metrics
