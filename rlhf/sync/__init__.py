"""Learner -> rollout weight sync: manifest, bucket plan, and the process group that moves them."""

from rlhf.sync.buckets import ParamSpec, manifest_of, plan_buckets
from rlhf.sync.group import SyncEndpoint, WeightSyncGroup, WeightSyncTimeout, free_port

__all__ = [
    "ParamSpec",
    "SyncEndpoint",
    "WeightSyncGroup",
    "WeightSyncTimeout",
    "free_port",
    "manifest_of",
    "plan_buckets",
]
