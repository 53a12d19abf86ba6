"""The learner's train step on the embedded default's batch: seconds per step by micro-batch
size, ZeRO stage and threads — what the learner defaults are chosen from.

One `LearnerWorker` in a process of its own (a one-rank gloo group, the real DeepSpeed engine; one
process per setting, as DeepSpeed keeps global state) trains
on a batch shaped like the default run's: 64 prompts x 8 samples of the cached default model,
prompt and completion lengths as the addition task has them, rewards 0/1. Each setting runs
`--reps` steps after one warm-up step; the table gives the median and min.

    .venv/bin/python benchmarks/learner_step.py --micro 32,64,128,256,512 --zero 0,2 --threads 1,2
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

from rlhf.algorithms import make_algorithm
from rlhf.batch import TrainBatch, collate_rollouts, plan_shards
from rlhf.config import Config, load_config
from rlhf.data.tasks import make_task
from rlhf.models.default_model import prepare_model
from rlhf.sync.group import free_port
from rlhf.types import Rollout


def default_batch(cfg: Config, model_path: str, seed: int = 0) -> TrainBatch:
    """The default run's batch shape: its prompts, tokenised; completions of 2 to 4 random
    digit tokens plus EOS; rewards 0/1 at random; GRPO's advantages and weights."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    rng = np.random.default_rng(seed)
    task = make_task(cfg.task)
    prompts = task.sample_train(cfg.rollout.prompts_per_iteration, seed=seed)
    n = cfg.samples_per_prompt()
    digits = [tok(str(d)).input_ids[-1] for d in range(10)]
    prompt_ids = [tok(p.text).input_ids for p in prompts for _ in range(n)]
    completions = [
        [int(rng.choice(digits)) for _ in range(rng.integers(2, 5))] + [tok.eos_token_id]
        for _ in prompt_ids
    ]
    rollout = Rollout(
        prompt_ids=prompt_ids,
        completion_ids=completions,
        sampler_logprobs=[[-1.0] * len(c) for c in completions],
        finish_reasons=["stop"] * len(completions),
        prompt_index=[i for i in range(len(prompts)) for _ in range(n)],
        policy_version=0,
    )
    batch = collate_rollouts([rollout], tok.pad_token_id)
    batch["rewards"] = rng.integers(0, 2, size=len(batch)).astype(np.float32)
    make_algorithm(cfg.algorithm, cfg.rollout.max_new_tokens).prepare(batch)
    return batch


def time_steps(model_path: str, micro: int, zero: int, threads: int, reps: int) -> list[float]:
    from rlhf.workers.learner import LearnerWorker

    cfg = load_config(
        None,
        [f"learner.micro_batch_size={micro}", f"learner.zero_stage={zero}", "learner.backend=gloo"],
    )
    torch.set_num_threads(threads)
    worker = LearnerWorker(cfg, 0, 1, model_path)
    torch.set_num_threads(threads)  # the worker set-up sets its own; this run's choice wins
    worker.init_training("127.0.0.1", free_port("127.0.0.1"))
    batch = default_batch(cfg, model_path)
    (shard,) = plan_shards(batch, 1, 1, micro)
    seconds = []
    try:
        for _ in range(reps + 1):  # the first step warms up allocators and caches
            t0 = time.perf_counter()
            worker.train_step(shard)
            seconds.append(time.perf_counter() - t0)
    finally:
        worker.shutdown()
    return seconds[1:]


def in_subprocess(model_path: str, micro: int, zero: int, threads: int, reps: int) -> list[float]:
    setting = json.dumps([model_path, micro, zero, threads, reps])
    out = subprocess.run(
        [sys.executable, __file__, "--one", setting],
        capture_output=True,
        text=True,
        timeout=1800,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--micro", default="32,64,128,256,512")
    p.add_argument("--zero", default="0,2")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: one setting, JSON out
    args = p.parse_args()
    if args.one:
        print(json.dumps(time_steps(*json.loads(args.one))))
        return 0
    model_path = prepare_model(load_config(None))
    print(
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{args.reps} steps each (after one warm-up), batch 64 prompts x 8 samples"
    )
    print("| micro-batch | ZeRO | threads | step median (s) | min (s) |")
    print("|---|---|---|---|---|")
    grid = itertools.product(
        [int(x) for x in args.threads.split(",")],
        [int(x) for x in args.zero.split(",")],
        [int(x) for x in args.micro.split(",")],
    )
    for threads, zero, micro in grid:
        s = in_subprocess(model_path, micro, zero, threads, args.reps)
        print(
            f"| {micro} | {zero} | {threads} | {statistics.median(s):.3f} | {min(s):.3f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
