"""Waiting on remote calls with a deadline, failing fast, and naming the actor at fault."""

from __future__ import annotations

import time
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError


class RemoteCallError(RuntimeError):
    """A remote call failed, timed out, or its actor died; the message names the actor."""


class RemoteCallTimeout(RemoteCallError):
    pass


class WorkerDied(RemoteCallError):
    pass


def gather(calls: list[tuple[str, ray.ObjectRef]], timeout_s: float, what: str) -> list[Any]:
    """Results of `calls` (name, ref) in order. Raises on the first failure, or at the deadline
    naming every actor that has not answered."""
    by_ref = {ref: i for i, (_, ref) in enumerate(calls)}
    results: list[Any] = [None] * len(calls)
    pending = [ref for _, ref in calls]
    deadline = time.monotonic() + timeout_s
    while pending:
        left = deadline - time.monotonic()
        ready, pending = ray.wait(pending, num_returns=1, timeout=max(left, 0.0))
        if not ready:
            late = ", ".join(calls[by_ref[r]][0] for r in pending)
            raise RemoteCallTimeout(f"{what}: {late} did not answer within {timeout_s:.0f} s")
        for ref in ready:
            name = calls[by_ref[ref]][0]
            try:
                results[by_ref[ref]] = ray.get(ref, timeout=max(deadline - time.monotonic(), 1.0))
            except RayActorError as err:
                raise WorkerDied(f"{what}: worker {name} died: {err}") from err
            except RayTaskError as err:
                cause = err.cause if getattr(err, "cause", None) is not None else err
                raise RemoteCallError(
                    f"{what}: worker {name} failed: {type(cause).__name__}: {cause}"
                ) from err
            except GetTimeoutError as err:
                raise RemoteCallTimeout(
                    f"{what}: {name} did not answer within {timeout_s:.0f} s"
                ) from err
    return results


def gather_outcomes(
    calls: list[tuple[str, ray.ObjectRef]], timeout_s: float, what: str
) -> list[Any]:
    """Like `gather`, but waits for every call and raises nothing: each slot holds the call's
    result or the `RemoteCallError` it ended with (`WorkerDied`, or `RemoteCallTimeout` for a
    call still running at the deadline). For callers that recover per call."""
    outcomes: list[Any] = [None] * len(calls)
    pending = {ref: i for i, (_, ref) in enumerate(calls)}
    deadline = time.monotonic() + timeout_s
    while pending:
        left = max(deadline - time.monotonic(), 0.0)
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=left)
        if not ready:
            for i in pending.values():
                outcomes[i] = RemoteCallTimeout(
                    f"{what}: {calls[i][0]} did not answer within {timeout_s:.0f} s"
                )
            break
        for ref in ready:
            i = pending.pop(ref)
            outcomes[i] = outcome(calls[i], what)
    return outcomes


def outcome(call: tuple[str, ray.ObjectRef], what: str) -> Any:
    """A finished call's result, or the `RemoteCallError` it ended with (raised by nothing)."""
    try:
        return gather([call], 1.0, what)[0]  # finished: no wait
    except RemoteCallError as err:
        return err
