"""Checkpoints of a run, and what resuming from one needs.

    <run>/checkpoints/iter-000020/
        learner/ds/...          DeepSpeed: weights, optimizer, lr schedule (every rank's part)
        learner/rng-rank0.json  each rank's random-number states
        critic/...              the same for the critic pool (PPO)
        hf/                     the policy in Hugging Face format (from_pretrained loads it)
        state.json              the controller's side: RunState

A checkpoint is written into `.iter-N.partial` and renamed when complete (state.json last),
so a crash while saving leaves the previous checkpoint as the latest. The run folder must be
on storage every learner rank can write (a shared volume on a cluster).

Resuming is exact: prompts and sampling seeds are pure functions of (seed, iteration), the
learner's optimizer and schedule come back from DeepSpeed, and the rollout engines get the
checkpoint's weights before the first batch. The one exception is
`rollout.max_staleness > 0`: batches that were generated ahead from older weights when the
run stopped are generated again from the checkpoint's.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINTS = "checkpoints"
CHECKPOINT_TAG = "ds"  # DeepSpeed's sub-folder for the one tag each checkpoint has
STATE_FILE = "state.json"
PREFIX = "iter-"


@dataclass
class RunState:
    """The controller's part of a checkpoint."""

    iterations_done: int  # the next iteration to run
    policy_version: int
    metrics_lines: int  # metrics.jsonl lines written by then (later ones are dropped)
    batches_lines: int  # batches.jsonl lines, the same way (run.record_batches)
    eval_before: float | None  # the greedy reward before training, for the summary
    algorithm: dict[str, Any] = field(default_factory=dict)  # e.g. an adaptive KL coefficient
    learner_ranks: int | None = None  # the DeepSpeed ranks that wrote it (a resume needs as many)

    def write(self, folder: Path) -> None:
        (folder / STATE_FILE).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def read(cls, folder: Path) -> RunState:
        return cls(**json.loads((folder / STATE_FILE).read_text()))


# ---------------------------------------------------------------- folders
def checkpoint_dir(run_dir: Path, iterations_done: int) -> Path:
    return run_dir / CHECKPOINTS / f"{PREFIX}{iterations_done:06d}"


def partial_dir(run_dir: Path, iterations_done: int) -> Path:
    return run_dir / CHECKPOINTS / f".{PREFIX}{iterations_done:06d}.partial"


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints (with their state file), oldest first."""
    root = run_dir / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.name.startswith(PREFIX) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name.removeprefix(PREFIX)))


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = complete_checkpoints(run_dir)
    return found[-1] if found else None


def publish(partial: Path, final: Path, keep: int) -> list[Path]:
    """Rename a written checkpoint into place and delete all but the newest `keep`; returns
    the deleted ones."""
    if final.exists():  # the same iteration saved again (a resumed run)
        shutil.rmtree(final)
    partial.rename(final)
    old = complete_checkpoints(final.parent.parent)[:-keep] if keep > 0 else []
    for path in old:
        shutil.rmtree(path, ignore_errors=True)
    return old


def truncate_lines(path: Path, lines: int) -> int:
    """Keep the first `lines` lines of a text file (a missing file is fine); returns how
    many were dropped."""
    if not path.is_file():
        return 0
    text = path.read_text().splitlines(keepends=True)
    if len(text) <= lines:
        return 0
    path.write_text("".join(text[:lines]))
    return len(text) - lines


def count_lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.is_file() else 0


# ---------------------------------------------------------------- random-number states
def write_rng_states(path: Path) -> None:
    """Python's, numpy's and torch's generators (CUDA's too where present) as JSON."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": _lists(random.getstate()),
        "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    path.write_text(json.dumps(state))


def read_rng_states(path: Path) -> None:
    state = json.loads(path.read_text())
    random.setstate(_tuples(state["python"]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def _lists(value: Any) -> Any:
    return [_lists(v) for v in value] if isinstance(value, tuple | list) else value


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value
