"""The rollout scheduler: generation work handed to free rollout workers, whole prompt groups
at a time, and collected tagged with the weights version and the worker that produced it.

A request (one batch's prompts, n samples each) is cut into calls of whole prompts
(`rollout.prompts_per_call`; by default one call per worker). A call goes to whichever
worker is free, one call in flight per worker, requests served in the order submitted. So
a weight sync, which the controller starts only once the calls in flight are done
(`drain`), reaches every worker between two of its calls, never inside one; calls still
queued then run on the new weights.

Every wait of the controller goes through `wait` or `result`, which keep the workers fed
while they wait: with `rollout.max_staleness = k > 0` the controller submits the next k
batches before it trains, and they are generated while the learner works.

Workers come and go (`rlhf.runtime.elastic`): a worker whose call fails because it died is dropped
and its call goes back to the front of the queue, so no prompt is lost and none is generated
twice; a worker marked leaving gets no new call; a new worker is `add`ed once it holds the
current weights. A queue that no worker is left to serve calls `on_starved`, which brings a
replacement in (the controller syncs it first).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ray

from rlhf.runtime.dispatch import Pending, Pool
from rlhf.runtime.elastic import ElasticPool
from rlhf.runtime.remote import RemoteCallTimeout, WorkerDied, gather
from rlhf.types import Rollout


@dataclass
class _Call:
    request: int
    index: int  # the call's place in its request
    start: int  # its prompts: [start, stop) of the request's
    stop: int


@dataclass
class _Request:
    prompt_ids: list[list[int]]
    n: int
    seed: int
    greedy: bool
    what: str
    results: list[Rollout | None] = field(default_factory=list)
    # per prompt, its text and dataset columns: what an environment's reset gets (episodes)
    contexts: list[tuple[str, dict]] | None = None

    @property
    def done(self) -> bool:
        return all(r is not None for r in self.results)


class RolloutScheduler:
    def __init__(
        self,
        pool: Pool,
        prompts_per_call: int | None = None,
        elastic: ElasticPool | None = None,
        on_starved: Callable[[], None] | None = None,
    ) -> None:
        self.pool = pool
        self.prompts_per_call = prompts_per_call
        self.elastic = elastic
        self.on_starved = on_starved
        self.free: deque[str] = deque(pool.actors)  # workers with no call in flight
        self.queue: deque[_Call] = deque()
        self.inflight: dict[ray.ObjectRef, tuple[str, _Call]] = {}
        self.requests: dict[int, _Request] = {}
        self.requeued = 0  # calls sent again because their worker died, over the run
        self._next_id = 0

    # ------------------------------------------------------------------ requests
    def submit(
        self,
        prompt_ids: list[list[int]],
        n: int,
        seed: int,
        greedy: bool = False,
        what: str = "generate",
        contexts: list[tuple[str, dict]] | None = None,
    ) -> int:
        """Queue a request; returns its id for `result`. Call j's seed is `seed` plus the
        index of its first prompt, so samples do not depend on which worker runs a call."""
        rid, self._next_id = self._next_id, self._next_id + 1
        workers = self.elastic.size if self.elastic is not None else len(self.pool)
        per = self.prompts_per_call or max(1, math.ceil(len(prompt_ids) / max(workers, 1)))
        starts = list(range(0, len(prompt_ids), per))
        request = _Request(prompt_ids, n, seed, greedy, what, [None] * len(starts), contexts)
        self.requests[rid] = request
        for i, start in enumerate(starts):
            self.queue.append(_Call(rid, i, start, min(start + per, len(prompt_ids))))
        self._dispatch()
        return rid

    def result(self, rid: int, timeout_s: float) -> list[Rollout]:
        """The request's rollouts in prompt order, once every call of it is back."""
        request = self.requests[rid]
        self._pump([], lambda _: request.done, timeout_s, request.what)
        del self.requests[rid]
        return [r for r in request.results if r is not None]

    def wait(self, pendings: list[Pending], timeout_s: float, what: str) -> list[list[Any]]:
        """Each pending's results (`Pending.wait`), keeping the workers fed meanwhile."""
        calls = [c for p in pendings for c in p.calls]
        refs = {ref for _, ref in calls}
        self._pump(calls, lambda ready: refs <= ready, timeout_s, what)
        return [p.wait(timeout_s) for p in pendings]

    # ------------------------------------------------------------------ membership
    def add(self, names: list[str]) -> None:
        """New workers, holding the current weights, start taking calls."""
        self.free.extend(n for n in names if n not in self.free)
        self._dispatch()

    def idle(self, name: str) -> bool:
        return all(n != name for n, _ in self.inflight.values())

    def drain(self, timeout_s: float) -> None:
        """Wait until no call is in flight, handing out no new one (before a weight sync)."""
        self._pump([], lambda _: not self.inflight, timeout_s, "generate", dispatch=False)

    # ------------------------------------------------------------------ the loop
    def _dispatch(self) -> None:
        leaving = self.elastic.leaving if self.elastic is not None else set()
        self.free = deque(n for n in self.free if n in self.pool.actors and n not in leaving)
        while self.queue and self.free:
            call, name = self.queue.popleft(), self.free.popleft()
            r = self.requests[call.request]
            contexts = r.contexts[call.start : call.stop] if r.contexts is not None else None
            ref = self.pool.actors[name].generate.remote(
                r.prompt_ids[call.start : call.stop], r.n, r.seed + call.start, r.greedy, contexts
            )
            self.inflight[ref] = (name, call)

    def _finish(self, ref: ray.ObjectRef, timeout_s: float) -> None:
        name, call = self.inflight.pop(ref)
        request = self.requests[call.request]
        try:
            (rollout,) = gather([(name, ref)], timeout_s, request.what)  # ready: no wait
        except WorkerDied as err:
            if self.elastic is None:
                raise
            self.elastic.died(name, err)  # raises when the restart budget is spent
            self.queue.appendleft(call)  # first in line: its request is the oldest
            self.requeued += 1
            return
        if request.results[call.index] is not None:  # each call is handed out once at a time
            raise RuntimeError(f"{request.what}: call {call.index} came back twice")
        request.results[call.index] = rollout
        if self.elastic is not None:
            self.elastic.served_call(name)
        self.free.append(name)

    def _pump(
        self,
        others: list[tuple[str, ray.ObjectRef]],
        done: Callable[[set[ray.ObjectRef]], bool],
        timeout_s: float,
        what: str,
        dispatch: bool = True,
    ) -> None:
        """Until `done(the refs of `others` that are ready)`: hand queued calls to free
        workers and collect finished ones. At the deadline, name every actor still owed."""
        deadline = time.monotonic() + timeout_s
        ready_others: set[ray.ObjectRef] = set()
        while not done(ready_others):
            if dispatch:
                self._dispatch()
            waiting = [ref for _, ref in others if ref not in ready_others] + list(self.inflight)
            if not waiting and dispatch and self.queue and self.on_starved is not None:
                self.on_starved()  # every worker is gone: a replacement comes in
                continue
            if not waiting:
                raise RuntimeError(f"{what}: nothing in flight can finish the wait")
            left = deadline - time.monotonic()
            ready, _ = ray.wait(waiting, num_returns=1, timeout=max(left, 0.0))
            if not ready:
                owed = [n for n, ref in others if ref not in ready_others]
                owed += [n for n, _ in self.inflight.values()]
                raise RemoteCallTimeout(
                    f"{what}: {', '.join(owed)} did not answer within {timeout_s:.0f} s"
                )
            for ref in ready:
                if ref in self.inflight:
                    self._finish(ref, timeout_s)
                else:
                    ready_others.add(ref)
