"""Per-iteration metrics: one JSON line each in the run folder, a short line on the console."""

from __future__ import annotations

import fnmatch
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

Reduction = Literal["sum", "mean", "max"]

# How each metric combines over micro-batches, optimizer steps, ranks and workers: the one
# place that says so (first matching pattern wins). Loss metrics are weighted sums with the
# loss weights, normalised over the global batch, so they add up ("sum"); a learner divides
# them by its optimizer steps. Per-rank readings (a gradient norm, a learning rate) average;
# times take the slowest actor; counts add up.
REDUCTIONS: tuple[tuple[str, Reduction], ...] = (
    ("*/grad_norm", "mean"),
    ("*/lr", "mean"),
    ("*/seconds", "max"),
    ("reward/*/mean", "mean"),
    ("judge/prob_mean", "mean"),
    ("judge/order_disagreement", "mean"),
    ("*", "sum"),
)


def reduction(key: str) -> Reduction:
    for pattern, rule in REDUCTIONS:
        if fnmatch.fnmatchcase(key, pattern):
            return rule
    return "sum"


def combine(parts: Iterable[dict[str, float]]) -> dict[str, float]:
    """Metrics of several ranks / workers / steps, each key reduced by its rule."""
    values: dict[str, list[float]] = {}
    for part in parts:
        for k, v in part.items():
            values.setdefault(k, []).append(float(v))
    out = {}
    for k, vs in values.items():
        rule = reduction(k)
        out[k] = sum(vs) if rule == "sum" else max(vs) if rule == "max" else sum(vs) / len(vs)
    return out


# What the console line shows, in order (everything goes to the JSONL file).
CONSOLE_KEYS = (
    ("reward/mean", "reward"),
    ("reward/std", "std"),
    ("kl", "kl"),
    ("loss/total", "loss"),
    ("rollout/tokens", "tokens"),
    ("time/generate", "gen"),
    ("time/reward", "rew"),
    ("time/reference", "ref"),
    ("time/train", "train"),
    ("time/sync", "sync"),
)


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN; None reads as "no value"
    return value


class MetricsLog:
    def __init__(self, run_dir: Path, continues: bool = False) -> None:
        """`continues`: a resumed run, whose history starts with the lines already there."""
        self.path = run_dir / "metrics.jsonl"
        self.history: list[dict[str, Any]] = []
        if continues and self.path.is_file():
            lines = self.path.read_text().splitlines()
            self.history = [json.loads(line) for line in lines if line.strip()]
        self._file = self.path.open("a", buffering=1)

    def write(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        self._file.write(json.dumps({k: _clean(v) for k, v in record.items()}) + "\n")

    def close(self) -> None:
        self._file.close()


def console_line(record: dict[str, Any]) -> str:
    parts = [f"it {record['iteration']:>4}"]
    for key, label in CONSOLE_KEYS:
        if key in record and record[key] is not None:
            v = record[key]
            parts.append(f"{label} {v:.0f}" if key == "rollout/tokens" else f"{label} {v:.3g}")
    return "  ".join(parts)


def mean_over(history: list[dict[str, Any]], key: str, first: bool, fraction: float = 0.1) -> float:
    """Mean of `key` over the first (or last) `fraction` of iterations (at least one)."""
    values = [r[key] for r in history if r.get(key) is not None and math.isfinite(r[key])]
    if not values:
        return math.nan
    k = max(1, int(round(len(values) * fraction)))
    chunk = values[:k] if first else values[-k:]
    return float(sum(chunk) / len(chunk))


def average_steps(steps: list[dict[str, float]]) -> dict[str, float]:
    """Per-optimizer-step metrics -> one reading per iteration: the mean over steps (the
    slowest for times)."""
    values: dict[str, list[float]] = {}
    for step in steps:
        for k, v in step.items():
            values.setdefault(k, []).append(float(v))
    return {k: max(vs) if reduction(k) == "max" else sum(vs) / len(vs) for k, vs in values.items()}
