"""GRPO pieces against values computed by hand."""

import math

import numpy as np
import pytest
import torch

from rlhf.algorithms import make_algorithm
from rlhf.algorithms.advantages import group_normalized_advantages
from rlhf.algorithms.aggregation import aggregation_weights
from rlhf.algorithms.grpo import clipped_surrogate
from rlhf.algorithms.kl import kl_estimate
from rlhf.config import GRPOConfig
from rlhf.types import Rollout, ScoredRollout


def test_group_advantages_by_hand():
    # group 0: rewards 1, 0 -> mean 0.5, std 0.5 -> +1, -1; group 1: 2, 2, 2 -> all 0
    adv = group_normalized_advantages(
        np.array([1.0, 0.0, 2.0, 2.0, 2.0]), np.array([0, 0, 1, 1, 1]), eps=0.0
    )
    np.testing.assert_allclose(adv, [1.0, -1.0, 0.0, 0.0, 0.0])
    # unscaled (Dr. GRPO): just centred
    adv = group_normalized_advantages(np.array([3.0, 1.0, 2.0]), np.array([0, 0, 0]), scale=False)
    np.testing.assert_allclose(adv, [1.0, -1.0, 0.0])


def test_nan_reward_takes_no_part_in_its_group():
    adv = group_normalized_advantages(np.array([1.0, np.nan, 0.0]), np.array([0, 0, 0]), eps=0.0)
    np.testing.assert_allclose(adv, [1.0, 0.0, -1.0])


def test_aggregation_weights_by_hand():
    mask = np.array([[0, 1, 1, 0], [0, 1, 1, 1]], dtype=np.float32)
    valid = np.array([True, True])
    tok = aggregation_weights(mask, valid, "token_mean", max_new_tokens=4)
    np.testing.assert_allclose(tok, mask / 5)
    seq = aggregation_weights(mask, valid, "sequence_mean", max_new_tokens=4)
    np.testing.assert_allclose(seq[0], [0, 0.25, 0.25, 0])  # 1/2 tokens * 1/2 rows
    np.testing.assert_allclose(seq[1], [0, 1 / 6, 1 / 6, 1 / 6])
    const = aggregation_weights(mask, valid, "constant_normalizer", max_new_tokens=4)
    np.testing.assert_allclose(const, mask / 8)
    dropped = aggregation_weights(mask, np.array([True, False]), "token_mean", max_new_tokens=4)
    np.testing.assert_allclose(dropped[1], 0)
    np.testing.assert_allclose(dropped[0], mask[0] / 2)
    with pytest.raises(ValueError, match="allowed"):
        aggregation_weights(mask, valid, "nope", 4)


def test_kl_estimators_by_hand():
    lp, ref = torch.tensor([-1.0]), torch.tensor([-2.0])  # l = ref - lp = -1
    assert kl_estimate(lp, ref, "k1").item() == pytest.approx(1.0)
    assert kl_estimate(lp, ref, "k2").item() == pytest.approx(0.5)
    assert kl_estimate(lp, ref, "k3").item() == pytest.approx(math.exp(-1) + 1 - 1)
    assert kl_estimate(lp, lp, "k3").item() == 0.0


def test_clipped_surrogate_by_hand():
    old = torch.zeros(4)
    lp = torch.log(torch.tensor([1.5, 1.5, 0.5, 1.1]))
    adv = torch.tensor([1.0, -1.0, -1.0, 2.0])
    loss, clipped = clipped_surrogate(lp, old, adv, clip_low=0.2, clip_high=0.28)
    # ratio 1.5, A=+1 -> min(1.5, 1.28) = 1.28 (clipped); A=-1 -> min(-1.5, -1.28) = -1.5
    # ratio 0.5, A=-1 -> min(-0.5, -0.8) = -0.8 (clipped); ratio 1.1, A=2 -> 2.2
    torch.testing.assert_close(loss, torch.tensor([-1.28, 1.5, 0.8, -2.2]))
    torch.testing.assert_close(clipped, torch.tensor([1.0, 0.0, 1.0, 0.0]))


def _scored(rewards, completions, version=3):
    n = len(completions)
    rollout = Rollout(
        prompt_ids=[[1, 5]] * n,
        completion_ids=completions,
        sampler_logprobs=[[-0.5] * len(c) for c in completions],
        finish_reasons=["stop"] * n,
        prompt_index=[0] * n,
        policy_version=version,
    )
    ref = [[-0.7] * len(c) for c in completions]
    return ScoredRollout(
        rollout=rollout, rewards=np.array(rewards, dtype=np.float32), ref_logprobs=ref
    )


def test_grpo_batch_and_loss_by_hand():
    algo = make_algorithm(GRPOConfig(beta=0.1), max_new_tokens=4)
    batch, metrics = algo.build_batch([_scored([1.0, 0.0], [[7, 8, 2], [9, 2]])], pad_id=0)
    np.testing.assert_array_equal(batch.input_ids, [[1, 5, 7, 8, 2], [1, 5, 9, 2, 0]])
    np.testing.assert_array_equal(batch.completion_mask, [[0, 0, 1, 1, 1], [0, 0, 1, 1, 0]])
    assert batch.policy_version == 3
    adv = batch.advantages
    assert adv[0, 2] == pytest.approx(1.0, abs=1e-4) and adv[1, 2] == pytest.approx(-1.0, abs=1e-4)
    assert metrics["batch/flat_group_fraction"] == 0.0

    t = {
        k: torch.from_numpy(getattr(batch, k))
        for k in ("loss_weights", "advantages", "ref_logprobs")
    }
    lp = torch.full(batch.input_ids.shape, -0.5)
    loss, m = algo.loss(lp, lp.detach(), t)
    # ratio 1: policy term = -sum(w * A) = -(3 * 1 - 2 * 1) / 5 = -0.2
    # KL: l = -0.7 + 0.5 = -0.2 -> k3 = e^-0.2 + 0.2 - 1 on all 5 tokens, weights sum to 1
    k3 = math.exp(-0.2) + 0.2 - 1
    assert m["loss/policy"].item() == pytest.approx(-0.2, abs=1e-5)
    assert m["kl"].item() == pytest.approx(k3, abs=1e-6)
    assert loss.item() == pytest.approx(-0.2 + 0.1 * k3, abs=1e-5)


def test_beta_zero_skips_reference():
    algo = make_algorithm(GRPOConfig(beta=0.0), max_new_tokens=4)
    assert not algo.needs_reference


def test_unknown_algorithm_is_named():
    class Bad:
        name = "ppo2"

    with pytest.raises(ValueError, match="ppo2"):
        make_algorithm(Bad(), 4)
