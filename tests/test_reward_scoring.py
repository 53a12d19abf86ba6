"""Reward functions that raise, return NaN or None each have their defined outcome."""

import math

import numpy as np
import pytest

from rlhf.rewards.scoring import (
    NamedReward,
    RewardFunctionError,
    resolve_reward_function,
    score_batch,
)

PROMPTS = ["a", "b", "c"]
COMPLETIONS = ["x", "yy", "zzz"]


def length(prompts, completions, **kw):
    return [float(len(c)) for c in completions]


def boom(prompts, completions, **kw):
    raise RuntimeError("judge unreachable")


def half_nan(prompts, completions, **kw):
    return [1.0, math.nan, None]


def _score(fns, on_error="drop", columns=None):
    rewards = [NamedReward(name=f.__name__, fn=f, weight=w) for f, w in fns]
    return score_batch(rewards, PROMPTS, COMPLETIONS, columns or {}, on_error)


def test_weighted_sum_and_columns_are_passed():
    def uses_column(prompts, completions, answer, **kw):
        return [1.0 if c == a else 0.0 for c, a in zip(completions, answer, strict=True)]

    r, m = _score([(length, 0.5), (uses_column, 2.0)], columns={"answer": ["x", "no", "zzz"]})
    np.testing.assert_allclose(r, [0.5 + 2.0, 1.0, 1.5 + 2.0])
    assert m["reward/dropped"] == 0


def test_raising_function_drops_zeroes_or_raises():
    r, m = _score([(length, 1.0), (boom, 1.0)], on_error="drop")
    assert np.isnan(r).all() and m["reward/dropped"] == 3 and m["reward/boom/errors"] == 1
    r, m = _score([(length, 1.0), (boom, 1.0)], on_error="zero")
    np.testing.assert_allclose(r, [1, 2, 3])
    with pytest.raises(RewardFunctionError, match="boom.*judge unreachable"):
        _score([(boom, 1.0)], on_error="raise")


def test_nan_and_none_per_sample():
    r, m = _score([(half_nan, 1.0)], on_error="drop")
    # sample 0 scored 1; sample 1 NaN -> dropped; sample 2 None and nothing else -> dropped
    assert r[0] == 1.0 and np.isnan(r[1]) and np.isnan(r[2])
    assert m["reward/half_nan/nonfinite"] == 1 and m["reward/dropped"] == 2
    r, _ = _score([(half_nan, 1.0), (length, 1.0)], on_error="zero")
    np.testing.assert_allclose(r, [2.0, 2.0, 3.0])  # NaN -> 0 and None ignored
    with pytest.raises(RewardFunctionError, match="nan"):
        _score([(half_nan, 1.0)], on_error="raise")


def test_wrong_length_is_a_failure():
    def short(prompts, completions, **kw):
        return [1.0]

    r, m = _score([(short, 1.0)])
    assert np.isnan(r).all() and m["reward/short/errors"] == 1


def test_resolve_names_errors_clearly():
    assert resolve_reward_function("tests.test_reward_scoring:length") is length
    with pytest.raises(ValueError, match="neither a built-in"):
        resolve_reward_function("no_such_reward")
    with pytest.raises(ValueError, match="cannot load"):
        resolve_reward_function("tests.test_reward_scoring:missing")
