"""The start-up summary: where the run's workers are, how to watch it, where it writes.

Printed by the driver once the pools are ready, and kept as `<run>/placement.json`
(worker -> pool, pid, node; node -> address and resources)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _nodes() -> dict[str, dict[str, Any]]:
    import ray

    return {
        n["NodeID"]: {"ip": n["NodeManagerAddress"], "resources": n.get("Resources", {})}
        for n in ray.nodes()
        if n.get("Alive")
    }


def startup_summary(pools, places: dict[str, dict[str, Any]], run_dir: Path) -> list[str]:
    """Lines for the console (without prefix); writes placement.json."""
    from rlhf.runtime.cluster import dashboard_url, metrics_endpoints

    nodes = _nodes()
    workers = {name: {"pool": name.rsplit("-", 1)[0], **place} for name, place in places.items()}
    (run_dir / "placement.json").write_text(
        json.dumps({"workers": workers, "nodes": nodes}, indent=2, default=str)
    )
    lines = ["placement:"]
    for role, placement in pools.placements.items():
        names = [n for n, w in workers.items() if w["pool"] == role]
        where = sorted({str(workers[n]["node_id"])[:8] for n in names})
        lines.append(
            f"  {role:<9} {len(names)} worker(s), {placement.describe()}; "
            f"node(s) {', '.join(where) or '-'}"
        )
    for node_id, node in nodes.items():
        custom = {
            k: v
            for k, v in node["resources"].items()
            if k not in ("CPU", "GPU", "memory", "object_store_memory")
            and not k.startswith("node:")
            and not k.startswith("accelerator_type")
        }
        here = sorted(n for n, w in workers.items() if w["node_id"] == node_id)
        lines.append(
            f"  node {node_id[:8]} ({node['ip']}, {node['resources'].get('CPU', 0):g} CPUs"
            f"{', ' + str(custom) if custom else ''}): {', '.join(here) or 'nothing of this run'}"
        )
    url = dashboard_url()
    lines.append(f"dashboard: {url or 'off (ray.include_dashboard)'}")
    endpoints = metrics_endpoints()
    if endpoints:
        lines.append(f"metrics (Prometheus, ray_rlhf_*): {', '.join(sorted(endpoints.values()))}")
    lines.append(f"worker logs: {run_dir / 'logs'}; TensorBoard: tensorboard --logdir {run_dir}")
    return lines
