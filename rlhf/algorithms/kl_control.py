"""The KL coefficient: fixed, or adapted toward a target KL (Ziegler et al. 2019, arXiv
1909.08593, section 2.2): e = clip(KL / target - 1, -0.2, 0.2); beta <- beta (1 + e n / H),
with n the samples of the step and H the horizon."""

from __future__ import annotations


class KLController:
    def __init__(self, initial: float, target: float | None = None, horizon: int = 10000) -> None:
        self.value = float(initial)
        self.target = target
        self.horizon = horizon

    @property
    def adaptive(self) -> bool:
        return self.target is not None

    def update(self, measured_kl: float, samples: int) -> float:
        """Move the coefficient after a step whose mean sequence KL was `measured_kl`."""
        if self.target is not None and self.target > 0:
            error = min(max(measured_kl / self.target - 1.0, -0.2), 0.2)
            self.value *= 1.0 + error * samples / self.horizon
        return self.value
