"""The learner on long rows: seconds per train step and peak memory by sequence length, with
and without gradient checkpointing — the trade a user with long prompts and answers makes.

One `LearnerWorker` (the real DeepSpeed engine on a one-rank gloo group, ZeRO-2) in a process of
its own per setting, on a model of at least 10M parameters built locally (Llama family, vocab
512), trains GRPO on a batch of `--rows` rows whose prompts and completions have the lengths
given (each row's lengths vary by +-25% around them, as sampled answers do). Memory is the
process's peak resident set during the measured steps (`rlhf.telemetry.memory`, VmHWM reset after the
warm-up step), the model and optimizer included. Each setting runs `--reps` steps after one
warm-up; the table gives the median.

    .venv/bin/python benchmarks/long_sequences.py --shapes 128x64,256x128,400x256,800x512
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from rlhf.algorithms import make_algorithm
from rlhf.batch import TrainBatch, collate_rollouts, plan_shards
from rlhf.config import load_config
from rlhf.sync.group import free_port
from rlhf.telemetry.memory import process_memory
from rlhf.types import Rollout

MODEL = dict(hidden_size=384, num_layers=6, num_heads=6, num_kv_heads=2, intermediate_size=1536)


def build_model(folder: Path) -> str:
    from rlhf.models.tiny import build_tiny_model

    corpus = [f"{a} plus {b} is {a + b}." for a in range(60) for b in range(0, 60, 7)]
    return str(build_tiny_model(folder, corpus, max_position_embeddings=2048, **MODEL))


def long_batch(
    prompt: int, completion: int, rows: int, group: int, vocab: int, seed: int = 0
) -> TrainBatch:
    """`rows` rows in groups of `group` samples per prompt; lengths +-25% around the given."""
    rng = np.random.default_rng(seed)

    def around(n: int) -> int:
        return int(rng.integers(max(1, n * 3 // 4), n * 5 // 4 + 1))

    prompts = [list(rng.integers(3, vocab, size=around(prompt))) for _ in range(rows // group)]
    prompt_ids = [p for p in prompts for _ in range(group)]
    completions = [list(rng.integers(3, vocab, size=around(completion))) for _ in prompt_ids]
    rollout = Rollout(
        prompt_ids=prompt_ids,
        completion_ids=completions,
        sampler_logprobs=[[-6.0] * len(c) for c in completions],
        finish_reasons=["stop"] * len(completions),
        prompt_index=[i for i in range(len(prompts)) for _ in range(group)],
        policy_version=0,
    )
    batch = collate_rollouts([rollout], pad_id=0)
    batch["rewards"] = rng.integers(0, 2, size=len(batch)).astype(np.float32)
    return batch


def measure(setting: dict) -> dict:
    from rlhf.workers.learner import LearnerWorker

    overrides = [
        f"learner.micro_batch_size={setting['micro']}",
        "learner.zero_stage=2",
        "learner.backend=gloo",
        f"learner.gradient_checkpointing={setting['checkpointing']}",
        f"rollout.samples_per_prompt={setting['group']}",
        f"rollout.max_new_tokens={setting['completion'] * 5 // 4}",
    ]
    cfg = load_config(None, overrides)
    torch.set_num_threads(setting["threads"])
    worker = LearnerWorker(cfg, 0, 1, setting["model"])
    torch.set_num_threads(setting["threads"])
    worker.init_training("127.0.0.1", free_port("127.0.0.1"))
    from transformers import AutoConfig

    vocab = AutoConfig.from_pretrained(setting["model"]).vocab_size
    batch = long_batch(
        setting["prompt"], setting["completion"], setting["rows"], setting["group"], vocab
    )
    make_algorithm(cfg.algorithm, cfg.rollout.max_new_tokens).prepare(batch)
    (shard,) = plan_shards(batch, 1, 1, setting["micro"])
    seconds = []
    try:
        worker.train_step(shard)  # warm-up: allocators, optimizer state
        process_memory()  # the peak from here on
        for _ in range(setting["reps"]):
            t0 = time.perf_counter()
            worker.train_step(shard)
            seconds.append(time.perf_counter() - t0)
        peak = process_memory()["peak_gib"]
    finally:
        worker.shutdown()
    tokens = float(batch["attention_mask"].sum())
    return {"seconds": seconds, "peak_gib": peak, "tokens": tokens}


def in_subprocess(setting: dict) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--one", json.dumps(setting)],
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["?"])[-1][:120]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default="128x64,256x128,400x256,800x512", help="PROMPTxCOMPLETION")
    p.add_argument("--rows", type=int, default=64, help="rows per train step")
    p.add_argument("--group", type=int, default=8, help="samples per prompt")
    p.add_argument("--micro", type=int, default=16, help="rows per micro-batch")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: one setting, JSON out
    args = p.parse_args()
    if args.one:
        print(json.dumps(measure(json.loads(args.one))))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        model = build_model(Path(tmp) / "model")
        from transformers import AutoModelForCausalLM

        params = sum(x.numel() for x in AutoModelForCausalLM.from_pretrained(model).parameters())
        print(
            f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
            f"{args.threads} threads; model {params / 1e6:.1f}M parameters ({MODEL}); "
            f"{args.rows} rows per step ({args.group} per prompt), micro-batches of {args.micro} "
            f"rows, ZeRO-2, one rank; median of {args.reps} steps after a warm-up"
        )
        print("| prompt x completion | tokens/step | checkpointing | s/step | peak GiB |")
        print("|---|---|---|---|---|")
        for shape in args.shapes.split(","):
            prompt, completion = (int(x) for x in shape.split("x"))
            for checkpointing in (False, True):
                got = in_subprocess(
                    dict(model=model, prompt=prompt, completion=completion, rows=args.rows,
                         group=args.group, micro=args.micro, threads=args.threads,
                         reps=args.reps, checkpointing=checkpointing)
                )  # fmt: skip
                if "error" in got:
                    print(f"| {shape} | | {checkpointing} | failed: {got['error']} | |")
                    continue
                print(
                    f"| {shape} | {got['tokens']:.0f} | {'on' if checkpointing else 'off'} | "
                    f"{statistics.median(got['seconds']):.2f} | {got['peak_gib']:.2f} |",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
