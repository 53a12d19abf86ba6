"""Per-token KL estimators: values by hand, k3's sign and gradient at and beyond its clamp."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf.algorithms.kl import K3_LOG_RATIO_BOUND, kl_estimate

# float64 results of a few elementwise ops (sub, expm1, clamp): each within a few ulp (2.2e-16)
# of the exact value, so 1e-12 relative (absolute near 0) holds on any x86 CPU with margin.
TOL = {"rel": 1e-12, "abs": 1e-12}


def _k3_with_grad(log_ratios: list[float], dtype: torch.dtype = torch.float64):
    """k3 and d k3 / d logprobs at the given l = ref - logp (ref = 0, so l is exact)."""
    logp = torch.tensor([-x for x in log_ratios], dtype=dtype, requires_grad=True)
    value = kl_estimate(logp, torch.zeros_like(logp), "k3")
    value.sum().backward()
    assert logp.grad is not None
    return value.detach(), logp.grad


def test_estimators_against_values_by_hand():
    logp = torch.tensor([-1.0, -2.0, -0.5, -4.0], dtype=torch.float64)
    ref = torch.tensor([-2.0, -1.0, -0.5, -1.0], dtype=torch.float64)
    # l = ref - logp = [-1, 1, 0, 3]
    assert kl_estimate(logp, ref, "k1").tolist() == pytest.approx([1.0, -1.0, 0.0, -3.0], **TOL)
    assert kl_estimate(logp, ref, "k2").tolist() == pytest.approx([0.5, 0.5, 0.0, 4.5], **TOL)
    # e^-1 + 1 - 1, e - 2, 0, e^3 - 4
    want = [0.36787944117144233, 0.7182818284590452, 0.0, 16.085536923187668]
    assert kl_estimate(logp, ref, "k3").tolist() == pytest.approx(want, **TOL)


def test_k3_is_never_negative():
    # Dense near 0, where exp(l) - l - 1 rounds below 0 in float32 / bfloat16, and far out.
    near = torch.linspace(-1e-2, 1e-2, 20001, dtype=torch.float64)
    far = torch.tensor([-1000.0, -50.0, -20.0, -3.0, 3.0, 20.0, 50.0, 1000.0], dtype=torch.float64)
    log_ratio = torch.cat([near, far])
    for dtype in (torch.float64, torch.float32, torch.bfloat16):
        lr = log_ratio.to(dtype)
        k3 = kl_estimate(-lr, torch.zeros_like(lr), "k3")
        assert bool((k3 >= 0).all()), (dtype, lr[k3 < 0][:5], k3[k3 < 0][:5])


@pytest.mark.parametrize("lr", [-19.5, -5.0, -1.0, -0.1, 0.0, 0.1, 1.0, 5.0, 19.5])
def test_k3_gradient_inside_the_bound_is_the_hand_formula(lr):
    value, grad = _k3_with_grad([lr])
    assert value.item() == pytest.approx(math.exp(lr) - lr - 1.0, **TOL)
    assert grad.item() == pytest.approx(1.0 - math.exp(lr), **TOL)


def test_k3_at_the_bound_keeps_the_full_gradient():
    # The clamp is inclusive: at exactly +-20 the gradient is still 1 - e^l.
    assert K3_LOG_RATIO_BOUND == 20.0  # the points in these tests sit at and around it
    value, grad = _k3_with_grad([20.0, -20.0])
    assert value.tolist() == pytest.approx([math.exp(20) - 21.0, math.exp(-20) + 19.0], **TOL)
    assert grad.tolist() == pytest.approx([1.0 - math.exp(20), 1.0 - math.exp(-20)], **TOL)


def test_k3_beyond_the_bound_never_pushes_the_wrong_way():
    # ref >> logp (l > 0): a descent step must never lower logp further, i.e. grad <= 0;
    # ref << logp (l < 0): grad >= 0. Beyond the bound the clamp makes it exactly 0.
    above, below = [20.1, 50.0, 1000.0], [-20.1, -50.0, -1000.0]
    for dtype in (torch.float64, torch.float32):
        value, grad = _k3_with_grad(above + below, dtype)
        assert bool(torch.isfinite(value).all() and torch.isfinite(grad).all()), (value, grad)
        assert bool((grad[:3] <= 0).all() and (grad[3:] >= 0).all()), grad
        assert grad.tolist() == [0.0] * 6
        # The value is the clamped ratio's: as large as at the bound, not larger.
        at_bound = [math.exp(20) - 21.0] * 3 + [math.exp(-20) + 19.0] * 3
        assert value.tolist() == pytest.approx(at_bound, rel=1e-6)  # float32: a few ulp of 2^-23


def test_unknown_estimator_names_the_allowed_ones():
    x = torch.zeros(2)
    with pytest.raises(ValueError, match=r"'k4'.*k1, k2, k3"):
        kl_estimate(x, x, "k4")
