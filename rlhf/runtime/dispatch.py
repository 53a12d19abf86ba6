"""Calling a pool of actors: every actor at once, or work split over them; waited on later.

Submitting returns a `Pending`, so independent stages (reward, reference, values, old
log-probs) run at the same time and are awaited together; `Pending.wait` goes through
`rlhf.runtime.remote.gather` (a deadline, and errors that name the actor).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from rlhf.runtime.remote import RemoteCallError, WorkerDied, gather, gather_outcomes


class Replaceable(Protocol):
    """What a `Pending` needs to re-send a dead worker's part (`rlhf.runtime.elastic.ElasticPool`)."""

    def died(self, name: str, err: BaseException | str) -> None: ...

    def served_call(self, name: str) -> None: ...

    def any_serving(self, timeout_s: float) -> tuple[str, Any]: ...


@dataclass
class Pending:
    what: str
    calls: list[tuple[str, Any]] = field(default_factory=list)  # (actor name, ObjectRef)
    parts: list[Any] = field(default_factory=list)  # what each call got (rows, for split)
    # Set for work that any worker of an elastic pool can do: each call's (method, args),
    # re-sent to another worker when its worker dies.
    elastic: Replaceable | None = None
    redo: list[tuple[str, tuple]] = field(default_factory=list)

    def wait(self, timeout_s: float) -> list[Any]:
        if not self.calls:
            return []
        if self.elastic is None:
            return gather(self.calls, timeout_s, self.what)
        return self._wait_resending(self.elastic, timeout_s)

    def _wait_resending(self, pool: Replaceable, timeout_s: float) -> list[Any]:
        """Every call's result; a call whose worker died goes to another serving worker (or
        a replacement, once ready), within the one deadline. Other errors raise."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = max(deadline - time.monotonic(), 0.0)
            outcomes = gather_outcomes(self.calls, left, self.what)
            failed = [o for o in outcomes if isinstance(o, RemoteCallError)]
            if not failed:
                for name, _ in self.calls:
                    pool.served_call(name)
                return outcomes
            fatal = [o for o in failed if not isinstance(o, WorkerDied)]
            if fatal:
                raise fatal[0]
            dead = [i for i, o in enumerate(outcomes) if isinstance(o, WorkerDied)]
            for i in dead:
                pool.died(self.calls[i][0], outcomes[i])
            for i in dead:
                name, actor = pool.any_serving(max(deadline - time.monotonic(), 0.0))
                method, args = self.redo[i]
                self.calls[i] = (name, getattr(actor, method).remote(*args))


def wait_all(pendings: list[Pending], timeout_s: float, what: str) -> list[list[Any]]:
    """Wait on several pending calls at once: the first failure anywhere is raised (naming
    its actor) without waiting for the rest; results come back per `Pending`."""
    flat = [c for p in pendings for c in p.calls]
    results = gather(flat, timeout_s, what) if flat else []
    out, start = [], 0
    for p in pendings:
        out.append(results[start : start + len(p.calls)])
        start += len(p.calls)
    return out


class Pool:
    """The actors of one role (rollout, reward, reference, learner, critic), by name."""

    def __init__(
        self, role: str, actors: dict[str, Any] | None = None, colocated: bool = False
    ) -> None:
        self.role = role
        self.actors: dict[str, Any] = dict(actors or {})
        self.colocated = colocated  # takes turns with the other colocated pools
        self.elastic: Replaceable | None = None  # set when workers may be replaced

    def __len__(self) -> int:
        return len(self.actors)

    def items(self) -> list[tuple[str, Any]]:
        return list(self.actors.items())

    def lead(self) -> Pool:
        """The pool's first actor alone (rank 0 of a DeepSpeed pool)."""
        name, actor = next(iter(self.actors.items()))
        return Pool(self.role, {name: actor}, self.colocated)

    def call_all(self, method: str, *args: Any, what: str | None = None) -> Pending:
        """`method(*args)` on every actor (a collective, or a broadcast of settings)."""
        calls = [(n, getattr(a, method).remote(*args)) for n, a in self.actors.items()]
        return Pending(what or f"{self.role}.{method}", calls, list(range(len(calls))))

    def call_each(
        self, method: str, per_actor: Sequence[tuple], what: str | None = None
    ) -> Pending:
        """`method(*per_actor[i])` on actor i (one argument tuple per actor, in order)."""
        if len(per_actor) != len(self.actors):
            raise ValueError(f"{self.role}: {len(per_actor)} argument sets for {len(self)} actors")
        calls = [
            (n, getattr(a, method).remote(*args))
            for (n, a), args in zip(self.actors.items(), per_actor, strict=True)
        ]
        return Pending(what or f"{self.role}.{method}", calls, list(range(len(calls))))

    def split(
        self,
        method: str,
        units: np.ndarray,
        make_args: Callable[[np.ndarray], tuple],
        what: str | None = None,
    ) -> Pending:
        """Work split over the actors by whole units: rows (indices into `units`) are cut into
        `len(self)` contiguous parts of near-equal size, never inside a unit (a prompt's
        samples, a pair); actor i runs `method(*make_args(rows_i))`. Empty parts are not
        sent. `Pending.parts` holds each call's rows, to put results back in place."""
        from rlhf.batch import split_unit_ids

        pending = Pending(what or f"{self.role}.{method}", elastic=self.elastic)
        for (n, a), rows in zip(self.actors.items(), split_unit_ids(units, len(self)), strict=True):
            if len(rows):
                args = make_args(rows)
                pending.calls.append((n, getattr(a, method).remote(*args)))
                pending.parts.append(rows)
                pending.redo.append((method, args))
        return pending
