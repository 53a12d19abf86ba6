"""Pairwise judges on the reward worker's code path (in this process, no Ray): the reward
judge, user functions, both-order averaging, failure outcomes; the win-rate summary."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rlhf.config import ConfigError, load_config
from rlhf.evaluation.winrate import Z_95, win_rate_from_probs
from rlhf.rewards.judges import JudgeError, checked_probabilities, in_both_orders
from rlhf.workers.reward import RewardWorker

PROMPTS = ["1+2=", "3+4=", "5+5=", "9+0="]
ANSWERS = {"answer": [3, 7, 10, 9]}
RIGHT = ["3", "7", "10", "9"]
WRONG = ["4", "7", "11", "x"]


def worker(*overrides: str) -> RewardWorker:
    return RewardWorker(load_config(None, list(overrides)), 0)


def test_reward_judge_is_bradley_terry_on_the_rewards():
    probs, metrics = worker("reward.judge.tau=0.5").judge(PROMPTS, RIGHT, WRONG, ANSWERS)
    win = 1 / (1 + math.exp(-2.0))  # exact-match rewards differ by 1, tau 0.5
    np.testing.assert_allclose(probs, [win, 0.5, win, win])
    assert metrics["judge/pairs"] == 4 and metrics["judge/no_answer"] == 0


def test_function_judge_both_orders_cancel_position_bias():
    fair = worker(
        "reward.judge.kind=function",
        "reward.judge.function=tests.rewards_for_tests:exact_answer_judge",
    )
    probs, metrics = fair.judge(PROMPTS, RIGHT, WRONG, ANSWERS)
    np.testing.assert_allclose(probs, [1.0, 0.5, 1.0, 1.0])
    assert metrics["judge/order_disagreement"] == 0.0
    biased = [
        "reward.judge.kind=function",
        "reward.judge.function=tests.rewards_for_tests:first_position_judge",
    ]
    probs, metrics = worker(*biased).judge(PROMPTS, RIGHT, WRONG, ANSWERS)
    np.testing.assert_allclose(probs, 0.5)  # (0.8 + (1 - 0.8)) / 2
    assert metrics["judge/order_disagreement"] == pytest.approx(0.6)
    one_order, _ = worker(*biased, "reward.judge.both_orders=false").judge(
        PROMPTS, RIGHT, WRONG, ANSWERS
    )
    np.testing.assert_allclose(one_order, 0.8)  # the bias shows when asked once


def test_invalid_answers_drop_score_half_or_raise():
    broken = [
        "reward.judge.kind=function",
        "reward.judge.function=tests.rewards_for_tests:broken_judge",
        "reward.judge.both_orders=false",
    ]
    probs, metrics = worker(*broken).judge(PROMPTS, RIGHT, WRONG, ANSWERS)
    assert np.isnan(probs[:3]).all() and probs[3] == 0.25
    assert metrics["judge/invalid"] == 3 and metrics["judge/no_answer"] == 3
    probs, _ = worker(*broken, "reward.on_error=zero").judge(PROMPTS, RIGHT, WRONG, ANSWERS)
    np.testing.assert_allclose(probs, [0.5, 0.5, 0.5, 0.25])
    with pytest.raises(JudgeError, match="broken_judge.*pair 0"):
        worker(*broken, "reward.on_error=raise").judge(PROMPTS, RIGHT, WRONG, ANSWERS)


def test_a_judge_that_raises_or_miscounts():
    def boom(*args, **kwargs):
        raise RuntimeError("judge service down")

    probs, metrics = checked_probabilities("j", [0.5], 3, "drop")
    assert np.isnan(probs).all() and metrics["judge/errors"] == 1.0
    from rlhf.rewards.judges import call_judge

    probs, metrics = call_judge("j", boom, PROMPTS, RIGHT, WRONG, {}, "drop")
    assert np.isnan(probs).all() and metrics["judge/errors"] == 1.0
    with pytest.raises(JudgeError, match="judge service down"):
        call_judge("j", boom, PROMPTS, RIGHT, WRONG, {}, "raise")


def test_both_orders_average_and_disagreement_by_hand():
    answers = {("a", "b"): 0.9, ("b", "a"): 0.3}

    def ask(xs, ys):
        return np.array([answers[(xs[0], ys[0])]]), {}

    probs, metrics = in_both_orders(ask, ["a"], ["b"])
    np.testing.assert_allclose(probs, [(0.9 + 0.7) / 2])
    assert metrics["judge/order_disagreement"] == pytest.approx(0.2)


def test_judge_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="reward.judge.function"):
        load_config(None, ["reward.judge.kind=function"])
    with pytest.raises(ConfigError, match="reward.judge.tau"):
        load_config(None, ["reward.judge.tau=0"])
    with pytest.raises(ValueError, match="reward.judge.function.*cannot load"):
        worker("reward.judge.kind=function", "reward.judge.function=tests.nope:judge")


def test_win_rate_summary_by_hand():
    r = win_rate_from_probs(np.array([1.0, 0.5, 0.0, 1.0, np.nan]))
    assert r.win_rate == pytest.approx(0.625)
    half = Z_95 * np.std([1.0, 0.5, 0.0, 1.0], ddof=1) / 2.0
    assert (r.ci_low, r.ci_high) == pytest.approx((0.625 - half, min(1.0, 0.625 + half)))
    assert (r.wins, r.ties, r.losses, r.judged, r.no_answer) == (2, 1, 1, 4, 1)
    assert math.isnan(win_rate_from_probs(np.array([np.nan])).win_rate)


def test_win_rate_over_several_answers_per_prompt_by_hand():
    probs = np.array([[1.0, 0.5, 1.0], [0.0, 0.0, np.nan], [0.5, 0.5, 0.5]])
    r = win_rate_from_probs(probs)
    # per prompt: 2.5/3, 0/2, 0.5 -> mean over prompts
    assert r.win_rate == pytest.approx((2.5 / 3 + 0.0 + 0.5) / 3)
    # decisive: 2 wins, 2 losses (ties and the unanswered pair left out)
    assert r.decisive_win_rate == pytest.approx(0.5)
    assert (r.wins, r.ties, r.losses, r.judged, r.no_answer) == (2, 4, 2, 8, 1)
    # the interval treats prompts, not answers, as the independent draws
    half = Z_95 * np.std([2.5 / 3, 0.0, 0.5], ddof=1) / math.sqrt(3)
    assert r.ci_low == pytest.approx(max(0.0, r.win_rate - half))
    # decisive interval: residuals (wins - R * decisions) / mean decisions, prompts 1 and 2
    resid = np.array([2 - 0.5 * 2, 0 - 0.5 * 2]) / 2.0
    d_half = Z_95 * np.std(resid, ddof=1) / math.sqrt(2)
    assert r.decisive_ci_low == pytest.approx(max(0.0, 0.5 - d_half))
