"""Connecting to Ray: a local cluster sized from the topology, or an existing one."""

from __future__ import annotations

import logging
import math
import os

from rlhf.config import Config

log = logging.getLogger(__name__)

SCALE_ROOM = 4  # a local cluster's CPUs, as a multiple of what the pools reserve at start


def started_pools(uses_reference: bool, uses_critic: bool = False) -> list[str]:
    """The pools a run starts: reference and critic only when the algorithm needs them."""
    return (
        ["rollout", "learner", "reward"]
        + (["reference"] if uses_reference else [])
        + (["critic"] if uses_critic else [])
    )


def requested_cpus(cfg: Config, uses_reference: bool, uses_critic: bool = False) -> float:
    pools = [getattr(cfg.topology, p) for p in started_pools(uses_reference, uses_critic)]
    return sum(p.workers * p.num_cpus for p in pools)


def threads_at_once(cfg: Config, uses_reference: bool, uses_critic: bool = False) -> int:
    """The most threads the pools compute with at the same moment on this machine: every
    disaggregated actor's (they may all work at once), plus the colocated pools' shared
    cores (they take turns)."""
    from rlhf.workers.common import colocated_cores, compute_threads

    t = cfg.topology
    pools = started_pools(uses_reference, uses_critic)
    apart = sum(
        getattr(t, p).workers * compute_threads(p, t) for p in pools if not t.is_colocated(p)
    )
    shared = any(t.is_colocated(p) for p in pools)
    return apart + (colocated_cores(t) if shared else 0)


def warn_if_oversubscribed(cfg: Config, uses_reference: bool, uses_critic: bool) -> None:
    cores = len(os.sched_getaffinity(0))
    wanted = threads_at_once(cfg, uses_reference, uses_critic)
    if wanted > cores:
        log.warning(
            "the topology computes with up to %d threads at once on %d cores: pools that work "
            "at the same time will slow each other (colocate them, or lower workers/num_cpus)",
            wanted,
            cores,
        )


def connect(cfg: Config, uses_reference: bool, uses_critic: bool = False) -> None:
    import ray

    if ray.is_initialized():
        return
    # Workers import user reward functions ('module:function') relative to where the user
    # launched from, as a script's own imports would.
    env = {
        "PYTHONPATH": os.pathsep.join(
            p for p in (os.getcwd(), os.environ.get("PYTHONPATH", "")) if p
        )
    }
    if cfg.ray.address is None:
        warn_if_oversubscribed(cfg, uses_reference, uses_critic)
        # Phases run one after another, so a local cluster may promise more CPUs than the
        # machine has: the topology's reservations are for placement, not exclusive use. It
        # promises SCALE_ROOM times what the pools start with, so `rlhf scale` and the
        # replacement of a dead worker find room without waiting for one to leave.
        num_cpus = cfg.ray.num_cpus or max(
            math.ceil(SCALE_ROOM * requested_cpus(cfg, uses_reference, uses_critic)),
            os.cpu_count() or 1,
        )
        ray.init(
            num_cpus=num_cpus,
            include_dashboard=cfg.ray.include_dashboard,
            namespace=cfg.ray.namespace,
            runtime_env={"env_vars": env},
            log_to_driver=True,
        )
    else:
        ray.init(
            address=cfg.ray.address, namespace=cfg.ray.namespace, runtime_env={"env_vars": env}
        )
