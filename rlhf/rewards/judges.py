"""Pairwise judges: P(a > b | prompt) in [0, 1] for two completions of one prompt.

Kinds (`reward.judge.kind`):
- reward: the configured reward functions (and reward models) as a Bradley-Terry judge,
  P = sigmoid((r_a - r_b) / tau). Training scores every sample once and compares in the
  controller (`rlhf.rewards.comparisons.comparisons_from_rewards`); evaluation calls `judge` here.
- function: a user function `judge(prompts, completions_a, completions_b, **columns)
  -> list[float]` returning probabilities, importable on the reward worker.
- llm: a generative judge model on the reward worker (rlhf.rewards.llm_judge).

Asking both orders (`both_orders`) and averaging P(a > b) with 1 - P(b > a) cancels a
judge's position bias; their disagreement is reported (`judge/order_disagreement`).
Failures have defined outcomes, as for reward functions (`reward.on_error`): a judge that
raises, returns the wrong count, or a value outside [0, 1] gives no answer for those pairs
(NaN: the pair is dropped and counted), 1/2 (no preference) with "zero", or stops the run.
"""

from __future__ import annotations

import logging
import math
import traceback
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from rlhf.configbase import Section
from rlhf.rewards.llm_judge import LLMJudgeConfig

log = logging.getLogger(__name__)

JudgeFn = Callable[..., Sequence[float]]


class JudgeError(RuntimeError):
    """A judge failed and reward.on_error is 'raise'."""


class JudgeConfig(Section):
    kind: Literal["reward", "function", "llm"] = Field(
        "reward", description="the reward functions/models as a judge, a user function, an LLM"
    )
    tau: float = Field(0.1, gt=0, description="kind=reward: P(a > b) = sigmoid((r_a - r_b) / tau)")
    function: str | None = Field(
        None, description="kind=function: 'package.module:function' returning P(a > b) per pair"
    )
    both_orders: bool = Field(
        True, description="ask (a, b) and (b, a) and average: cancels position bias"
    )
    llm: LLMJudgeConfig = Field(
        LLMJudgeConfig(), description="kind=llm: the judge model, its prompt and its engine"
    )

    @model_validator(mode="after")
    def _function_named(self) -> JudgeConfig:
        if self.kind == "function" and not self.function:
            raise ValueError(
                "reward.judge.function must name 'package.module:function' for kind=function"
            )
        if self.kind == "llm" and not self.llm.path:
            raise ValueError("reward.judge.llm.path must name the judge model folder for kind=llm")
        return self


def resolve_judge_function(name: str) -> JudgeFn:
    from rlhf.rewards.scoring import resolve_reward_function

    return resolve_reward_function(name, "reward.judge.function")


def checked_probabilities(
    name: str, values: object, n: int, on_error: str
) -> tuple[np.ndarray, dict[str, float]]:
    """A judge's answers as [n] float64 probabilities; invalid ones per `on_error`."""
    metrics: dict[str, float] = {}
    try:
        out = list(values)  # type: ignore[call-overload]
        if len(out) != n:
            raise ValueError(f"returned {len(out)} values for {n} pairs")
    except Exception as err:
        if on_error == "raise":
            raise JudgeError(f"judge {name!r} failed: {err}") from err
        metrics["judge/errors"] = 1.0
        return np.full(n, 0.5 if on_error == "zero" else np.nan), metrics
    probs = np.full(n, np.nan)
    bad = 0
    for i, v in enumerate(out):
        try:
            p = float(v)
        except (TypeError, ValueError):
            p = math.nan
        if not (0.0 <= p <= 1.0):  # NaN fails too
            bad += 1
            if on_error == "raise":
                raise JudgeError(f"judge {name!r} returned {v!r} for pair {i}: want [0, 1]")
            p = 0.5 if on_error == "zero" else math.nan
        probs[i] = p
    if bad:
        log.warning("judge %s gave %d invalid answers (%s)", name, bad, on_error)
        metrics["judge/invalid"] = float(bad)
    return probs, metrics


def call_judge(
    name: str,
    fn: JudgeFn,
    prompts: list[str],
    completions_a: list[str],
    completions_b: list[str],
    columns: dict[str, list[object]],
    on_error: str,
) -> tuple[np.ndarray, dict[str, float]]:
    """One pass of a user's judge over pairs, with every failure handled."""
    n = len(prompts)
    try:
        values: object = fn(prompts, completions_a, completions_b, **columns)
    except Exception as err:  # a user's function: any failure has a defined outcome
        if on_error == "raise":
            raise JudgeError(f"judge {name!r} failed: {err}") from err
        log.warning("judge %s failed (%s): %s", name, on_error, traceback.format_exc(limit=3))
        return np.full(n, 0.5 if on_error == "zero" else np.nan), {"judge/errors": 1.0}
    return checked_probabilities(name, values, n, on_error)


def in_both_orders(
    ask: Callable[[list[str], list[str]], tuple[np.ndarray, dict[str, float]]],
    completions_a: list[str],
    completions_b: list[str],
) -> tuple[np.ndarray, dict[str, float]]:
    """P(a > b) averaged over both presentation orders, and how much the orders disagree."""
    p_ab, m1 = ask(completions_a, completions_b)
    p_ba, m2 = ask(completions_b, completions_a)
    from rlhf.telemetry.metrics import combine

    metrics = combine([m1, m2])
    gap = np.abs(p_ab - (1.0 - p_ba))
    if np.isfinite(gap).any():
        metrics["judge/order_disagreement"] = float(np.nanmean(gap))
    return (p_ab + (1.0 - p_ba)) / 2.0, metrics


def summarize(probs: np.ndarray) -> dict[str, float]:
    valid = probs[np.isfinite(probs)]
    return {
        "judge/pairs": float(len(probs)),
        "judge/no_answer": float(len(probs) - len(valid)),
        **({"judge/prob_mean": float(valid.mean())} if valid.size else {}),
    }
