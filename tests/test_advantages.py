"""Advantage estimators and loss aggregation against values computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from rlhf.algorithms.advantages import (
    discounted_returns,
    explained_variance,
    gae,
    group_mean_baseline,
    group_normalized_advantages,
    placed_token_rewards,
    rloo_advantages,
    token_rewards,
    whiten,
)
from rlhf.algorithms.aggregation import aggregation_weights

NAN = np.nan


# ---------------------------------------------------------------- GRPO's scalings
def test_group_scaling_by_hand():
    # group 0: rewards 1, 0 -> mean 0.5, std 0.5 -> +1, -1; group 1: 2, 2, 2 (identical) -> 0
    adv = group_normalized_advantages(
        np.array([1.0, 0.0, 2.0, 2.0, 2.0]), np.array([0, 0, 1, 1, 1]), "group", eps=0.0
    )
    np.testing.assert_allclose(adv, [1.0, -1.0, 0.0, 0.0, 0.0])


def test_batch_scaling_divides_by_the_batch_std():
    r = np.array([1.0, 0.0, 3.0, 1.0])  # groups [1, 0] and [3, 1]: centred +.5 -.5 +1 -1
    adv = group_normalized_advantages(r, np.array([0, 0, 1, 1]), "batch", eps=0.0)
    batch_std = np.sqrt(np.mean((r - 1.25) ** 2))  # population std of all four: 1.0897
    np.testing.assert_allclose(adv, np.array([0.5, -0.5, 1.0, -1.0]) / batch_std, rtol=1e-6)


def test_no_scaling_only_centres():  # Dr. GRPO
    adv = group_normalized_advantages(np.array([3.0, 1.0, 2.0]), np.array([0, 0, 0]), "none")
    np.testing.assert_allclose(adv, [1.0, -1.0, 0.0])


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_identical_rewards_give_zero_and_nan_takes_no_part(scale):
    adv = group_normalized_advantages(np.array([0.5, 0.5, 0.5]), np.array([0, 0, 0]), scale)
    np.testing.assert_array_equal(adv, 0.0)
    adv = group_normalized_advantages(np.array([1.0, NAN, 0.0]), np.array([0, 0, 0]), scale, eps=0)
    assert adv[1] == 0.0 and adv[0] == -adv[2] > 0


def test_rloo_baseline_is_the_mean_of_the_others():
    # group of 3: r = 1, 0, 2 -> baselines (0+2)/2 = 1, (1+2)/2 = 1.5, (1+0)/2 = 0.5
    adv = rloo_advantages(np.array([1.0, 0.0, 2.0, 5.0, 5.0]), np.array([0, 0, 0, 1, 1]))
    np.testing.assert_allclose(adv, [0.0, -1.5, 1.5, 0.0, 0.0])
    # a dropped sample is not part of the baseline; a lone valid sample has no baseline
    adv = rloo_advantages(np.array([1.0, NAN, 0.0, 4.0, NAN]), np.array([0, 0, 0, 1, 1]))
    np.testing.assert_allclose(adv, [1.0, 0.0, -1.0, 0.0, 0.0])


def test_group_mean_baseline():
    out = group_mean_baseline(np.array([1.0, 3.0, NAN, 2.0]), np.array([0, 0, 1, 1]))
    np.testing.assert_allclose(out, [-1.0, 1.0, NAN, 0.0])


# ---------------------------------------------------------------- per-token returns
MASK = np.array(
    [
        [0, 1, 1, 1, 0],  # 3 completion tokens
        [0, 0, 1, 0, 0],  # a length-1 completion
        [0, 0, 0, 0, 0],  # a fully masked row (no completion, e.g. a filler)
    ],
    dtype=np.float32,
)


def test_token_rewards_put_the_score_on_the_last_token():
    kl = np.full(MASK.shape, 0.5)
    r = token_rewards(np.array([1.0, 2.0, NAN]), MASK, kl, kl_coef=0.1)
    np.testing.assert_allclose(
        r,
        [[0, -0.05, -0.05, 0.95, 0], [0, 0, 1.95, 0, 0], [0, 0, 0, 0, 0]],
        atol=1e-12,
    )


def slow_gae(rewards, values, mask, gamma, lam):
    """GAE written the textbook way, one row and one token at a time."""
    adv = np.zeros_like(rewards, dtype=np.float64)
    for b in range(rewards.shape[0]):
        pos = [t for t in range(rewards.shape[1]) if mask[b, t]]
        for i, t in enumerate(pos):
            total = 0.0
            for j, u in enumerate(pos[i:]):
                v_next = values[b, pos[i + j + 1]] if i + j + 1 < len(pos) else 0.0
                delta = rewards[b, u] + gamma * v_next - values[b, u]
                total += (gamma * lam) ** j * delta
            adv[b, t] = total
    return adv


@pytest.mark.parametrize(("gamma", "lam"), [(1.0, 0.95), (0.9, 0.8), (1.0, 1.0), (0.5, 0.0)])
def test_gae_matches_the_slow_loop(gamma, lam):
    rng = np.random.default_rng(0)
    lengths = rng.integers(0, 5, size=6)  # completions of 0..4 tokens after a 1-token prompt
    extra = (np.arange(5)[None, :] >= 1) & (np.arange(5)[None, :] <= lengths[:, None])
    mask = np.vstack([MASK, extra.astype(np.float32)])
    adv, ret = check_gae_against_the_slow_loop(mask, gamma, lam, rng)
    assert not adv[2].any() and not ret[2].any()  # the fully masked row


def check_gae_against_the_slow_loop(mask, gamma, lam, rng):
    """gae on random rewards and values over `mask` equals the textbook loop; returns it."""
    rewards = rng.normal(size=mask.shape) * mask
    values = rng.normal(size=mask.shape)
    adv, ret = gae(rewards, values, mask, gamma, lam)
    want = slow_gae(rewards, values, mask, gamma, lam)
    np.testing.assert_allclose(adv, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ret, (want + values) * mask, rtol=1e-5, atol=1e-6)
    return adv, ret


@pytest.mark.parametrize(("gamma", "lam"), [(1.0, 0.95), (0.9, 0.8)])
def test_gae_skips_an_episodes_observation_tokens(gamma, lam):
    # Episodes: policy tokens (1) with observation tokens (0) between turns, then padding.
    # The slow loop walks the policy tokens only, so a turn's advantage must see the next
    # turn's values and rewards across the hole, not restart at it.
    rng = np.random.default_rng(1)
    mask = (rng.random((8, 12)) < 0.6).astype(np.float32)
    mask[:, 0] = 0  # the prompt
    mask[:, 10:] = 0  # padding
    adv, _ = check_gae_against_the_slow_loop(mask, gamma, lam, rng)
    assert not adv[mask == 0].any()


def test_gae_by_hand_for_a_length_one_and_a_three_token_completion():
    values = np.array([[9, 0.5, 0.2, 0.1, 9], [9, 9, 0.3, 9, 9], [0, 0, 0, 0, 0]])
    rewards = token_rewards(np.array([1.0, 1.0, 0.0]), MASK)
    adv, _ = gae(rewards, values, MASK, gamma=1.0, lam=0.5)
    # row 0: deltas: t1 = 0 + .2 - .5 = -.3; t2 = 0 + .1 - .2 = -.1; t3 = 1 + 0 - .1 = .9
    # A3 = .9; A2 = -.1 + .5 * .9 = .35; A1 = -.3 + .5 * .35 = -.125
    np.testing.assert_allclose(adv[0], [0, -0.125, 0.35, 0.9, 0], atol=1e-6)
    np.testing.assert_allclose(adv[1], [0, 0, 0.7, 0, 0], atol=1e-6)  # 1 - 0.3


def test_discounted_returns_by_hand():
    rewards = np.array([[0, 1.0, 2.0, 3.0, 0]]) * MASK[:1]
    np.testing.assert_allclose(
        discounted_returns(rewards, MASK[:1], gamma=0.5), [[0, 2.75, 3.5, 3.0, 0]]
    )


def test_whiten_and_explained_variance():
    x = np.array([[0, 1.0, 3.0, 0], [0, 2.0, 0, 0]])
    mask = np.array([[0, 1, 1, 0], [0, 1, 0, 0]], dtype=np.float32)
    w = whiten(x, mask)
    sel = np.array([1.0, 3.0, 2.0])
    want = (x - sel.mean()) / sel.std() * mask
    np.testing.assert_allclose(w, want, rtol=1e-6)
    assert not whiten(x, np.zeros_like(mask)).any()
    returns = np.array([[0, 1.0, 2.0, 0], [0, 3.0, 0, 0]])
    assert explained_variance(returns, returns, mask) == pytest.approx(1.0)
    assert explained_variance(np.zeros_like(returns), returns, mask) == pytest.approx(0.0)
    assert np.isnan(explained_variance(returns, np.ones_like(returns), mask))


# ---------------------------------------------------------------- loss aggregation
def test_aggregation_weights_by_hand():
    mask = np.array([[0, 1, 1, 0], [0, 1, 1, 1], [0, 0, 0, 0]], dtype=np.float32)
    valid = np.array([True, True, True])
    tok = aggregation_weights(mask, valid, "token_mean", max_new_tokens=4)
    np.testing.assert_allclose(tok, mask / 5)
    seq = aggregation_weights(mask, valid, "sequence_mean", max_new_tokens=4)
    np.testing.assert_allclose(seq[0], [0, 1 / 6, 1 / 6, 0])  # 1/2 tokens * 1/3 rows
    np.testing.assert_allclose(seq[1], [0, 1 / 9, 1 / 9, 1 / 9])
    assert not seq[2].any()  # an empty row weighs nothing
    const = aggregation_weights(mask, valid, "constant_normalizer", max_new_tokens=4)
    np.testing.assert_allclose(const, mask / 12)
    dropped = aggregation_weights(mask, np.array([True, False, True]), "token_mean", 4)
    np.testing.assert_allclose(dropped[1], 0)
    np.testing.assert_allclose(dropped[0], mask[0] / 2)
    assert not aggregation_weights(mask, np.zeros(3, bool), "token_mean", 4).any()
    with pytest.raises(ValueError, match="allowed"):
        aggregation_weights(mask, valid, "nope", 4)


def test_per_turn_rewards_sit_on_each_turns_last_token():
    # prompt (1 token), turn (2), observation (2), turn (2), padding (1)
    mask = np.array([[0, 1, 1, 0, 0, 1, 1, 0]], dtype=np.float32)
    turns = np.array([[0, 0, 0.5, 0, 0, 0, 1.0, 0]], dtype=np.float32)
    sequence = np.array([0.5 + 1.0 + 2.0])  # the turns' sum and a reward function's 2.0
    placed = placed_token_rewards({"turn_rewards": turns}, sequence, mask)
    np.testing.assert_allclose(placed, [[0, 0, 0.5, 0, 0, 0, 3.0, 0]], atol=1e-12)
    # without the column: the whole sequence reward on the last token, as before
    np.testing.assert_allclose(
        placed_token_rewards({}, sequence, mask), [[0, 0, 0, 0, 0, 0, 3.5, 0]], atol=1e-12
    )
    # GAE over them (V = 0, gamma 0.5, lam 1): discounted returns over the policy's tokens,
    # the observation skipped: 3; 1.5 = .5 * 3; 1.25 = .5 + .5 * 1.5; 0.625 = .5 * 1.25
    adv, _ = gae(placed, np.zeros_like(placed), mask, gamma=0.5, lam=1.0)
    np.testing.assert_allclose(adv[0], [0, 0.625, 1.25, 0, 0, 1.5, 3.0, 0], atol=1e-6)
