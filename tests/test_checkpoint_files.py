"""The file side of checkpoints (no Ray): publishing, rotation, cutting logs back, RNG."""

from __future__ import annotations

import random

import numpy as np
import torch

from rlhf.checkpoint import (
    RunState,
    checkpoint_dir,
    complete_checkpoints,
    latest_checkpoint,
    partial_dir,
    publish,
    read_rng_states,
    truncate_lines,
    write_rng_states,
)


def _save(run, done: int, keep: int) -> list:
    partial = partial_dir(run, done)
    partial.mkdir(parents=True)
    RunState(done, done, done, 0, 0.5, {"kl_coef": 0.1}).write(partial)
    return publish(partial, checkpoint_dir(run, done), keep)


def test_only_complete_checkpoints_count_and_old_ones_rotate(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    for done in (2, 4, 6):
        _save(tmp_path, done, keep=2)
    partial_dir(tmp_path, 8).mkdir()  # a save cut short: never the latest
    (checkpoint_dir(tmp_path, 10)).mkdir()  # no state file: incomplete
    names = [p.name for p in complete_checkpoints(tmp_path)]
    assert names == ["iter-000004", "iter-000006"]
    assert not checkpoint_dir(tmp_path, 2).exists()
    assert RunState.read(latest_checkpoint(tmp_path)).algorithm == {"kl_coef": 0.1}
    # keep=0 keeps every checkpoint; saving an iteration again replaces it
    removed = _save(tmp_path, 6, keep=0)
    assert removed == [] and len(complete_checkpoints(tmp_path)) == 2


def test_truncate_lines_keeps_the_first_n(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text("a\nb\nc\n")
    assert truncate_lines(path, 5) == 0 and path.read_text() == "a\nb\nc\n"
    assert truncate_lines(path, 2) == 1 and path.read_text() == "a\nb\n"
    assert truncate_lines(tmp_path / "missing", 1) == 0


def test_rng_states_round_trip(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    write_rng_states(tmp_path / "rng.json")
    want = (random.random(), np.random.rand(), torch.rand(3).tolist())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    read_rng_states(tmp_path / "rng.json")
    assert (random.random(), np.random.rand(), torch.rand(3).tolist()) == want
