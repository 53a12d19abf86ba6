"""Where each pool's actors run: one Ray placement group per pool.

A pool's placement group has one bundle per worker it starts with (its CPUs, GPUs and custom
resources, `topology.<pool>.resources`) and the pool's strategy (`topology.<pool>.placement`:
pack or spread, strict or not). Custom resources pin a pool to the nodes that offer them:
`ray start --resources '{"rollout_node": 4}'` on a node and `rollout.resources:
{rollout_node: 1}` put every rollout worker there.

Elastic pools outlive their first workers: a replacement takes the bundle its dead
predecessor held, and a worker beyond the starting size (`rlhf scale`) gets a placement
group of its own with one bundle (the pool's strategy cannot span groups).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from rlhf.config import PoolConfig
from rlhf.runtime.remote import RemoteCallTimeout

STRATEGIES = {
    "pack": "PACK",
    "spread": "SPREAD",
    "strict_pack": "STRICT_PACK",
    "strict_spread": "STRICT_SPREAD",
}


def bundle_of(pool: PoolConfig) -> dict[str, float]:
    """What one worker of the pool reserves; zero amounts left out (Ray rejects them)."""
    bundle = {"CPU": pool.num_cpus, "GPU": pool.num_gpus, **pool.resources}
    return {k: float(v) for k, v in bundle.items() if v > 0}


class PoolPlacement:
    """The placement groups of one pool and which worker holds which bundle.

    `alive()` names the pool's workers that still hold their bundle (serving or starting);
    a bundle whose holder is not among them is free for the next worker."""

    def __init__(
        self, role: str, pool: PoolConfig, size: int, alive: Callable[[], set[str]]
    ) -> None:
        self.role = role
        self.bundle = bundle_of(pool)
        self.strategy = STRATEGIES.get(pool.placement)  # None: "none", or nothing to reserve
        if not self.bundle:
            self.strategy = None
        self.alive = alive
        self.groups: list[Any] = []
        self.slots: list[tuple[Any, int]] = []  # (placement group, bundle index)
        self.holder: dict[int, str] = {}  # slot -> worker
        if self.strategy is not None and size > 0:
            self._add_group(size, self.strategy)

    def _add_group(self, size: int, strategy: str) -> None:
        group = placement_group(
            [dict(self.bundle) for _ in range(size)],
            strategy=strategy,
            name=f"{self.role}-{len(self.groups)}",
        )
        self.groups.append(group)
        self.slots += [(group, i) for i in range(size)]

    def wait_ready(self, timeout_s: float) -> None:
        """Every placement group reserved, or an error that says what the pool asked for and
        what the cluster has."""
        if not self.groups:
            return
        ready, _ = ray.wait(
            [g.ready() for g in self.groups], num_returns=len(self.groups), timeout=timeout_s
        )
        if len(ready) < len(self.groups):
            raise RemoteCallTimeout(
                f"the {self.role} pool's placement ({len(self.slots)} x {self.bundle}, "
                f"{self.strategy}) was not reserved in {timeout_s:.0f} s: the cluster has "
                f"{ray.cluster_resources()} in all, {ray.available_resources()} free (see "
                f"topology.{self.role}.num_cpus / num_gpus / resources / placement)"
            )

    def options(self, name: str) -> dict[str, Any]:
        """Ray actor options that place worker `name` on a free bundle of the pool."""
        if self.strategy is None:
            return {"resources": {k: v for k, v in self.bundle.items() if k not in ("CPU", "GPU")}}
        alive = self.alive()
        free = [s for s in range(len(self.slots)) if self.holder.get(s) not in alive]
        if not free:  # beyond the starting size: a group of one
            self._add_group(1, "PACK")
            free = [len(self.slots) - 1]
        slot = free[0]
        self.holder[slot] = name
        group, index = self.slots[slot]
        return {
            "scheduling_strategy": PlacementGroupSchedulingStrategy(
                placement_group=group, placement_group_bundle_index=index
            )
        }

    def describe(self) -> str:
        if self.strategy is None:
            extra = {k: v for k, v in self.bundle.items() if k not in ("CPU", "GPU")}
            return f"no placement group{f', resources {extra}' if extra else ''}"
        return f"{self.strategy.lower()} x {len(self.slots)} of {self.bundle}"

    def remove(self) -> None:
        for group in self.groups:
            try:
                remove_placement_group(group)
            except Exception:  # the cluster is going away
                pass
        self.groups.clear()
        self.slots.clear()
        self.holder.clear()


def unplaceable(
    nodes: list[dict[str, float]], pools: dict[str, tuple[int, PoolConfig]]
) -> list[str]:
    """Why the pools' workers cannot all be placed on `nodes` (each node's resources), by
    first-fit of the largest workers first; [] when they can. A rough check before the real
    placement: it ignores strategies (spread) and what other jobs hold."""
    free = [dict(n) for n in nodes]
    demands = [
        (role, bundle_of(pool)) for role, (count, pool) in pools.items() for _ in range(count)
    ]
    demands.sort(key=lambda d: (-d[1].get("GPU", 0.0), -sum(d[1].values())))
    problems = []
    for role, bundle in demands:
        for node in free:
            if all(node.get(k, 0.0) >= v - 1e-9 for k, v in bundle.items()):
                for k, v in bundle.items():
                    node[k] = node.get(k, 0.0) - v
                break
        else:
            problems.append(f"a {role} worker needs {bundle}; no node has that left")
    return problems
