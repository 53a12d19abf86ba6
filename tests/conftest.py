"""Fixtures shared by test modules, and the order that lets them share."""

from __future__ import annotations

import pytest

RAY = "ray_cluster"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The modules that use the shared Ray cluster run one after another, where the first of
    them would have run: the cluster then never sits idle between them (an idle local cluster
    costs ~3 CPU-s a minute). Whole modules move, so their own fixtures are set up once."""
    users = {_module(item) for item in items if RAY in item.fixturenames}
    if not users:
        return
    first = next(i for i, item in enumerate(items) if _module(item) in users)
    moved = [item for item in items if _module(item) in users]
    kept = [item for item in items if _module(item) not in users]
    items[:] = kept[:first] + moved + kept[first:]


def _module(item: pytest.Item) -> str:
    return item.nodeid.split("::")[0]


@pytest.fixture(scope="module")
def ray_cluster(request: pytest.FixtureRequest):
    """A local Ray cluster for the modules that drive actors from the test process, started
    once for all of them: a start and a stop cost about 4 s (eight modules use it). It stops
    after the last module that needs it, and starts again if something stopped it (an
    in-process `rlhf train` stops the cluster it ran on). 16 CPUs: placement only, as a local
    run's own cluster promises more than the machine has. A module leaves no actor behind
    (each test closes its trainer or kills its actors); a name still taken fails loudly."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=16, include_dashboard=False, log_to_driver=False, namespace="rlhf-tests")
    yield
    items = request.session.items
    last = max(i for i, item in enumerate(items) if _module(item) == request.node.nodeid)
    if not any(RAY in item.fixturenames for item in items[last + 1 :]):
        ray.shutdown()
