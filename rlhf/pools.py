"""The actor pools of one run, placed per the topology, and the groups that join them.

Process groups: each DeepSpeed pool (learner, critic) has its own training group, and the
weight-sync group joins learner rank 0 with every rollout worker. Adding or removing a
rollout worker during a run means rebuilding only the sync group (`build_sync_group`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import ray

from rlhf.config import Config, PoolConfig
from rlhf.dispatch import Pool, wait_all
from rlhf.remote import RemoteCallTimeout
from rlhf.sync.buckets import ParamSpec
from rlhf.sync.group import SyncEndpoint


def _actor(cls: type, pool: PoolConfig, name: str, *args: Any) -> Any:
    remote_cls = ray.remote(num_cpus=pool.num_cpus, num_gpus=pool.num_gpus)(cls)
    return remote_cls.options(name=name, max_restarts=0).remote(*args)


def resolve_backend(choice: str, uses_gpus: bool) -> str:
    if choice != "auto":
        return choice
    return "nccl" if uses_gpus else "gloo"


@dataclass
class Pools:
    cfg: Config
    rollout: Pool = field(default_factory=lambda: Pool("rollout"))
    reward: Pool = field(default_factory=lambda: Pool("reward"))
    reference: Pool = field(default_factory=lambda: Pool("reference"))
    learner: Pool = field(default_factory=lambda: Pool("learner"))
    critic: Pool = field(default_factory=lambda: Pool("critic"))
    manifest: list[ParamSpec] = field(default_factory=list)

    def all(self) -> list[Pool]:
        return [self.rollout, self.reward, self.reference, self.learner, self.critic]

    # ------------------------------------------------------------------ start-up
    @classmethod
    def start(cls, cfg: Config, model_path: str, needs: frozenset[str]) -> Pools:
        """Start what the topology asks for: the reference pool only if `needs` has
        reference log-probs, the critic pool only if it has values."""
        from rlhf.cluster import connect
        from rlhf.workers.critic import CriticWorker
        from rlhf.workers.learner import LearnerWorker
        from rlhf.workers.reference import ReferenceWorker
        from rlhf.workers.reward import RewardWorker
        from rlhf.workers.rollout import RolloutWorker

        uses_reference, uses_critic = "ref_logprobs" in needs, "values" in needs
        connect(cfg, uses_reference, uses_critic)
        t, timeout = cfg.topology, cfg.run.call_timeout_s
        pools = cls(cfg)
        for pool in pools.all():
            pool.colocated = t.is_colocated(pool.role)
        ranked = [(pools.learner, LearnerWorker, t.learner)]
        if uses_critic:
            ranked.append((pools.critic, CriticWorker, t.critic))
        for pool, worker, pool_cfg in ranked:
            for r in range(pool_cfg.workers):
                name = f"{pool.role}-{r}"
                pool.actors[name] = _actor(
                    worker, pool_cfg, name, cfg, r, pool_cfg.workers, model_path
                )
        for i in range(t.rollout.workers):
            pools.rollout.actors[f"rollout-{i}"] = _actor(
                RolloutWorker, t.rollout, f"rollout-{i}", cfg, i, model_path
            )
        for i in range(t.reward.workers):
            pools.reward.actors[f"reward-{i}"] = _actor(
                RewardWorker, t.reward, f"reward-{i}", cfg, i
            )
        if uses_reference:
            for i in range(t.reference.workers):
                pools.reference.actors[f"reference-{i}"] = _actor(
                    ReferenceWorker, t.reference, f"reference-{i}", cfg, i, model_path
                )
        try:
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
        except BaseException:
            pools.shutdown()
            raise
        return pools

    @staticmethod
    def _address(pool: Pool, timeout: float, what: str) -> tuple[str, int]:
        """A host and a free port on the pool's rank 0, which hosts a group's store."""
        lead = pool.lead()
        host, port = wait_all(
            [lead.call_all("node_address"), lead.call_all("free_port")], timeout, what
        )
        return host[0], port[0]

    def _init_training(self, pool: Pool, timeout: float):
        addr, port = self._address(pool, timeout, f"{pool.role} training group address")
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
        wait_all([learners, rollouts], timeout, "init_weight_sync")

    # ------------------------------------------------------------------ every iteration
    def sync_weights(self, version: int, timeout: float) -> dict[str, float]:
        """Learner rank 0 broadcasts every parameter; each rollout engine loads them."""
        bucket = self.cfg.sync.bucket_bytes
        send = self.learner.call_all(
            "broadcast_weights", version, bucket, what=f"weight sync v{version}"
        )
        receive = self.rollout.call_all(
            "receive_weights", self.manifest, bucket, version, what=f"weight sync v{version}"
        )
        stats, _ = wait_all([send, receive], timeout, f"weight sync v{version}")
        return stats[0]

    def shutdown(self) -> None:
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
