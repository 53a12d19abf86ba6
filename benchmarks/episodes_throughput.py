"""Episode throughput: the episode runner against the same engine driven directly.

One vLLM engine (the default model's, in this process, the rollout worker's thread count), two
ways to make the same episodes, alternating reps so a burst of load from other jobs hits both:

- runner: `rlhf.envs.episodes.run_episodes` with an environment that answers every turn with
  a fixed observation and ends the episode after `--turns` turns (its step costs a few
  microseconds, so what the runner adds is its own: threads, decoding, bookkeeping);
- direct: a plain loop over the same turns, `engine.generate` on every running episode's
  context, then the observation's tokens appended; no environment, no threads, no decoding.

Both use the same seeds, so they generate the same tokens (checked). Reported: episodes and
policy tokens per second, the runner's throughput as a share of the direct loop's (target
>= 90%), and the share of the runner's time spent in environment code (reset and step, timed
inside the environment).

    .venv/bin/python benchmarks/episodes_throughput.py --out benchmarks/results/episodes_throughput.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchlib import machine_facts, markdown_table, write_results  # noqa: E402

from rlhf.config import load_config  # noqa: E402
from rlhf.data.tasks import make_task  # noqa: E402
from rlhf.engines.vllm_engine import VLLMEngine  # noqa: E402
from rlhf.envs.base import Step  # noqa: E402
from rlhf.envs.episodes import EpisodeLimits, run_episodes  # noqa: E402
from rlhf.models.default_model import prepare_model  # noqa: E402

OBSERVATION = " 1+1="


class Timed:
    """Answers every turn with OBSERVATION and ends after `turns` turns; sums its own time."""

    turns = 3
    seconds = 0.0

    def reset(self, prompt: str, **columns) -> None:
        t0 = time.perf_counter()
        self.done = 0
        Timed.seconds += time.perf_counter() - t0

    def step(self, text: str) -> Step:
        t0 = time.perf_counter()
        self.done += 1
        out = Step(OBSERVATION, 1.0, self.done == Timed.turns)
        Timed.seconds += time.perf_counter() - t0
        return out


def direct(engine, ids, n, seed, turns, obs, new_tokens) -> list[list[int]]:
    """The same episodes with nothing but the engine: turn after turn on every context."""
    contexts = [list(p) for p in ids for _ in range(n)]
    tails: list[list[int]] = [[] for _ in contexts]
    for turn in range(turns):
        out = engine.generate(
            [c + t for c, t in zip(contexts, tails, strict=True)],
            n=1,
            max_new_tokens=new_tokens,
            temperature=1.0,
            seed=seed + 7919 * turn,
        )
        for t, toks in zip(tails, out.completion_ids, strict=True):
            t += toks
            if turn < turns - 1:
                t += obs
    return tails


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--turns", type=int, default=3)
    p.add_argument("--new-tokens", type=int, default=8, help="per turn")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", help="markdown results file")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(None, [])
    path = str(prepare_model(cfg))
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    task = make_task(cfg.task)
    prompts = task.train_prompts[: args.prompts]
    ids = [tokenizer(q.text).input_ids for q in prompts]
    obs = tokenizer(OBSERVATION, add_special_tokens=False).input_ids
    engine = VLLMEngine(path, seed=0, max_model_len=128, kv_cache_bytes=256 * 2**20)
    Timed.turns = args.turns
    limits = EpisodeLimits(
        max_turns=args.turns,
        max_new_tokens=args.new_tokens,
        max_tokens=args.turns * (args.new_tokens + len(obs)),
        max_observation_tokens=64,
        timeout_s=60,
    )
    contexts = [(q.text, q.columns) for q in prompts]
    times: dict[str, list[float]] = {"runner": [], "direct": []}
    env_share, tokens = [], 0
    for rep in range(args.reps + 1):  # the first rep warms both up and is not counted
        order = ["runner", "direct"] if rep % 2 else ["direct", "runner"]
        seed = 1000 + rep
        got: dict[str, list[list[int]]] = {}
        for side in order:
            Timed.seconds = 0.0
            t0 = time.perf_counter()
            if side == "runner":
                eps = run_episodes(engine, tokenizer, Timed, contexts, ids, args.samples, seed,
                                   limits, temperature=1.0)  # fmt: skip
                got[side] = eps.generation.completion_ids
                tokens = sum(sum(m) for m in eps.policy_masks)
            else:
                got[side] = direct(engine, ids, args.samples, seed, args.turns, obs,
                                   args.new_tokens)  # fmt: skip
            seconds = time.perf_counter() - t0
            if rep:
                times[side].append(seconds)
                if side == "runner":
                    env_share.append(Timed.seconds / seconds)
        if got["runner"] != got["direct"]:
            raise SystemExit("the runner and the direct loop made different episodes")
    episodes = args.prompts * args.samples
    rows = []
    for side in ("direct", "runner"):
        med = statistics.median(times[side])
        rows.append([side, f"{med:.2f}", f"{episodes / med:.0f}", f"{tokens / med:.0f}"])
    ratio = statistics.median(times["direct"]) / statistics.median(times["runner"])
    body = (
        f"{args.prompts} prompts x {args.samples} samples = {episodes} episodes of {args.turns} "
        f"turns (at most {args.new_tokens} tokens a turn, a {len(obs)}-token observation "
        f"between turns), the default model, one vLLM engine, {args.threads} threads; "
        f"median of {args.reps} reps, alternating.\n\n"
        + markdown_table(["side", "s per call", "episodes/s", "policy tokens/s"], rows)
        + f"\n\nThe runner's throughput is **{ratio:.0%}** of the direct loop's (target >= 90%);"
        f" environment code (reset and step) is {statistics.median(env_share):.2%} of the "
        "runner's time. Both sides made the same tokens (checked every rep).\n"
    )
    print(body)
    if args.out:
        write_results(
            Path(args.out).stem, "Episode throughput: the runner against the engine alone",
            machine_facts(), body,
        )  # fmt: skip
    engine.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
