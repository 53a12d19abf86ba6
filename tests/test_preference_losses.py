"""Preference losses against closed-form values, pair building rules, and the online DPO /
IPO algorithms' controller and learner halves on hand-made pairs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rlhf.algorithms import make_algorithm
from rlhf.algorithms.base import ForwardOutput
from rlhf.algorithms.preference import IPOConfig, OnlineDPOConfig
from rlhf.algorithms.preference_losses import (
    bco_loss,
    hinge_loss,
    ipo_loss,
    nash_md_loss,
    pair_loss,
    robust_loss,
    sigmoid_loss,
)
from rlhf.batch import collate_rollouts, plan_shards
from rlhf.rewards.comparisons import (
    Comparisons,
    build_pairs,
    comparisons_from_rewards,
    preference_from_rewards,
    unit_pairs,
)
from rlhf.types import Rollout


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


# ---------------------------------------------------------------- losses, closed form
def test_sigmoid_loss_hard_soft_and_smoothed():
    margin, beta = t(2.0, -1.0), 0.5
    # hard label: -log sigma(beta * margin)
    hard = sigmoid_loss(margin, beta, t(1.0, 1.0))
    torch.testing.assert_close(hard, t(-log_sigmoid(1.0), -log_sigmoid(-0.5)))
    # soft target p = 0.8: -0.8 log sigma(x) - 0.2 log sigma(-x)
    soft = sigmoid_loss(margin, beta, t(0.8, 0.8))
    want = [-0.8 * log_sigmoid(x) - 0.2 * log_sigmoid(-x) for x in (1.0, -0.5)]
    torch.testing.assert_close(soft, t(*want))
    # cDPO eps = 0.1 with a hard label is the same cross-entropy at target 0.9
    smoothed = sigmoid_loss(margin, beta, t(1.0, 1.0), label_smoothing=0.1)
    want = [-0.9 * log_sigmoid(x) - 0.1 * log_sigmoid(-x) for x in (1.0, -0.5)]
    torch.testing.assert_close(smoothed, t(*want))
    # a soft target's minimum sits where sigma(beta * margin) = p
    m = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    sigmoid_loss(m + math.log(0.8 / 0.2) / beta, beta, t(0.8)).sum().backward()
    assert abs(float(m.grad)) < 1e-12


def test_ipo_loss_targets():
    beta = 0.25
    # hard label: (margin - 1/(2 beta))^2 = (3 - 2)^2
    torch.testing.assert_close(ipo_loss(t(3.0), beta, t(1.0)), t(1.0))
    # soft target p = 0.7: target margin (0.7 - 0.5) / 0.25 = 0.8
    torch.testing.assert_close(ipo_loss(t(0.0), beta, t(0.7)), t(0.64))
    # p = 1/2: the loss pulls the margin to 0
    torch.testing.assert_close(ipo_loss(t(-1.5), beta, t(0.5)), t(2.25))


def test_hinge_robust_and_bco_losses():
    torch.testing.assert_close(hinge_loss(t(1.0, 4.0, -2.0), 0.5), t(0.5, 0.0, 2.0))
    x, eps, beta = 1.2, 0.2, 0.5
    want = ((1 - eps) * -log_sigmoid(beta * x) - eps * -log_sigmoid(-beta * x)) / (1 - 2 * eps)
    torch.testing.assert_close(robust_loss(t(x), beta, eps), t(want))
    # robust with eps = 0 is DPO
    torch.testing.assert_close(robust_loss(t(x), beta, 0.0), sigmoid_loss(t(x), beta, t(1.0)))
    # unbiased: averaged over a label flipped with probability eps, it is the clean loss
    noisy = (1 - eps) * robust_loss(t(x), beta, eps) + eps * robust_loss(t(-x), beta, eps)
    torch.testing.assert_close(noisy, t(-log_sigmoid(beta * x)))
    # BCO: -log sigma(beta h_w - delta) - log sigma(-(beta h_l - delta))
    got = bco_loss(t(2.0), t(-1.0), 0.5, t(0.25))
    torch.testing.assert_close(got, t(-log_sigmoid(0.75) - log_sigmoid(0.75)))


def test_pair_loss_dispatch_and_errors():
    hw, hl, p = t(1.0), t(0.5), t(1.0)
    torch.testing.assert_close(pair_loss("ipo", hw, hl, 0.1, p), ipo_loss(t(0.5), 0.1, p))
    with pytest.raises(ValueError, match="shift"):
        pair_loss("bco", hw, hl, 0.1, p)
    with pytest.raises(ValueError, match="allowed: sigmoid"):
        pair_loss("nope", hw, hl, 0.1, p)


def test_nash_md_loss_value_and_gradient():
    lp = torch.tensor([[-1.0, -2.0, 0.0]], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([[-1.5, -1.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0, 0.0]], dtype=torch.float64)
    beta, p = 0.2, torch.tensor([0.9], dtype=torch.float64)
    loss = nash_md_loss(lp, ref, mask, beta, p)
    # kl term: (0.5 + -1.0) = -0.5; sum log pi = -3
    want = beta * (-0.5) * (-3.0) - (0.9 - 0.5) * (-3.0)
    torch.testing.assert_close(loss, torch.tensor([want], dtype=torch.float64))
    loss.sum().backward()
    # d/d lp_t = beta * kl - (p - 1/2) on completion tokens (the KL factor has no gradient)
    g = beta * (-0.5) - 0.4
    torch.testing.assert_close(lp.grad, torch.tensor([[g, g, 0.0]], dtype=torch.float64))


# ---------------------------------------------------------------- pairs
def test_preference_from_rewards_is_bradley_terry():
    p = preference_from_rewards(np.array([1.0, 0.0, np.nan]), np.array([0.0, 0.0, 1.0]), 0.5)
    np.testing.assert_allclose(p[:2], [1 / (1 + math.exp(-2.0)), 0.5])
    assert np.isnan(p[2])


def test_unit_pairs_stay_within_prompts():
    a, b = unit_pairs(np.array([0, 0, 0, 1, 1]))
    assert list(zip(a.tolist(), b.tolist(), strict=True)) == [(0, 1), (0, 2), (1, 2), (3, 4)]
    a, b = unit_pairs(np.array([0, 0, 0, 1, 1]), rows=np.array([1, 2, 3]))
    assert list(zip(a.tolist(), b.tolist(), strict=True)) == [(1, 2)]


def test_best_vs_worst_and_all_pairs():
    units = np.array([0, 0, 0, 1, 1, 2, 2])
    rewards = np.array([0.2, 1.0, 0.0, 0.5, 0.5, 0.0, np.nan])
    c = comparisons_from_rewards(rewards, units, tau=0.1)
    bw = build_pairs(c, units, "best_vs_worst")
    # prompt 0: best row 1, worst row 2; prompt 1: a tie (dropped); prompt 2: no valid answer
    assert bw.chosen.tolist() == [1] and bw.rejected.tolist() == [2]
    np.testing.assert_allclose(bw.target, [1 / (1 + math.exp(-10.0))])
    assert (bw.dropped_ties, bw.dropped_invalid) == (1, 1)
    every = build_pairs(c, units, "all")
    got = sorted(zip(every.chosen.tolist(), every.rejected.tolist(), strict=True))
    assert got == [(0, 2), (1, 0), (1, 2)]
    assert np.all(every.target > 0.5)
    assert (every.dropped_ties, every.dropped_invalid) == (1, 1)


def test_tie_margin_and_borda_with_a_pairwise_judge():
    units = np.zeros(3, dtype=np.int64)
    # a judge that is not transitive in scores: row 0 beats 1 (0.9), 1 beats 2 (0.6), 2 beats 0 (0.55)
    c = Comparisons([0, 1, 0], [1, 2, 2], [0.9, 0.6, 0.45])
    pairs = build_pairs(c, units, "best_vs_worst")
    # Borda: row 0 (0.9 + 0.45) / 2 = 0.675; row 1 (0.1 + 0.6) / 2 = 0.35; row 2 0.475
    assert (pairs.chosen.tolist(), pairs.rejected.tolist()) == ([0], [1])
    np.testing.assert_allclose(pairs.target, [0.9])
    assert len(build_pairs(c, units, "all", tie_margin=0.1)) == 1  # only 0.9 clears it
    with pytest.raises(ValueError, match="allowed"):
        build_pairs(c, units, "random")


# ---------------------------------------------------------------- the algorithms
def sampled_batch():
    """Two prompts x 3 samples with rewards, reference and sampler log-probs."""
    completions = [[7, 8, 2], [9, 2], [7, 7, 7], [4, 2], [5, 5, 2], [6, 2]]
    rollout = Rollout(
        prompt_ids=[[1, 5]] * 3 + [[1, 6, 3]] * 3,
        completion_ids=completions,
        sampler_logprobs=[[-0.5] * len(c) for c in completions],
        finish_reasons=["stop"] * 6,
        prompt_index=[0, 0, 0, 1, 1, 1],
        policy_version=0,
    )
    batch = collate_rollouts([rollout], pad_id=0)
    batch["rewards"] = np.array([1.0, 0.0, 0.5, 0.0, 0.0, 1.0], dtype=np.float32)
    batch["ref_logprobs"] = -0.75 * batch["completion_mask"]  # exact in float32
    return batch


def arranged(cfg):
    """Pairs of `sampled_batch` under `cfg`, one per prompt (`best_vs_worst`), weights set."""
    cfg = cfg.model_copy(update={"pairs": "best_vs_worst"})
    algo = make_algorithm(cfg, max_new_tokens=4)
    batch = sampled_batch()
    comparisons = comparisons_from_rewards(batch["rewards"], batch.units, tau=0.1)
    pairs, metrics = algo.arrange(batch, comparisons)
    algo.prepare(pairs)
    return algo, batch, pairs, metrics


def test_online_dpo_arranges_pairs_as_units():
    algo, batch, pairs, metrics = arranged(OnlineDPOConfig())
    # prompt 0: chosen row 0 (reward 1), rejected row 1 (0); prompt 1: row 5 over row 3
    np.testing.assert_array_equal(pairs["input_ids"][0], batch["input_ids"][0])
    np.testing.assert_array_equal(pairs["input_ids"][1], batch["input_ids"][1])
    np.testing.assert_array_equal(pairs["input_ids"][2], batch["input_ids"][5])
    np.testing.assert_array_equal(pairs["input_ids"][3], batch["input_ids"][3])
    assert pairs.units.tolist() == [0, 0, 1, 1]
    assert pairs["pair_sign"].tolist() == [1, -1, 1, -1]
    assert metrics["pairs/count"] == 2
    # each pair weighs 1/2, spread over each row's completion tokens
    np.testing.assert_allclose(pairs["loss_weights"].sum(axis=1), [0.5, 0.5, 0.5, 0.5])
    # a pair never splits: even with micro-batches of 2 rows on 2 ranks
    for shard in plan_shards(pairs, world_size=2, micro_batch_size=2):
        assert shard.batch.units.tolist() in ([0, 0], [1, 1])


def test_a_pair_whose_chosen_completion_is_empty_does_not_count_in_the_average():
    algo, _, pairs, _ = arranged(OnlineDPOConfig())
    pairs["completion_mask"][0] = 0.0  # pair 0's chosen completion: no token
    algo.prepare(pairs)
    # pair 0 trains nothing; pair 1 is the only pair that can, so it weighs 1 (not 1/2)
    np.testing.assert_allclose(pairs["loss_weights"].sum(axis=1), [0.0, 0.0, 1.0, 1.0])


def test_masked_truncated_completions_form_no_pair():
    """Prompt 0's best answer (row 0) was cut at max_new_tokens: with the mask, its pair is
    built from the answers that ended (row 2 over row 1); prompt 1 is untouched."""
    algo = make_algorithm(
        OnlineDPOConfig(pairs="best_vs_worst", mask_truncated_completions=True), max_new_tokens=4
    )
    batch = sampled_batch()
    batch["truncated"] = np.array([1, 0, 0, 0, 0, 0], dtype=np.float32)
    comparisons = comparisons_from_rewards(batch["rewards"], batch.units, tau=0.1)
    pairs, metrics = algo.arrange(batch, comparisons)
    np.testing.assert_array_equal(pairs["input_ids"][0], batch["input_ids"][2])
    np.testing.assert_array_equal(pairs["input_ids"][1], batch["input_ids"][1])
    np.testing.assert_array_equal(pairs["input_ids"][2], batch["input_ids"][5])
    assert metrics["pairs/count"] == 2
    assert metrics["pairs/dropped_truncated"] == 2  # row 0 against rows 1 and 2
    unmasked, plain = make_algorithm(OnlineDPOConfig(pairs="best_vs_worst"), 4).arrange(
        batch, comparisons
    )
    assert plain["pairs/dropped_truncated"] == 0  # without the mask row 0 is chosen
    np.testing.assert_array_equal(unmasked["input_ids"][0], batch["input_ids"][0])


def loss_of(algo, pairs, logprobs):
    mb = {k: torch.from_numpy(np.array(v)).double() for k, v in pairs.columns.items()}
    lp = torch.tensor(logprobs, dtype=torch.float64, requires_grad=True)
    loss, metrics = algo.loss(ForwardOutput(logprobs=lp * mb["completion_mask"]), mb)
    return loss, metrics, lp


def test_online_dpo_loss_by_hand():
    algo, _, pairs, _ = arranged(OnlineDPOConfig(beta=0.5, nll_coef=0.1))
    mask = pairs["completion_mask"]
    # the policy's log-probs: -0.25 on every completion token of row 0, -1.0 elsewhere
    lp = np.where(np.arange(4)[:, None] == 0, -0.25, -1.0) * mask
    loss, metrics, _ = loss_of(algo, pairs, lp)
    # h = sum (lp - ref): row 0, 3 tokens of +0.5 = 1.5; rows 1, 2, 3, 2 tokens of -0.25 = -0.5
    target = float(np.float32(1 / (1 + math.exp(-10.0))))  # the column is float32
    x1, x2 = 0.5 * (1.5 + 0.5), 0.5 * 0.0
    dpo = [-(target * log_sigmoid(x) + (1 - target) * log_sigmoid(-x)) for x in (x1, x2)]
    nll = 0.5 * 0.25 + 0.5 * 1.0  # pair-weighted token mean of the chosen rows' -log pi
    want = 0.5 * dpo[0] + 0.5 * dpo[1] + 0.1 * nll
    # loss weights are float32 (1/6 is not exact): a few float32 ulps of relative error
    assert float(loss.detach()) == pytest.approx(want, rel=1e-6)
    assert float(metrics["pref/accuracy"]) == pytest.approx(0.5)  # pair 2 has margin 0
    assert float(metrics["pref/margin"]) == pytest.approx(0.5 * x1)


def test_length_normalized_ipo_by_hand():
    algo, _, pairs, _ = arranged(IPOConfig(beta=0.5, length_normalize=True))
    lp = -0.25 * pairs["completion_mask"]
    loss, _, _ = loss_of(algo, pairs, lp)
    # per-token mean log-ratio is 0.5 on every row, so both margins are 0
    target = float(np.float32(1 / (1 + math.exp(-10.0))))
    want = (0.0 - (target - 0.5) / 0.5) ** 2
    # loss weights are float32 (1/6 is not exact): a few float32 ulps of relative error
    assert float(loss.detach()) == pytest.approx(want, rel=1e-6)


def test_hard_labels_and_soft_targets():
    _, _, hard, _ = arranged(OnlineDPOConfig(loss_type="hinge"))
    assert hard["preference"].tolist() == [1.0, 1.0, 1.0, 1.0]  # hinge takes hard labels
    _, _, soft, _ = arranged(IPOConfig())
    assert soft["preference"][0] < 1.0 and soft["preference"][0] > 0.99


def test_bco_shift_is_a_running_mean():
    algo, _, pairs, metrics = arranged(OnlineDPOConfig(loss_type="bco", beta=0.5))
    # sampler - ref = 0.25 per token; rows of 3, 2, 2, 2 tokens: h = 0.75, 0.5, 0.5, 0.5
    first = 0.5 * np.mean([0.75, 0.5, 0.5, 0.5])
    np.testing.assert_allclose(pairs["reward_shift"], first, rtol=1e-6)
    algo.prepare(pairs)  # the same batch again: the running mean stays put
    np.testing.assert_allclose(pairs["reward_shift"], first, rtol=1e-6)
    loss, _, _ = loss_of(algo, pairs, -0.5 * pairs["completion_mask"])
    # h = 0.25 per token: 0.75 (chosen, 3 tokens) and 0.5 for the others; pairs weigh 1/2
    want = 0.5 * sum(
        -log_sigmoid(0.5 * hw - first) - log_sigmoid(-(0.5 * hl - first))
        for hw, hl in ((0.75, 0.5), (0.5, 0.5))
    )
    assert float(loss.detach()) == pytest.approx(want, rel=1e-6)


def test_filler_micro_batch_gives_a_zero_loss_with_a_graph():
    algo, _, pairs, _ = arranged(OnlineDPOConfig())
    filler = pairs.filler(1)
    loss, metrics, lp = loss_of(algo, filler, np.full(filler["input_ids"].shape, -1.0))
    loss.backward()
    assert float(loss.detach()) == 0.0 and metrics == {} and float(lp.grad.abs().sum()) == 0.0
