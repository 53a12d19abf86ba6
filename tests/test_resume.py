"""Checkpoints and exact resume: a run killed (SIGKILL, the whole process group) after its
checkpoint at iteration k, then `rlhf train --resume`, continues as the uninterrupted run.

PPO is the algorithm because it has the most state to lose: two DeepSpeed pools (learner on
2 ranks with ZeRO-sharded optimizer states, critic), an lr warm-up, and an adaptive KL
coefficient kept by the controller.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ITERATIONS, SAVE_EVERY = 8, 2
KILL_AFTER = 3  # metrics lines: iterations 0..2 done, the last one after the checkpoint at 2
GATE = "RLHF_TEST_GATE"  # while the file it names exists, the run's reward function waits

OVERRIDES = [
    "rollout.engine=hf",  # starts in seconds; the sync path to it is the vLLM one
    "rollout.prompts_per_iteration=8",
    "rollout.samples_per_prompt=4",
    "learner.micro_batch_size=16",
    "learner.zero_stage=2",
    "learner.warmup_iterations=3",
    "critic.micro_batch_size=16",
    "algorithm.name=ppo",
    "algorithm.beta=0.05",
    "algorithm.kl_target=0.01",
    "algorithm.kl_horizon=100",  # the coefficient moves a lot per iteration: state that shows
    "topology.rollout.workers=1",
    "topology.critic.workers=1",
    "reward.functions=[{name: 'tests.rewards_for_tests:gated_addition_exact'}]",
    f"run.iterations={ITERATIONS}",
    f"run.save_every={SAVE_EVERY}",
    "run.keep_checkpoints=2",
    "run.eval_prompts=16",
    "run.progress_bar=false",
    "run.tensorboard=false",
    "ray.include_dashboard=false",
]

# Bookkeeping that legitimately differs between the two runs: times, and which worker took
# which call (the batch and its numbers are the same).
# Times, and each process's memory (the allocator's history: a resumed process is a new one).
UNCOMPARED = ("time/", "worker/", "memory/")


def compared_keys(record: dict) -> set[str]:
    return {k for k in record if not k.startswith(UNCOMPARED) and "seconds" not in k}


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "rlhf.cli", "train", *args]


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def run_and_kill(out: Path, name: str) -> None:
    """Start a run in a session of its own; once it has written KILL_AFTER metrics lines,
    hold it at its next scoring (the gate file) and SIGKILL every process of the session
    (the driver, and the local Ray it started): killed mid-run on any machine."""
    run, gate = out / name, out / f"{name}.gate"
    proc = subprocess.Popen(
        cli(*OVERRIDES, f"run.output_dir={out}", f"run.name={name}"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, GATE: str(gate)},
    )
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            metrics = run / "metrics.jsonl"
            if metrics.is_file() and len(metrics.read_text().splitlines()) >= KILL_AFTER:
                gate.touch()  # the run goes no further than its next reward call
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"the run ended before the kill: {proc.stderr.read()[-3000:]}"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    lines = len((run / "metrics.jsonl").read_text().splitlines())
    assert KILL_AFTER <= lines < ITERATIONS  # killed mid-run, after the checkpoint
    assert not (run / "summary.json").exists()


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path, int]:
    out = tmp_path_factory.mktemp("resume")
    whole = subprocess.run(
        cli(*OVERRIDES, f"run.output_dir={out}", "run.name=whole"),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert whole.returncode == 0, whole.stdout[-3000:] + whole.stderr[-3000:]
    run_and_kill(out, "killed")
    lines_at_kill = len((out / "killed" / "metrics.jsonl").read_text().splitlines())
    resumed = subprocess.run(
        cli("--resume", str(out / "killed")), capture_output=True, text=True, timeout=900
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout
    return out / "whole", out / "killed", lines_at_kill


def test_resumed_run_continues_as_the_uninterrupted_one(runs):
    whole, resumed, lines_at_kill = runs
    want, got = records(whole), records(resumed)
    # The lines written after the checkpoint by the killed attempt were dropped, not doubled.
    assert [r["iteration"] for r in got] == list(range(ITERATIONS))
    assert lines_at_kill > SAVE_EVERY  # so there was something to drop
    compared = 0
    for a, b in zip(want[SAVE_EVERY:], got[SAVE_EVERY:], strict=True):
        keys = compared_keys(a)
        assert keys == compared_keys(b)
        for k in sorted(keys):
            x, y = a[k], b[k]
            if isinstance(x, float) and isinstance(y, float):
                # The same operations on the same numbers in the same process layout: equal
                # up to float32 rounding at most (a lost optimizer moment, lr step, KL
                # coefficient or sampling seed moves these by orders of magnitude more).
                assert math.isclose(x, y, rel_tol=1e-5, abs_tol=1e-7), (a["iteration"], k, x, y)
            else:
                assert x == y, (a["iteration"], k, x, y)
            compared += 1
    assert compared > 100
    # The adaptive KL coefficient moved: the controller's state was carried, not reset.
    coefs = [r["kl/coef"] for r in want]
    assert coefs[SAVE_EVERY] != coefs[0]
    events = [json.loads(line) for line in (resumed / "events.jsonl").read_text().splitlines()]
    (resumed_at,) = [e["iteration"] for e in events if e["event"] == "resumed"]
    # the newest complete checkpoint at the kill: 2 (or a later one on a very slow machine)
    assert resumed_at % SAVE_EVERY == 0 and SAVE_EVERY <= resumed_at <= lines_at_kill


def test_checkpoints_rotate_and_export_a_loadable_policy(runs):
    import torch
    from transformers import AutoModelForCausalLM

    whole, resumed, _ = runs
    for run in (whole, resumed):
        names = sorted(p.name for p in (run / "checkpoints").iterdir())
        assert names == ["iter-000006", "iter-000008"]  # run.keep_checkpoints=2
        state = json.loads((run / "checkpoints" / "iter-000008" / "state.json").read_text())
        assert state["iterations_done"] == ITERATIONS and state["metrics_lines"] == ITERATIONS
        assert state["policy_version"] == ITERATIONS and "kl_coef" in state["algorithm"]
    # The last checkpoint's export loads with plain transformers and is the final policy.
    a = AutoModelForCausalLM.from_pretrained(whole / "checkpoints" / "iter-000008" / "hf")
    b = AutoModelForCausalLM.from_pretrained(whole / "final")
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_resume_with_an_override_is_a_fresh_run_with_it(runs, tmp_path):
    """config.yaml keeps what was asked (colocation, the importance cap and the learner's
    ranks unresolved), so an override at resume validates as it would on a fresh run: here
    asynchronous generation, which the resolved synchronous default (every pool colocated)
    refused. The resumed run goes on with it, on the checkpoint's two learner ranks."""
    import shutil

    import yaml

    from rlhf.config import load_config
    from rlhf.run.train import resume_config

    whole, _, _ = runs
    asked = yaml.safe_load((whole / "config.yaml").read_text())
    assert asked["topology"]["colocate_all"] is None
    assert asked["topology"]["learner"]["workers"] == "auto"
    assert asked["algorithm"]["importance_sampling_cap"] is None
    state = json.loads((whole / "checkpoints" / "iter-000008" / "state.json").read_text())
    assert state["learner_ranks"] == 2

    run = tmp_path / "async"
    shutil.copytree(whole, run)
    override = ["rollout.max_staleness=2", f"run.iterations={ITERATIONS + 2}"]
    cfg, _ = resume_config(str(run), override)
    fresh = load_config(
        None, [*OVERRIDES, *override, f"run.output_dir={tmp_path}", "run.name=async"]
    )
    assert cfg.model_dump() == fresh.model_dump()
    assert cfg.colocated_pools() == [] and cfg.make_algorithm().cfg.importance_sampling_cap == 2

    resumed = subprocess.run(
        cli("--resume", str(run), *override), capture_output=True, text=True, timeout=900
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "learner ranks: 2 (topology.learner.workers=auto: the checkpoint's)" in resumed.stdout
    got = records(run)
    assert [r["iteration"] for r in got] == list(range(ITERATIONS + 2))
    assert all(r["rollout/staleness_max"] <= 2 for r in got[ITERATIONS:])
