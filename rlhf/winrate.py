"""Win rate of one policy against another under a judge, on held-out prompts (`rlhf eval`).

For each held-out prompt both policies answer (sampled at the rollout temperature, or
greedy), the configured judge gives P(policy > baseline), and the win rate is the mean of
those probabilities (a tie counts one half). Its confidence interval is the normal
approximation over prompts: mean +- z * std / sqrt(n), clipped to [0, 1].
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
    win_rate: float
    ci_low: float
    ci_high: float
    wins: int  # P > 1/2
    ties: int  # P == 1/2
    losses: int
    judged: int
    no_answer: int  # pairs the judge could not decide (left out)

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def win_rate_from_probs(probs: np.ndarray, z: float = Z_95) -> WinRate:
    probs = np.asarray(probs, dtype=np.float64)
    valid = probs[np.isfinite(probs)]
    n = int(valid.size)
    if n == 0:
        return WinRate(math.nan, math.nan, math.nan, 0, 0, 0, 0, int(probs.size))
    mean = float(valid.mean())
    half = z * float(valid.std(ddof=1)) / math.sqrt(n) if n > 1 else math.inf
    return WinRate(
        win_rate=mean,
        ci_low=max(0.0, mean - half),
        ci_high=min(1.0, mean + half),
        wins=int((valid > 0.5).sum()),
        ties=int((valid == 0.5).sum()),
        losses=int((valid < 0.5).sum()),
        judged=n,
        no_answer=int(probs.size - n),
    )


@torch.no_grad()
def sample_completions(
    model_path: str,
    texts: Sequence[str],
    max_new_tokens: int,
    temperature: float,
    seed: int,
    batch_size: int = 256,
) -> list[str]:
    """One completion per prompt with plain transformers (temperature 0: greedy)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlhf.eval import greedy_completions

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if temperature == 0:
        return greedy_completions(model, tokenizer, texts, max_new_tokens, batch_size)
    torch.manual_seed(seed)
    pad = tokenizer.pad_token_id
    out: list[str] = []
    for start in range(0, len(texts), batch_size):
        rows = [tokenizer(t).input_ids for t in texts[start : start + batch_size]]
        width = max(len(r) for r in rows)
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], dtype=torch.long)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        gen = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=True,
            temperature=temperature,
            top_k=0,
            top_p=1.0,
            pad_token_id=pad,
            eos_token_id=tokenizer.eos_token_id,
        )
        out.extend(tokenizer.batch_decode(gen[:, width:], skip_special_tokens=True))
    return out


def evaluate_win_rate(
    cfg, policy_path: str, baseline_path: str, prompts: Sequence[Prompt], greedy: bool = False
) -> tuple[WinRate, dict[str, float]]:
    """The policy's win rate against the baseline under `cfg.reward.judge`, judged in this
    process by the same code a reward worker runs."""
    from rlhf.workers.reward import RewardWorker

    texts = [p.text for p in prompts]
    temperature = 0.0 if greedy else cfg.rollout.temperature
    new_tokens = cfg.rollout.max_new_tokens
    ours = sample_completions(policy_path, texts, new_tokens, temperature, cfg.run.seed)
    theirs = sample_completions(baseline_path, texts, new_tokens, temperature, cfg.run.seed + 1)
    judge = RewardWorker(cfg, 0)
    columns = {k: [p.columns[k] for p in prompts] for k in (prompts[0].columns if prompts else {})}
    try:
        probs, metrics = judge.judge(texts, ours, theirs, columns)
    finally:
        judge.shutdown()  # an LLM judge's engine runs in processes of its own
    return win_rate_from_probs(probs), metrics
