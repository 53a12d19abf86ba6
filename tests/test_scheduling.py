"""How work is scheduled over the pools, on the real stack (Ray actors, DeepSpeed, gloo sync;
the plain-transformers engine, which starts in seconds, generates).

- Asynchronous generation (`rollout.max_staleness=1`): batches are generated while the
  learner trains, in calls of whole prompt groups handed to whichever of two workers is free;
  no trained sample is more than one version old, and samples of both ages occur.
- Colocated pools take turns and disaggregated pools work at once: the order of the work
  must not change the arithmetic, so both give the same first update.
"""

from __future__ import annotations

import numpy as np
import pytest

from rlhf.driver.trainer import Trainer
from tests.trainers import small_trainer

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_cluster")]


def _spy_batches(trainer: Trainer) -> list:
    """Record each iteration's generated batch as the controller takes it."""
    seen: list = []
    take = trainer._batch

    def recording(it: int):
        seen.append(take(it))
        return seen[-1]

    trainer._batch = recording  # type: ignore[method-assign]
    return seen


def test_async_generation_trains_on_samples_at_most_one_version_old(tmp_path):
    iterations = 5
    trainer = small_trainer(
        tmp_path,
        "async",
        [
            "rollout.max_staleness=1",
            "rollout.prompts_per_call=2",  # 4 calls per batch over 2 workers
            "topology.rollout.workers=2",
            f"run.iterations={iterations}",
            "learner.lr=0.01",
        ],
    )
    batches = _spy_batches(trainer)
    try:
        trainer.start()
        records = [trainer.iteration(it) for it in range(iterations)]
    finally:
        trainer.close()

    ages: list[int] = []
    for record, sampled in zip(records, batches, strict=True):
        learner = record["policy_version"]
        for r in sampled.rollouts:
            assert 0 <= learner - r.policy_version <= 1, (record["iteration"], r.worker)
            ages += [learner - r.policy_version] * len(r)
        # the asynchronous default corrects for the older sampler
        assert "offpolicy/is_weight" in record
    assert record["policy_version"] == iterations - 1  # every iteration trained and synced
    assert 0 in ages and 1 in ages, ages
    workers = {r.worker for s in batches for r in s.rollouts}
    assert workers == {"rollout-0", "rollout-1"}


def _first_update(tmp_path, name: str, overrides: list[str]) -> tuple[object, dict]:
    trainer = small_trainer(
        tmp_path,
        name,
        [
            # partial credit: rewards differ within groups even for a barely trained model
            "reward.functions=[{name: addition_digits}]",
            "algorithm.beta=0.04",  # a reference stage, to take its turn too
            "algorithm.mini_batches=2",  # and an old log-probs stage on the learner
            "learner.lr=0.01",
            *overrides,
        ],
    )
    batches = _spy_batches(trainer)
    try:
        trainer.start()
        assert trainer.pools is not None
        before = trainer.pools.learner.call_all("full_weights").wait(120)[0]
        trainer.iteration(0)
        after = trainer.pools.learner.call_all("full_weights").wait(120)[0]
    finally:
        trainer.close()
    return batches[0], {k: after[k] - before[k] for k in before}


def test_colocated_and_disaggregated_give_the_same_first_update(tmp_path):
    # Same thread count in both modes (1), so only the order of the work differs; with it the
    # arithmetic, and so the update, is identical bit for bit.
    one_each = ["topology.rollout.workers=1", "topology.learner.workers=1"]
    disaggregated = _first_update(
        tmp_path, "disaggregated", [*one_each, "topology.colocate_all=false"]
    )
    colocated = _first_update(
        tmp_path,
        "colocated",
        [*one_each, "topology.colocate_all=true", "topology.colocated_threads=1"],
    )
    (batch_a, update_a), (batch_b, update_b) = disaggregated, colocated
    np.testing.assert_array_equal(batch_a.batch["input_ids"], batch_b.batch["input_ids"])
    moved = 0
    for name, delta in update_a.items():
        np.testing.assert_array_equal(delta, update_b[name], err_msg=name)
        moved += int(np.count_nonzero(delta))
    assert moved > 0  # the step changed the weights
