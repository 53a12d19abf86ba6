"""Each algorithm on the embedded default, over several seeds: does greedy accuracy rise?

Runs `rlhf train` (the real stack: local Ray, vLLM, DeepSpeed) once per (variant, seed), one
run at a time, and prints a markdown table: sampled reward of the first and last 10% of
iterations, greedy accuracy on the held-out prompts before and after, seconds per iteration
and per run. With --out the table (and the command that made it) is written to a file;
finished runs are read back from their summary.json, so an interrupted study resumes.

    .venv/bin/python benchmarks/learning_study.py --variants grpo,rloo,ppo --seeds 0,1,2 \\
        --out benchmarks/results/learning_study.md

Variants are override lists on top of the defaults (`VARIANTS`); `--set key=value` adds
overrides to every run. A launch config as the base (the multi-turn demonstrations), each
seed its own warm start too:

    .venv/bin/python benchmarks/learning_study.py -c launch/configs/calculator.yaml \
        --seed-keys run.seed,model.tiny.seed --out benchmarks/results/calculator.md

Runs with an environment also get turns, tool calls and solved games per episode, over the
first and the last 10% of iterations.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

VARIANTS: dict[str, list[str]] = {
    "default": [],
    "grpo": ["algorithm.name=grpo"],
    "dr_grpo": [
        "algorithm.name=grpo",
        "algorithm.scale_rewards=none",
        "algorithm.loss_aggregation=constant_normalizer",
    ],
    "grpo_batch_scale": ["algorithm.name=grpo", "algorithm.scale_rewards=batch"],
    "rloo": ["algorithm.name=rloo"],
    "reinforce_pp": ["algorithm.name=reinforce_pp"],
    "reinforce_pp_baseline": ["algorithm.name=reinforce_pp", "algorithm.baseline=group"],
    "ppo": ["algorithm.name=ppo"],
}

COLUMNS = (
    ("reward/first_10pct", "sampled reward, first 10%", "{:.3f}"),
    ("reward/last_10pct", "last 10%", "{:.3f}"),
    ("eval/greedy_reward_before", "greedy before", "{:.3f}"),
    ("eval/greedy_reward_after", "greedy after", "{:.3f}"),
    ("eval/greedy_rise", "greedy rise", "{:+.3f}"),
    ("seconds/iteration", "s/iteration", "{:.2f}"),
    ("time/generate", "generate s", "{:.2f}"),
    ("time/train", "train s", "{:.2f}"),
    ("time/sync", "sync s", "{:.3f}"),
    ("seconds/total", "run s", "{:.0f}"),
)
# per-iteration phases: the median over a run's iterations (metrics.jsonl)
PHASES = ("time/generate", "time/train", "time/sync")
# With an environment: per episode over the first and the last 10% of iterations (the env/*
# counts of metrics.jsonl), and the median share of the workers' generating time spent
# waiting on environment code; shown where a run has them.
EPISODE_COLUMNS = (
    ("episodes/turns_first", "turns, first 10%", "{:.2f}"),
    ("episodes/turns_last", "last 10%", "{:.2f}"),
    ("episodes/tool_calls_first", "tool calls, first 10%", "{:.2f}"),
    ("episodes/tool_calls_last", "last 10%", "{:.2f}"),
    ("episodes/solved_first", "solved, first 10%", "{:.3f}"),
    ("episodes/solved_last", "last 10%", "{:.3f}"),
    ("env/waited_share", "environment code share", "{:.4f}"),
)


def run_one(
    name: str,
    overrides: list[str],
    seed: int,
    out_dir: Path,
    run: bool = True,
    seed_keys: tuple[str, ...] = ("run.seed",),
) -> dict:
    """The summary of (variant, seed): read back if that run finished, else run it (or,
    with run=False, an empty record)."""
    summary_file = out_dir / f"{name}-s{seed}" / "summary.json"
    if summary_file.is_file():
        return with_phases(json.loads(summary_file.read_text()), summary_file.parent)
    if not run:
        return {}
    return with_phases(_train(name, overrides, seed, out_dir, seed_keys), summary_file.parent)


def with_phases(summary: dict, run: Path) -> dict:
    """`summary` and each phase's median seconds per iteration, from the run's metrics."""
    metrics = run / "metrics.jsonl"
    if summary.get("failed") or not metrics.is_file():
        return summary
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    for key in (*PHASES, "env/waited_share"):
        values = [r[key] for r in records if key in r]
        if values:
            summary[key] = statistics.median(values)
    tenth = max(1, len(records) // 10)
    for end, part in (("first", records[:tenth]), ("last", records[-tenth:])):
        episodes = sum(r.get("env/episodes", 0.0) for r in part)
        if not episodes:
            continue
        turns = sum(r["env/turns_mean"] * r["env/episodes"] for r in part)
        summary[f"episodes/turns_{end}"] = turns / episodes
        for count in ("tool_calls", "solved"):
            if any(f"env/{count}" in r for r in part):
                total = sum(r.get(f"env/{count}", 0.0) for r in part)
                summary[f"episodes/{count}_{end}"] = total / episodes
    return summary


def _train(
    name: str, overrides: list[str], seed: int, out_dir: Path, seed_keys: tuple[str, ...]
) -> dict:
    run = out_dir / f"{name}-s{seed}"
    summary_file = run / "summary.json"
    cmd = [
        sys.executable,
        "-m",
        "rlhf.cli",
        "train",
        f"run.output_dir={out_dir}",
        f"run.name={run.name}",
        *(f"{key}={seed}" for key in seed_keys),
        "run.progress_bar=false",
        "run.save_model=false",
        *overrides,
    ]
    print(f"[study] {name} seed {seed}: {shlex.join(cmd[3:])}", flush=True)
    t0 = time.perf_counter()
    run.mkdir(parents=True, exist_ok=True)
    with open(run / "stdout.log", "w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        print(f"[study] {name} seed {seed} failed: see {run / 'stdout.log'}", flush=True)
        return {"failed": True}
    summary = json.loads(summary_file.read_text())
    summary["seconds/total"] = time.perf_counter() - t0  # the whole command, start-up included
    summary_file.write_text(json.dumps(summary, indent=2))
    return summary


def table(results: dict[tuple[str, int], dict], variants: list[str], seeds: list[int]) -> str:
    shown = [c for c in EPISODE_COLUMNS if any(c[0] in r for r in results.values())]
    columns = (*COLUMNS, *shown)
    head = "| variant | seed | " + " | ".join(c[1] for c in columns) + " |"
    lines = [head, "|" + "---|" * (len(columns) + 2)]
    for v in variants:
        rises = []
        for s in seeds:
            r = results.get((v, s), {})
            if r.get("failed") or not r:
                lines.append(f"| {v} | {s} | " + " | ".join("-" for _ in columns) + " |")
                continue
            cells = [fmt.format(r[key]) if key in r else "-" for key, _, fmt in columns]
            lines.append(f"| {v} | {s} | " + " | ".join(cells) + " |")
            rises.append(r["eval/greedy_rise"])
        if len(rises) > 1:
            lines.append(
                f"| **{v}** | mean | | | | | **{statistics.mean(rises):+.3f}** "
                f"(min {min(rises):+.3f}) |" + " |" * (len(columns) - 5)
            )
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", default="default", help=f"comma list of {', '.join(VARIANTS)}")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument(
        "--seed-keys",
        default="run.seed",
        help="comma list of settings each set to the seed (model.tiny.seed: a warm start each)",
    )
    p.add_argument("--set", action="append", default=[], help="override for every run")
    p.add_argument("--config", "-c", help="YAML config every run starts from (rlhf train -c)")
    p.add_argument("--runs-dir", default="runs/learning_study")
    p.add_argument("--out", help="write the table (markdown) here, after every run")
    p.add_argument(
        "--report-only", action="store_true", help="only tabulate the runs already finished"
    )
    args = p.parse_args()
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    out_dir = Path(args.runs_dir)
    shared = args.set + (["-c", args.config] if args.config else [])  # on top of each variant
    results: dict[tuple[str, int], dict] = {}
    for v in variants:
        for s in seeds:
            overrides = VARIANTS[v] + shared
            keys = tuple(args.seed_keys.split(","))
            results[(v, s)] = run_one(v, overrides, s, out_dir, not args.report_only, keys)
            if not args.report_only:
                print(table(results, variants, seeds), flush=True)
                if args.out:  # after every run, so an interrupted study leaves its results
                    write_report(args.out, shared, variants, table(results, variants, seeds))
    text = table(results, variants, seeds)
    if args.out:
        write_report(args.out, shared, variants, text)
    print(text)
    return 0


def write_report(path: str, overrides: list[str], variants: list[str], text: str) -> None:
    argv = [a for a in sys.argv[1:] if a != "--report-only"]
    cmd = shlex.join(["benchmarks/learning_study.py", *argv])
    header = (
        f"Machine: {platform.processor() or platform.machine()}, "
        f"{time.strftime('%Y-%m-%d')}. Command: `.venv/bin/python {cmd}`\n"
        "Variants: "
        + "; ".join(
            f"`{v}` = `{' '.join(VARIANTS[v] + overrides) or '(defaults)'}`" for v in variants
        )
        + "\n\n"
    )
    Path(path).write_text(header + text + "\n")


if __name__ == "__main__":
    sys.exit(main())
