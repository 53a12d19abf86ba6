"""The actor pools of one run, placed per the topology, and the groups that join them.

Two process groups exist: the learners' training group (DeepSpeed data parallel) and the
weight-sync group (learner rank 0 + every rollout worker). Adding or removing a rollout
worker during a run means rebuilding only the sync group (`build_sync_group`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import ray

from rlhf.config import Config, PoolConfig
from rlhf.remote import gather


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
    rollouts: dict[str, Any] = field(default_factory=dict)
    rewards: dict[str, Any] = field(default_factory=dict)
    references: dict[str, Any] = field(default_factory=dict)
    learners: dict[str, Any] = field(default_factory=dict)
    manifest: list[Any] = field(default_factory=list)

    def rollout_items(self) -> list[tuple[str, Any]]:
        return list(self.rollouts.items())

    def reward_items(self) -> list[tuple[str, Any]]:
        return list(self.rewards.items())

    def reference_items(self) -> list[tuple[str, Any]]:
        return list(self.references.items())

    def learner_items(self) -> list[tuple[str, Any]]:
        return list(self.learners.items())

    # ------------------------------------------------------------------ start-up
    @classmethod
    def start(cls, cfg: Config, model_path: str, needs_reference: bool) -> Pools:
        from rlhf.cluster import connect
        from rlhf.workers.learner import LearnerWorker
        from rlhf.workers.reference import ReferenceWorker
        from rlhf.workers.reward import RewardWorker
        from rlhf.workers.rollout import RolloutWorker

        connect(cfg, needs_reference)
        t, timeout = cfg.topology, cfg.run.call_timeout_s
        pools = cls(cfg)
        world = t.learner.workers
        for r in range(world):
            pools.learners[f"learner-{r}"] = _actor(
                LearnerWorker, t.learner, f"learner-{r}", cfg, r, world, model_path
            )
        for i in range(t.rollout.workers):
            pools.rollouts[f"rollout-{i}"] = _actor(
                RolloutWorker, t.rollout, f"rollout-{i}", cfg, i, model_path
            )
        for i in range(t.reward.workers):
            pools.rewards[f"reward-{i}"] = _actor(RewardWorker, t.reward, f"reward-{i}", cfg, i)
        if needs_reference:
            for i in range(t.reference.workers):
                pools.references[f"reference-{i}"] = _actor(
                    ReferenceWorker, t.reference, f"reference-{i}", cfg, i, model_path
                )
        try:
            pools._init_training(timeout)
            others = {**pools.rollouts, **pools.rewards, **pools.references}
            gather([(n, a.ready.remote()) for n, a in others.items()], timeout, "worker start-up")
            pools.manifest = gather(
                [("learner-0", pools.learners["learner-0"].weight_manifest.remote())],
                timeout,
                "weight_manifest",
            )[0]
            pools.build_sync_group(timeout)
        except BaseException:
            pools.shutdown()
            raise
        return pools

    def _init_training(self, timeout: float) -> None:
        lead = self.learners["learner-0"]
        addr, port = gather(
            [("learner-0", lead.node_address.remote()), ("learner-0", lead.free_port.remote())],
            timeout,
            "training group address",
        )
        gather(
            [(n, a.init_training.remote(addr, port)) for n, a in self.learner_items()],
            timeout,
            "init_training",
        )

    def build_sync_group(self, timeout: float) -> None:
        """(Re)build the weight-sync group: learner rank 0 is rank 0, rollout workers follow."""
        cfg, t = self.cfg, self.cfg.topology
        backend = resolve_backend(
            cfg.sync.backend, t.learner.num_gpus > 0 and t.rollout.num_gpus > 0
        )
        lead = self.learners["learner-0"]
        host, port = gather(
            [("learner-0", lead.node_address.remote()), ("learner-0", lead.free_port.remote())],
            timeout,
            "sync group address",
        )
        names = ["learner-0", *self.rollouts]
        world = len(names)
        calls = [
            (n, a.init_weight_sync.remote(host, port, world, backend, cfg.sync.timeout_s, names))
            for n, a in self.learner_items()
        ]
        calls += [
            (
                n,
                a.init_weight_sync.remote(
                    host, port, rank, world, backend, cfg.sync.timeout_s, names
                ),
            )
            for rank, (n, a) in enumerate(self.rollout_items(), start=1)
        ]
        gather(calls, timeout, "init_weight_sync")

    # ------------------------------------------------------------------ every iteration
    def sync_weights(self, version: int, timeout: float) -> dict[str, float]:
        """Learner rank 0 broadcasts every parameter; each rollout engine loads them."""
        bucket = self.cfg.sync.bucket_bytes
        calls = [(n, a.broadcast_weights.remote(version, bucket)) for n, a in self.learner_items()]
        calls += [
            (n, a.receive_weights.remote(self.manifest, bucket, version))
            for n, a in self.rollout_items()
        ]
        results = gather(calls, timeout, f"weight sync v{version}")
        return results[0]

    def shutdown(self) -> None:
        for group in (self.rollouts, self.learners):
            for actor in group.values():
                try:
                    ray.get(actor.shutdown.remote(), timeout=30)
                except Exception:  # best effort: the actor may already be gone
                    pass
        for group in (self.rollouts, self.rewards, self.references, self.learners):
            for actor in group.values():
                ray.kill(actor)
            group.clear()
