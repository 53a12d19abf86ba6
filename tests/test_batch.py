"""The batch of declared columns and the learner's plan: units are never split."""

from __future__ import annotations

import numpy as np
import pytest

from rlhf.batch import (
    COLUMNS,
    TrainBatch,
    declare,
    padding_fraction,
    plan_shards,
    row_micro_batches,
    scatter_rows,
    split_unit_ids,
    weighted_units,
)


def make_batch(units: list[int], width: int = 5) -> TrainBatch:
    b = len(units)
    lengths = 2 + np.arange(b) % (width - 1)  # rows of different lengths
    mask = (np.arange(width)[None, :] < lengths[:, None]).astype(np.int64)
    completion = mask.astype(np.float32)
    completion[:, 0] = 0.0
    return TrainBatch(
        {
            "input_ids": (np.arange(b * width).reshape(b, width) + 10) * mask,
            "attention_mask": mask,
            "completion_mask": completion,
            "loss_weights": completion / completion.sum(),
            "rewards": np.arange(b, dtype=np.float32),
        },
        units,
    )


def test_columns_are_checked_against_their_declaration():
    batch = make_batch([0, 0, 1])
    with pytest.raises(ValueError, match="per sequence"):
        batch["rewards"] = np.zeros((3, 5))
    with pytest.raises(ValueError, match="per token"):
        batch["advantages"] = np.zeros(3)
    with pytest.raises(KeyError, match="not declared"):
        batch["no_such_column"] = np.zeros(3)
    with pytest.raises(KeyError, match="has no column 'values'"):
        _ = batch["values"]
    batch["advantages"] = np.ones((3, 5), dtype=np.float64)
    assert batch["advantages"].dtype == COLUMNS["advantages"].dtype  # cast to the declared dtype
    with pytest.raises(ValueError, match="already declared differently"):
        declare("rewards", "token", np.float32, "a clash")


def test_filler_rows_copy_the_shortest_rows_model_inputs_and_zero_the_rest():
    batch = make_batch([0, 0, 1]).select([2, 0, 1])  # lengths 4, 2, 3
    batch["advantages"] = np.ones((3, 5))
    filler = batch.filler(2)
    np.testing.assert_array_equal(filler["input_ids"], batch["input_ids"][[1, 1]])
    np.testing.assert_array_equal(filler["attention_mask"], batch["attention_mask"][[1, 1]])
    for name in ("completion_mask", "loss_weights", "advantages", "rewards"):
        assert not filler[name].any(), name
    assert (filler.units < 0).all() and len(set(filler.units)) == 2


def test_concat_pads_token_columns_to_the_widest():
    a, b = make_batch([0, 0], width=3), make_batch([5], width=6)
    both = TrainBatch.concat([a, b])
    assert both.width == 6 and len(both) == 3
    np.testing.assert_array_equal(both["input_ids"][:2, 3:], 0)
    np.testing.assert_array_equal(both.units, [0, 0, 5])


def test_split_over_actors_keeps_units_whole():
    units = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 3])
    parts = split_unit_ids(units, 3)
    assert sorted(np.concatenate(parts).tolist()) == list(range(10))
    for rows in parts:
        for u in set(units[rows]):
            assert set(np.flatnonzero(units == u)) <= set(rows)  # a unit is all in one part
    # more parts than units: some parts are empty, none holds a broken unit
    parts = split_unit_ids(np.array([7, 7, 9, 9]), 3)
    assert sorted(len(p) for p in parts) == [0, 2, 2]


