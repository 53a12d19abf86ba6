"""The preference algorithms on the embedded default: win rate against the initial policy.

For each (variant, seed): `rlhf train` (the real stack: local Ray, vLLM — the mixture
engine for ipo_md and nash_md —, DeepSpeed, the reference pool), then `rlhf eval` of the
saved policy against the initial one on 512 held-out prompts, 4 sampled answers each, under
the judge it trained with. Prints a markdown table (and with --out writes it with the command that made it);
finished runs are read back, so an interrupted study resumes.

    .venv/bin/python benchmarks/preference_study.py --variants online_dpo,ipo --seeds 0 \\
        --out benchmarks/results/preference_study.md
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

VARIANTS: dict[str, list[str]] = {
    "grpo": ["algorithm.name=grpo"],
    "online_dpo": ["algorithm.name=online_dpo"],
    "online_dpo_all": ["algorithm.name=online_dpo", "algorithm.pairs=all"],
    "ipo": ["algorithm.name=ipo"],
    "ipo_md": ["algorithm.name=ipo_md"],
    # two samples per prompt: four times the prompts keeps 512 samples per iteration
    "nash_md": [
        "algorithm.name=nash_md",
        "rollout.samples_per_prompt=2",
        "rollout.prompts_per_iteration=256",
    ],
}
# Longer schedules (500 iterations, every judged pair; Nash-MD 700): what clears a 0.6 win rate
LONG = ["run.iterations=500"]
VARIANTS |= {
    "online_dpo_all_500": [*VARIANTS["online_dpo_all"], *LONG],
    "ipo_all_500": ["algorithm.name=ipo", "algorithm.pairs=all", *LONG],
    "ipo_md_all_500": ["algorithm.name=ipo_md", "algorithm.pairs=all", *LONG],
    "nash_md_500": [*VARIANTS["nash_md"], *LONG],
    "nash_md_700": [*VARIANTS["nash_md"], "run.iterations=700"],
}
EVAL_PROMPTS, EVAL_SAMPLES = 512, 4


def cli(*args: str, log: Path) -> None:
    with log.open("w") as f:
        proc = subprocess.run([sys.executable, "-m", "rlhf.cli", *args], stdout=f, stderr=f)
    if proc.returncode != 0:
        raise SystemExit(f"failed: rlhf {' '.join(args)} (log: {log})")


def run_one(name: str, overrides: list[str], seed: int, out_dir: Path) -> dict:
    """Train (unless that run finished before) and evaluate (unless done with these settings)."""
    run = out_dir / f"{name}-s{seed}"
    result_file = run / f"win_rate-{EVAL_PROMPTS}x{EVAL_SAMPLES}.json"
    if result_file.is_file():
        return json.loads(result_file.read_text())
    if not (run / "summary.json").is_file():
        args = [*overrides, f"run.seed={seed}", "run.progress_bar=false", "run.eval_prompts=512"]
        log = out_dir / f"{run.name}.log"
        cli("train", *args, f"run.output_dir={out_dir}", f"run.name={run.name}", log=log)
    eval_file = run / f"eval-{EVAL_PROMPTS}x{EVAL_SAMPLES}.json"
    cli(
        "eval",
        "--policy",
        str(run / "final"),
        "--samples",
        str(EVAL_SAMPLES),
        "--out",
        str(eval_file),
        *overrides,
        f"run.seed={seed}",
        f"run.eval_prompts={EVAL_PROMPTS}",
        log=out_dir / f"{run.name}.eval.log",
    )
    result = {
        **json.loads((run / "summary.json").read_text()),
        **json.loads(eval_file.read_text()),
    }
    result_file.write_text(json.dumps(result, indent=2))
    return result


def table(results: dict[tuple[str, int], dict]) -> str:
    lines = [
        "| variant | seed | sampled reward, first 10% | last 10% | greedy before | greedy after "
        "| win rate, ties 1/2 (95% CI) | decisive win rate (95% CI) | wins / ties / losses "
        "| s/iteration |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (name, seed), r in results.items():
        lines.append(
            f"| {name} | {seed} | {r['reward/first_10pct']:.3f} | {r['reward/last_10pct']:.3f} "
            f"| {r['eval/greedy_reward_before']:.3f} | {r['eval/greedy_reward_after']:.3f} "
            f"| **{r['win_rate']:.3f}** ({r['ci_low']:.3f} to {r['ci_high']:.3f}) "
            f"| **{r['decisive_win_rate']:.3f}** ({r['decisive_ci_low']:.3f} to "
            f"{r['decisive_ci_high']:.3f}) "
            f"| {r['wins']} / {r['ties']} / {r['losses']} | {r['seconds/iteration']:.2f} |"
        )
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", default="online_dpo", help=f"comma list of {', '.join(VARIANTS)}")
    p.add_argument("--seeds", default="0")
    p.add_argument("--set", action="append", default=[], help="an override for every run")
    p.add_argument("--runs-dir", default="runs/preference_study")
    p.add_argument("--out", help="write the table here")
    args = p.parse_args()
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    out_dir = Path(args.runs_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = {}
    for v in variants:
        for s in (int(x) for x in args.seeds.split(",")):
            results[(v, s)] = run_one(v, VARIANTS[v] + args.set, s, out_dir)
            print(table(results), flush=True)
    text = table(results)
    if args.out:
        command = " ".join(shlex.quote(a) for a in [".venv/bin/python", *sys.argv])
        header = (
            "# Preference algorithms: win rate against the initial policy\n\n"
            f"Machine: {platform.machine()}, {time.strftime('%Y-%m-%d')}. Command: `{command}`\n"
        )
        Path(args.out).write_text(header + "\n" + text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
