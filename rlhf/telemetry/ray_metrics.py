"""Each iteration's metrics as Ray metrics (`ray.util.metrics` gauges, tagged with the run).

Ray exports them, prefixed `ray_`, on the driver node's Prometheus endpoint (`ray start
--metrics-export-port`; `rlhf train` prints it) and the dashboard's metrics view shows them
once Prometheus scrapes that endpoint (docs/cluster.md). The run folder's metrics.jsonl
stays the complete record; these are the readings worth watching live.
"""

from __future__ import annotations

import math
import re
from typing import Any

# gauge name, description, the record key it reads
PLAIN: tuple[tuple[str, str, str], ...] = (
    ("rlhf_iteration", "iterations done", "iteration"),
    ("rlhf_policy_version", "weights version being trained", "policy_version"),
    ("rlhf_reward_mean", "mean reward of the iteration's samples", "reward/mean"),
    ("rlhf_kl", "KL to the reference policy", "kl"),
    ("rlhf_loss", "total policy loss", "loss/total"),
    ("rlhf_sync_seconds", "weight sync, seconds", "time/sync"),
    ("rlhf_sync_gb_per_s", "weight sync send rate, GB/s", "sync/gb_per_s"),
    ("rlhf_queued_calls", "generate calls waiting for a rollout worker", "rollout/queued_calls"),
    ("rlhf_calls_in_flight", "generate calls being generated", "rollout/calls_in_flight"),
    ("rlhf_tokens", "tokens generated in the iteration", "rollout/tokens"),
)
_PHASE = re.compile(r"time/(\w+)$")
_WORKER_TOKENS = re.compile(r"worker/(.+)/tokens$")
_RESTARTS = re.compile(r"elastic/(\w+)_restarts$")
_WORKERS = re.compile(r"workers/(\w+)$")


def readings(record: dict[str, Any]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The gauge readings of one iteration's record: {(gauge, tags): value}; missing and
    non-finite values are left out (a gauge keeps its last reading)."""
    values = dict(record)
    if values.get("sync/send_seconds"):
        values["sync/gb_per_s"] = values.get("sync/bytes", 0.0) / values["sync/send_seconds"] / 1e9
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for gauge, _, key in PLAIN:
        if key in values:
            out[(gauge, ())] = values[key]
    generate_s = values.get("time/generate") or 0.0
    for key, value in values.items():
        if m := _PHASE.match(key):
            out[("rlhf_phase_seconds", (("phase", m.group(1)),))] = value
        elif (m := _WORKER_TOKENS.match(key)) and generate_s > 0:
            out[("rlhf_worker_tokens_per_s", (("worker", m.group(1)),))] = value / generate_s
        elif m := _RESTARTS.match(key):
            out[("rlhf_restarts", (("pool", m.group(1)),))] = value
        elif m := _WORKERS.match(key):
            out[("rlhf_workers", (("pool", m.group(1)),))] = value
    return {
        k: float(v)
        for k, v in out.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    }


DESCRIPTIONS = {
    **{g: d for g, d, _ in PLAIN},
    "rlhf_phase_seconds": "seconds per phase of the iteration",
    "rlhf_worker_tokens_per_s": "tokens per second of generation, per rollout worker",
    "rlhf_restarts": "replacements of dead workers so far, per pool",
    "rlhf_workers": "serving workers, per pool",
}
TAGS = {
    "rlhf_phase_seconds": ("phase",),
    "rlhf_worker_tokens_per_s": ("worker",),
    "rlhf_restarts": ("pool",),
    "rlhf_workers": ("pool",),
}


class RayMetrics:
    """Sets the gauges from each iteration's record (in the driver; Ray exports them)."""

    def __init__(self, run: str) -> None:
        from ray.util.metrics import Gauge

        self.run = run
        self.gauges = {
            name: Gauge(name, description, tag_keys=("run", *TAGS.get(name, ())))
            for name, description in DESCRIPTIONS.items()
        }

    def record(self, record: dict[str, Any]) -> None:
        for (name, tags), value in readings(record).items():
            self.gauges[name].set(value, tags={"run": self.run, **dict(tags)})