# 11 rows in 5 units of uneven sizes: they divide evenly neither over ranks nor micro-batches.
UNEVEN = [0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 4]


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("mini_batches", [1, 2])
def test_plan_keeps_units_whole_and_every_rank_in_step(world, mini_batches):
    batch = make_batch(UNEVEN)
    shards = plan_shards(batch, world, mini_batches, micro_batch_size=4, epochs=2)
    # every rank runs the same steps with the same number of micro-batches each
    counts = {tuple(len(step) for step in s.steps) for s in shards}
    assert len(counts) == 1 and len(shards[0].steps) == mini_batches
    seen: list[int] = []
    for s in shards:
        assert s.epochs == 2 and len(s.rows) == len(s.batch)
        for step in s.micro_batches():
            for rows in step:
                real = s.rows[rows][s.rows[rows] >= 0]
                seen += real.tolist()
                assert len(real) <= 4 or len(set(np.asarray(UNEVEN)[real])) == 1
                for u in set(np.asarray(UNEVEN)[real]):  # whole units per micro-batch
                    assert set(np.flatnonzero(np.asarray(UNEVEN) == u)) <= set(real)
                # filler rows add nothing to any loss
                fill = s.rows[rows] < 0
                assert not s.batch["loss_weights"][rows][fill].any()
    assert sorted(seen) == list(range(len(UNEVEN)))  # every row exactly once


def test_plan_rescales_loss_weights_so_each_step_is_full_scale():
    batch = make_batch(UNEVEN)
    total = float(batch["loss_weights"].sum())
    shards = plan_shards(batch, 2, 2, micro_batch_size=4)
    per_step = np.zeros(2)
    for s in shards:
        for k, step in enumerate(s.micro_batches()):
            for rows in step:
                per_step[k] += s.batch["loss_weights"][rows].sum()
    np.testing.assert_allclose(per_step, total, rtol=1e-6)
    # within a step the weights keep their proportions; the input batch is untouched
    assert float(batch["loss_weights"].sum()) == pytest.approx(total)


def test_a_unit_larger_than_a_micro_batch_stays_whole():
    batch = make_batch([0, 0, 0, 0, 0, 1])
    (shard,) = plan_shards(batch, 1, 1, micro_batch_size=2)
    assert shard.steps == [[5, 1]]


def test_scatter_puts_rank_outputs_back_in_row_order():
    batch = make_batch(UNEVEN)
    shards = plan_shards(batch, 3, 1, micro_batch_size=4)
    outputs = [s.batch["input_ids"].astype(np.float32) for s in shards]
    back = scatter_rows(len(batch), batch.width, shards, outputs)
    np.testing.assert_array_equal(back, batch["input_ids"])


# ---------------------------------------------------------------- token budgets
def batch_of_lengths(lengths: list[int], units: list[int]) -> TrainBatch:
    """Right-padded rows of the given lengths, completion = all but the first token."""
    width = max(lengths)
    mask = (np.arange(width)[None, :] < np.asarray(lengths)[:, None]).astype(np.int64)
    completion = mask.astype(np.float32)
    completion[:, 0] = 0.0
    return TrainBatch(
        {
            "input_ids": (np.arange(len(lengths) * width).reshape(-1, width) + 10) * mask,
            "attention_mask": mask,
            "completion_mask": completion,
            "loss_weights": completion / completion.sum(),
        },
        units,
    )


def micro_batch_rows(shard) -> list[list[np.ndarray]]:
    """Per step, the full-batch row indices of each micro-batch (-1: filler)."""
    return [[shard.rows[rows] for rows in step] for step in shard.micro_batches()]


