"""`rollout.ignore_eos`: the rollout worker asks its engine for full-length samples, and only
for samples (greedy evaluation stops at EOS). The engines' side is checked on real engines in
tests/test_engines.py; the whole loop in benchmarks/trl_side_by_side.py --workload gen_heavy."""

from __future__ import annotations

from typing import Any

import pytest

from rlhf.config import load_config
from rlhf.engines.base import Generation, finish_reason
from rlhf.workers.rollout import RolloutWorker


class _RecordingEngine:
    """Answers every prompt with max_new_tokens copies of token 7 and remembers the call."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def generate(self, prompt_ids: list[list[int]], *, n: int, **kwargs: Any) -> Generation:
        self.calls.append(kwargs)
        out = Generation()
        for _ in range(len(prompt_ids) * n):
            k = kwargs["max_new_tokens"]
            out.add([7] * k, [-0.5] * k, "length")
        return out


class _Tokenizer:
    def batch_decode(self, ids: list[list[int]], skip_special_tokens: bool) -> list[str]:
        return ["x" * len(i) for i in ids]


def _worker(overrides: list[str]) -> tuple[RolloutWorker, _RecordingEngine]:
    # No Ray actor and no real engine: only the worker's own logic is under test.
    worker = RolloutWorker.__new__(RolloutWorker)
    worker.cfg = load_config(None, overrides)
    worker.engine = _RecordingEngine()
    worker.tokenizer = _Tokenizer()
    worker.mixture, worker.environment, worker.stop = None, None, []
    worker.name, worker.index, worker.policy_version = "rollout-0", 0, 0
    return worker, worker.engine


def test_ignore_eos_defaults_off():
    worker, engine = _worker([])
    worker.generate([[1, 2]], n=2, seed=0)
    assert engine.calls[-1]["ignore_eos"] is False


@pytest.mark.parametrize("greedy, expected", [(False, True), (True, False)])
def test_ignore_eos_applies_to_sampling_only(greedy, expected):
    worker, engine = _worker(["rollout.ignore_eos=true", "rollout.max_new_tokens=16"])
    rollout = worker.generate([[1, 2], [3]], n=1 if greedy else 2, seed=0, greedy=greedy)
    assert engine.calls[-1]["ignore_eos"] is expected
    assert engine.calls[-1]["max_new_tokens"] == 16
    assert all(len(c) == 16 for c in rollout.completion_ids)


def test_finish_reason_with_eos_ignored_is_length():
    assert finish_reason([5, 2], {2}) == "stop"
    assert finish_reason([5, 2], {2}, ignore_eos=True) == "length"
