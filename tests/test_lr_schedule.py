"""The learner's lr schedule, by hand: warm-up, then constant or a decay to a floor."""

import math

import pytest

from rlhf.training.deepspeed_setup import lr_factor


def test_warmup_then_constant():
    f = lr_factor(4)
    assert [f(s) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert lr_factor(0)(0) == 1.0


def test_linear_and_cosine_decay_reach_the_floor_at_the_last_step():
    lin = lr_factor(2, total_steps=12, decay="linear", min_ratio=0.1)
    assert lin(1) == 1.0  # end of warm-up
    assert lin(2) == 1.0 and lin(7) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lin(12) == pytest.approx(0.1) and lin(50) == pytest.approx(0.1)
    cos = lr_factor(0, total_steps=10, decay="cosine")
    assert cos(0) == 1.0
    assert cos(5) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert cos(10) == pytest.approx(0.0, abs=1e-12)