# 24 rows in 9 units of 1 to 4 rows, lengths from 3 to 90 tokens
VARIED_UNITS = [0, 0, 0, 1, 2, 2, 3, 3, 3, 3, 4, 4, 5, 6, 6, 6, 7, 7, 7, 7, 8, 8, 8, 8]
VARIED_LENGTHS = [int(n) for n in np.random.default_rng(0).integers(3, 91, len(VARIED_UNITS))]


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("mini_batches", [1, 2])
@pytest.mark.parametrize("budget", [60, 150, 400])
def test_token_budget_holds_except_for_a_lone_oversize_unit(world, mini_batches, budget):
    batch = batch_of_lengths(VARIED_LENGTHS, VARIED_UNITS)
    units, lengths = np.asarray(VARIED_UNITS), np.asarray(VARIED_LENGTHS)
    max_rows = 6
    shards = plan_shards(batch, world, mini_batches, max_rows, 2, max_tokens_per_micro_batch=budget)
    counts = {tuple(len(step) for step in s.steps) for s in shards}
    assert len(counts) == 1 and len(shards[0].steps) == mini_batches  # every rank in step
    seen: list[int] = []
    for s in shards:
        for step in micro_batch_rows(s):
            for rows in step:
                real = rows[rows >= 0]
                if not len(real):  # filler: one row, the batch's shortest
                    assert len(rows) == 1
                    continue
                seen += real.tolist()
                members = set(units[real].tolist())
                for u in members:  # whole units
                    assert set(np.flatnonzero(units == u)) <= set(real)
                if len(members) > 1:  # several units only within both limits
                    assert len(real) <= max_rows
                    assert len(real) * lengths[real].max() <= budget
    assert sorted(seen) == list(range(len(units)))
    # the shard's real rows and their micro-batches agree with the batch
    for s in shards:
        real = s.rows >= 0
        np.testing.assert_array_equal(s.batch["input_ids"][real], batch["input_ids"][s.rows[real]])


def test_a_token_budget_cuts_micro_batches_of_different_row_counts():
    batch = batch_of_lengths(VARIED_LENGTHS, VARIED_UNITS)
    (shard,) = plan_shards(batch, 1, 1, micro_batch_size=64, max_tokens_per_micro_batch=200)
    (sizes,) = shard.steps
    assert len(sizes) > 2 and len(set(sizes)) > 1, sizes
    # longest units first: each micro-batch's longest row is no longer than the previous one's
    widths = [int(np.asarray(VARIED_LENGTHS)[rows].max()) for rows in micro_batch_rows(shard)[0]]
    assert widths == sorted(widths, reverse=True)


def test_token_budget_plan_rescales_loss_weights_so_each_step_is_full_scale():
    batch = batch_of_lengths(VARIED_LENGTHS, VARIED_UNITS)
    total = float(batch["loss_weights"].sum())
    shards = plan_shards(batch, 2, 2, micro_batch_size=64, max_tokens_per_micro_batch=100)
    per_step = np.zeros(2)
    for s in shards:
        for k, step in enumerate(s.micro_batches()):
            for rows in step:
                per_step[k] += s.batch["loss_weights"][rows].sum()
    np.testing.assert_allclose(per_step, total, rtol=1e-6)


def test_longest_units_share_micro_batches_within_the_budget():
    # one-row units of lengths 10, 2, 9, 3; budget 20: longest first, [10, 9] (2 x 10 slots)
    # then [3, 2] (2 x 3): 26 slots for 24 tokens
    batch = batch_of_lengths([10, 2, 9, 3], [0, 1, 2, 3])
    (shard,) = plan_shards(batch, 1, 1, micro_batch_size=64, max_tokens_per_micro_batch=20)
    assert [r.tolist() for r in micro_batch_rows(shard)[0]] == [[0, 2], [3, 1]]
    assert padding_fraction([shard]) == pytest.approx(2 / 26)
    # the row limit still applies beside the budget
    (shard,) = plan_shards(batch, 1, 1, micro_batch_size=1, max_tokens_per_micro_batch=20)
    assert shard.steps == [[1, 1, 1, 1]]


def test_padding_fraction_counts_right_padding_and_filler_rows():
    # units of lengths 12, 2, 3 on 2 ranks, budget 5: rank 0 runs [12] (alone: over the
    # budget) and a filler row (a copy of the shortest row, 2 tokens); rank 1 runs [3], [2].
    # Slots 12 + 2 + 3 + 2 = 19; real tokens 12 + 3 + 2 = 17.
    batch = batch_of_lengths([12, 2, 3], [0, 1, 2])
    shards = plan_shards(batch, 2, 1, micro_batch_size=64, max_tokens_per_micro_batch=5)
    assert [[r.tolist() for r in step] for s in shards for step in micro_batch_rows(s)] == [
        [[0], [-1]],
        [[2], [1]],
    ]
    assert padding_fraction(shards) == pytest.approx(2 / 19)
    # without a budget, units spread by rows: [12, 3] (2 x 12 slots) and [2]
    shards = plan_shards(batch, 2, 1, micro_batch_size=64)
    assert padding_fraction(shards) == pytest.approx(9 / 26)


