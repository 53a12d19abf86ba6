"""A process's memory, for the per-pool `memory/*` metrics of every iteration.

On Linux the kernel keeps a process's peak resident memory (VmHWM) and lets the process reset
it (writing 5 to /proc/self/clear_refs), so each worker reports the peak of the iteration that
just ended, not of its whole life. On a GPU, torch's allocator peak is read and reset the same
way. A vLLM engine runs inside its rollout worker's process on CPU, so the rollout pool's
numbers include its weights and KV cache; on GPU vLLM computes in a process of its own.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

GIB = float(2**30)
_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(key: str) -> float | None:
    try:
        found = re.search(rf"^{key}:\s+(\d+) kB", _STATUS.read_text(), re.MULTILINE)
    except OSError:  # not Linux
        return None
    return float(found.group(1)) if found else None


def process_memory(reset_peak: bool = True) -> dict[str, float]:
    """This process's resident memory now and its peak since the last reset, in GiB (and the
    GPU allocator's peak where a GPU is used); then the peaks start again from now."""
    out: dict[str, float] = {}
    rss, peak = _status_kib("VmRSS"), _status_kib("VmHWM")
    if rss is not None:
        out["rss_gib"] = rss * 1024 / GIB
    if peak is not None:
        out["peak_gib"] = peak * 1024 / GIB
    try:
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            out["gpu_peak_gib"] = torch.cuda.max_memory_allocated() / GIB
            if reset_peak:
                torch.cuda.reset_peak_memory_stats()
    except ImportError:
        pass
    if reset_peak and peak is not None:
        try:
            _CLEAR_REFS.write_text("5")
        except OSError:  # a kernel that refuses: the peak stays the process's lifetime peak
            pass
    return out


def pool_memory(role: str, per_worker: list[dict[str, float]]) -> dict[str, float]:
    """`memory/<pool>/<what>`: the largest value over the pool's workers (what must fit on
    one machine or one GPU is a worker's, not their sum)."""
    out: dict[str, float] = {}
    for report in per_worker:
        for key, value in report.items():
            name = f"memory/{role}/{key}"
            out[name] = max(out.get(name, 0.0), value)
    return out


class MemoryProbe:
    """Asks every worker of the run for `process_memory` once per iteration and turns the
    answers into `pool_memory` metrics. Idle pools answer at once. A pool that may be busy
    generating ahead (rollout with `rollout.max_staleness > 0`) is not waited for: its answer,
    queued behind the call it is running, is read at the first iteration end after it."""

    WAIT_S = 5.0  # the probe answers in milliseconds; more means a worker in trouble

    def __init__(self, wait_s: float, busy: set[str]) -> None:
        self.wait_s = wait_s
        self.busy = busy  # pools that may be mid-call at an iteration's end
        self._asked: dict[str, tuple[str, Any]] = {}  # worker -> (pool, ObjectRef)

    def read(self, pools: Any) -> dict[str, float]:
        import ray

        serving = {
            name: (pool.role, actor) for pool in pools.all() for name, actor in pool.actors.items()
        }
        self._asked = {n: asked for n, asked in self._asked.items() if n in serving}  # left: gone
        for name, (role, actor) in serving.items():
            if name not in self._asked:
                self._asked[name] = (role, actor.memory.remote())
        idle = [ref for role, ref in self._asked.values() if role not in self.busy]
        if idle:
            ray.wait(idle, num_returns=len(idle), timeout=self.wait_s)
        refs = [ref for _, ref in self._asked.values()]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        done = set(ready)
        by_role: dict[str, list[dict[str, float]]] = {}
        for name, (role, ref) in list(self._asked.items()):
            if ref not in done:
                continue
            del self._asked[name]
            try:
                by_role.setdefault(role, []).append(ray.get(ref, timeout=1.0))
            except Exception:  # a worker that died: the elastic pools deal with it
                continue
        out: dict[str, float] = {}
        for role, reports in by_role.items():
            out.update(pool_memory(role, reports))
        return out
