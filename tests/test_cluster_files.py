"""The cluster files in cluster/ fit the configs they run (no cluster needed: the files are
read as Ray and KubeRay read them, and the config's workers are placed on their nodes)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from rlhf.config import Config, load_config
from rlhf.runtime.placement import unplaceable

ROOT = Path(__file__).resolve().parent.parent


def _pools(cfg: Config) -> dict:
    t = cfg.topology
    pools = ["rollout", "learner", "reward"] + (["reference"] if t.reference.workers else [])
    return {p: (getattr(t, p).workers, getattr(t, p)) for p in pools}


def _kuberay_nodes(spec: dict) -> list[dict[str, float]]:
    """Each pod's Ray resources: CPUs and GPUs from its limits, custom ones from
    rayStartParams (KubeRay's quoted JSON string)."""

    def node(group: dict) -> dict[str, float]:
        (container,) = group["template"]["spec"]["containers"]
        limits = container["resources"]["limits"]
        out = {"CPU": float(limits["cpu"]), "GPU": float(limits.get("nvidia.com/gpu", 0))}
        custom = group.get("rayStartParams", {}).get("resources")
        if custom:
            out.update(json.loads(json.loads(custom)))
        return out

    cluster = spec["rayClusterSpec"]
    nodes = [node(cluster["headGroupSpec"])]
    for group in cluster["workerGroupSpecs"]:
        nodes += [node(group)] * group["replicas"]
    return nodes


def test_the_rayjob_fits_the_config_it_runs():
    job = yaml.safe_load((ROOT / "cluster/kuberay-rayjob.yaml").read_text())
    entry = job["spec"]["entrypoint"].split()
    assert entry[:4] == ["/app/.venv/bin/python", "-m", "rlhf.cli", "train"]
    config = entry[entry.index("-c") + 1].replace("/app/", "", 1)
    cfg = load_config(ROOT / config, [o for o in entry[6:] if "=" in o])
    assert cfg.ray.address == "auto"
    nodes = _kuberay_nodes(job["spec"])
    assert unplaceable(nodes, _pools(cfg)) == []
    assert job["spec"]["rayClusterSpec"]["authOptions"] == {"mode": "token"}
    # and the check can fail: the single 4-GPU group this file had before, for 5 GPUs
    old = [nodes[0], {"CPU": 16.0, "GPU": 4.0}]
    gpu_example = load_config(ROOT / "launch/configs/gpu_example.yaml")
    assert unplaceable(old, _pools(gpu_example)) == [
        "a reference worker needs {'CPU': 2.0, 'GPU': 1.0}; no node has that left"
    ]


def test_a_missing_custom_resource_is_named():
    # (the learner's ranks as a run resolves 'auto' before placing: rlhf.runtime.learner_ranks)
    cfg = load_config(
        None, ["topology.rollout.resources={rollout_node: 1}", "topology.learner.workers=2"]
    )
    problems = unplaceable([{"CPU": 64.0}], _pools(cfg))
    assert problems == ["a rollout worker needs {'CPU': 1.0, 'rollout_node': 1.0}; no node has that left"] * 2  # fmt: skip


def test_the_autoscaler_file_sets_up_every_node_the_same_way_with_auth_and_resources():
    spec = yaml.safe_load((ROOT / "cluster/ray-autoscaler.yaml").read_text())
    assert spec["file_mounts"]["~/rlhf"] == "."
    assert "~/.ray/auth_token" in spec["file_mounts"]
    assert any("launch/setup.sh" in c for c in spec["setup_commands"])
    starts = spec["head_start_ray_commands"] + spec["worker_start_ray_commands"]
    for command in starts:
        assert command.split()[0] in ("~/rlhf/.venv/bin/ray", "RAY_AUTH_MODE=token"), command
        if " start " in command:
            assert command.startswith("RAY_AUTH_MODE=token ~/rlhf/.venv/bin/ray start")

    def offered(commands: list[str]) -> dict[str, float]:
        found = [re.search(r"--resources='([^']*)'", c) for c in commands]
        return {k: float(v) for m in found if m for k, v in json.loads(m.group(1)).items()}

    head, worker = (
        offered(spec["head_start_ray_commands"]),
        offered(spec["worker_start_ray_commands"]),
    )
    cfg = load_config(ROOT / "launch/configs/gpu_cluster.yaml")
    workers = max(spec["min_workers"], 1)
    # the custom resources are offered where the config asks for them, enough for every worker
    t = cfg.topology
    assert head.get("train_node", 0) >= t.learner.workers + t.reference.workers
    assert worker.get("rollout_node", 0) * workers >= t.rollout.workers
