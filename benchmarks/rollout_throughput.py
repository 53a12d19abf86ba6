"""Rollout throughput: generated tokens/s through a RolloutWorker against the same engine direct.

Two sides, each with its own vLLM engine built by the same `make_engine(cfg.rollout, ...)`
with the same thread count (the rollout worker's: `setup_worker_process` gives it
ceil(topology.rollout.num_cpus) torch threads, and `VLLMEngine` caps OpenMP at that):

- worker: a `RolloutWorker` Ray actor, called as the controller calls it,
  `generate(prompt_ids, n, seed)`, timed around the Ray call;
- direct: `VLLMEngine.generate` in this process with the settings the worker passes.

Reps alternate between the sides (and which goes first), so a burst of load from other jobs
hits both alike. Tokens are counted from the completions, not assumed. Inside the worker its
engine, vLLM and tokenizer calls are timed, which splits the gap into Ray call overhead,
text decoding, output conversion and the rest of building the `Rollout`.

Workloads:

- default: the default policy, 64 prompts x 8 samples, at most 4 new tokens (the defaults);
- long: at most 64 new tokens. Our engine has no ignore_eos/min_tokens, and the warm-started
  policy stops after about 3 tokens, so this uses the same architecture with the warm start
  off (random weights: EOS is rare and completions run to about 57 of 64 tokens). Compute
  per token does not depend on the weights' values.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/rollout_throughput.py
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from benchlib import (
    fmt_seconds,
    load_average,
    machine_facts,
    markdown_table,
    ray_workers_at_our_niceness,
    write_results,
)

from rlhf.config import Config
from rlhf.types import Rollout
from rlhf.workers.rollout import RolloutWorker

CALL_TIMEOUT_S = 300.0  # one generate call (the long workload takes seconds)
START_TIMEOUT_S = 300.0  # an actor with a vLLM engine (20 to 40 s on 2 busy cores)


# ---------------------------------------------------------------- timing inside a side
class Clock:
    """Seconds spent in wrapped callables since the last reset (their own calls only)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def wrap(self, name: str, fn: Callable) -> Callable:
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(name, time.perf_counter() - t0)

        return timed

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def reset(self) -> None:
        self.seconds = {}


def instrument(engine: Any, clock: Clock) -> None:
    """Time the engine's generate and, inside it, vLLM's own generate (instance attributes:
    the code that runs is unchanged)."""
    engine.generate = clock.wrap("engine", engine.generate)
    engine.llm.generate = clock.wrap("vllm", engine.llm.generate)


