"""Process set-up shared by every worker."""

from __future__ import annotations

import logging
import math
import os

from rlhf.config import Config, TopologyConfig


def compute_threads(role: str, cfg: Config, workers: int | None = None) -> int:
    """Threads an actor of pool `role` computes with. A colocated pool takes its turn alone on
    the cores it shares with the other colocated pools, so its actors use all of them between
    them; a pool that may run at the same time as others keeps to its Ray reservation, so
    none oversubscribes the cores. `workers`: the pool's actors, where the caller knows
    better than the config (a DeepSpeed group's size)."""
    pool = getattr(cfg.topology, role)
    if cfg.is_colocated(role):  # the pool's actors compute together: they split them
        actors = workers if workers is not None else pool.workers
        return max(1, colocated_cores(cfg.topology) // max(actors, 1))
    return max(1, math.ceil(pool.num_cpus))


def colocated_cores(topology: TopologyConfig) -> int:
    """The cores the colocated pools share (each takes them all in its turn)."""
    return topology.colocated_threads or len(os.sched_getaffinity(0))


def setup_worker_process(role: str, cfg: Config, seed: int, workers: int | None = None) -> int:
    """Threads follow the topology (RLHF_TORCH_THREADS overrides); logs go to the Ray worker
    log with a prefix. Returns the thread count."""
    import torch

    threads = int(os.environ.get("RLHF_TORCH_THREADS", compute_threads(role, cfg, workers)))
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return threads


class WorkerIdentity:
    """What every worker answers besides its work: its name, its process and its node (an
    operator or a test finds its process by pid; the start-up summary shows the nodes)."""

    name: str

    def ready(self) -> str:
        return self.name

    def pid(self) -> int:
        return os.getpid()

    def memory(self) -> dict[str, float]:
        """This process's memory: now, and its peak since the last call (`rlhf.telemetry.memory`)."""
        from rlhf.telemetry.memory import process_memory

        return process_memory(reset_peak=True)

    def whereabouts(self) -> dict[str, object]:
        import ray

        return {
            "pid": os.getpid(),
            "node_id": ray.get_runtime_context().get_node_id(),
            "node_ip": ray.util.get_node_ip_address(),
        }
