"""A real two-node Ray cluster on this machine, used the way docs/cluster.md tells users to.

`ray start --head` and a second `ray start --address ...` with a custom resource
(`rollout_node`) and a temp dir of its own make two Ray nodes, with token authentication on
(RAY_AUTH_MODE=token, a token file of the test's own). A run goes in through the project's
submit path (`launch/submit_ray_job.sh`, which calls the stock `ray job submit`) with user
overrides, and the test checks what a user would look at: the job's status, the run folder
(the override in config.yaml, every rollout worker on the node with the custom resource, the
TensorBoard scalars of every iteration) and, while the job runs, the reward and sync-time
gauges on the driver node's Prometheus endpoint.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from rlhf.sync.group import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
RAY = str(Path(sys.executable).parent / "ray")
ITERATIONS = 16


def _kill_processes_under(marker: str) -> None:
    """Stop the Ray processes of this cluster only (`ray stop` would stop every cluster of
    the user): those whose command line names its temp dir, and their children."""
    import psutil

    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if p.pid != os.getpid() and marker in " ".join(p.info["cmdline"] or []):
                found += [p, *p.children(recursive=True)]
        except psutil.Error:
            continue
    for p in found:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass


@pytest.fixture(scope="module")
def two_nodes():
    # Short paths: Ray's unix sockets live under the temp dir (a 107-byte limit). Each node
    # gets ports of its own: two nodes on one machine would both want Ray's default ones.
    base = Path(tempfile.mkdtemp(prefix="rlhf-ray-", dir="/tmp"))
    token = base / "token"
    token.write_text(secrets.token_hex(32))
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token),
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_metrics_report_interval_ms": "1000",  # gauges reach Prometheus within ~1 s
    }
    env.pop("RAY_ADDRESS", None)
    gcs, dashboard = free_port(), free_port()
    metrics = {"head": free_port(), "rollout": free_port()}
    common = ["--disable-usage-stats"]
    try:
        subprocess.run(
            [RAY, "start", "--head", f"--port={gcs}", "--num-cpus=8",
             f"--dashboard-port={dashboard}", "--dashboard-host=127.0.0.1",
             f"--metrics-export-port={metrics['head']}", f"--temp-dir={base / 'head'}",
             f"--dashboard-agent-listen-port={free_port()}", *common],
            env=env, check=True, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        subprocess.run(
            [RAY, "start", f"--address=127.0.0.1:{gcs}", "--num-cpus=4",
             '--resources={"rollout_node": 4}', f"--metrics-export-port={metrics['rollout']}",
             f"--temp-dir={base / 'rollout'}", f"--dashboard-agent-listen-port={free_port()}",
             *common],
            env=env, check=True, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        env["RAY_ADDRESS"] = f"http://127.0.0.1:{dashboard}"
        _wait_for_job_api(env)
        yield {"env": env, "metrics": metrics}
    finally:
        _kill_processes_under(str(base))
        shutil.rmtree(base, ignore_errors=True)


def _wait_for_job_api(env: dict[str, str], timeout_s: float = 120.0) -> None:
    """The head's job agent answers a little after `ray start` returns."""
    deadline = time.monotonic() + timeout_s
    while True:
        # a submission is what needs the agent; `ray job list` answers without it
        probe = subprocess.run(
            [RAY, "job", "submit", "--", "true"], env=env, capture_output=True, text=True
        )
        if probe.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the cluster takes no job: {probe.stdout[-2000:]}{probe.stderr}")
        time.sleep(1.0)


def _gauges(port: int, run: str) -> dict[str, float]:
    """The run's ray_rlhf_* gauges (untagged ones) on one node's Prometheus endpoint."""
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    except OSError:
        return {}
    out = {}
    for line in body.decode().splitlines():
        m = re.match(r"(ray_rlhf_\w+)\{(.*)\} (\S+)$", line)
        if m and f'run="{run}"' in m.group(2) and "phase=" not in m.group(2):
            out[m.group(1)] = float(m.group(3))
    return out