class TimedRolloutWorker(RolloutWorker):
    """The real RolloutWorker; its engine, vLLM and tokenizer calls are timed from outside."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.clock = Clock()
        instrument(self.engine, self.clock)
        self.tokenizer.batch_decode = self.clock.wrap("decode", self.tokenizer.batch_decode)

    def generate(self, *args: Any, **kwargs: Any) -> Rollout:
        self.clock.reset()
        t0 = time.perf_counter()
        try:
            return super().generate(*args, **kwargs)
        finally:
            self.clock.add("actor", time.perf_counter() - t0)

    def timings(self) -> dict[str, float]:
        return dict(self.clock.seconds)


# ---------------------------------------------------------------- workloads and sides
@dataclass
class Workload:
    name: str
    cfg: Config  # rollout settings for both sides
    model_path: str
    prompt_ids: list[list[int]]
    n: int


def make_workloads(names: list[str], prompts: int, n: int, long_tokens: int) -> list[Workload]:
    from transformers import AutoTokenizer

    from rlhf.data.tasks import make_task
    from rlhf.models.default_model import prepare_model

    out = []
    for name in names:
        overrides: dict[str, Any] = {}
        if name == "long":
            overrides = {
                "warm_start": {"enabled": False},
                "rollout": {"max_new_tokens": long_tokens},
            }
        cfg = Config.model_validate(overrides)
        path = prepare_model(cfg)
        tok = AutoTokenizer.from_pretrained(path)
        texts = [p.text for p in make_task(cfg.task).sample_train(prompts, seed=0)]
        ids = [tok(t).input_ids for t in texts]  # as the controller tokenizes
        out.append(Workload(name, cfg, path, ids, n))
    return out


def rollout_threads(cfg: Config) -> int:
    """What `setup_worker_process` gives a rollout worker."""
    return int(
        os.environ.get("RLHF_TORCH_THREADS", max(1, math.ceil(cfg.topology.rollout.num_cpus)))
    )


@dataclass
class Rep:
    seconds: float
    tokens: int
    parts: dict[str, float] = field(default_factory=dict)


class DirectSide:
    name = "direct VLLMEngine.generate"

    def __init__(self, w: Workload) -> None:
        from rlhf.engines import make_engine

        torch.set_num_threads(rollout_threads(w.cfg))  # VLLMEngine takes its threads from it
        self.w = w
        self.engine = make_engine(w.cfg.rollout, w.model_path, seed=w.cfg.run.seed)
        self.clock = Clock()
        instrument(self.engine, self.clock)

    def run(self, seed: int) -> Rep:
        r = self.w.cfg.rollout
        self.clock.reset()
        t0 = time.perf_counter()
        out = self.engine.generate(  # the settings RolloutWorker.generate passes
            self.w.prompt_ids,
            n=self.w.n,
            seed=seed,
            max_new_tokens=r.max_new_tokens,
            temperature=r.temperature,
            top_p=r.top_p,
            top_k=r.top_k,
        )
        seconds = time.perf_counter() - t0
        tokens = sum(len(c) for c in out.completion_ids)
        return Rep(seconds, tokens, dict(self.clock.seconds))

    def close(self) -> None:
        self.engine.shutdown()


class WorkerSide:
    name = "RolloutWorker (Ray actor)"

    def __init__(self, w: Workload) -> None:
        import ray

        self.w = w
        remote_cls = ray.remote(num_cpus=w.cfg.topology.rollout.num_cpus)(TimedRolloutWorker)
        self.actor = remote_cls.options(max_restarts=0).remote(w.cfg, 0, w.model_path)
        ray.get(self.actor.ready.remote(), timeout=START_TIMEOUT_S)

    def run(self, seed: int) -> Rep:
        import ray

        t0 = time.perf_counter()
        rollout = ray.get(
            self.actor.generate.remote(self.w.prompt_ids, self.w.n, seed), timeout=CALL_TIMEOUT_S
        )
        seconds = time.perf_counter() - t0
        parts = ray.get(self.actor.timings.remote(), timeout=CALL_TIMEOUT_S)
        return Rep(seconds, sum(len(c) for c in rollout.completion_ids), parts)

    def close(self) -> None:
        import ray

        try:
            ray.get(self.actor.shutdown.remote(), timeout=60)
        finally:
            ray.kill(self.actor)


def measure(w: Workload, reps: int, gap_s: float) -> dict[str, list[Rep]]:
    """Both sides of one workload, alternating; one warm-up call each first.

    `gap_s` between calls: after a call, vLLM's CPU worker keeps busy-polling its input
    queue for 1 s (vllm.distributed.device_communicators.shm_broadcast.SpinCondition), which
    on 2 cores would slow down whichever side runs next."""
    sides = [WorkerSide(w), DirectSide(w)]
    try:
        for side in sides:
            side.run(seed=10_000)
        out: dict[str, list[Rep]] = {s.name: [] for s in sides}
        for rep in range(reps):
            for side in sides if rep % 2 == 0 else sides[::-1]:
                time.sleep(gap_s)
                out[side.name].append(side.run(seed=rep))  # the same seeds on both sides
                got = out[side.name][-1]
                print(f"  {w.name} rep {rep} {side.name}: {got.seconds:.3f} s", flush=True)
        return out
    finally:
        for side in sides:
            side.close()


# ---------------------------------------------------------------- report
def tok_per_s(reps: list[Rep]) -> float:
    return statistics.median(r.tokens / r.seconds for r in reps)


def median_part(reps: list[Rep], key: str) -> float:
    return statistics.median(r.parts.get(key, 0.0) for r in reps)


def throughput_rows(w: Workload, result: dict[str, list[Rep]]) -> list[list[str]]:
    direct = tok_per_s(result[DirectSide.name])
    rows = []
    for side, reps in result.items():
        tokens = statistics.median(r.tokens for r in reps)
        rate = tok_per_s(reps)
        rows.append(
            [
                w.name,
                f"{len(w.prompt_ids)} x {w.n}, <= {w.cfg.rollout.max_new_tokens}",
                side,
                f"{tokens:.0f} ({tokens / (len(w.prompt_ids) * w.n):.1f})",
                fmt_seconds([r.seconds for r in reps]),
                f"{rate:.0f}",
                f"{rate / direct:.1%}",
            ]
        )
    return rows


def breakdown_rows(w: Workload, result: dict[str, list[Rep]]) -> list[list[str]]:
    """Median ms per call of each part; 'rest' is what no wrapped call accounts for."""
    rows = []
    for side, reps in result.items():
        wall = statistics.median(r.seconds for r in reps)
        vllm, engine = median_part(reps, "vllm"), median_part(reps, "engine")
        decode, actor = median_part(reps, "decode"), median_part(reps, "actor")
        is_worker = side == WorkerSide.name
        ray_overhead = wall - actor if is_worker else 0.0
        rest = (actor - engine - decode) if is_worker else wall - engine
        rows.append(
            [
                w.name,
                side,
                f"{wall * 1e3:.1f}",
                f"{vllm * 1e3:.1f}",
                f"{(engine - vllm) * 1e3:.1f}",
                f"{decode * 1e3:.1f}" if is_worker else "-",
                f"{rest * 1e3:.1f}",
                f"{ray_overhead * 1e3:.1f}" if is_worker else "-",
            ]
        )
    return rows


THROUGHPUT_HEADER = [
    "workload",
    "prompts x samples, new tokens",
    "side",
    "tokens per call (per sample)",
    "seconds median / min",
    "tokens/s (median)",
    "vs direct",
]
BREAKDOWN_HEADER = [
    "workload",
    "side",
    "wall ms",
    "in vLLM generate",
    "VLLMEngine output conversion",
    "batch_decode texts",
    "rest (Rollout, settings)",
    "Ray call overhead",
]


def report(args: argparse.Namespace, runs: list[tuple[Workload, dict[str, list[Rep]]]]) -> str:
    threads = rollout_threads(runs[0][0].cfg)
    throughput = [row for w, res in runs for row in throughput_rows(w, res)]
    breakdown = [row for w, res in runs for row in breakdown_rows(w, res)]
    return "\n".join(
        [
            "Timings depend on other load on the machine: the load averages above and at the "
            "end say how quiet it was.",
            "",
            f"{args.reps} reps per side after one warm-up, alternating sides; "
            f"{threads} thread(s) per engine on both sides (the rollout worker's share); "
            "fp32, temperature 1, enforce_eager, prefix caching on.",
            "",
            "## Throughput",
            "",
            markdown_table(THROUGHPUT_HEADER, throughput),
            "",
            "## Where a call's time goes (median ms per call)",
            "",
            markdown_table(BREAKDOWN_HEADER, breakdown),
            "",
            f"Load average at the end: {load_average()}.",
        ]
    )


def parse_args() -> argparse.Namespace:
    cfg = Config()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workloads", nargs="+", default=["default", "long"])
    ap.add_argument("--prompts", type=int, default=cfg.rollout.prompts_per_iteration)
    ap.add_argument("--samples", type=int, default=cfg.samples_per_prompt())
    ap.add_argument("--long-tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--gap", type=float, default=1.5, help="s of idle before each call")
    ap.add_argument("--no-write", action="store_true", help="print only")
    return ap.parse_args()


def main() -> None:
    from rlhf.runtime.cluster import connect

    args = parse_args()
    facts = machine_facts()
    workloads = make_workloads(args.workloads, args.prompts, args.samples, args.long_tokens)
    ray_workers_at_our_niceness()  # else the worker side runs at nice +15 (see benchlib)
    connect(workloads[0].cfg)  # the local cluster a run starts
    runs = []
    for w in workloads:
        runs.append((w, measure(w, args.reps, args.gap)))
        print(f"[rollout_throughput] {w.name} done", flush=True)
    body = report(args, runs)
    print(body)
    if not args.no_write:
        print(f"wrote {write_results('rollout_throughput', TITLE, facts, body + NOTES)}")


TITLE = "Rollout throughput: RolloutWorker (Ray) against the same vLLM engine direct"
NOTES = """

