"""The run's event log: workers that died, were replaced, joined or left, and failed syncs.

Each event is a line of `events.jsonl` in the run folder and a log line (a warning for a
death or a failure, so it reaches the console); the counts show in the metrics
(`elastic/*`, `workers/*`). Without a run folder (tests of one piece) events are only logged.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("rlhf.telemetry.events")

WARNINGS = {"worker_died", "sync_failed", "worker_start_failed", "worker_slow_to_start"}


class EventLog:
    def __init__(self, run_dir: Path | None = None) -> None:
        self.path = run_dir / "events.jsonl" if run_dir is not None else None
        self.history: list[dict[str, Any]] = []
        self.iteration: int | None = None  # set by the controller as it goes

    def record(self, event: str, **fields: Any) -> dict[str, Any]:
        entry = {"time": time.time(), "iteration": self.iteration, "event": event, **fields}
        self.history.append(entry)
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(json.dumps(entry, default=str) + "\n")
        detail = " ".join(f"{k}={v}" for k, v in fields.items())
        (log.warning if event in WARNINGS else log.info)("%s %s", event, detail)
        return entry

    def of(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.history if e["event"] == event]
