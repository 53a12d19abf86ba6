"""A short supervised warm start on the task, so RL starts from a policy with signal.

Plain torch in one process (it runs before any actor starts): AdamW with a short linear
warm-up and a cosine decay, cross-entropy on the completion tokens (answer + EOS) only.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from rlhf.config import WarmStartConfig
from rlhf.data.tasks import Task
from rlhf.eval import greedy_accuracy
from rlhf.models.logprobs import model_token_logprobs, pad_id_of, pad_rows

EVAL_PROMPTS = 256  # enough to read accuracy to about +-3 points, in a second or two


def _encode(task: Task, tokenizer) -> list[tuple[list[int], int]]:
    """(prompt + completion + EOS ids, prompt length) for every supervised example."""
    out = []
    for prompt, completion in task.supervised_examples():
        p = tokenizer(prompt).input_ids
        c = tokenizer(completion).input_ids + [tokenizer.eos_token_id]
        out.append((p + c, len(p)))
    return out


def supervised_step(model, opt, sched, ids, mask, target) -> float:
    """One step on the mean negative log-likelihood of the tokens `target` marks (1 = in the
    loss), gradients clipped to norm 1; returns the loss."""
    loss = -(model_token_logprobs(model, ids, mask) * target).sum() / target.sum()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sched.step()
    return loss.item()


def _lr_factor(step: int, total: int) -> float:
    warmup = max(1, min(20, total // 10))
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def warm_start(
    model_path: str | Path, task: Task, cfg: WarmStartConfig, seed: int
) -> dict[str, float]:
    """Train on the task's targets and overwrite the model folder; return stats.

    Stats: warm_start/loss (mean of the last 10% of steps), warm_start/greedy_accuracy (on
    held-out prompts, with the task's default reward), warm_start/seconds.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlhf.rewards.builtin import BUILTIN_REWARDS

    started = time.perf_counter()
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    model.train()
    examples = _encode(task, tokenizer)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, cfg.steps))
    losses: list[float] = []
    for _ in range(cfg.steps):
        idx = torch.randint(len(examples), (cfg.batch_size,), generator=gen).tolist()
        ids, mask = pad_rows([examples[i][0] for i in idx], pad_id_of(tokenizer))
        target = mask.float()
        for row, i in enumerate(idx):
            target[row, : examples[i][1]] = 0.0  # no loss on the prompt
        losses.append(supervised_step(model, opt, sched, ids, mask, target))
    model.save_pretrained(model_path, safe_serialization=True)
    tail = losses[-max(1, len(losses) // 10) :]
    accuracy = greedy_accuracy(
        model,
        tokenizer,
        task.eval_prompts[:EVAL_PROMPTS],
        BUILTIN_REWARDS[task.default_reward],
        task.max_new_tokens,
    )
    return {
        "warm_start/loss": sum(tail) / len(tail) if tail else math.nan,
        "warm_start/greedy_accuracy": accuracy,
        "warm_start/seconds": time.perf_counter() - started,
    }
