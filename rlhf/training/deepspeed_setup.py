"""From `LearnerConfig` to a running DeepSpeed engine: process group, ds config, optimizer.

The process group is initialised here (not by `deepspeed.init_distributed`) so that joining
has a deadline of its own and the backend is the one the config names.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from rlhf.config import FULL_FINE_TUNING_LR, LearnerConfig
from rlhf.models.dtypes import DTYPES
from rlhf.sync.group import resolve_backend

SHM_COMM_OP = "deepspeed_shm_comm"


def init_process_group(
    master_addr: str,
    master_port: int,
    rank: int,
    world_size: int,
    backend: str,
    join_timeout_s: float,
    op_timeout_s: float,
    store: dist.TCPStore | None = None,
) -> None:
    """Join the training group: rank 0 hosts the store (`store`, already listening, from
    `rlhf.sync.group.host_store`); a missing peer fails after join_timeout_s."""
    # DeepSpeed reads these (device choice, logging); LOCAL_RANK is 0 because Ray gives each
    # GPU actor exactly the devices it asked for.
    os.environ.update(
        MASTER_ADDR=master_addr,
        MASTER_PORT=str(master_port),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK="0",
    )
    store = store or dist.TCPStore(
        master_addr,
        master_port,
        world_size,
        is_master=rank == 0,
        timeout=timedelta(seconds=join_timeout_s),
    )
    dist.init_process_group(
        backend,
        store=store,
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=op_timeout_s),
    )
    dist.barrier()  # everyone has joined before DeepSpeed starts its own collectives


def skip_shm_comm_op() -> None:
    """Keep DeepSpeed from JIT-compiling its shared-memory all-reduce (45-90 s on first use).

    `deepspeed.init_distributed` builds that op whenever it wraps torch.distributed, even one
    initialised beforehand; only DeepSpeed's inference all-reduce uses it, never training.
    Marking it incompatible makes DeepSpeed fall back to the process group.
    """
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__[SHM_COMM_OP] = False


def ds_config(cfg: LearnerConfig, dtype: str, world_size: int) -> dict[str, Any]:
    """DeepSpeed config. Accumulation is driven by the train step (explicit boundaries), so
    DeepSpeed's own accumulation count stays 1 and its batch sizes are bookkeeping only.
    `dtype` is resolved (`rlhf.models.dtypes.pool_dtype`): bf16/fp16 train in mixed precision
    with fp32 master weights in the optimizer."""
    if dtype not in DTYPES:
        raise ValueError(f"ds_config needs a resolved dtype ({', '.join(DTYPES)}), got {dtype!r}")
    return {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": 1,
        "train_batch_size": cfg.micro_batch_size * world_size,
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": {"stage": cfg.zero_stage},
        "bf16": {"enabled": dtype == "bfloat16"},
        "fp16": {"enabled": dtype == "float16"},
        # a torch.optim.AdamW instance (DeepSpeed's FusedAdam would compile for ~80 s on CPU)
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


def lr_factor(
    warmup_steps: int, total_steps: int = 0, decay: str = "constant", min_ratio: float = 0.0
) -> Callable[[int], float]:
    """The multiple of the base lr at each optimizer step: a linear warm-up over
    `warmup_steps` (step 0 uses lr / warmup), then constant, or a linear or cosine decay to
    `min_ratio` at `total_steps` (a quieter end: Adam's steps on noisy policy gradients are
    lr-sized whatever the signal)."""

    def factor(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        if decay == "constant" or total_steps <= warmup_steps:
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        shape = 1.0 - progress if decay == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
        return min_ratio + (1.0 - min_ratio) * shape

    return factor


def make_optimizer(
    model: torch.nn.Module, cfg: LearnerConfig, lr: float | None = None
) -> torch.optim.Optimizer:
    """AdamW over the parameters that train (LoRA: the adapters); norms and biases (1-D
    parameters) get no weight decay. `lr`: the pool's resolved lr (`Config.learning_rate`);
    None: `cfg.lr`, or the full-fine-tuning default where that is unset."""
    lr = lr if lr is not None else cfg.lr if cfg.lr is not None else FULL_FINE_TUNING_LR
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=tuple(cfg.adam_betas))


def build_engine(
    model: torch.nn.Module,
    cfg: LearnerConfig,
    dtype: str,
    world_size: int,
    steps_per_iteration: int = 1,
    iterations: int = 0,
    lr: float | None = None,
):
    """deepspeed.initialize on an already-initialised process group; returns the engine.
    The lr schedule counts optimizer steps: `steps_per_iteration` of them per iteration.
    `lr`: see `make_optimizer`."""
    import deepspeed

    skip_shm_comm_op()
    if cfg.gradient_checkpointing and hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable()
    optimizer = make_optimizer(model, cfg, lr)
    # Built on the client optimizer: DeepSpeed's ZeRO wrappers step it with its own
    # param_groups, so the schedule's lr reaches every step.
    schedule = lr_factor(
        cfg.warmup_iterations * steps_per_iteration,
        iterations * steps_per_iteration,
        cfg.lr_decay,
        cfg.min_lr_ratio,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    engine, *_ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=scheduler,
        config=ds_config(cfg, dtype, world_size),
        dist_init_required=False,
    )
    return engine


@contextmanager
def single_rank_group(backend: str) -> Iterator[None]:
    """A one-rank training group of this process, destroyed on exit. DeepSpeed caches groups
    it derives from the first world group it sees, so a process that builds several engines
    builds them all inside one such group."""
    from rlhf.sync.group import host_store

    store = host_store("127.0.0.1", 1, timeout_s=60)
    init_process_group(
        "127.0.0.1",
        int(store.port),
        rank=0,
        world_size=1,
        backend=resolve_backend(backend, torch.cuda.is_available()),
        join_timeout_s=60,
        op_timeout_s=600,
        store=store,
    )
    try:
        yield
    finally:
        dist.destroy_process_group()


@contextmanager
def single_rank_engine(
    model: torch.nn.Module, cfg: LearnerConfig, dtype: str, *, seed: int, steps: int
) -> Iterator[Any]:
    """A DeepSpeed engine on a one-rank group of this process, torn down on exit (the model's
    parameters stay readable inside the block, also under ZeRO-3). The lr schedule counts
    `steps` optimizer steps (one "iteration" each)."""
    with single_rank_group(cfg.backend):
        torch.manual_seed(seed)
        engine = build_engine(
            model, cfg, dtype, world_size=1, steps_per_iteration=1, iterations=steps
        )
        try:
            yield engine
        finally:
            engine.destroy()
