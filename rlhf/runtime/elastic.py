"""Membership of a pool whose workers may come and go: rollout, reward and reference.

A worker is *serving* (in `pool.actors`, given work), *starting* (its actor is being
created; `ready` has not answered) or *due* (a replacement or an addition waiting for its
start time, the back-off). Who leaves is marked *leaving*: it gets no new work and is
removed once it has none.

- A death (`died`) takes the worker out, counts it, and puts a replacement on the due list,
  unless the pool's restart budget (`elastic.max_restarts`) is spent: then the run stops
  with an error naming the worker.
- `resize(n)` adds due workers or marks workers leaving (newest first).
- `poll` starts due workers and reports the starting ones that are ready. A pool without
  weights to sync (reward, reference) admits them at once; the rollout pool's controller
  admits them at a weight sync, so a new worker's first samples come from current weights.

Work in flight is not this module's business: the rollout scheduler requeues a dead
worker's call, and a split stage's `Pending` re-sends a dead worker's part (`dispatch.py`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ray

from rlhf.config import ElasticConfig
from rlhf.runtime import worker_logs
from rlhf.runtime.dispatch import Pool
from rlhf.runtime.remote import WorkerDied
from rlhf.telemetry.events import EventLog

# index -> (name, actor handle): starts one worker of the pool
Spawn = Callable[[int], tuple[str, Any]]


# A worker not ready after this long is reported once (it may be waiting for resources).
SLOW_START_S = 120.0


@dataclass
class _Starting:
    actor: Any
    ready: ray.ObjectRef
    since: float
    reported: bool = False


class ElasticPool:
    def __init__(
        self,
        pool: Pool,
        spawn: Spawn,
        cfg: ElasticConfig,
        events: EventLog,
        start_timeout_s: float,
        admit_when_ready: bool = True,
    ) -> None:
        self.pool = pool
        self.role = pool.role
        self.spawn = spawn
        self.cfg = cfg
        self.events = events
        self.start_timeout_s = start_timeout_s
        self.admit_when_ready = admit_when_ready
        self.next_index = len(pool)
        self.starting: dict[str, _Starting] = {}
        self.due: list[float] = []  # start times of workers not yet spawned
        self.leaving: set[str] = set()
        self.served: set[str] = set()  # workers that completed at least one call
        self.pids: dict[str, int] = {}
        self.nodes: dict[str, str] = {}  # worker -> Ray node id
        self.deaths = self.restarts = 0
        self._crash_streak = 0  # replacements in a row that died before serving
        self._rotation = 0
        pool.elastic = self
        self._record_whereabouts(list(pool.actors))

    # ------------------------------------------------------------------ size
    @property
    def size(self) -> int:
        """Workers the pool is heading for: serving (not leaving), starting and due."""
        return len(self.pool) - len(self.leaving) + len(self.starting) + len(self.due)

    def resize(self, n: int) -> None:
        if n < 1:
            raise ValueError(f"the {self.role} pool needs at least one worker, got {n}")
        grow = n - self.size
        now = time.monotonic()
        self.due += [now] * max(grow, 0)
        for _ in range(max(-grow, 0)):  # the least settled go first
            if self.due:
                self.due.pop()
            elif self.starting:
                name = next(reversed(self.starting))
                self._kill(self.starting.pop(name).actor)
                self.events.record("worker_removed", pool=self.role, worker=name)
            else:
                name = next(n for n in reversed(self.pool.actors) if n not in self.leaving)
                self.leaving.add(name)
        if grow:
            self.events.record("pool_resized", pool=self.role, size=n)

    # ------------------------------------------------------------------ deaths
    def died(self, name: str, err: BaseException | str) -> None:
        """`name` is gone: out of the pool, counted, and replaced after the back-off, unless
        the restart budget is spent (then `WorkerDied` naming it stops the run)."""
        actor = self.pool.actors.pop(name, None)
        if actor is None and name in self.starting:
            actor = self.starting.pop(name).actor
        if actor is None:
            return  # already handled (a second failed call of the same worker)
        self._kill(actor)
        self.deaths += 1
        was_leaving = name in self.leaving
        self.leaving.discard(name)
        self._crash_streak = 0 if name in self.served else self._crash_streak + 1
        self.events.record("worker_died", pool=self.role, worker=name, error=str(err)[:500])
        if was_leaving:
            return  # it was on its way out: nothing to replace
        if self.restarts >= self.cfg.max_restarts:
            raise WorkerDied(
                f"{name} died and the {self.role} pool's restart budget is spent "
                f"(elastic.max_restarts={self.cfg.max_restarts}): {err}"
            )
        self.restarts += 1
        delay = min(
            self.cfg.restart_backoff_s * 2 ** max(self._crash_streak - 1, 0),
            self.cfg.max_backoff_s,
        )
        self.due.append(time.monotonic() + delay)
        self.events.record("restart_scheduled", pool=self.role, replaces=name, delay_s=delay)

    def served_call(self, name: str) -> None:
        self.served.add(name)

    # ------------------------------------------------------------------ starting workers
    def poll(self) -> list[str]:
        """Start the due workers; return the starting ones that are ready (admitted already
        when `admit_when_ready`). A worker that fails to start counts as a death."""
        now = time.monotonic()
        for when in [t for t in self.due if t <= now]:
            self.due.remove(when)
            index, self.next_index = self.next_index, self.next_index + 1
            name, actor = self.spawn(index)
            self.starting[name] = _Starting(actor, actor.ready.remote(), now)
            self.events.record("worker_starting", pool=self.role, worker=name)
        if not self.starting:
            return []
        refs = {s.ready: name for name, s in self.starting.items()}
        done, _ = ray.wait(list(refs), num_returns=len(refs), timeout=0)
        ready = []
        for ref in done:
            name = refs[ref]
            try:
                ray.get(ref, timeout=1.0)
            except Exception as err:  # died while starting: the budget decides
                self.events.record("worker_start_failed", pool=self.role, worker=name)
                self.died(name, err)
                continue
            ready.append(name)
        for name, s in list(self.starting.items()):
            if name in ready:
                continue
            if now - s.since > self.start_timeout_s:
                self.died(name, f"not ready within {self.start_timeout_s:.0f} s")
            elif now - s.since > SLOW_START_S and not s.reported:
                s.reported = True  # most likely waiting for the CPUs/GPUs it reserves
                self.events.record(
                    "worker_slow_to_start",
                    pool=self.role,
                    worker=name,
                    waited_s=round(now - s.since),
                    cluster_free=ray.available_resources(),
                )
        if self.admit_when_ready:
            for name in ready:
                self.admit(name)
        return ready

    def wait_ready(self, timeout_s: float) -> list[str]:
        """Block until a starting or due worker is ready (for a pool with none serving)."""
        deadline = time.monotonic() + timeout_s
        while True:
            ready = self.poll()
            if ready:
                return ready
            if not self.starting and not self.due:
                raise WorkerDied(f"the {self.role} pool has no worker serving or starting")
            left = deadline - time.monotonic()
            if left <= 0:
                raise WorkerDied(
                    f"no {self.role} worker became ready within {timeout_s:.0f} s "
                    f"(starting: {', '.join(self.starting) or 'none'})"
                )
            refs = [s.ready for s in self.starting.values()]
            next_due = min(self.due, default=time.monotonic() + left) - time.monotonic()
            wait = max(min(left, next_due, 5.0), 0.01)
            if refs:
                ray.wait(refs, num_returns=1, timeout=wait)
            else:
                time.sleep(wait)

    def admit(self, name: str) -> None:
        """A ready worker starts serving."""
        self.pool.actors[name] = self.starting.pop(name).actor
        self._record_whereabouts([name])
        self.events.record(
            "worker_joined", pool=self.role, worker=name, node=self.nodes.get(name, "")
        )

    def any_serving(self, timeout_s: float) -> tuple[str, Any]:
        """A serving worker (in turn), waiting for a replacement when none serves."""
        if not self.pool.actors:
            for name in self.wait_ready(timeout_s):
                if name in self.starting:
                    self.admit(name)
        names = list(self.pool.actors)
        self._rotation += 1
        name = names[self._rotation % len(names)]
        return name, self.pool.actors[name]

    # ------------------------------------------------------------------ leaving
    def remove_leaving(self, idle: Callable[[str], bool] = lambda _: True) -> None:
        """Take out the leaving workers that have no work (`idle`)."""
        gone = [n for n in self.leaving if idle(n)]
        for name in gone:
            self.leaving.discard(name)
            actor = self.pool.actors.pop(name)
            try:
                ray.get(actor.shutdown.remote(), timeout=30)
            except Exception:  # best effort: it is killed next anyway
                pass
            self._kill(actor)
            self.events.record("worker_removed", pool=self.role, worker=name)

    # ------------------------------------------------------------------ reporting
    def metrics(self) -> dict[str, float]:
        r = self.role
        return {
            f"workers/{r}": float(len(self.pool)),
            f"workers/{r}_starting": float(len(self.starting) + len(self.due)),
            f"elastic/{r}_deaths": float(self.deaths),
            f"elastic/{r}_restarts": float(self.restarts),
        }

    def shutdown(self) -> None:
        for s in self.starting.values():
            self._kill(s.actor)
        self.starting.clear()
        self.due.clear()

    def _record_whereabouts(self, names: list[str]) -> None:
        """Each worker's process id and node, so an operator (or a test) can find it."""
        refs = [self.pool.actors[n].whereabouts.remote() for n in names]
        try:
            places = ray.get(refs, timeout=self.start_timeout_s)
        except Exception:  # a worker that dies here is found by its next call
            return
        for name, place in zip(names, places, strict=True):
            self.pids[name] = place["pid"]
            self.nodes[name] = place["node_id"]
            worker_logs.register(place["node_ip"], place["pid"], name)

    @staticmethod
    def _kill(actor: Any) -> None:
        try:
            ray.kill(actor, no_restart=True)
        except Exception:  # already gone
            pass
