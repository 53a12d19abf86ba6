"""The embedded default, end to end: `rlhf train` with no arguments learns, and leaves a
run folder a user can read and a policy plain transformers can load.

This is the README's promise, checked: the mean reward of the last 10% of iterations
exceeds that of the first 10% by at least MIN_RISE (the margin the README states).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

MIN_RISE = 0.05  # keep equal to the margin stated in README.md
PHASES = ("time/generate", "time/reward", "time/reference", "time/train", "time/sync")


def test_default_run_learns_and_saves_a_loadable_policy(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "rlhf.cli",
            "train",
            f"run.output_dir={tmp_path}",
            "run.name=default",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = tmp_path / "default"
    summary = json.loads((run / "summary.json").read_text())
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == summary["iterations"] > 0
    for r in records:
        for key in ("reward/mean", "reward/std", "loss/total", "rollout/tokens", *PHASES):
            assert key in r, key
    assert "rise:" in proc.stdout  # the run shows its own result
    assert summary["reward/rise"] >= MIN_RISE, summary

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(run / "final")
    tokenizer = AutoTokenizer.from_pretrained(run / "final")
    assert model.num_parameters() > 0 and tokenizer.eos_token_id is not None
