"""The supervised warm start's learning curve: greedy held-out accuracy every N steps.

Builds the config's tiny model from scratch (as `rlhf train` does on a cache miss), runs the
real `rlhf.models.warm_start.warm_start` with its config, and every `--every` steps evaluates greedy
accuracy on the first `--eval-prompts` held-out prompts with the task's reward (transformers
greedy, fp32) and prints one row; the evaluations' time is left out of the seconds. With
`--out`, the table (and the command) is written after every row; with `--keep`, each
checkpoint is saved as a model folder (`<keep>/step<N>`), usable as `model.path`.

    .venv/bin/python benchmarks/warm_start_curve.py -c launch/configs/word_problems.yaml \\
        --every 250 --out benchmarks/results/warm_start_word_problems.md

Overrides after the options change the config (`warm_start.steps=600`).
"""

from __future__ import annotations

import argparse
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rlhf.config import load_config  # noqa: E402
from rlhf.data.tasks import make_task  # noqa: E402
from rlhf.models.default_model import build_untrained  # noqa: E402
from rlhf.models.generation import greedy_accuracy  # noqa: E402
from rlhf.models.warm_start import bfloat16_autocast, warm_start  # noqa: E402
from rlhf.rewards.builtin import BUILTIN_REWARDS  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", "-c", help="YAML config (rlhf train -c)")
    p.add_argument("--every", type=int, default=250, help="steps between evaluations")
    p.add_argument("--eval-prompts", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", help="markdown table here, rewritten after every row")
    p.add_argument("--keep", help="save each checkpoint under this folder")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, args.overrides)
    task = make_task(cfg.task)
    reward = BUILTIN_REWARDS[task.default_reward]
    prompts = task.eval_prompts[: args.eval_prompts]
    work = Path(tempfile.mkdtemp(prefix="warm_start_curve-"))
    build_untrained(cfg, work, task)
    header = (
        f"Machine: {platform.machine()}, {args.threads} threads; {time.strftime('%Y-%m-%d')}. "
        f"Command: `{shlex.join(['.venv/bin/python', 'benchmarks/warm_start_curve.py', *sys.argv[1:]])}`\n"
        f"Warm start: {cfg.warm_start.model_dump()} (autocast resolved: "
        f"{'bfloat16' if bfloat16_autocast(cfg.warm_start.autocast) else 'off'}); greedy accuracy on "
        f"{len(prompts)} held-out prompts, `{task.default_reward}`.\n\n"
        "| step | seconds | loss (last interval) | greedy held-out |\n|---|---|---|---|\n"
    )
    rows: list[str] = []
    started, evaluating = time.perf_counter(), 0.0

    def checkpoint(step: int, loss: float, model, tokenizer) -> None:
        nonlocal evaluating
        t0 = time.perf_counter()
        model.eval()
        with torch.no_grad():
            accuracy = greedy_accuracy(model, tokenizer, prompts, reward, task.max_new_tokens)
        if args.keep:
            folder = Path(args.keep) / f"step{step}"
            model.save_pretrained(folder, safe_serialization=True)
            tokenizer.save_pretrained(folder)
        seconds = t0 - started - evaluating
        evaluating += time.perf_counter() - t0
        rows.append(f"| {step} | {seconds:.0f} | {loss:.4f} | {accuracy:.3f} |")
        print(rows[-1], flush=True)
        if args.out:
            Path(args.out).write_text(header + "\n".join(rows) + "\n")

    stats = warm_start(
        work,
        task,
        cfg.warm_start,
        seed=cfg.model.tiny.seed,
        every=args.every,
        on_checkpoint=checkpoint,
    )
    print(stats, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
