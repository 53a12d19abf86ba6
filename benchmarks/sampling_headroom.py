"""What a few RL steps can do for greedy accuracy: held-out prompts by greedy right or wrong and
by how many of n samples (T=1) are right.

RL's first effect is to sharpen the policy toward what its samples get right, so greedy accuracy
can rise quickly only on prompts that greedy decoding gets wrong while most samples get right;
anything beyond that needs the model to learn something new. One vLLM engine, the task's reward
and held-out prompts, a model folder:

    .venv/bin/python benchmarks/sampling_headroom.py -c launch/configs/word_problems.yaml \\
        --model runs/warm_start_wp/step2000 --prompts 128
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rlhf.config import load_config  # noqa: E402
from rlhf.data.chat import prompt_ids  # noqa: E402
from rlhf.data.tasks import make_task  # noqa: E402
from rlhf.rewards.builtin import BUILTIN_REWARDS  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", "-c", help="YAML config: the task and the engine's context")
    p.add_argument("--model", required=True, help="model folder")
    p.add_argument("--prompts", type=int, default=128, help="first N held-out prompts")
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--steps",
        help="word_problems: MIN,MAX steps a problem; new problems of that many steps (from "
        "another seed than the task's) instead of the task's held-out ones",
    )
    args = p.parse_args()

    from transformers import AutoTokenizer

    from rlhf.engines.vllm_engine import VLLMEngine

    cfg = load_config(args.config, [])
    task = make_task(cfg.task)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    prompts = task.eval_prompts[: args.prompts]
    if args.steps:
        from rlhf.data.word_problems import generate

        low, high = (int(x) for x in args.steps.split(","))
        problems = generate(args.prompts, seed=1000 + cfg.task.seed, min_steps=low, max_steps=high)
        prompts = [q.prompt() for q in problems]
    ids = [prompt_ids(tokenizer, prompt) for prompt in prompts]
    engine = VLLMEngine(
        args.model,
        seed=0,
        max_model_len=cfg.rollout.max_model_len,
        kv_cache_bytes=cfg.rollout.kv_cache_bytes,
    )
    reward = BUILTIN_REWARDS[task.default_reward]
    budget = cfg.rollout.max_new_tokens

    def right(n: int, temperature: float) -> list[int]:
        """Per prompt, how many of n completions the task's reward scores 1."""
        gen = engine.generate(
            ids, n=n, max_new_tokens=budget, temperature=temperature, seed=args.seed
        )
        texts = [tokenizer.decode(c, skip_special_tokens=True) for c in gen.completion_ids]
        repeated = [pr for pr in prompts for _ in range(n)]  # prompt-major, as generated
        scores = reward(
            [pr.text for pr in repeated], texts, answer=[pr.columns["answer"] for pr in repeated]
        )
        return [sum(1 for s in scores[i * n : (i + 1) * n] if s == 1.0) for i in range(len(ids))]

    greedy, sampled = right(1, 0.0), right(args.samples, 1.0)
    counts = collections.Counter(zip(greedy, sampled, strict=True))
    n = args.samples
    print(
        f"{args.model}: {len(ids)} held-out prompts; greedy accuracy "
        f"{sum(greedy) / len(ids):.3f}, sampled accuracy {sum(sampled) / (n * len(ids)):.3f}\n"
    )
    print("| greedy | " + " | ".join(f"{k}/{n} right" for k in range(n + 1)) + " |")
    print("|---|" + "---|" * (n + 1))
    for g in (0, 1):
        row = " | ".join(str(counts[(g, k)]) for k in range(n + 1))
        print(f"| {'right' if g else 'wrong'} | {row} |")
    wrong_but_mostly_right = sum(counts[(0, k)] for k in range(n // 2 + 1, n + 1))
    print(
        f"\nwrong under greedy, right in most samples: {wrong_but_mostly_right} "
        f"({wrong_but_mostly_right / len(ids):.1%} of the prompts: what sharpening can add)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