## How to read it

- tokens/s: generated tokens (counted, EOS included) over the call's wall time, median of
  the reps; "vs direct" is that median over the direct side's.
- worker wall: `ray.get(actor.generate.remote(prompt_ids, n, seed))` in the driver.
- in vLLM generate: `LLM.generate` itself; output conversion: the rest of
  `VLLMEngine.generate` (SamplingParams, token ids and log-probs into lists).
- Ray call overhead: the driver's wall time minus the time inside the actor's `generate`
  (argument and `Rollout` serialization, scheduling, the object store).
- Each call starts after `--gap` seconds of idle: after every call vLLM's CPU worker process
  busy-polls its input queue for 1 s (one full core; `SpinCondition` in vLLM's
  shm_broadcast.py), which on 2 cores slows down whatever runs next. Without the gap, the
  side that ran second paid for the other's spinning (a 2-rep trial showed the worker side
  at 56% of direct for that reason alone).
- Both sides run at the same niceness: the script sets RAY_worker_niceness=0, since Ray
  otherwise renices its workers by +15 (so in `rlhf train` every actor, and the vLLM
  processes it starts, runs at nice 15 or more: on a shared machine they yield to everyone
  else). Without it, a trial of the long workload showed the worker side at 95% of direct,
  all of it inside vLLM's generate (that trial also ran under a heavier load, 7.4 at the
  start; the two causes are not separated).
- long workload: the default architecture with the warm start off (random weights), since
  our engine has no ignore_eos/min_tokens and the warm-started policy stops after about 3
  tokens; tokens are counted, and both sides use the same seeds, so they generate the same
  number of tokens.
"""


if __name__ == "__main__":
    main()
