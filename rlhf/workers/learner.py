"""LearnerWorker: one data-parallel rank of the DeepSpeed policy trainer.

All ranks are called together for every method that touches the model: under ZeRO-3 a
forward pass, a gather of full weights, or a save is a collective over the training group.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from rlhf.algorithms import make_algorithm
from rlhf.config import Config
from rlhf.learner import export
from rlhf.learner.deepspeed_setup import build_engine, init_process_group, resolve_backend
from rlhf.learner.train_step import StepSettings, train_on_batch
from rlhf.sync.buckets import ParamSpec
from rlhf.sync.group import WeightSyncGroup, free_port
from rlhf.types import TrainBatch
from rlhf.workers.common import setup_worker_process


class LearnerWorker:
    def __init__(self, cfg: Config, rank: int, world_size: int, model_path: str) -> None:
        setup_worker_process(cfg.topology.learner.num_cpus, cfg.run.seed)
        self.cfg = cfg
        self.rank, self.world_size = rank, world_size
        self.name = f"learner-{rank}"
        self.model_path = model_path
        self.algorithm = make_algorithm(cfg.algorithm, cfg.rollout.max_new_tokens)
        self.engine = None
        self.manifest: list[ParamSpec] = []
        self.sync: WeightSyncGroup | None = None

    def ready(self) -> str:
        return self.name

    def node_address(self) -> str:
        import ray

        return ray.util.get_node_ip_address()

    def free_port(self) -> int:
        return free_port(self.node_address())

    # ------------------------------------------------------------------ training
    def init_training(self, master_addr: str, master_port: int) -> None:
        cfg = self.cfg
        init_process_group(
            master_addr,
            master_port,
            self.rank,
            self.world_size,
            resolve_backend(cfg.learner.backend),
            join_timeout_s=cfg.sync.timeout_s,
            # collectives wait for the slowest rank (e.g. rank 0 writing a checkpoint)
            op_timeout_s=max(cfg.run.call_timeout_s, cfg.sync.timeout_s),
        )
        self.engine = build_engine(cfg, self.model_path, self.world_size)
        self.manifest = export.manifest(self._module)
        self.settings = StepSettings(
            micro_batch_size=cfg.learner.micro_batch_size,
            epochs=cfg.algorithm.epochs,
            mini_batches=cfg.algorithm.mini_batches,
            temperature=cfg.rollout.temperature,
            dp_world_size=self.world_size,
        )

    def _engine(self):
        if self.engine is None:
            raise RuntimeError(f"{self.name}: init_training has not run")
        return self.engine

    @property
    def _module(self) -> torch.nn.Module:
        return self._engine().module

    def train_step(self, batch: TrainBatch) -> dict[str, float]:
        t0 = time.perf_counter()
        metrics = train_on_batch(self._engine(), self.algorithm, batch, self.settings)
        metrics["learner/seconds"] = time.perf_counter() - t0
        return metrics

    # ------------------------------------------------------------------ weights out
    def weight_manifest(self) -> list[ParamSpec]:
        self._engine()
        return self.manifest

    def _sync_device(self, backend: str) -> torch.device:
        if backend == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def init_weight_sync(
        self,
        host: str,
        port: int,
        world_size: int,
        backend: str,
        timeout_s: float,
        peer_names: list[str],
    ) -> None:
        """Rank 0 joins the sync group as its sender; other ranks only help gather (ZeRO-3)."""
        if self.rank != 0:
            return
        if self.sync is not None:
            self.sync.close()
            self.sync = None
        self.sync = WeightSyncGroup(
            host, port, 0, world_size, backend, timeout_s, peer_names, self._sync_device(backend)
        )

    def broadcast_weights(self, version: int, bucket_bytes: int) -> dict[str, float]:
        """Rank 0 streams full tensors to the rollout workers; every rank joins the gathers."""
        if self.rank == 0 and self.sync is None:
            raise RuntimeError(f"{self.name}: init_weight_sync has not run")
        device = self.sync.device if self.sync is not None else None
        named = export.full_parameters(self._module, device)
        if self.rank != 0:
            export.drain(named)
            return {}
        assert self.sync is not None
        try:
            return self.sync.send(named, self.manifest, bucket_bytes, version)
        finally:
            export.drain(named)  # even on failure, so the other ranks' gathers complete

    def save_pretrained(self, path: str) -> None:
        """Rank 0 writes an HF folder; under ZeRO-3 the other ranks help gather."""
        import torch.distributed as dist

        named = export.full_parameters(self._module, "cpu")
        if self.rank == 0:
            state = dict(named)
            export.save_hf(self._module, state, path, self.model_path)
        else:
            export.drain(named)
        dist.barrier()  # every rank returns once the folder is complete

    def full_weights(self) -> dict[str, np.ndarray]:
        """Every full parameter as a numpy copy, on every rank (tests and debugging)."""
        return {
            name: t.float().cpu().numpy().copy()
            for name, t in export.full_parameters(self._module, "cpu")
        }

    def state_checksum(self) -> float:
        """Sum of all full weights (float64), the same on every rank."""
        return export.checksum(export.full_parameters(self._module, "cpu"))

    def shutdown(self) -> None:
        import torch.distributed as dist

        if self.sync is not None:
            self.sync.close()
            self.sync = None
        if self.engine is not None:
            try:
                self.engine.destroy()
            except Exception:  # best effort: the process is going away anyway
                pass
            self.engine = None
        if dist.is_initialized():
            dist.destroy_process_group()
