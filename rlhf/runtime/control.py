"""Requests to a running job, through its run folder: `rlhf scale` writes one, the
controller takes it between iterations.

A file per request in `<run dir>/control/`, written whole (temporary name, then rename), so
the controller never reads half of one. Nothing listens on a socket: whoever may write the
run folder may scale the run, and nobody else.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

SCALABLE = ("rollout", "reward", "reference")


class ControlError(ValueError):
    pass


def parse_sizes(items: list[str]) -> dict[str, int]:
    """`["rollout=3", "reward=2"]` -> {"rollout": 3, "reward": 2}, each checked."""
    sizes: dict[str, int] = {}
    for item in items:
        role, _, value = item.partition("=")
        if role not in SCALABLE:
            raise ControlError(f"{item!r}: the pools that scale are {', '.join(SCALABLE)}")
        try:
            n = int(value)
        except ValueError:
            raise ControlError(
                f"{item!r}: the size must be a whole number, like {role}=2"
            ) from None
        if n < 1:
            raise ControlError(f"{item!r}: a pool needs at least one worker")
        sizes[role] = n
    if not sizes:
        raise ControlError("say which pools to resize, like rollout=3")
    return sizes


def request_scale(run_dir: Path, sizes: dict[str, int]) -> Path:
    if not (run_dir / "config.yaml").is_file():
        raise ControlError(f"{run_dir} is not a run folder (it has no config.yaml)")
    if (run_dir / "summary.json").exists():
        raise ControlError(f"the run in {run_dir} has finished")
    folder = run_dir / "control"
    folder.mkdir(exist_ok=True)
    path = folder / f"scale-{time.time_ns()}.json"
    tmp = folder / f".{path.name}.tmp"
    tmp.write_text(json.dumps(sizes))
    os.replace(tmp, path)
    return path


def take_scale_requests(run_dir: Path) -> list[dict[str, int]]:
    """The requests waiting, oldest first; each file is removed once read."""
    folder = run_dir / "control"
    if not folder.is_dir():
        return []
    requests = []
    for path in sorted(folder.glob("scale-*.json")):
        try:
            requests.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue  # not ours or half-written by hand: left for the user to see
        path.unlink(missing_ok=True)
    return requests
