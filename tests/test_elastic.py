"""Elastic rollout on the real stack: workers killed with a real `os.kill` from outside,
pools grown and shrunk while a run goes on, a receiver killed in the middle of a weight sync.

What must hold every time: the run goes on; every prompt of every iteration is trained on
exactly once, with all its samples (from `batches.jsonl`, compared with the prompts the
controller drew for that iteration); the engines hold the learner's weights after every
replacement (the sampler's and the learner's log-probs agree); the deaths and restarts show
in the metrics and in `events.jsonl`.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from dataclasses import replace

import pytest
import ray

from rlhf.driver.trainer import Trainer
from rlhf.runtime.control import ControlError, parse_sizes, request_scale, take_scale_requests
from rlhf.runtime.remote import WorkerDied
from tests.environments_for_tests import MarkedHint
from tests.trainers import PROMPTS, SAMPLES, small_trainer


# ---------------------------------------------------------------- without Ray
def test_scale_requests_are_checked_and_taken_once(tmp_path):
    assert parse_sizes(["rollout=3", "reward=2"]) == {"rollout": 3, "reward": 2}
    for bad, message in (
        (["learner=2"], "pools that scale are rollout, reward, reference"),
        (["rollout=two"], "whole number"),
        (["rollout=0"], "at least one worker"),
        ([], "say which pools"),
    ):
        with pytest.raises(ControlError, match=message):
            parse_sizes(bad)
    with pytest.raises(ControlError, match="not a run folder"):
        request_scale(tmp_path, {"rollout": 2})
    (tmp_path / "config.yaml").write_text("{}")
    request_scale(tmp_path, {"rollout": 3})
    request_scale(tmp_path, {"rollout": 1})
    assert take_scale_requests(tmp_path) == [{"rollout": 3}, {"rollout": 1}]  # in order
    assert take_scale_requests(tmp_path) == []
    (tmp_path / "summary.json").write_text("{}")
    with pytest.raises(ControlError, match="has finished"):
        request_scale(tmp_path, {"rollout": 2})


def test_rlhf_scale_refuses_bad_requests_with_exit_code_2(tmp_path, capsys):
    from rlhf.cli import main

    (tmp_path / "config.yaml").write_text("{}")
    assert main(["scale", str(tmp_path / "nope"), "rollout=2"]) == 2
    assert "no run folder" in capsys.readouterr().err
    assert main(["scale", str(tmp_path), "learner=2"]) == 2
    assert "pools that scale are rollout, reward, reference" in capsys.readouterr().err
    assert main(["scale", str(tmp_path), "reward=2"]) == 0
    assert take_scale_requests(tmp_path) == [{"reward": 2}]


# ---------------------------------------------------------------- on Ray
def _trainer(tmp_path, name: str, overrides: list[str]) -> Trainer:
    """Two calls of 2 prompts per worker and batch, one learner rank, quick restarts, and
    `batches.jsonl` to check every prompt against."""
    elastic = [
        "rollout.prompts_per_call=2",
        "topology.learner.workers=1",
        "elastic.restart_backoff_s=0.2",
        "run.record_batches=true",
        "run.call_timeout_s=240",
    ]
    return small_trainer(tmp_path, name, [*elastic, *overrides])


class Killer(threading.Thread):
    """Kills a serving worker of one pool `kills` times, at random moments: each time it
    waits until the pool is back to `size` serving workers, then a random delay, then
    SIGKILLs the process of a worker picked at random, then waits until the run has
    noticed (a dead process stays a zombie for a while, and would take a second kill)."""

    def __init__(self, trainer: Trainer, role: str, kills: int, size: int, seed: int) -> None:
        super().__init__(daemon=True)
        self.trainer, self.role, self.kills, self.size = trainer, role, kills, size
        self.rng = random.Random(seed)
        self.killed: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        assert self.trainer.pools is not None
        elastic = self.trainer.pools.elastic[self.role]
        while len(self.killed) < self.kills and not self.stop.is_set():
            try:
                serving = [n for n in list(elastic.pool.actors) if n in elastic.pids]
            except RuntimeError:  # the pool changed while it was read
                continue
            if len(serving) < self.size or elastic.leaving:
                time.sleep(0.05)
                continue
            if self.stop.wait(self.rng.uniform(0.0, 1.5)):
                return
            name = self.rng.choice(serving)
            if name not in elastic.pool.actors:
                continue  # died otherwise meanwhile
            try:
                os.kill(elastic.pids[name], signal.SIGKILL)
            except ProcessLookupError:
                continue
            self.killed.append(name)
            while name in elastic.pool.actors and not self.stop.is_set():
                time.sleep(0.05)  # until the run has noticed: each kill is one death


def _drive(trainer: Trainer, until, most: int) -> list[dict]:
    return _drive_from(trainer, 0, until, most)


def _drive_from(trainer: Trainer, first: int, until, most: int) -> list[dict]:
    """Iterations from `first` until `until(these records)` holds (at most `most`)."""
    records: list[dict] = []
    for it in range(first, first + most):
        record = trainer.iteration(it)
        trainer.metrics.write(record)
        records.append(record)
        if until(records):
            return records
    raise AssertionError(f"{most} iterations were not enough: {records[-1]}")


def _check_every_prompt_trained_once(trainer: Trainer, iterations: int) -> list[dict]:
    """batches.jsonl against the prompts the controller drew for each iteration."""
    lines = (trainer.run_dir / "batches.jsonl").read_text().splitlines()
    batches = [json.loads(line) for line in lines]
    assert [b["iteration"] for b in batches] == list(range(iterations))
    for b in batches:
        drawn, _ = trainer._prompts(PROMPTS, b["iteration"], 0)
        assert sorted(b["prompts"]) == sorted(p.text for p in drawn), b["iteration"]
        assert len(set(b["prompts"])) == len(b["prompts"]) == PROMPTS, b["iteration"]
        assert b["samples"] == [SAMPLES] * PROMPTS, b["iteration"]
    return batches


@pytest.mark.slow
def test_killed_workers_of_every_elastic_pool_are_replaced_and_no_prompt_is_lost(
    tmp_path, ray_cluster
):
    """Two workers in each of the rollout, reward and reference pools; 2 kills in each pool
    at random moments, the three killers at once (6 deaths; each replacement start costs
    seconds of CI's time)."""
    kills = 2
    trainer = _trainer(
        tmp_path,
        "killed",
        [
            "algorithm.beta=0.05",  # the reference pool serves
            "topology.rollout.workers=2",
            "topology.reward.workers=2",
            "topology.reference.workers=2",
            f"elastic.max_restarts={kills}",
            # a receiver killed inside a broadcast is found at the backend's deadline
            "sync.timeout_s=10",
        ],
    )
    try:
        trainer.start()
        killers = [
            Killer(trainer, role, kills, 2, seed)
            for seed, role in enumerate(("rollout", "reward", "reference"))
        ]
        for k in killers:
            k.start()

        def absorbed(records: list[dict]) -> bool:
            last = records[-1]
            return len(records) >= 3 and all(
                last[f"elastic/{k.role}_restarts"] == kills and last[f"workers/{k.role}"] == 2
                for k in killers
            )

        try:
            records = _drive(trainer, absorbed, most=2000)
            # one more batch: the last replacement joined at the last sync
            records += _drive_from(trainer, len(records), lambda _: True, most=1)
        finally:
            for k in killers:
                k.stop.set()
                k.join(timeout=10)
        assert trainer.pools is not None
        serving_at_end = set(trainer.pools.rollout.actors)
    finally:
        trainer.close()

    last = records[-1]
    for k in killers:
        assert len(k.killed) == kills, (k.role, k.killed)
        assert last[f"elastic/{k.role}_deaths"] == kills, k.role
        died = {e["worker"] for e in trainer.events.of("worker_died") if e["pool"] == k.role}
        assert died == set(k.killed), k.role  # each death logged with the worker's name
    batches = _check_every_prompt_trained_once(trainer, len(records))
    # The last batch came from the workers serving at the end (4 calls, 2 workers: both get
    # one), a replacement among them: the first kill can only hit rollout-0 or rollout-1.
    last_workers = {w for ws in batches[-1]["workers"] for w in ws}
    assert last_workers == serving_at_end and len(serving_at_end) == 2, last_workers
    assert serving_at_end - {"rollout-0", "rollout-1"}, serving_at_end
    for r in records:
        assert r["sync/logprob_abs_diff"] < 1e-3, (r["iteration"], r["sync/logprob_abs_diff"])
        assert r["rollout/staleness_max"] == 0


@pytest.mark.slow
def test_a_rollout_worker_killed_inside_episodes_loses_none_of_them(tmp_path, ray_cluster):
    """Two-turn episodes (tests.environments_for_tests:MarkedHint): once an environment marks
    that its worker is between an episode's two turns, that worker is SIGKILLed. Its call is
    sent again to a worker that serves, whole: every prompt is trained on once with all its
    samples, and every trained sample is a whole episode of two turns. On the
    plain-transformers engine, as the other elastic tests here: the scheduler requeues a call
    whatever engine ran it (episodes on vLLM: tests/test_episodes.py)."""
    marks = tmp_path / "marks"
    marks.mkdir()
    trainer = _trainer(
        tmp_path,
        "episodes",
        [
            "rollout.environment=tests.environments_for_tests:MarkedHint",
            "topology.rollout.workers=2",
            "elastic.max_restarts=1",
            "sync.timeout_s=10",
        ],
    )
    task = trainer.task
    for prompts in (task.train_prompts, task.eval_prompts):
        prompts[:] = [replace(p, columns={**p.columns, "marks": str(marks)}) for p in prompts]
    killed: list[str] = []

    def kill_at_the_first_mark() -> None:
        assert trainer.pools is not None
        pids = trainer.pools.elastic["rollout"].pids
        while not killed:
            by_pid = {str(pid): name for name, pid in list(pids.items())}
            marked = [by_pid[m.name] for m in marks.iterdir() if m.name in by_pid]
            if marked:
                os.kill(pids[marked[0]], signal.SIGKILL)
                killed.append(marked[0])
            time.sleep(0.02)

    try:
        trainer.start()
        killer = threading.Thread(target=kill_at_the_first_mark, daemon=True)
        killer.start()

        def replaced(records: list[dict]) -> bool:
            last = records[-1]
            return last["elastic/rollout_restarts"] == 1 and last["workers/rollout"] == 2

        records = _drive(trainer, replaced, most=20)
        records += _drive_from(trainer, len(records), lambda _: True, most=1)
    finally:
        trainer.close()
    (died,) = trainer.events.of("worker_died")
    assert [died["worker"]] == killed
    assert records[-1]["elastic/rollout_requeued_calls"] >= 1  # the killed call, sent again
    _check_every_prompt_trained_once(trainer, len(records))
    calls = PROMPTS // 2  # rollout.prompts_per_call=2
    for r in records:
        assert r["env/episodes"] == PROMPTS * SAMPLES and r["env/turns_mean"] == 2, r
        assert r["env/errors"] == r["env/timeouts"] == 0, r
        # every call's first steps linger: the wait on environment code is counted
        assert r["env/waited_s"] >= calls * MarkedHint.LINGER_S, r
        assert 0 < r["env/waited_share"] <= 1, r
        assert r["sync/logprob_abs_diff"] < 1e-3, (r["iteration"], r["sync/logprob_abs_diff"])


@pytest.mark.slow
def test_what_is_not_replaced_stops_the_run_naming_the_worker(tmp_path, ray_cluster):
    """A pool whose restart budget is spent, and a learner rank (its training group cannot
    lose a member), stop the run with an error that names the worker."""
    trainer = _trainer(tmp_path, "budget", ["topology.rollout.workers=1", "elastic.max_restarts=0"])
    try:
        trainer.start()
        assert trainer.pools is not None
        os.kill(trainer.pools.elastic["rollout"].pids["rollout-0"], signal.SIGKILL)
        with pytest.raises(
            WorkerDied, match=r"rollout-0 died and the rollout pool's restart budget"
        ):
            trainer.iteration(0)
    finally:
        trainer.close()
    trainer = _trainer(tmp_path, "learner", ["topology.rollout.workers=1"])
    try:
        trainer.start()
        assert trainer.pools is not None
        learner = trainer.pools.learner.actors["learner-0"]
        os.kill(ray.get(learner.pid.remote(), timeout=60), signal.SIGKILL)
        with pytest.raises(WorkerDied, match="learner-0 died"):
            trainer.iteration(0)
    finally:
        trainer.close()


def _until_ready_without(store_address, sync: threading.Thread, ready_rank: int, missing_rank: int):
    """Until the sync in `sync` has a round that sync rank `ready_rank` is ready for and
    `missing_rank` is not: read from the sync group's store, where each receiver posts
    `ready/<round>/<rank>` (rlhf.sync.group)."""
    from datetime import timedelta

    import torch.distributed as dist

    host, port = store_address
    store = dist.TCPStore(host, port, None, is_master=False, timeout=timedelta(seconds=30))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and sync.is_alive():
        for n in range(1, 200):  # the rounds a test gets to
            if not store.check([f"ready/{n}/{ready_rank}"]):
                continue
            if not store.check([f"ready/{n}/{missing_rank}"]):
                return
        time.sleep(0.01)
    raise AssertionError("the sync never waited for the stopped worker")


@pytest.mark.slow
def test_receivers_killed_or_stalled_mid_sync_fail_it_naming_them_and_the_run_recovers(
    tmp_path, ray_cluster
):
    """vLLM receivers, two cases in one run.

    Killed: rollout-1 is stopped (SIGSTOP), so it cannot get ready for the sync; the sync
    starts, then rollout-1 is killed (SIGKILL). Ray reports the death, the controller cancels
    the sync, and the sender's error names rollout-1 (long before its deadline).
    Stalled: once the replacement (rollout-2) serves, it is stopped and never resumed. The
    sender gives up at `sync.timeout_s` naming it; it is then taken for hung, killed and
    replaced. Each time the group is rebuilt and the same version goes out again."""
    trainer = _trainer(
        tmp_path,
        "mid-sync",
        [
            "rollout.engine=vllm",
            "topology.rollout.workers=2",
            "sync.timeout_s=5",
            "elastic.restart_backoff_s=0",
        ],
    )

    def replaced(recs: list[dict]) -> bool:
        return recs[-1]["workers/rollout"] == 2 and len(recs) >= 2

    try:
        trainer.start()
        assert trainer.pools is not None
        elastic = trainer.pools.elastic["rollout"]
        records = _drive_from(trainer, 0, lambda _: True, most=1)

        # killed in the middle of a sync
        pid = elastic.pids["rollout-1"]
        os.kill(pid, signal.SIGSTOP)
        version = trainer.policy_version
        synced: dict = {}
        sync = threading.Thread(
            target=lambda: synced.update(trainer.membership.sync_rollout(version))
        )
        sync.start()
        _until_ready_without(trainer.pools.sync_store, sync, ready_rank=1, missing_rank=2)
        os.kill(pid, signal.SIGKILL)  # the sender and rollout-0 wait for it in the sync
        sync.join(timeout=180)
        assert not sync.is_alive()
        assert synced["bytes"] > 0  # the second try went through
        (killed,) = trainer.events.of("sync_failed")
        assert killed["dead"] == ["rollout-1"] and killed["version"] == version
        assert (
            f"learner-0 (sync rank 0): get ready for weights version {version} cancelled: "
            "rollout-1 died" in killed["error"]
        ), killed["error"]
        assert trainer.pools.rollout.actors.keys() == {"rollout-0"}
        records += _drive_from(trainer, len(records), replaced, most=1000)

        # stalled in the middle of a sync
        assert list(trainer.pools.rollout.actors) == ["rollout-0", "rollout-2"]
        os.kill(elastic.pids["rollout-2"], signal.SIGSTOP)
        version = trainer.policy_version
        assert trainer.membership.sync_rollout(version)["bytes"] > 0
        stalled = trainer.events.of("sync_failed")[1]
        assert stalled["dead"] == ["rollout-2"] and stalled["version"] == version
        assert (
            f"rollout-2 (sync rank 2) did not get ready for weights version {version} within 5s"
            in stalled["error"]
        ), stalled["error"]
        assert "rollout-2 did not answer (hung)" in stalled["error"]
        records += _drive_from(trainer, len(records), replaced, most=1000)
        records += _drive_from(trainer, len(records), lambda _: True, most=1)
    finally:
        trainer.close()
    last = records[-1]
    assert last["elastic/sync_failures"] == 2
    assert last["elastic/rollout_deaths"] == 2 and last["elastic/rollout_restarts"] == 2
    batches = _check_every_prompt_trained_once(trainer, len(records))
    assert {w for ws in batches[-1]["workers"] for w in ws} == {"rollout-0", "rollout-3"}
    for r in records:  # the engines hold the learner's weights all along
        assert r["sync/logprob_abs_diff"] < 1e-3, (r["iteration"], r["sync/logprob_abs_diff"])


@pytest.mark.slow
def test_rollout_pool_grows_from_1_to_3_and_shrinks_to_1_during_a_run(tmp_path, ray_cluster):
    """`rlhf scale` on a running job (vLLM engines): each new worker joins at a weight sync
    and its first samples come from the current weights; the removed workers finish their
    calls, so no call is sent twice and no prompt is lost. The reward pool grows and shrinks
    alongside."""
    from rlhf.cli import main

    trainer = _trainer(tmp_path, "scaled", ["rollout.engine=vllm", "topology.rollout.workers=1"])
    run = str(trainer.run_dir)
    try:
        trainer.start()
        records = _drive_from(trainer, 0, lambda recs: len(recs) >= 2, most=2)
        assert main(["scale", run, "rollout=3", "reward=2"]) == 0

        def grown(recs: list[dict]) -> bool:
            return recs[-1]["workers/rollout"] == 3 and recs[-1]["workers/reward"] == 2

        records += _drive_from(trainer, len(records), grown, most=1000)
        records += _drive_from(trainer, len(records), lambda recs: len(recs) >= 2, most=2)
        assert main(["scale", run, "rollout=1", "reward=1"]) == 0
        records += _drive_from(trainer, len(records), lambda recs: len(recs) >= 2, most=2)
    finally:
        trainer.close()

    assert [r["workers/rollout"] for r in records[:2]] == [1, 1]
    assert [r["workers/rollout"] for r in records[-2:]] == [1, 1]
    assert [r["workers/reward"] for r in records[-2:]] == [1, 1]
    removed = [e["worker"] for e in trainer.events.of("worker_removed")]
    assert sorted(removed) == ["reward-1", "rollout-1", "rollout-2"]  # the newest leave
    assert records[-1]["elastic/rollout_requeued_calls"] == 0  # nothing was generated twice
    batches = _check_every_prompt_trained_once(trainer, len(records))
    first_batch = {}
    for b in batches:
        for workers in b["workers"]:
            for w in workers:
                first_batch.setdefault(w, b)
    assert {"rollout-0", "rollout-1", "rollout-2"} <= first_batch.keys()
    for w in ("rollout-1", "rollout-2"):  # from the current weights, from the first sample
        b = first_batch[w]
        mine = [v for ws, v in zip(b["workers"], b["versions"], strict=True) if w in ws]
        assert mine and all(v == [b["policy_version"]] for v in mine), (w, b)
    for r in records:
        assert r["sync/logprob_abs_diff"] < 1e-3, (r["iteration"], r["sync/logprob_abs_diff"])


@pytest.mark.slow
def test_a_slow_rollout_worker_gets_fewer_calls(tmp_path, ray_cluster):
    """Calls go to whichever worker is free: rollout-1 is stopped (SIGSTOP) with its first
    call, and resumed only once rollout-0 has taken every other call of the batch. The
    per-worker metrics show the split."""
    trainer = _trainer(
        tmp_path, "spread", ["topology.rollout.workers=2", "rollout.prompts_per_call=1"]
    )
    try:
        trainer.start()
        assert trainer.pools is not None and trainer.scheduler is not None
        scheduler = trainer.scheduler
        first = _drive_from(trainer, 0, lambda _: True, most=1)[0]
        assert first["worker/rollout-0/prompts"] + first["worker/rollout-1/prompts"] == PROMPTS
        pid = trainer.pools.elastic["rollout"].pids["rollout-1"]
        os.kill(pid, signal.SIGSTOP)

        def only_the_stopped_one_left() -> bool:
            try:
                busy = [n for n, _ in list(scheduler.inflight.values())]
            except RuntimeError:  # changed while read
                return False
            return busy == ["rollout-1"] and not scheduler.queue

        def resume() -> None:
            while not only_the_stopped_one_left():
                time.sleep(0.01)
            os.kill(pid, signal.SIGCONT)

        waker = threading.Thread(target=resume, daemon=True)
        waker.start()
        record = trainer.iteration(1)
        waker.join(timeout=10)
    finally:
        trainer.close()
    assert record["worker/rollout-1/prompts"] == 1
    assert record["worker/rollout-0/prompts"] == PROMPTS - 1
    assert record["worker/rollout-0/tokens"] > record["worker/rollout-1/tokens"] > 0
