"""The batch of declared columns and the learner's plan: units are never split."""

from __future__ import annotations

import numpy as np
import pytest

from rlhf.batch import (
    COLUMNS,
    TrainBatch,
    declare,
    plan_shards,
    scatter_rows,
    split_unit_ids,
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


def test_filler_rows_copy_model_inputs_and_zero_the_rest():
    batch = make_batch([0, 0, 1])
    batch["advantages"] = np.ones((3, 5))
    filler = batch.filler(2)
    np.testing.assert_array_equal(filler["input_ids"], batch["input_ids"][[0, 0]])
    np.testing.assert_array_equal(filler["attention_mask"], batch["attention_mask"][[0, 0]])
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
