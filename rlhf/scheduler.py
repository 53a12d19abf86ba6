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
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ray

from rlhf.dispatch import Pending, Pool, wait_all
from rlhf.remote import RemoteCallTimeout, gather
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

    @property
    def done(self) -> bool:
        return all(r is not None for r in self.results)


class RolloutScheduler:
    def __init__(self, pool: Pool, prompts_per_call: int | None = None) -> None:
        self.pool = pool
        self.prompts_per_call = prompts_per_call
        self.free: deque[str] = deque(pool.actors)  # workers with no call in flight
        self.queue: deque[_Call] = deque()
        self.inflight: dict[ray.ObjectRef, tuple[str, _Call]] = {}
        self.requests: dict[int, _Request] = {}
        self._next_id = 0

    # ------------------------------------------------------------------ requests
    def submit(
        self,
        prompt_ids: list[list[int]],
        n: int,
        seed: int,
        greedy: bool = False,
        what: str = "generate",
    ) -> int:
        """Queue a request; returns its id for `result`. Call j's seed is `seed` plus the
        index of its first prompt, so samples do not depend on which worker runs a call."""
        rid, self._next_id = self._next_id, self._next_id + 1
        per = self.prompts_per_call or max(1, math.ceil(len(prompt_ids) / len(self.pool)))
        starts = list(range(0, len(prompt_ids), per))
        request = _Request(prompt_ids, n, seed, greedy, what, [None] * len(starts))
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
        """`dispatch.wait_all`, keeping the workers fed meanwhile."""
        calls = [c for p in pendings for c in p.calls]
        refs = {ref for _, ref in calls}
        self._pump(calls, lambda ready: refs <= ready, timeout_s, what)
        return wait_all(pendings, timeout_s, what)

    def drain(self, timeout_s: float) -> None:
        """Wait until no call is in flight, handing out no new one (before a weight sync)."""
        self._pump([], lambda _: not self.inflight, timeout_s, "generate", dispatch=False)

    # ------------------------------------------------------------------ the loop
    def _dispatch(self) -> None:
        while self.queue and self.free:
            call, name = self.queue.popleft(), self.free.popleft()
            r = self.requests[call.request]
            ref = self.pool.actors[name].generate.remote(
                r.prompt_ids[call.start : call.stop], r.n, r.seed + call.start, r.greedy
            )
            self.inflight[ref] = (name, call)

    def _finish(self, ref: ray.ObjectRef, timeout_s: float) -> None:
        name, call = self.inflight.pop(ref)
        what = self.requests[call.request].what
        (rollout,) = gather([(name, ref)], timeout_s, what)  # ready: raises naming the worker
        self.requests[call.request].results[call.index] = rollout
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
