"""Worker output into the run folder, off the console.

Ray streams every worker's stdout and stderr to the driver, which prints them between the
iteration lines (vLLM start-up chatter, warnings of libraries). Instead, each line goes to
`<run>/logs/<worker>.log` (`rollout-0.log`, ...; Ray's own messages to `raylet.log` and
`autoscaler.log`); Ray keeps its own copy for the dashboard's log view. Lines are keyed by
(node ip, pid): a worker's lines that arrive before its name is known wait in memory and are
written once `register` names it. What matters to the user reaches the console through the
controller (deaths, failed syncs, dropped rewards), not through raw worker output.

This uses Ray's driver-side log dispatcher (`ray._private.worker`), a private API of the
pinned Ray: without it, the console falls back to Ray's own printing, with a warning.
"""

from __future__ import annotations

import logging
import re
import threading
from pathlib import Path
from typing import Any, TextIO

log = logging.getLogger(__name__)

HANDLER = "rlhf_worker_logs"
RAY_HANDLER = "ray_print_logs"
MAX_WAITING_LINES = 20_000  # per unnamed process, before its lines go to a file by pid
_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


class WorkerLogs:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.names: dict[tuple[str, str], str] = {}
        self.waiting: dict[tuple[str, str], list[str]] = {}
        self.files: dict[str, TextIO] = {}
        self.lines = 0
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ what Ray hands over
    def on_lines(self, data: dict[str, Any]) -> None:
        """One batch of lines of one process, as Ray's dispatcher hands them over."""
        pid = str(data.get("pid", ""))
        lines = [f"[stderr] {x}" if data.get("is_err") else x for x in data.get("lines", [])]
        if not lines:
            return
        with self._lock:
            self.lines += len(lines)
            if pid in ("raylet", "autoscaler", "gcs_server"):
                self._write(pid, lines)
                return
            key = (str(data.get("ip", "")), pid)
            name = self.names.get(key)
            if name is not None:
                self._write(name, lines)
                return
            waiting = self.waiting.setdefault(key, [])
            waiting += lines
            if len(waiting) > MAX_WAITING_LINES:  # never named: by what Ray calls it
                self._write(self._fallback(data), self.waiting.pop(key))

    def register(self, ip: str, pid: int, name: str) -> None:
        """Worker `name` is process `pid` on node `ip`: its lines go to `<name>.log`."""
        key = (ip, str(pid))
        with self._lock:
            self.names[key] = name
            waiting = self.waiting.pop(key, None)
            if waiting:
                self._write(name, waiting)

    def close(self) -> None:
        with self._lock:
            for (_, pid), lines in self.waiting.items():
                self._write(f"process-{pid}", lines)
            self.waiting.clear()
            for f in self.files.values():
                f.close()
            self.files.clear()

    # ------------------------------------------------------------------ files
    @staticmethod
    def _fallback(data: dict[str, Any]) -> str:
        return f"{data.get('actor_name') or 'process'}-{data.get('pid', '')}"

    def _write(self, name: str, lines: list[str]) -> None:
        name = _SAFE.sub("_", name) or "unnamed"
        f = self.files.get(name)
        if f is None:
            f = self.files[name] = (self.folder / f"{name}.log").open("a", buffering=1)
        f.write("\n".join(lines) + "\n")


_active: WorkerLogs | None = None
_ray_printer: Any = None  # Ray's own console handler while ours replaces it


def route_to(folder: Path, also_console: bool = False) -> WorkerLogs | None:
    """Send worker output to files in `folder` from now on (Ray must be initialised, with
    log_to_driver). Returns the router, or None where Ray's dispatcher is not there."""
    global _active, _ray_printer
    try:
        from ray._private.worker import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:
        log.warning("worker logs stay in Ray's log folder: this Ray has no log dispatcher")
        return None
    stop_routing()
    router = WorkerLogs(folder)
    if not also_console:
        _ray_printer = next((h for n, h in dispatcher.handlers if n == RAY_HANDLER), None)
        dispatcher.remove_handler(RAY_HANDLER)
    dispatcher.add_handler(HANDLER, router.on_lines)
    _active = router
    return router


def register(ip: str, pid: int, name: str) -> None:
    """Name a worker's process for the active router (no-op when none routes)."""
    if _active is not None:
        _active.register(ip, pid, name)


def stop_routing() -> None:
    """Close the files; Ray prints worker output on the console again."""
    global _active, _ray_printer
    if _active is None:
        return
    from ray._private.worker import global_worker_stdstream_dispatcher as dispatcher

    dispatcher.remove_handler(HANDLER)
    if _ray_printer is not None and not any(n == RAY_HANDLER for n, _ in dispatcher.handlers):
        dispatcher.add_handler(RAY_HANDLER, _ray_printer)
    _ray_printer = None
    _active.close()
    _active = None
