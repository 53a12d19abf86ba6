"""Per-tensor vs bucketed weight-sync broadcast over gloo on CPU.

One sender process and N receiver processes (spawned) form a `WeightSyncGroup`; the sender
broadcasts a Llama-shaped state dict again and again with different `bucket_bytes`
(0 = one broadcast per tensor). Prints a markdown table of median times.

    .venv/bin/python benchmarks/sync_bucketing.py --receivers 2
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import platform
import statistics
import time

import torch
from benchlib import llama_shapes, random_state

from rlhf.sync import WeightSyncGroup, free_port, manifest_of, plan_buckets

MiB = 2**20

# (hidden, layers, intermediate, vocab): ~1.3M params in 219 tensors; ~97M in 111 tensors.
MODELS = {"tiny": (64, 24, 192, 512), "100M": (768, 12, 2048, 8000)}


def make_state(model: str) -> dict[str, torch.Tensor]:
    return random_state(llama_shapes(*MODELS[model]))


def receiver(port: int, rank: int, world: int, plan: list[tuple[str, int]], reps: int, q) -> None:
    torch.set_num_threads(1)
    group = WeightSyncGroup("127.0.0.1", port, rank, world, "gloo", 300.0, ["s"] * world)
    manifests = {m: manifest_of(make_state(m).items()) for m in MODELS}
    version = 0
    for model, bucket_bytes in plan:
        for _ in range(reps):
            version += 1
            t0 = time.perf_counter()
            for _name, _t in group.receive(manifests[model], bucket_bytes, version):
                pass
            q.put((model, bucket_bytes, time.perf_counter() - t0))
    group.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--receivers", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--bucket-mib", type=float, nargs="*", default=[0, 1, 4, 16, 64, 256])
    args = ap.parse_args()
    torch.set_num_threads(1)
    states = {m: make_state(m) for m in MODELS}
    plan = [(m, int(b * MiB)) for m in MODELS for b in args.bucket_mib]
    world = args.receivers + 1
    port = free_port()
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [
        ctx.Process(target=receiver, args=(port, r, world, plan, args.reps, q))
        for r in range(1, world)
    ]
    for p in procs:
        p.start()
    group = WeightSyncGroup("127.0.0.1", port, 0, world, "gloo", 300.0, ["s"] * world)
    rows = []
    version = 0
    for model, bucket_bytes in plan:
        state = states[model]
        manifest = manifest_of(state.items())
        send_times, recv_times = [], []
        for _ in range(args.reps):
            version += 1
            stats = group.send(state.items(), manifest, bucket_bytes, version)
            send_times.append(stats["seconds"])
            recv_times.append(max(q.get(timeout=300)[2] for _ in procs))  # slowest receiver
        nbytes = sum(t.numel() * t.element_size() for t in state.values())
        median = statistics.median(recv_times)
        rows.append(
            (
                model,
                sum(t.numel() for t in state.values()) / 1e6,
                len(state),
                "per tensor" if bucket_bytes == 0 else f"{bucket_bytes / MiB:g} MiB",
                len(plan_buckets(manifest, bucket_bytes)),
                statistics.median(send_times) * 1e3,
                median * 1e3,
                min(recv_times) * 1e3,
                nbytes / median / 1e9,
            )
        )
    group.close()
    for p in procs:
        p.join(timeout=60)
    print(
        f"gloo on {platform.machine()}, {torch.get_num_threads()} torch thread per process, "
        f"1 sender + {args.receivers} receivers, {args.reps} reps, fp32"
    )
    print(
        "| model | params (M) | tensors | bucket | broadcasts | send median (ms) "
        "| receive median (ms) | receive min (ms) | GB/s (median) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r[0]} | {r[1]:.1f} | {r[2]} | {r[3]} | {r[4]} | {r[5]:.1f} | {r[6]:.1f} "
            f"| {r[7]:.1f} | {r[8]:.2f} |"
        )


if __name__ == "__main__":
    main()
