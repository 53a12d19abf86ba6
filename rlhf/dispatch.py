"""Calling a pool of actors: every actor at once, or work split over them; waited on later.

Submitting returns a `Pending`, so independent stages (reward, reference, values, old
log-probs) run at the same time and are awaited together; `Pending.wait` goes through
`rlhf.remote.gather` (a deadline, and errors that name the actor).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rlhf.remote import gather


@dataclass
class Pending:
    what: str
    calls: list[tuple[str, Any]] = field(default_factory=list)  # (actor name, ObjectRef)
    parts: list[Any] = field(default_factory=list)  # what each call got (rows, for split)

    def wait(self, timeout_s: float) -> list[Any]:
        return gather(self.calls, timeout_s, self.what) if self.calls else []


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

        pending = Pending(what or f"{self.role}.{method}")
        for (n, a), rows in zip(self.actors.items(), split_unit_ids(units, len(self)), strict=True):
            if len(rows):
                pending.calls.append((n, getattr(a, method).remote(*make_args(rows))))
                pending.parts.append(rows)
        return pending
