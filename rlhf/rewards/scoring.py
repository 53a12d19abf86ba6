"""Run reward functions over a batch with defined outcomes for every failure.

Signature (as in TRL): fn(prompts, completions, **columns) -> list[float | None].
- None: the function does not apply to that sample (ignored in the weighted sum).
- A function that raises, returns the wrong length, or gives NaN/inf: handled by `on_error`:
  "drop" marks the affected samples invalid (reward NaN: zero loss weight, counted),
  "zero" scores them 0, "raise" stops the run with an error naming the function.
- A sample that no function scored is dropped.
Every such event is counted in the returned metrics and logged.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import os
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from rlhf.configbase import ConfigError, load_named

log = logging.getLogger(__name__)

RewardFn = Callable[..., Sequence[float | None]]


class RewardFunctionError(RuntimeError):
    """A reward function failed and reward.on_error is 'raise'."""


def resolve_reward_function(name: str, field: str = "reward.functions") -> RewardFn:
    """A built-in name, or 'package.module:function' importable in the reward worker; a
    `ConfigError` naming `field` otherwise."""
    from rlhf.rewards.builtin import BUILTIN_REWARDS

    fn = load_named(name, field, BUILTIN_REWARDS, "package.module:function")
    if not callable(fn):
        raise ConfigError(f"{field}: {name!r} is not callable")
    return fn


def missing_columns(fn: Callable, fixed: int, columns: Iterable[str]) -> list[str]:
    """The parameters `fn` requires beyond its first `fixed` (the prompts and completions)
    that no dataset column named in `columns` fills: called with `**columns`, it would raise
    TypeError on every batch. [] when its signature cannot be read."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # a builtin or C callable: nothing to read
        return []
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    required = [p.name for p in params[fixed:] if p.default is p.empty and p.kind not in variadic]
    have = set(columns)
    return [name for name in required if name not in have]


def reward_function_of(cfg) -> RewardFn:
    """The function a `reward.functions` entry names: local, or on a reward service."""
    if cfg.remote is None:
        return resolve_reward_function(cfg.name)
    from rlhf.rewards.service import RemoteReward, read_token

    return RemoteReward(cfg.remote, cfg.name, read_token(cfg.token_file), cfg.timeout_s)


@dataclass
class NamedReward:
    name: str
    fn: RewardFn
    weight: float


def _short(name: str) -> str:
    return name.rsplit(":", 1)[-1]


def score_batch(
    rewards: list[NamedReward],
    prompts: list[str],
    completions: list[str],
    columns: dict[str, list[object]],
    on_error: str,
) -> tuple[np.ndarray, dict[str, float]]:
    """Weighted sum of the functions' scores; NaN where a sample has no valid reward."""
    n = len(completions)
    total = np.zeros(n, dtype=np.float64)
    scored = np.zeros(n, dtype=bool)
    invalid = np.zeros(n, dtype=bool)
    metrics: dict[str, float] = {}
    for r in rewards:
        key = f"reward/{_short(r.name)}"
        values: list[float | None]
        failed = np.zeros(n, dtype=bool)
        try:
            out = list(r.fn(prompts=prompts, completions=completions, **columns))
            if len(out) != n:
                raise ValueError(f"returned {len(out)} values for {n} completions")
            values = out
        except Exception as err:  # a user's function: any failure has a defined outcome
            if on_error == "raise":
                raise RewardFunctionError(f"reward function {r.name!r} failed: {err}") from err
            log.warning(
                "reward function %s failed (%s): %s",
                r.name,
                on_error,
                traceback.format_exc(limit=3),
            )
            metrics[f"{key}/errors"] = 1.0
            values = [None] * n
            failed[:] = True
        nonfinite = 0
        for i, v in enumerate(values):
            if failed[i] or v is None:
                continue
            try:
                fv = float(v)
            except (TypeError, ValueError):
                fv = math.nan
            if not math.isfinite(fv):
                nonfinite += 1
                if on_error == "raise":
                    raise RewardFunctionError(
                        f"reward function {r.name!r} returned {v!r} for sample {i}"
                    )
                failed[i] = True
                continue
            total[i] += r.weight * fv
            scored[i] = True
        if nonfinite:
            log.warning(
                "reward function %s returned %d non-finite values (%s)", r.name, nonfinite, on_error
            )
            metrics[f"{key}/nonfinite"] = float(nonfinite)
        if on_error == "zero":
            scored |= failed  # counts as scored 0
        else:
            invalid |= failed
        ok = [float(v) for i, v in enumerate(values) if not failed[i] and v is not None]
        if ok:
            metrics[f"{key}/mean"] = float(np.mean(ok))
    dropped = invalid | ~scored
    result = np.where(dropped, np.nan, total).astype(np.float32)
    metrics["reward/dropped"] = float(dropped.sum())
    return result, metrics


@contextlib.contextmanager
def launch_dir_importable() -> Iterator[None]:
    """The workers import 'module:function' with the launch directory on PYTHONPATH; the
    `rlhf` console script's sys.path lacks it."""
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        yield
    finally:
        if added:
            sys.path.remove(cwd)
