"""The actor pools of one run, placed per the topology, and the groups that join them.

Process groups: each DeepSpeed pool (learner, critic) has its own training group, and the
weight-sync group joins learner rank 0 with every serving rollout worker. Adding or removing
a rollout worker during a run means rebuilding only the sync group (`build_sync_group`);
the learners' training group is never touched. The rollout, reward and reference pools are
elastic (`rlhf.runtime.elastic`): `spawner(role)` starts one more worker of them.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import ray

from rlhf.algorithms.base import started_pools
from rlhf.config import Config, PoolConfig
from rlhf.runtime.dispatch import Pending, Pool, wait_all
from rlhf.runtime.elastic import ElasticPool, Spawn
from rlhf.runtime.placement import PoolPlacement, unplaceable
from rlhf.runtime.remote import RemoteCallError, RemoteCallTimeout, WorkerDied, outcome
from rlhf.sync.buckets import ParamSpec
from rlhf.sync.group import SyncEndpoint, cancel_sync, resolve_backend
from rlhf.telemetry.events import EventLog

log = logging.getLogger(__name__)


class SyncFailed(RemoteCallError):
    """A weight sync (or the sync group's rebuild) failed because rollout workers died or
    hung (`dead`: killed by now); the message names every member that failed and why."""

    def __init__(self, message: str, dead: list[str]) -> None:
        super().__init__(message)
        self.dead = dead


def _actor(cls: type, pool: PoolConfig, name: str, placement: PoolPlacement, *args: Any) -> Any:
    remote_cls = ray.remote(num_cpus=pool.num_cpus, num_gpus=pool.num_gpus)(cls)
    return remote_cls.options(name=name, max_restarts=0, **placement.options(name)).remote(*args)


@dataclass
class Pools:
    cfg: Config
    rollout: Pool = field(default_factory=lambda: Pool("rollout"))
    reward: Pool = field(default_factory=lambda: Pool("reward"))
    reference: Pool = field(default_factory=lambda: Pool("reference"))
    learner: Pool = field(default_factory=lambda: Pool("learner"))
    critic: Pool = field(default_factory=lambda: Pool("critic"))
    manifest: list[ParamSpec] = field(default_factory=list)
    model_path: str = ""
    max_model_len: int | None = None  # the rollout engines' context (`fit_prompts`)
    elastic: dict[str, ElasticPool] = field(default_factory=dict)
    sync_store: tuple[str, int] | None = None  # the sync group's store (on learner rank 0)
    placements: dict[str, PoolPlacement] = field(default_factory=dict)

    def all(self) -> list[Pool]:
        return [self.rollout, self.reward, self.reference, self.learner, self.critic]

    # ------------------------------------------------------------------ start-up
    def spawner(self, role: str) -> Spawn:
        """Starts worker `index` of an elastic pool (named `{role}-{index}`)."""
        from rlhf.workers.reference import ReferenceWorker
        from rlhf.workers.reward import RewardWorker
        from rlhf.workers.rollout import RolloutWorker

        worker, extra = {
            "rollout": (RolloutWorker, (self.model_path, self.max_model_len)),
            "reward": (RewardWorker, ()),
            "reference": (ReferenceWorker, (self.model_path,)),
        }[role]
        pool_cfg = getattr(self.cfg.topology, role)
        placement = self.placements[role]

        def spawn(index: int) -> tuple[str, object]:
            name = f"{role}-{index}"
            return name, _actor(worker, pool_cfg, name, placement, self.cfg, index, *extra)

        return spawn

    @classmethod
    def start(
        cls,
        cfg: Config,
        model_path: str,
        needs: frozenset[str],
        events: EventLog | None = None,
        max_model_len: int | None = None,
    ) -> Pools:
        """Start what the topology asks for on the running Ray (`rlhf.runtime.cluster.connect`,
        which `Trainer.start` calls first): the reference pool only if `needs` has reference
        log-probs, the critic pool only if it has values. `max_model_len`: the rollout
        engines' context (None: `rollout.max_model_len`, or the model's)."""
        from rlhf.workers.critic import CriticWorker
        from rlhf.workers.learner import LearnerWorker

        wanted = started_pools(needs, cfg.stage_table())
        uses_reference, uses_critic = "reference" in wanted, "critic" in wanted
        t, timeout = cfg.topology, cfg.run.call_timeout_s
        pools = cls(cfg, model_path=model_path, max_model_len=max_model_len)
        for pool in pools.all():
            pool.colocated = cfg.is_colocated(pool.role)
        ranked = [(pools.learner, LearnerWorker, t.learner)]
        if uses_critic:
            ranked.append((pools.critic, CriticWorker, t.critic))
        elastic = [pools.rollout, pools.reward] + ([pools.reference] if uses_reference else [])
        started = [p for p, _, _ in ranked] + elastic
        problems = unplaceable(
            [n["Resources"] for n in ray.nodes() if n.get("Alive")],
            {p.role: (getattr(t, p.role).workers, getattr(t, p.role)) for p in started},
        )
        if problems:  # an autoscaling cluster may still add the nodes: wait, but say so
            log.warning(
                "the cluster cannot hold the topology as it is now (%s); waiting up to "
                "run.call_timeout_s=%.0f s for nodes",
                "; ".join(problems),
                timeout,
            )
        try:
            for pool in started:
                pools.placements[pool.role] = PoolPlacement(
                    pool.role,
                    getattr(t, pool.role),
                    getattr(t, pool.role).workers,
                    pools._holders(pool),
                )
            for placement in pools.placements.values():
                placement.wait_ready(timeout)
            for pool, worker, pool_cfg in ranked:
                for r in range(pool_cfg.workers):
                    name = f"{pool.role}-{r}"
                    pool.actors[name] = _actor(
                        worker,
                        pool_cfg,
                        name,
                        pools.placements[pool.role],
                        cfg,
                        r,
                        pool_cfg.workers,
                        model_path,
                    )
            for pool in elastic:
                spawn = pools.spawner(pool.role)
                for i in range(getattr(t, pool.role).workers):
                    name, actor = spawn(i)
                    pool.actors[name] = actor
            starting = [pools._init_training(p, timeout) for p, _, _ in ranked]
            starting += [
                p.call_all("ready") for p in (pools.rollout, pools.reward, pools.reference)
            ]
            try:
                wait_all(starting, timeout, "worker start-up")
            except RemoteCallTimeout as err:
                raise RemoteCallTimeout(
                    f"{err} (an actor that never starts may be waiting for resources: the "
                    f"cluster has {ray.cluster_resources()}; see the topology's num_cpus/num_gpus)"
                ) from err
            pools.manifest = pools.learner.lead().call_all("weight_manifest").wait(timeout)[0]
            pools.build_sync_group(timeout)
            for pool in elastic:  # the rollout pool admits new workers at a weight sync
                pools.elastic[pool.role] = ElasticPool(
                    pool,
                    pools.spawner(pool.role),
                    cfg.elastic,
                    events or EventLog(),
                    timeout,
                    admit_when_ready=pool.role != "rollout",
                )
        except BaseException:
            pools.shutdown()
            raise
        return pools

    def _holders(self, pool: Pool):
        """The pool's workers that hold a placement bundle: serving or starting."""

        def alive() -> set[str]:
            elastic = self.elastic.get(pool.role)
            return set(pool.actors) | (set(elastic.starting) if elastic else set())

        return alive

    def whereabouts(self, timeout: float) -> dict[str, dict[str, Any]]:
        """Every serving worker's pid and node, by name."""
        names, refs = [], []
        for pool in self.all():
            for name, actor in pool.actors.items():
                names.append(name)
                refs.append(actor.whereabouts.remote())
        return dict(zip(names, ray.get(refs, timeout=timeout), strict=True))

    def _init_training(self, pool: Pool, timeout: float):
        """Rank 0 hosts the group's store, already listening on a port the OS chose (a port
        picked first and bound later can be taken in between on a busy machine); every rank
        then joins."""
        what = f"{pool.role} training group address"
        ((addr, port),) = pool.lead().call_all("host_training_store", what=what).wait(timeout)
        return pool.call_all("init_training", addr, port, what=f"{pool.role} init_training")

    def build_sync_group(self, timeout: float) -> None:
        """(Re)build the weight-sync group: learner rank 0 is rank 0, rollout workers follow."""
        cfg, t = self.cfg, self.cfg.topology
        names = ("learner-0", *self.rollout.actors)
        ((host, port),) = (
            self.learner.lead()
            .call_all("host_sync_store", len(names), what="sync group store")
            .wait(timeout)
        )
        self.sync_store = (host, port)
        endpoint = SyncEndpoint(
            host=host,
            port=port,
            rank=0,
            world_size=len(names),
            backend=resolve_backend(
                cfg.sync.backend, t.learner.num_gpus > 0 and t.rollout.num_gpus > 0
            ),
            timeout_s=cfg.sync.timeout_s,
            peer_names=names,
        )
        learners = self.learner.call_all("init_weight_sync", endpoint, what="init_weight_sync")
        rollouts = self.rollout.call_each(
            "init_weight_sync",
            [(endpoint.for_rank(r),) for r in range(1, len(names))],
            what="init_weight_sync",
        )
        self._settle(learners, rollouts, timeout, f"sync group of {len(names)}")

    # ------------------------------------------------------------------ every iteration
    def sync_weights(self, version: int, timeout: float) -> dict[str, float]:
        """Learner rank 0 broadcasts every parameter; each rollout engine loads them. A
        member that dies or hangs fails it (`SyncFailed`) within `sync.timeout_s`: the
        sender names who did not answer, and the others give up too."""
        bucket = self.cfg.sync.bucket_bytes
        what = f"weight sync v{version}"
        send = self.learner.call_all("broadcast_weights", version, bucket, what=what)
        receive = self.rollout.call_all(
            "receive_weights", self.manifest, bucket, version, what=what
        )
        return self._settle(send, receive, timeout, what)[0]

    def _settle(self, learners: Pending, rollouts: Pending, timeout: float, what: str) -> list:
        """Wait for every member's call of a sync-group step.

        A rollout worker that dies makes the others give up at once (`cancel_sync`) instead
        of waiting out `sync.timeout_s`; once the sender has answered, receivers get
        `sync.timeout_s` more, and one that still has not answered is hung: it is killed.
        A dead learner stops the run (`WorkerDied`); the rollout workers that died or hung
        are `SyncFailed.dead`."""
        calls = learners.calls + rollouts.calls
        outcomes: list = [None] * len(calls)
        index = {ref: i for i, (_, ref) in enumerate(calls)}
        pending = set(index)
        senders = {ref for _, ref in learners.calls}
        deadline = time.monotonic() + timeout
        cancelled = False
        while pending:
            left = deadline - time.monotonic()
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=max(left, 0.0))
            if not ready:
                break
            for ref in ready:
                pending.discard(ref)
                i = index[ref]
                outcomes[i] = outcome(calls[i], what)
                name = calls[i][0]
                if isinstance(outcomes[i], WorkerDied) and not cancelled:
                    cancelled = self._cancel_sync(f"{name} died")
                if ref in senders and not senders & pending:
                    # the sender is done: receivers have sync.timeout_s more at most
                    deadline = min(deadline, time.monotonic() + self.cfg.sync.timeout_s)
        for ref in pending:
            i = index[ref]
            outcomes[i] = RemoteCallTimeout(f"{what}: {calls[i][0]} did not answer (hung)")
        errors = {
            n: o for (n, _), o in zip(calls, outcomes, strict=True) if isinstance(o, Exception)
        }
        if not errors:
            return outcomes
        for name, err in errors.items():
            if name in self.learner.actors and isinstance(err, WorkerDied | RemoteCallTimeout):
                raise err
        dead = [
            n for n, e in errors.items() if n in self.rollout.actors and isinstance(e, WorkerDied)
        ]
        hung = [
            n
            for n, e in errors.items()
            if n in self.rollout.actors and isinstance(e, RemoteCallTimeout)
        ]
        for name in hung:
            ray.kill(self.rollout.actors[name], no_restart=True)
        detail = "; ".join(f"{n}: {e}" for n, e in errors.items())
        raise SyncFailed(f"{what} failed: {detail}", dead + hung)

    def _cancel_sync(self, reason: str) -> bool:
        if self.sync_store is None:
            return False
        try:
            cancel_sync(*self.sync_store, reason)
        except Exception:  # the store is gone (its host died): the waits fail on their own
            return False
        return True

    def shutdown(self) -> None:
        for elastic in self.elastic.values():
            elastic.shutdown()
        for pool in (self.rollout, self.reward, self.learner, self.critic):
            for actor in pool.actors.values():
                try:
                    ray.get(actor.shutdown.remote(), timeout=30)
                except Exception:  # best effort: the actor may already be gone
                    pass
        for pool in self.all():
            for actor in pool.actors.values():
                ray.kill(actor)
            pool.actors.clear()
        for placement in self.placements.values():
            placement.remove()
        self.placements.clear()
