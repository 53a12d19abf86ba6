"""Scheduling modes on the embedded default: disaggregated or colocated pools, synchronous or
asynchronous generation (rollout.max_staleness 0, 1, 2). Seconds per iteration, where they go,
and whether learning holds.

Runs `rlhf train` once per (mode, seed) through `learning_study.run_one` (one run at a time,
finished runs read back) and reads each run's metrics.jsonl:
- s/iteration: median of `time/iteration` (and the mean, start-up excluded);
- generate (waited): the controller's wait for its batch; generate (busy): the rollout
  worker's own seconds on it (with asynchronous generation most of it is hidden);
- train: the learner's step as the controller waits for it; sync: the weight sync;
- overhead: iteration wall time minus the critical path's compute, for the synchronous modes:
  time/iteration - (generate busy + learner step seconds + sync send seconds). What is left
  is Ray calls, batch assembly, the reward call, advantages and waiting.

    .venv/bin/python benchmarks/speed_modes.py --modes disaggregated,colocated,async1,async2 \\
        --seeds 0 --out benchmarks/results/speed_modes.md
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from learning_study import run_one  # noqa: E402

ONE_EACH = ["topology.rollout.workers=1", "topology.learner.workers=1"]
TWO_EACH = ["topology.rollout.workers=2", "topology.learner.workers=2"]
MODES: dict[str, list[str]] = {
    "disaggregated": [*ONE_EACH, "topology.colocate_all=false", "rollout.max_staleness=0"],
    "colocated": [*ONE_EACH, "topology.colocate_all=true", "rollout.max_staleness=0"],
    # the default: two of each, taking turns, each actor on one of the two cores
    "colocated_dp2": [*TWO_EACH, "topology.colocate_all=true", "rollout.max_staleness=0"],
    # two engines, one learner rank computing on both cores: no gradient all-reduce
    "colocated_learner1": [
        "topology.rollout.workers=2",
        "topology.learner.workers=1",
        "topology.colocate_all=true",
        "rollout.max_staleness=0",
    ],
    "async1": [*ONE_EACH, "topology.colocate_all=false", "rollout.max_staleness=1"],
    "async2": [*ONE_EACH, "topology.colocate_all=false", "rollout.max_staleness=2"],
}


def medians(run_dir: Path) -> dict[str, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]

    def med(key: str) -> float:
        values = [r[key] for r in rows if r.get(key) is not None]
        return statistics.median(values) if values else float("nan")

    out = {k: med(k) for k in ("time/iteration", "time/generate", "time/generate_busy")}
    out |= {k: med(k) for k in ("time/train", "time/sync", "learner/seconds")}
    out["mean s/iteration"] = statistics.mean(r["time/iteration"] for r in rows)
    overhead = [
        r["time/iteration"]
        - r.get("time/generate_busy", 0.0)
        - r.get("learner/seconds", 0.0)
        - r.get("sync/send_seconds", 0.0)
        for r in rows
    ]
    # with generation overlapped, the critical path is not a sum: no overhead figure
    synchronous = all(r.get("rollout/staleness_max", 0.0) == 0.0 for r in rows)
    out["overhead"] = statistics.median(overhead) if synchronous else float("nan")
    out["staleness"] = med("rollout/staleness_mean")
    return out


COLUMNS = (
    ("time/iteration", "s/iteration (median)", "{:.3f}"),
    ("mean s/iteration", "mean", "{:.3f}"),
    ("time/generate", "generate (waited)", "{:.3f}"),
    ("time/generate_busy", "generate (busy)", "{:.3f}"),
    ("time/train", "train", "{:.3f}"),
    ("time/sync", "sync", "{:.3f}"),
    ("overhead", "overhead", "{:.3f}"),
    ("staleness", "mean staleness", "{:.2f}"),
    ("reward/first_10pct", "reward first 10%", "{:.3f}"),
    ("reward/last_10pct", "last 10%", "{:.3f}"),
    ("eval/greedy_reward_before", "greedy before", "{:.3f}"),
    ("eval/greedy_reward_after", "after", "{:.3f}"),
)


def table(results: dict[tuple[str, int], dict]) -> str:
    lines = [
        "| mode | seed | " + " | ".join(c[1] for c in COLUMNS) + " |",
        "|" + "---|" * (len(COLUMNS) + 2),
    ]
    for (mode, seed), r in results.items():
        cells = [fmt.format(r[k]) if k in r and r[k] == r[k] else "-" for k, _, fmt in COLUMNS]
        lines.append(f"| {mode} | {seed} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--seeds", default="0")
    p.add_argument("--set", action="append", default=[], help="override for every run")
    p.add_argument("--config", "-c", help="YAML config every run starts from (rlhf train -c)")
    p.add_argument("--runs-dir", default="runs/speed_modes")
    p.add_argument("--out", help="write the table (markdown) here")
    args = p.parse_args()
    modes = args.modes.split(",")
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        p.error(f"unknown modes {unknown}; known: {', '.join(MODES)}")
    out_dir = Path(args.runs_dir)
    results: dict[tuple[str, int], dict] = {}
    for seed in [int(s) for s in args.seeds.split(",")]:
        for mode in modes:
            config = ["-c", args.config] if args.config else []
            summary = run_one(mode, MODES[mode] + args.set + config, seed, out_dir)
            if summary and not summary.get("failed"):
                summary |= medians(out_dir / f"{mode}-s{seed}")
            results[(mode, seed)] = summary
            print(table(results), flush=True)
    text = table(results)
    if args.out:
        cmd = shlex.join(["benchmarks/speed_modes.py", *sys.argv[1:]])
        head = (
            f"Machine: {platform.processor() or platform.machine()}, {time.strftime('%Y-%m-%d')}. "
            f"Command: `.venv/bin/python {cmd}`\n"
            + "Modes: "
            + "; ".join(f"`{m}` = `{' '.join(MODES[m] + args.set)}`" for m in modes)
            + "\n\n"
        )
        Path(args.out).write_text(head + text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
