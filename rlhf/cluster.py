"""Connecting to Ray: a local cluster sized from the topology, or an existing one."""

from __future__ import annotations

import math
import os

from rlhf.config import Config


def requested_cpus(cfg: Config, uses_reference: bool, uses_critic: bool = False) -> float:
    t = cfg.topology
    pools = [t.rollout, t.learner, t.reward]
    pools += ([t.reference] if uses_reference else []) + ([t.critic] if uses_critic else [])
    return sum(p.workers * p.num_cpus for p in pools)


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
        # Phases run one after another, so a local cluster may promise more CPUs than the
        # machine has: the topology's reservations are for placement, not exclusive use.
        num_cpus = cfg.ray.num_cpus or max(
            math.ceil(requested_cpus(cfg, uses_reference, uses_critic)), os.cpu_count() or 1
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
