"""The controller's side of the elastic pools (`rlhf.runtime.elastic`): `rlhf scale` requests,
workers let in and out between iterations, and the rollout pool's weight sync, which is
where rollout workers join and leave and where a sync that loses a member is recovered."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from rlhf.driver.scheduler import RolloutScheduler
from rlhf.runtime.control import take_scale_requests
from rlhf.runtime.pools import Pools, SyncFailed
from rlhf.telemetry.events import EventLog


class Membership:
    def __init__(
        self,
        pools: Pools,
        scheduler: RolloutScheduler,
        events: EventLog,
        run_dir: Path,
        timeout_s: float,
        current_version: Callable[[], int],
    ) -> None:
        self.pools = pools
        self.scheduler = scheduler
        self.events = events
        self.run_dir = run_dir
        self.timeout_s = timeout_s
        self.current_version = current_version
        self.rollout = pools.elastic["rollout"]
        self.sync_members = tuple(pools.rollout.actors)  # whom the sync group joins
        self.sync_failures = 0
        scheduler.on_starved = self.bring_in_rollout

    def scale(self, **sizes: int) -> None:
        """Change pool sizes (`rollout=3`, `reward=2`, `reference=1`): new workers start
        now and join once ready (rollout workers at the next weight sync, with the current
        weights); removed workers finish their call first."""
        for role, n in sizes.items():
            if role not in self.pools.elastic:
                started = ", ".join(self.pools.elastic)
                raise ValueError(f"cannot scale {role!r}: the pools that scale are {started}")
            self.pools.elastic[role].resize(int(n))

    def between_iterations(self) -> None:
        """Apply `rlhf scale` requests, start due workers, let ready reward/reference workers
        in and leaving ones out (no call of theirs is in flight between iterations)."""
        for request in take_scale_requests(self.run_dir):
            try:
                self.scale(**request)
            except (ValueError, TypeError) as err:
                self.events.record("scale_refused", request=request, error=str(err))
        for role, elastic in self.pools.elastic.items():
            elastic.poll()
            if role != "rollout":
                elastic.remove_leaving()

    def bring_in_rollout(self) -> None:
        """No rollout worker is left and work is queued: wait for a replacement, sync it the
        current weights, and let it take the queue."""
        self.rollout.wait_ready(self.timeout_s)
        self.sync_rollout(self.current_version())

    def sync_rollout(self, version: int) -> dict[str, float]:
        """Weights `version` to every serving rollout worker, once nothing is in flight.

        First the membership settles: leaving workers go, ready ones join, and the sync
        group is rebuilt if its members changed. A sync that fails because members died or
        hung (named in the error, within `sync.timeout_s`) is counted, the dead are replaced,
        and it is tried again on the rebuilt group; each try loses a worker to the restart
        budget, so the tries end."""
        roll, pools = self.rollout, self.pools
        joined: list[str] = []
        while True:
            roll.remove_leaving(self.scheduler.idle)
            ready = roll.poll()
            if not pools.rollout.actors and not ready:  # failed syncs took every worker
                ready = roll.wait_ready(self.timeout_s)
            for name in ready:
                roll.admit(name)
                joined.append(name)
            members = tuple(pools.rollout.actors)
            try:
                if members != self.sync_members:
                    self.sync_members = ()  # unknown until the rebuild completes
                    pools.build_sync_group(self.timeout_s)
                    self.sync_members = members
                stats = pools.sync_weights(version, self.timeout_s)
            except SyncFailed as err:
                self.sync_failures += 1
                self.sync_members = ()  # the group is broken: rebuilt on the next try
                self.events.record("sync_failed", version=version, dead=err.dead, error=str(err))
                if not err.dead:
                    raise
                for name in err.dead:
                    roll.died(name, err)
                continue
            self.scheduler.add([n for n in joined if n in pools.rollout.actors])
            return stats

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for elastic in self.pools.elastic.values():
            out.update(elastic.metrics())
        out["elastic/rollout_requeued_calls"] = float(self.scheduler.requeued)
        out["elastic/sync_failures"] = float(self.sync_failures)
        # generate calls not yet sent / being generated (the next batches, when asynchronous)
        out["rollout/queued_calls"] = float(len(self.scheduler.queue))
        out["rollout/calls_in_flight"] = float(len(self.scheduler.inflight))
        return out
