"""Each algorithm's controller half (prepare) and learner half (loss) against hand values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rlhf.algorithms import make_algorithm
from rlhf.algorithms.base import ForwardOutput
from rlhf.algorithms.grpo import GRPOConfig
from rlhf.algorithms.kl_control import KLController
from rlhf.algorithms.policy import clipped_surrogate
from rlhf.algorithms.ppo import PPOConfig, clipped_value_loss
from rlhf.algorithms.reinforce_pp import ReinforcePPConfig
from rlhf.algorithms.rloo import RLOOConfig
from rlhf.batch import collate_rollouts
from rlhf.types import Rollout


def batch_of(rewards, completions, finish=None, version=3, ref=-0.7, sampler=-0.5):
    """One prompt [1, 5] with these completions (one group), rewards and reference log-probs."""
    n = len(completions)
    rollout = Rollout(
        prompt_ids=[[1, 5]] * n,
        completion_ids=completions,
        sampler_logprobs=[[sampler] * len(c) for c in completions],
        finish_reasons=finish or ["stop"] * n,
        prompt_index=[0] * n,
        policy_version=version,
    )
    batch = collate_rollouts([rollout], pad_id=0)
    batch["rewards"] = np.array(rewards, dtype=np.float32)
    batch["ref_logprobs"] = np.full(batch["input_ids"].shape, ref) * batch["completion_mask"]
    return batch


def tensors(batch) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.array(v)) for k, v in batch.columns.items()}


def test_clipped_surrogate_by_hand():
    old = torch.zeros(4)
    lp = torch.log(torch.tensor([1.5, 1.5, 0.5, 1.1]))
    adv = torch.tensor([1.0, -1.0, -1.0, 2.0])
    loss, low, high = clipped_surrogate(lp, old, adv, clip_low=0.2, clip_high=0.28)
    # ratio 1.5, A=+1 -> min(1.5, 1.28) = 1.28 (upper clip binds); A=-1 -> -1.5 (no clip)
    # ratio 0.5, A=-1 -> min(-0.5, -0.8) = -0.8 (lower clip binds); ratio 1.1, A=2 -> 2.2
    torch.testing.assert_close(loss, torch.tensor([-1.28, 1.5, 0.8, -2.2]))
    torch.testing.assert_close(high, torch.tensor([1.0, 0.0, 0.0, 0.0]))
    torch.testing.assert_close(low, torch.tensor([0.0, 0.0, 1.0, 0.0]))


def test_grpo_prepare_and_loss_by_hand():
    algo = make_algorithm(GRPOConfig(beta=0.1), max_new_tokens=4)
    batch = batch_of([1.0, 0.0], [[7, 8, 2], [9, 2]])
    metrics = algo.prepare(batch)
    np.testing.assert_array_equal(batch["input_ids"], [[1, 5, 7, 8, 2], [1, 5, 9, 2, 0]])
    np.testing.assert_array_equal(batch["completion_mask"], [[0, 0, 1, 1, 1], [0, 0, 1, 1, 0]])
    assert batch.policy_version == 3
    adv = batch["advantages"]
    assert adv[0, 2] == pytest.approx(1.0, abs=1e-4) and adv[1, 2] == pytest.approx(-1.0, abs=1e-4)
    assert metrics["batch/flat_group_fraction"] == 0.0

    t = tensors(batch)
    lp = torch.full(batch["input_ids"].shape, -0.5)
    loss, m = algo.loss(ForwardOutput(logprobs=lp), t)
    # ratio 1: policy term = -sum(w * A) = -(3 * 1 - 2 * 1) / 5 = -0.2
    # KL: l = -0.7 + 0.5 = -0.2 -> k3 = e^-0.2 + 0.2 - 1 on all 5 tokens, weights sum to 1
    k3 = math.exp(-0.2) + 0.2 - 1
    assert m["loss/policy"].item() == pytest.approx(-0.2, abs=1e-5)
    assert m["kl"].item() == pytest.approx(k3, abs=1e-6)
    assert loss.item() == pytest.approx(-0.2 + 0.1 * k3, abs=1e-5)


def test_grpo_masks_truncated_and_drops_flat_groups():
    cfg = GRPOConfig(beta=0.0, mask_truncated_completions=True, dynamic_sampling="drop")
    algo = make_algorithm(cfg, max_new_tokens=3)
    batch = batch_of([1.0, 0.0, 1.0], [[7, 2], [9, 9, 9], [8, 2]], ["stop", "length", "stop"])
    algo.prepare(batch)
    w = batch["loss_weights"]
    assert not w[1].any()  # the truncated completion takes no part ...
    # ... so the group's valid rewards (1, 1) agree: a flat group, dropped entirely
    assert not w.any() and not batch["advantages"].any()
    assert algo.keep_units(batch).tolist() == [False, False, False]
    batch = batch_of([1.0, 0.0, 1.0], [[7, 2], [9, 9, 9], [8, 2]], ["stop", "length", "stop"])
    make_algorithm(GRPOConfig(beta=0.0), 3).prepare(batch)  # nothing masked by default
    assert batch["loss_weights"][1].sum() > 0


def test_importance_weights_are_capped_and_scale_the_per_token_loss():
    cfg = GRPOConfig(beta=0.0, importance_sampling_cap=2.0)
    algo = make_algorithm(cfg, max_new_tokens=4)
    batch = batch_of([1.0, 0.0], [[7, 2], [9, 2]], sampler=-0.5)
    algo.prepare(batch)
    t = tensors(batch)
    # learner log-probs: row 0 at -0.5 + log 3 (ratio to the sampler 3 -> capped at 2),
    # row 1 at -0.5 + log 0.5 (weight 0.5)
    lp = (
        torch.where(
            torch.arange(2)[:, None] == 0,
            torch.tensor(-0.5 + math.log(3)),
            torch.tensor(-0.5 + math.log(0.5)),
        )
        .expand(2, 4)
        .clone()
    )
    _, m = algo.loss(ForwardOutput(logprobs=lp), t)
    # each row has 2 completion tokens, weights 1/4 each; A = +1, -1; ratio to old is 1
    # policy: -(1/4 * 2 * 1 * 2) - (1/4 * 2 * -1 * 0.5) = -1 + 0.25 = -0.75
    assert m["loss/policy"].item() == pytest.approx(-0.75, abs=1e-5)
    assert m["offpolicy/capped_fraction"].item() == pytest.approx(0.5, abs=1e-6)
    assert m["offpolicy/is_weight"].item() == pytest.approx(0.5 * 2 + 0.5 * 0.5, abs=1e-5)


def test_entropy_bonus_lowers_the_loss_by_coef_times_entropy():
    algo = make_algorithm(GRPOConfig(beta=0.0, entropy_coef=0.1), max_new_tokens=4)
    batch = batch_of([1.0, 0.0], [[7, 2], [9, 2]])
    algo.prepare(batch)
    t = tensors(batch)
    lp = torch.full((2, 4), -0.5)
    base, _ = algo.loss(ForwardOutput(logprobs=lp, entropy=torch.zeros(2, 4)), t)
    bonus, m = algo.loss(ForwardOutput(logprobs=lp, entropy=torch.full((2, 4), 2.0)), t)
    assert (base - bonus).item() == pytest.approx(0.1 * 2.0, abs=1e-6)  # weights sum to 1
    assert m["policy/entropy"].item() == pytest.approx(2.0, abs=1e-6)


def test_rloo_with_kl_in_the_reward_by_hand():
    algo = make_algorithm(RLOOConfig(beta=0.5, kl_estimator="k1"), max_new_tokens=4)
    batch = batch_of([1.0, 0.0, 0.0], [[7, 2], [9, 2], [8, 8, 2]], ref=-0.7, sampler=-0.5)
    metrics = algo.prepare(batch)
    # k1 per token = logp - ref = -0.5 + 0.7 = 0.2; sums 0.4, 0.4, 0.6
    # shaped rewards: 1 - .2 = .8, 0 - .2 = -.2, 0 - .3 = -.3
    # leave-one-out: .8 - (-.25) = 1.05; -.2 - .25 = -.45; -.3 - .3 = -.6
    adv = batch["advantages"][:, 2]
    np.testing.assert_allclose(adv, [1.05, -0.45, -0.6], atol=1e-5)
    assert metrics["kl"] == pytest.approx(0.2, abs=1e-6)
    assert algo.needs == {"rewards", "ref_logprobs", "old_logprobs"}


def test_reinforce_pp_normalises_over_the_batch():
    cfg = ReinforcePPConfig(beta=0.0, baseline="none")
    algo = make_algorithm(cfg, max_new_tokens=4)
    batch = batch_of([1.0, 0.0], [[7, 2], [9, 9, 2]])
    algo.prepare(batch)
    # gamma 1, no KL: every token's return is its row's reward: 1, 1, 0, 0, 0 over 5 tokens
    mask = batch["completion_mask"].astype(bool)
    ret = np.array([1, 1, 0, 0, 0], dtype=np.float64)
    want = (ret - ret.mean()) / ret.std()
    np.testing.assert_allclose(batch["advantages"][mask], want, rtol=1e-5)
    assert algo.needs == {"rewards"}

    # the group baseline subtracts the prompt's mean first (then the same normalisation)
    base = make_algorithm(ReinforcePPConfig(beta=0.0, baseline="group"), 4)
    batch = batch_of([3.0, 1.0], [[7, 2], [9, 9, 2]])
    base.prepare(batch)
    ret = np.array([1, 1, -1, -1, -1], dtype=np.float64)
    np.testing.assert_allclose(batch["advantages"][mask], (ret - ret.mean()) / ret.std(), rtol=1e-5)


def test_ppo_prepare_uses_the_critics_values():
    cfg = PPOConfig(beta=0.0, lam=1.0, gamma=1.0, whiten_advantages=False)
    algo = make_algorithm(cfg, max_new_tokens=4)
    batch = batch_of([1.0, 0.0], [[7, 2], [9, 2]])
    batch["values"] = np.array([[0, 0, 0.5, 0.25], [0, 0, 0.5, 0.5]], dtype=np.float32)
    metrics = algo.prepare(batch)
    # lam = gamma = 1: A_t = R - V_t, returns = R on every completion token
    np.testing.assert_allclose(batch["advantages"][0, 2:4], [0.5, 0.75], atol=1e-6)
    np.testing.assert_allclose(batch["advantages"][1, 2:4], [-0.5, -0.5], atol=1e-6)
    np.testing.assert_allclose(batch["returns"][:, 2:4], [[1, 1], [0, 0]], atol=1e-6)
    # explained variance: returns (1,1,0,0), errors (.5,.75,-.5,-.5)
    r, e = np.array([1, 1, 0, 0.0]), np.array([0.5, 0.75, -0.5, -0.5])
    assert metrics["critic/explained_variance"] == pytest.approx(1 - e.var() / r.var(), rel=1e-5)
    assert algo.needs == {"rewards", "values"} and algo.trains_critic


def test_clipped_value_loss_by_hand():
    old = torch.tensor([0.0, 0.0, 0.0])
    new = torch.tensor([0.5, 0.5, 0.1])
    ret = torch.tensor([1.0, -1.0, 1.0])
    loss, clipped = clipped_value_loss(new, old, ret, clip=0.2)
    # 1: unclipped (.5-1)^2 = .25, clipped (.2-1)^2 = .64 -> .64 (clipped wins)
    # 2: (.5+1)^2 = 2.25, (.2+1)^2 = 1.44 -> 2.25; 3: within the clip: (.1-1)^2 = .81 both
    torch.testing.assert_close(loss, 0.5 * torch.tensor([0.64, 2.25, 0.81]))
    torch.testing.assert_close(clipped, torch.tensor([1.0, 0.0, 0.0]))


def test_ppo_value_loss_weights_and_error_metric():
    algo = make_algorithm(PPOConfig(beta=0.0, lam=1.0), max_new_tokens=4)
    batch = batch_of([1.0, 0.0], [[7, 2], [9, 2]])
    batch["values"] = np.zeros_like(batch["completion_mask"])
    algo.prepare(batch)
    t = tensors(batch)
    loss, m = algo.value_loss(ForwardOutput(values=torch.zeros(2, 4)), t)
    # returns 1 (row 0, 2 tokens) and 0 (row 1): token-mean error = (1 + 1 + 0 + 0) / 4
    assert m["critic/value_error"].item() == pytest.approx(0.5, abs=1e-6)
    assert loss.item() == pytest.approx(0.25, abs=1e-6)


def test_adaptive_kl_moves_toward_the_target():
    fixed = KLController(0.1)
    assert fixed.update(100.0, 64) == 0.1
    kl = KLController(0.1, target=6.0, horizon=1000)
    # error clipped to +0.2: 0.1 * (1 + 0.2 * 64 / 1000)
    assert kl.update(12.0, 64) == pytest.approx(0.1 * (1 + 0.2 * 0.064))
    before = kl.value
    # 3 / 6 - 1 = -0.5 -> clipped to -0.2
    assert kl.update(3.0, 100) == pytest.approx(before * (1 - 0.2 * 0.1))


@pytest.mark.parametrize(
    ("cfg", "needs"),
    [
        (GRPOConfig(beta=0.0), {"rewards"}),
        (GRPOConfig(beta=0.04), {"rewards", "ref_logprobs"}),
        (GRPOConfig(beta=0.0, epochs=2), {"rewards", "old_logprobs"}),
        (RLOOConfig(beta=0.0), {"rewards"}),
        (RLOOConfig(beta=0.1, kl_in_reward=False, kl_estimator="k3"), {"rewards", "ref_logprobs"}),
        (ReinforcePPConfig(beta=0.01), {"rewards", "ref_logprobs", "old_logprobs"}),
        (PPOConfig(beta=0.01), {"rewards", "values", "ref_logprobs", "old_logprobs"}),
    ],
)
def test_each_algorithm_says_what_it_needs(cfg, needs):
    assert make_algorithm(cfg, 4).needs == needs


def test_unknown_algorithm_is_named():
    class Bad:
        name = "ppo2"

    with pytest.raises(ValueError, match="ppo2"):
        make_algorithm(Bad(), 4)


def test_ppo_adaptive_kl_coefficient_reaches_the_next_batch():
    cfg = PPOConfig(beta=0.1, kl_target=1.0, kl_horizon=10, whiten_advantages=False, lam=1.0)
    algo = make_algorithm(cfg, max_new_tokens=4)
    batch = batch_of([1.0, 0.0], [[7, 2], [9, 2]], ref=-0.7, sampler=-0.5)
    batch["values"] = np.zeros_like(batch["completion_mask"])
    record = algo.prepare(batch)
    # k1 = 0.2 per token, 2 tokens: 0.4 nats per sequence, below the target of 1.0
    assert record["kl/sequence"] == pytest.approx(0.4, abs=1e-6)
    # sample 0: return 1 - 0.1 * 0.4 on its first token
    assert batch["returns"][0, 2] == pytest.approx(1.0 - 0.1 * 0.4, abs=1e-6)
    nxt = algo.after_iteration(record)["kl/coef_next"]
    assert nxt == pytest.approx(0.1 * (1 - 0.2 * 2 / 10))  # error -0.6 clipped to -0.2, n = 2
    batch = batch_of([1.0, 0.0], [[7, 2], [9, 2]], ref=-0.7, sampler=-0.5)
    batch["values"] = np.zeros_like(batch["completion_mask"])
    algo.prepare(batch)
    assert batch["returns"][0, 2] == pytest.approx(1.0 - nxt * 0.4, abs=1e-6)
