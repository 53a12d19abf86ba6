"""The part every DeepSpeed rank shares (policy learner, critic): joining the training group,
building the engine, no-grad forward passes and train steps over a planned `Shard`.

All ranks of a pool are called together for every method that touches the model: under
ZeRO-3 a forward pass, a gather of full weights, or a save is a collective over the group.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from rlhf.algorithms.base import ForwardOutput
from rlhf.batch import Shard
from rlhf.checkpoint import CHECKPOINT_TAG, read_rng_states, write_rng_states
from rlhf.config import Config, LearnerConfig
from rlhf.models.dtypes import pool_dtype
from rlhf.sync.group import host_store, resolve_backend
from rlhf.training import export
from rlhf.training.deepspeed_setup import build_engine, init_process_group
from rlhf.training.train_step import StepSettings, Tensors, forward_rows, train_on_shard
from rlhf.workers.common import WorkerIdentity, setup_worker_process


class DeepSpeedWorker(WorkerIdentity, ABC):
    role: ClassVar[str]  # "learner" | "critic": its config section, pool and metric prefix

    def __init__(self, cfg: Config, rank: int, world_size: int, model_path: str) -> None:
        # the ranks split the cores by the group's real size (the config may say 'auto')
        setup_worker_process(self.role, cfg, cfg.run.seed, world_size)
        self.cfg = cfg
        self.rank, self.world_size = rank, world_size
        self.name = f"{self.role}-{rank}"
        self.model_path = model_path
        self.algorithm = cfg.make_algorithm()
        self.engine = None

    # ------------------------------------------------------------------ what differs
    @property
    def settings(self) -> LearnerConfig:
        return getattr(self.cfg, self.role)

    @abstractmethod
    def load_model(self) -> torch.nn.Module: ...

    @abstractmethod
    def forward(self, model: torch.nn.Module, mb: Tensors) -> ForwardOutput: ...

    @abstractmethod
    def loss(self, out: ForwardOutput, mb: Tensors): ...

    measures_sampler_gap: ClassVar[bool] = False

    # ------------------------------------------------------------------ set-up
    def node_address(self) -> str:
        import ray

        return ray.util.get_node_ip_address()

    def host_training_store(self) -> tuple[str, int]:
        """Rank 0: start the training group's store; the (address, port) others join."""
        self._training_store = host_store(
            self.node_address(), self.world_size, self.cfg.sync.timeout_s
        )
        return self.node_address(), int(self._training_store.port)

    def init_training(self, master_addr: str, master_port: int) -> None:
        cfg = self.cfg
        store, self._training_store = getattr(self, "_training_store", None), None
        init_process_group(
            master_addr,
            master_port,
            self.rank,
            self.world_size,
            resolve_backend(self.settings.backend, torch.cuda.is_available()),
            join_timeout_s=cfg.sync.timeout_s,
            # collectives wait for the slowest rank (e.g. rank 0 writing a checkpoint)
            op_timeout_s=max(cfg.run.call_timeout_s, cfg.sync.timeout_s),
            store=store,
        )
        torch.manual_seed(cfg.run.seed)
        self.engine = build_engine(
            self.load_model(),
            self.settings,
            pool_dtype(cfg, self.role, getattr(cfg.topology, self.role).num_gpus > 0),
            self.world_size,
            steps_per_iteration=self.algorithm.epochs * self.algorithm.mini_batches,
            iterations=cfg.run.iterations,
            lr=cfg.learning_rate(self.role),
        )

    def _engine(self):
        if self.engine is None:
            raise RuntimeError(f"{self.name}: init_training has not run")
        return self.engine

    @property
    def _module(self) -> torch.nn.Module:
        return self._engine().module

    # ------------------------------------------------------------------ work
    def forward_pass(self, shard: Shard, field: str) -> np.ndarray:
        """[rows, T] of `field` ("logprobs" | "values") for every row, no gradients."""
        return forward_rows(self._engine(), shard, self.forward, field)

    def train_step(self, shard: Shard) -> dict[str, float]:
        return self._train(shard, None)

    def train_step_capturing_gradients(
        self, shard: Shard
    ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        """`train_step`, also returning the first optimizer step's full gradients as the
        optimizer receives them (before clipping) — for exactness tests."""
        grads: dict[str, np.ndarray] = {}
        metrics = self._train(shard, lambda: grads.update(export.full_gradients(self._module)))
        return metrics, grads

    def _train(self, shard: Shard, before_first_step) -> dict[str, float]:
        t0 = time.perf_counter()
        settings = StepSettings(
            role=self.role,
            dp_world_size=self.world_size,
            measure_sampler_gap=self.measures_sampler_gap and "old_logprobs" not in shard.batch,
        )
        metrics = train_on_shard(
            self._engine(), shard, self.forward, self.loss, settings, before_first_step
        )
        metrics[f"{self.role}/seconds"] = time.perf_counter() - t0
        return metrics

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, folder: str) -> None:
        """Every rank writes its part of a DeepSpeed checkpoint (model, optimizer and lr
        schedule; a collective) and its random-number states."""
        engine = self._engine()
        engine.save_checkpoint(folder, tag=CHECKPOINT_TAG, save_latest=False)
        write_rng_states(Path(folder) / f"rng-rank{self.rank}.json")

    def load_checkpoint(self, folder: str) -> None:
        """The state `save_checkpoint` wrote, on a pool of the same size (a collective)."""
        engine = self._engine()
        path, _ = engine.load_checkpoint(
            folder, tag=CHECKPOINT_TAG, load_optimizer_states=True, load_lr_scheduler_states=True
        )
        if path is None:
            raise RuntimeError(f"{self.name}: no DeepSpeed checkpoint in {folder}")
        read_rng_states(Path(folder) / f"rng-rank{self.rank}.json")

    def shutdown(self) -> None:
        import torch.distributed as dist

        if self.engine is not None:
            try:
                self.engine.destroy()
            except Exception:  # best effort: the process is going away anyway
                pass
            self.engine = None
        if dist.is_initialized():
            dist.destroy_process_group()
