"""Remote calls: a timeout names the actors that did not answer; a dead actor is named."""

from __future__ import annotations

import os
import time

import pytest
import ray

from rlhf.runtime.remote import RemoteCallError, RemoteCallTimeout, WorkerDied, gather

pytestmark = pytest.mark.slow


@ray.remote(num_cpus=0)
class Sleeper:
    def nap(self, seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    def fail(self) -> None:
        raise ValueError("bad input")

    def die(self) -> None:
        os._exit(1)


@pytest.fixture
def actors(ray_cluster):
    # Fresh actors per test: one still busy with a previous test's call would queue ours.
    group = [Sleeper.remote() for _ in range(3)]
    # Started before the test: a deadline inside it must not cover process start-up.
    ray.get([a.nap.remote(0.0) for a in group], timeout=120)
    yield group
    for a in group:
        ray.kill(a)


def test_results_in_order(actors):
    a, b, _ = actors
    assert gather([("a", a.nap.remote(0.2)), ("b", b.nap.remote(0.0))], 30, "nap") == [0.2, 0.0]


# A nap far longer than any deadline here: when gather raises, that call is still running, on
# any machine, which shows gather did not wait for it (no clock needed). The actor is killed
# after the test.
LONG_NAP = 60.0


def test_timeout_names_only_the_late_actor(actors):
    a, b, _ = actors
    fast, late = a.nap.remote(0.0), b.nap.remote(LONG_NAP)
    ray.get(fast)  # answered before the deadline starts, however busy the machine
    with pytest.raises(RemoteCallTimeout, match=r"nap: slow-one did not answer within 1 s") as err:
        gather([("fast", fast), ("slow-one", late)], 1.0, "nap")
    assert "fast" not in str(err.value)
    assert ray.wait([late], timeout=0) == ([], [late])  # raised at the deadline, not at the end


def test_failure_is_raised_without_waiting_for_the_rest(actors):
    a, b, _ = actors
    slow = a.nap.remote(LONG_NAP)
    with pytest.raises(RemoteCallError, match=r"score: worker judge failed: .*bad input"):
        gather([("slow", slow), ("judge", b.fail.remote())], 30, "score")
    assert ray.wait([slow], timeout=0) == ([], [slow])  # still running when the error came


def test_dead_actor_is_named(actors):
    _, _, c = actors
    with pytest.raises(WorkerDied, match=r"generate: worker rollout-7 died"):
        gather([("rollout-7", c.die.remote())], 30, "generate")