def test_row_micro_batches_cover_every_row_once_within_both_limits():
    lengths = np.asarray(VARIED_LENGTHS)
    for max_rows, budget in [(4, None), (64, 100), (3, 150)]:
        parts = row_micro_batches(lengths, max_rows, budget)
        assert sorted(np.concatenate(parts).tolist()) == list(range(len(lengths)))
        for rows in parts:
            assert len(rows) <= max_rows
            if budget is not None and len(rows) > 1:
                assert len(rows) * lengths[rows].max() <= budget
    assert [p.tolist() for p in row_micro_batches(np.array([5, 1, 7]), 64, 10)] == [[2], [0, 1]]


def test_weighted_units_leave_out_units_with_no_loss_weight_and_keep_partial_ones():
    batch = make_batch([0, 0, 1, 1, 2, 2])
    w = batch["loss_weights"]
    w[2:4] = 0.0  # unit 1: dropped (a flat group)
    w[4] = 0.0  # unit 2: one row without weight (a masked truncation) -> the unit stays
    kept = weighted_units(batch)
    assert kept.units.tolist() == [0, 0, 2, 2]
    np.testing.assert_array_equal(kept["input_ids"], batch["input_ids"][[0, 1, 4, 5]])
    # the weights it keeps are the batch's: the loss (a weighted sum) is unchanged
    assert kept["loss_weights"].sum() == pytest.approx(w.sum())
    # nothing left out when every unit has weight, or when none has (nothing trains)
    assert len(weighted_units(make_batch([0, 0, 1]))) == 3
    batch["loss_weights"] = np.zeros_like(w)
    assert len(weighted_units(batch)) == 6


def test_an_episodes_columns_are_collated_where_its_tokens_are():
    from rlhf.batch import collate_rollouts
    from rlhf.types import Rollout

    # two episodes of one prompt [5, 6]: turn, observation, turn; the second one shorter
    rollout = Rollout(
        prompt_ids=[[5, 6], [5, 6]],
        completion_ids=[[7, 8, 1, 2, 9], [7, 1, 9]],
        sampler_logprobs=[[-0.1, -0.2, 0.0, 0.0, -0.3], [-0.4, 0.0, -0.5]],
        finish_reasons=["stop", "length"],
        prompt_index=[0, 0],
        policy_version=3,
        policy_masks=[[1, 1, 0, 0, 1], [1, 0, 1]],
        env_rewards=[1.5, float("nan")],
        turns=[2, 2],
        token_rewards=[[0, 0.5, 0, 0, 1.0], [0, 0, 0]],
    )
    batch = collate_rollouts([rollout], pad_id=0)
    np.testing.assert_array_equal(
        batch["completion_mask"], [[0, 0, 1, 1, 0, 0, 1], [0, 0, 1, 0, 1, 0, 0]]
    )
    np.testing.assert_array_equal(
        batch["turn_rewards"], [[0, 0, 0, 0.5, 0, 0, 1.0], [0, 0, 0, 0, 0, 0, 0]]
    )
    np.testing.assert_allclose(
        batch["sampler_logprobs"][0], [0, 0, -0.1, -0.2, 0, 0, -0.3], rtol=0, atol=1e-7
    )
    assert batch["env_rewards"][0] == 1.5 and np.isnan(batch["env_rewards"][1])
    np.testing.assert_array_equal(batch["attention_mask"].sum(axis=1), [7, 5])
