"""Win rate of one policy against another under a judge, on held-out prompts (`rlhf eval`).

For each held-out prompt both policies answer `samples` times (sampled at the rollout
temperature, or greedy), answer j of one against answer j of the other, and the configured
judge gives P(policy > baseline) for each such pair. Two summaries:

- win rate: the mean of those probabilities, a tie counting one half (AlpacaEval's
  convention). Under a 0/1 reward it is 1/2 + (accuracy difference) / 2, so ties, which are
  most pairs on an easy or a hard prompt, pull it towards 1/2.
- decisive win rate: wins / (wins + losses), ties left out (a pair is a win when P > 1/2).

Confidence intervals (95%) are normal approximations over prompts: each prompt's mean over
its answers is one observation, so answers to one prompt are not counted as independent.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from rlhf.types import Prompt

Z_95 = 1.959963984540054


@dataclass
class WinRate:
    win_rate: float  # mean P, ties one half
    ci_low: float
    ci_high: float
    decisive_win_rate: float  # wins / (wins + losses)
    decisive_ci_low: float
    decisive_ci_high: float
    wins: int  # pairs with P > 1/2
    ties: int  # P == 1/2
    losses: int
    judged: int  # pairs with an answer
    no_answer: int  # pairs the judge could not decide (left out)

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def _clustered_mean(values: np.ndarray, z: float) -> tuple[float, float, float]:
    """Mean of per-prompt means (NaN = prompt left out) and its normal interval."""
    per_prompt = values[np.isfinite(values)]
    n = per_prompt.size
    if n == 0:
        return math.nan, math.nan, math.nan
    mean = float(per_prompt.mean())
    half = z * float(per_prompt.std(ddof=1)) / math.sqrt(n) if n > 1 else math.inf
    return mean, max(0.0, mean - half), min(1.0, mean + half)


def win_rate_from_probs(probs: np.ndarray, z: float = Z_95) -> WinRate:
    """`probs`: [prompts] or [prompts, samples] of P(policy > baseline), NaN = no answer."""
    probs = np.asarray(probs, dtype=np.float64)
    probs = probs[:, None] if probs.ndim == 1 else probs
    answered = np.isfinite(probs)
    win, tie, loss = probs > 0.5, probs == 0.5, probs < 0.5  # NaN is none of them
    with np.errstate(invalid="ignore"):
        rate = np.where(answered, probs, 0).sum(1) / answered.sum(1)
        decided = (win | loss).sum(1)
        decisive = win.sum(1) / decided
    # the decisive rate of the pooled counts, its interval over prompts weighted by decisions
    mean, low, high = _clustered_mean(rate, z)
    d_mean = float(win.sum() / max(int(decided.sum()), 1)) if decided.sum() else math.nan
    d_low = d_high = math.nan
    has = decided > 0
    if has.sum() > 1:
        w = decided[has] / decided[has].sum()
        resid = (decisive[has] - d_mean) * w * has.sum()
        half = z * float(resid.std(ddof=1)) / math.sqrt(has.sum())
        d_low, d_high = max(0.0, d_mean - half), min(1.0, d_mean + half)
    return WinRate(
        win_rate=mean,
        ci_low=low,
        ci_high=high,
        decisive_win_rate=d_mean,
        decisive_ci_low=d_low,
        decisive_ci_high=d_high,
        wins=int(win.sum()),
        ties=int(tie.sum()),
        losses=int(loss.sum()),
        judged=int(answered.sum()),
        no_answer=int((~answered).sum()),
    )


@torch.no_grad()
def evaluate_win_rate(
    cfg,
    policy_path: str,
    baseline_path: str,
    prompts: Sequence[Prompt],
    greedy: bool = False,
    samples: int = 1,
) -> tuple[WinRate, dict[str, float]]:
    """The policy's win rate against the baseline under `cfg.reward.judge`, judged in this
    process by the same code a reward worker runs; `samples` answers per prompt each."""
    from rlhf.models.generation import sample_completions
    from rlhf.workers.reward import RewardWorker

    samples = 1 if greedy else samples
    asked = [p for p in prompts for _ in range(samples)]  # prompt-major
    texts = [p.text for p in asked]  # what the judge reads, as in training
    temperature = 0.0 if greedy else cfg.rollout.temperature
    new_tokens = cfg.rollout.max_new_tokens
    ours = sample_completions(policy_path, asked, new_tokens, temperature, cfg.run.seed)
    theirs = sample_completions(baseline_path, asked, new_tokens, temperature, cfg.run.seed + 1)
    judge = RewardWorker(cfg, 0)
    keys = list(prompts[0].columns) if prompts else []
    columns = {k: [p.columns[k] for p in prompts for _ in range(samples)] for k in keys}
    try:
        probs, metrics = judge.judge(texts, ours, theirs, columns)
    finally:
        judge.shutdown()  # an LLM judge's engine runs in processes of its own
    return win_rate_from_probs(probs.reshape(len(prompts), samples)), metrics
