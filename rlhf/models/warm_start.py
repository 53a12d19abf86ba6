"""A short supervised warm start on the task, so RL starts from a policy with signal.

Plain torch in one process (it runs before any actor starts): AdamW with a short linear
warm-up and a cosine decay, cross-entropy on the completion tokens (answer + EOS), and on the
prompt's tokens too where the task asks (`Task.warm_start_prompt_weight`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from rlhf.config import WarmStartConfig
from rlhf.data.chat import prompt_ids
from rlhf.data.tasks import Task
from rlhf.models.generation import greedy_accuracy
from rlhf.models.logprobs import model_token_logprobs, pad_id_of, pad_rows

EVAL_PROMPTS = 256  # enough to read accuracy to about +-3 points, in a second or two
# Padded tokens per forward/backward: long rows (word problems: about 350 tokens) go through
# in parts so a step's activations stay near a gigabyte on a 10M model; the default task's
# batches (128 rows of 8 tokens) are one part, as before.
TOKENS_PER_MICRO_BATCH = 8192
PROGRESS_EVERY_S = 60.0


def _encode(task: Task, tokenizer) -> list[tuple[list[int], int]]:
    """(prompt + completion + EOS ids, prompt length) for every supervised example."""
    out = []
    for prompt, completion in task.supervised_examples():
        p = prompt_ids(tokenizer, prompt)  # as a run tokenizes it: chat template and all
        pieces = [completion] if isinstance(completion, str) else completion
        c = [t for piece in pieces for t in tokenizer(piece).input_ids] + [tokenizer.eos_token_id]
        out.append((p + c, len(p)))
    return out


def supervised_step(model, opt, sched, ids, mask, target) -> float:
    """One step on the mean negative log-likelihood of the tokens `target` marks (1 = in the
    loss), gradients clipped to norm 1; returns the loss."""
    return accumulated_step(model, opt, sched, [(ids, mask, target)])


def accumulated_step(
    model, opt, sched, micro_batches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
) -> float:
    """`supervised_step` over a batch given in (ids, mask, target) parts, one forward and
    backward at a time: the gradient is the whole batch's (the mean over all its target
    tokens), while memory holds one part's activations."""
    total = sum(target.sum() for _, _, target in micro_batches)
    opt.zero_grad(set_to_none=True)
    loss = 0.0
    for ids, mask, target in micro_batches:
        part = -(model_token_logprobs(model, ids, mask) * target).sum() / total
        part.backward()
        loss += part.item()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sched.step()
    return loss


def micro_batches_of(
    examples: list[tuple[list[int], int]],
    pad: int,
    max_tokens: int = TOKENS_PER_MICRO_BATCH,
    prompt_weight: float = 0.0,
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(ids, mask, target) parts of a batch of (ids, prompt length) rows, right-padded, each
    at most `max_tokens` padded tokens (one row at least); target weighs the completion's
    tokens 1 and the prompt's `prompt_weight`. A batch that fits is one part, in its order;
    a longer one is cut after sorting by length, so rows of like length share their
    padding."""
    widest = max(len(ids) for ids, _ in examples)
    if widest * len(examples) > max_tokens:
        examples = sorted(examples, key=lambda e: len(e[0]))
    parts, start = [], 0
    while start < len(examples):
        end = start + 1
        while end < len(examples) and len(examples[end][0]) * (end + 1 - start) <= max_tokens:
            end += 1
        rows = examples[start:end]
        ids, mask = pad_rows([r for r, _ in rows], pad)
        target = mask.float()
        for row, (_, prompt_len) in enumerate(rows):
            target[row, :prompt_len] = prompt_weight
        parts.append((ids, mask, target))
        start = end
    return parts


def cpu_has_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX): there bf16 matmuls
    ran 3x fp32's speed; without, torch emulates them at about half fp32's."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def bfloat16_autocast(setting: str) -> bool:
    """warm_start.autocast resolved on this machine: bf16 matmuls, or plain fp32."""
    return setting == "bfloat16" or (setting == "auto" and cpu_has_bfloat16())


def _lr_factor(step: int, total: int) -> float:
    warmup = max(1, min(20, total // 10))
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def warm_start(
    model_path: str | Path,
    task: Task,
    cfg: WarmStartConfig,
    seed: int,
    every: int = 0,
    on_checkpoint: Callable[[int, float, Any, Any], None] | None = None,
) -> dict[str, float]:
    """Train on the task's targets and overwrite the model folder; return stats.

    Stats: warm_start/loss (mean of the last 10% of steps, per loss token: the completion's,
    and the prompt's too where the task weighs them), warm_start/greedy_accuracy (on held-out
    prompts, with the task's default reward), warm_start/seconds. With `every`,
    `on_checkpoint(step, mean loss since the last call, model, tokenizer)` runs after every
    `every` steps (benchmarks/warm_start_curve.py evaluates there); its time is not counted.
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
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: _lr_factor(s, cfg.schedule_steps or cfg.steps)
    )
    losses: list[float] = []
    reported = started
    bf16 = bfloat16_autocast(cfg.autocast)
    for step in range(cfg.steps):
        idx = torch.randint(len(examples), (cfg.batch_size,), generator=gen).tolist()
        rows = [examples[i] for i in idx]
        parts = micro_batches_of(
            rows, pad_id_of(tokenizer), prompt_weight=task.warm_start_prompt_weight
        )
        # weights, gradients and AdamW stay fp32; only the forward's matmuls run in bf16
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            losses.append(accumulated_step(model, opt, sched, parts))
        if every and on_checkpoint and (step + 1) % every == 0:
            paused = time.perf_counter()
            on_checkpoint(step + 1, sum(losses[-every:]) / every, model, tokenizer)
            model.train()
            started += time.perf_counter() - paused
            reported += time.perf_counter() - paused
        if time.perf_counter() - reported >= PROGRESS_EVERY_S:  # a long warm start shows it
            reported = time.perf_counter()
            print(
                f"[rlhf] warm start: step {step + 1}/{cfg.steps}, loss {losses[-1]:.3f}, "
                f"{time.perf_counter() - started:.0f} s",
                flush=True,
            )
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
