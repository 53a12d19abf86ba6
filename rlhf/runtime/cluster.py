"""Connecting to Ray: a local cluster sized from the topology, or an existing one."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable

from rlhf.algorithms.base import started_pools
from rlhf.config import Config

log = logging.getLogger(__name__)

SCALE_ROOM = 4  # a local cluster's CPUs, as a multiple of what the pools reserve at start


def requested_cpus(cfg: Config, needs: Iterable[str]) -> float:
    """The CPUs the started pools reserve (`needs`: the algorithm's stage columns)."""
    pools = [getattr(cfg.topology, p) for p in started_pools(needs, cfg.stage_table())]
    return sum(p.workers * p.num_cpus for p in pools)


def threads_at_once(cfg: Config, needs: Iterable[str]) -> int:
    """The most threads the pools compute with at the same moment on this machine: every
    disaggregated actor's (they may all work at once), plus the colocated pools' shared
    cores (they take turns)."""
    from rlhf.workers.common import colocated_cores, compute_threads

    t = cfg.topology
    pools = started_pools(needs, cfg.stage_table())
    apart = sum(
        getattr(t, p).workers * compute_threads(p, cfg) for p in pools if not cfg.is_colocated(p)
    )
    shared = any(cfg.is_colocated(p) for p in pools)
    return apart + (colocated_cores(t) if shared else 0)


def warn_if_oversubscribed(cfg: Config, needs: Iterable[str]) -> None:
    cores = len(os.sched_getaffinity(0))
    wanted = threads_at_once(cfg, needs)
    if wanted > cores:
        log.warning(
            "the topology computes with up to %d threads at once on %d cores: pools that work "
            "at the same time will slow each other (colocate them, or lower workers/num_cpus)",
            wanted,
            cores,
        )


def dashboard_installed() -> bool:
    """Ray's dashboard needs the packages of `ray[default]`."""
    import importlib.util

    return all(
        importlib.util.find_spec(m) for m in ("aiohttp", "aiohttp_cors", "prometheus_client")
    )


def worker_env(cfg: Config) -> dict[str, str]:
    """Environment of every worker: user reward functions ('module:function') import
    relative to where the user launched from, as a script's own imports would; vLLM logs at
    the run's level."""
    return {
        "PYTHONPATH": os.pathsep.join(
            p for p in (os.getcwd(), os.environ.get("PYTHONPATH", "")) if p
        ),
        "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", cfg.run.log_level),
    }


def in_ray_job() -> bool:
    """This process is a Ray Job's entrypoint (`ray job submit`)."""
    return "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ


def connect(cfg: Config, needs: Iterable[str] = ()) -> None:
    """Start a local cluster (`ray.address` None) or join one; no-op when Ray is up. `needs`:
    the algorithm's stage columns (they decide the pools a local cluster is sized for)."""
    import ray

    if ray.is_initialized():
        return
    namespace = cfg.ray.namespace or f"rlhf-{cfg.run.name or 'run'}"
    level = getattr(logging, cfg.run.log_level)
    env = worker_env(cfg)
    if in_ray_job():
        # Ray merges the job's runtime environment with this one, key by key, and refuses a
        # key set in both. The job's working dir is on every worker's path already.
        import json

        job = json.loads(os.environ["RAY_JOB_CONFIG_JSON_ENV_VAR"]).get("runtime_env") or {}
        taken = set(job.get("env_vars") or {}) | {"PYTHONPATH"}
        env = {k: v for k, v in env.items() if k not in taken}
    runtime_env = {"env_vars": env}
    if cfg.ray.address is None:
        warn_if_oversubscribed(cfg, needs)
        dashboard = cfg.ray.include_dashboard
        if dashboard is None:
            dashboard = dashboard_installed()
        # Phases run one after another, so a local cluster may promise more CPUs than the
        # machine has: the topology's reservations are for placement, not exclusive use. It
        # promises SCALE_ROOM times what the pools start with, so `rlhf scale` and the
        # replacement of a dead worker find room without waiting for one to leave.
        num_cpus = cfg.ray.num_cpus or max(
            math.ceil(SCALE_ROOM * requested_cpus(cfg, needs)),
            os.cpu_count() or 1,
        )
        ray.init(
            num_cpus=num_cpus,
            include_dashboard=dashboard,
            namespace=namespace,
            runtime_env=runtime_env,
            logging_level=level,
            log_to_driver=True,
        )
    else:
        ray.init(
            address=cfg.ray.address,
            namespace=namespace,
            runtime_env=runtime_env,
            logging_level=level,
            log_to_driver=True,
        )


def dashboard_url() -> str | None:
    """The dashboard's http address, or None where the cluster runs none."""
    from ray._private.worker import get_dashboard_url

    try:
        url = get_dashboard_url()
    except Exception:  # not connected, or a Ray without it
        return None
    if not url:
        return None
    return url if url.startswith("http") else f"http://{url}"


def metrics_endpoints() -> dict[str, str]:
    """Each live node's Prometheus endpoint (Ray's metrics export), by node id."""
    import ray

    return {
        n["NodeID"]: f"http://{n['NodeManagerAddress']}:{n['MetricsExportPort']}/metrics"
        for n in ray.nodes()
        if n.get("Alive") and n.get("MetricsExportPort")
    }