def test_a_submitted_job_runs_on_two_nodes_and_reports_to_prometheus_and_tensorboard(
    two_nodes, tmp_path
):
    run = "two-nodes"
    job = f"rlhf-test-{secrets.token_hex(4)}"
    args = [
        "bash", str(ROOT / "launch/submit_ray_job.sh"),
        "-c", str(ROOT / "launch/configs/grpo_addition.yaml"),
        f"run.output_dir={tmp_path}", f"run.name={run}", f"run.iterations={ITERATIONS}",
        "run.eval_prompts=64", "run.samples_every=4", "rollout.prompts_per_iteration=16",
        "rollout.temperature=0.7", "topology.rollout.workers=2",
        "topology.rollout.resources={rollout_node: 1}", "topology.rollout.placement=spread",
    ]  # fmt: skip
    env = {**two_nodes["env"], "RLHF_SUBMIT_FLAGS": f"--submission-id {job}"}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    seen: list[dict[str, float]] = []
    deadline = time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline:
        for port in two_nodes["metrics"].values():
            gauges = _gauges(port, run)
            if "ray_rlhf_reward_mean" in gauges and "ray_rlhf_sync_seconds" in gauges:
                seen.append(gauges)
        time.sleep(0.5)
    if proc.poll() is None:
        proc.kill()
    output = proc.communicate()[0].decode(errors="replace")
    assert proc.returncode == 0, output[-5000:]
    status = subprocess.run(
        [RAY, "job", "status", job], env=two_nodes["env"], capture_output=True, text=True
    )
    assert f"Job '{job}' succeeded" in status.stdout, status.stdout + status.stderr

    folder = tmp_path / run
    # The user's override took effect (it came after the launcher's ray.address=auto).
    config = (folder / "config.yaml").read_text()
    assert re.search(r"^\s+temperature: 0.7$", config, re.M), config
    assert re.search(r"^\s+address: auto$", config, re.M), config

    # Every rollout worker ran on the node that offers rollout_node.
    placement = json.loads((folder / "placement.json").read_text())
    rollout_nodes = {
        node for node, info in placement["nodes"].items() if "rollout_node" in info["resources"]
    }
    assert len(rollout_nodes) == 1 and len(placement["nodes"]) == 2, placement["nodes"]
    rollouts = {n: w for n, w in placement["workers"].items() if w["pool"] == "rollout"}
    assert len(rollouts) == 2
    assert {w["node_id"] for w in rollouts.values()} == rollout_nodes, rollouts

    # Prometheus: the reward and sync-time gauges were read while the job ran, and each
    # reward reading is one of the iterations' mean rewards.
    records = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == ITERATIONS
    assert seen, "no ray_rlhf_reward_mean / ray_rlhf_sync_seconds on any node during the run"
    rewards = [r["reward/mean"] for r in records]
    syncs = [r["time/sync"] for r in records]
    for g in seen:
        assert any(math.isclose(g["ray_rlhf_reward_mean"], x, abs_tol=1e-9) for x in rewards)
        assert any(math.isclose(g["ray_rlhf_sync_seconds"], x, abs_tol=1e-9) for x in syncs)

    # TensorBoard: a scalar of every iteration, and sample completions as text.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(
        str(folder / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0}
    )
    events.Reload()
    for key in ("reward/mean", "time/sync", "loss/total"):
        scalars = events.Scalars(key)
        assert [s.step for s in scalars] == list(range(ITERATIONS)), key
    tb_rewards = [s.value for s in events.Scalars("reward/mean")]
    # stored as float32: a relative error of at most 2**-24
    for a, b in zip(tb_rewards, rewards, strict=True):
        assert math.isclose(a, b, rel_tol=2**-23, abs_tol=1e-30)
    text = events.Tensors("samples/text_summary")
    assert [t.step for t in text] == list(range(0, ITERATIONS, 4))  # run.samples_every=4
    assert (folder / "logs" / "rollout-0.log").stat().st_size > 0
