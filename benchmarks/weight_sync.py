"""Weight-sync speed, learner -> rollout: our bucketed send against the transport limit.

The learner's side is this process: rank 0 of a `WeightSyncGroup`, sending Llama-shaped fp32
state dicts with `WeightSyncGroup.send` and the configured bucket size
(`SyncConfig.bucket_bytes`). Two kinds of receiver, each in a sync group of its own:

- a plain process (spawned), for every size: the pure transport;
- a `RolloutWorker` Ray actor with a real vLLM engine (`--vllm-sizes`, default every size;
  `--vllm-sizes 1M` for a quick run): the receiver then runs inside vLLM's worker process,
  as in a run.

Sizes: 1M is the default policy's own weights (39 tensors); 50M and 200M are random
Llama-shaped fp32 weights (vocab 32000), saved as a model folder when vLLM must load them.

Per receiver, in the same processes and interleaved rep by rep:

- limit: one flat tensor of the same total size, one broadcast on the group's own process
  group, into a receive buffer allocated (and touched) once: the transport's best case;
- ours: `send` -> `receive` drained (handshake, bucket packing, buffers), nothing loaded;
- load (vLLM only): `send` -> the engine's real `rlhf_receive_weights` (receive and load);
- run-style (vLLM only): `RolloutWorker.receive_weights` called through Ray while this process
  sends, timed around both like `Pools.sync_weights` (Ray calls and prefix-cache reset in).

A rep starts once the receiver is waiting (it reports when it entered; a rep where it entered
late is run again) and ends when the receiver has everything (`time.monotonic`, the same
clock in every process on one machine).

    PYTHONPATH=$PWD .venv/bin/python benchmarks/weight_sync.py

The probes inside vLLM's worker are functions sent through `collective_rpc`, which needs
VLLM_ALLOW_INSECURE_SERIALIZATION=1 (set here for this script's own Ray cluster only).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from benchlib import (
    RESULTS,
    fmt_seconds,
    llama_shapes,
    load_average,
    machine_facts,
    markdown_table,
    median_min,
    random_state,
    ray_workers_at_our_niceness,
    state_bytes,
    write_results,
)

from rlhf.config import Config
from rlhf.engines.vllm_extension import manifest_from_wire, manifest_to_wire
from rlhf.sync import SyncEndpoint, WeightSyncGroup, manifest_of, plan_buckets
from rlhf.sync.buckets import ParamSpec
from rlhf.sync.group import host_store
from rlhf.workers.rollout import RolloutWorker

HOST = "127.0.0.1"
TIMEOUT_S = 60.0  # any single wait on a peer: a group deadline, a receiver's answer
START_TIMEOUT_S = 300.0  # a RolloutWorker's start (vLLM takes 20 to 40 s on 2 busy cores)
# (hidden, layers, intermediate, vocab); None = the default policy (its real weights)
SIZES: dict[str, tuple[int, int, int, int] | None] = {
    "1M": None,
    "50M": (512, 6, 1408, 32000),
    "200M": (1024, 12, 2816, 32000),
}
HEAD_DIM = 64  # for the vLLM folders built for the larger sizes


# ---------------------------------------------------------------- models
@dataclass
class Model:
    name: str
    state: dict[str, torch.Tensor]
    folder: str | None = None  # a model folder vLLM can load, once built
    manifest: list[ParamSpec] = field(init=False)

    def __post_init__(self) -> None:
        self.manifest = manifest_of(self.state.items())

    @property
    def nbytes(self) -> int:
        return state_bytes(self.state)

    @property
    def params(self) -> int:
        return sum(t.numel() for t in self.state.values())


def default_policy(cfg: Config) -> Model:
    """The default policy's own weights, named and ordered as the learner sends them."""
    from transformers import AutoModelForCausalLM

    from rlhf.models.default_model import prepare_model

    folder = prepare_model(cfg)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    state = {name: p.detach() for name, p in model.named_parameters()}
    return Model("1M", state, folder)


def make_model(name: str, cfg: Config) -> Model:
    dims = SIZES[name]
    if dims is None:
        return default_policy(cfg)
    return Model(name, random_state(llama_shapes(*dims)))


def build_folder(model: Model, tokenizer_from: str, parent: Path) -> str:
    """A Llama folder with `model`'s weights, for vLLM (the tokenizer is the default one)."""
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, LlamaConfig

    hidden, layers, inter, vocab = SIZES[model.name] or (0, 0, 0, 0)
    heads = hidden // HEAD_DIM
    folder = parent / model.name
    tok = AutoTokenizer.from_pretrained(tokenizer_from)
    LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads // 2,  # llama_shapes' k/v projections are hidden/2 wide
        head_dim=HEAD_DIM,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    ).save_pretrained(folder)
    save_file(model.state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    tok.save_pretrained(folder)
    return str(folder)


def device_for(backend: str) -> torch.device:
    return torch.device("cuda", 0) if backend == "nccl" else torch.device("cpu")


def settle_device(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------- receiver side
# These run in the receiver's process: a spawned process, or vLLM's worker (shipped there by
# value through collective_rpc, so they use only torch, time and rlhf).
def recv_flat(group: WeightSyncGroup, nbytes: int, cache: dict) -> tuple[float, float]:
    """The limit: one broadcast into a buffer allocated and touched once, outside the timing."""
    if cache.get("nbytes") != nbytes:
        cache.clear()  # keep one size at a time: the 200M buffer alone is 0.8 GB
        cache["buf"] = torch.zeros(nbytes, dtype=torch.uint8, device=group.device)
        cache["nbytes"] = nbytes
    entered = time.monotonic()
    group._broadcast(cache["buf"], "flat limit")  # the very collective `send` uses per bucket
    settle_device(group.device)
    return entered, time.monotonic()


def recv_ours(
    group: WeightSyncGroup, manifest: list[ParamSpec], bucket_bytes: int, version: int
) -> tuple[float, float]:
    """Our receive, every tensor drained and dropped: transport without any load."""
    entered = time.monotonic()
    for _name, _tensor in group.receive(manifest, bucket_bytes, version):
        pass
    settle_device(group.device)
    return entered, time.monotonic()


def process_receiver(endpoint_wire: dict, commands: Any, results: Any) -> None:
    """A plain receiver process: runs commands (op, args) until it gets None."""
    torch.set_num_threads(1)  # a rollout worker's share (topology.rollout.num_cpus = 1)
    endpoint = SyncEndpoint.from_wire(endpoint_wire)
    group = WeightSyncGroup.join(endpoint, device_for(endpoint.backend))
    cache: dict = {}
    try:
        while (command := commands.get(timeout=TIMEOUT_S)) is not None:
            op, args = command
            if op == "flat":
                results.put(recv_flat(group, *args, cache))
            else:
                results.put(recv_ours(group, *args))
    except Exception as err:  # the sender's wait names it instead of timing out blind
        results.put(f"receiver failed: {type(err).__name__}: {err}")
    finally:
        group.close()


def engine_flat(worker: Any, nbytes: int) -> tuple[float, float]:
    return recv_flat(worker._rlhf_sync, nbytes, worker.__dict__.setdefault("_bench_flat", {}))


def engine_ours(worker: Any, manifest: list, bucket_bytes: int, version: int) -> tuple:
    return recv_ours(worker._rlhf_sync, manifest_from_wire(manifest), bucket_bytes, version)


def engine_load(worker: Any, manifest: list, bucket_bytes: int, version: int) -> tuple:
    """The engine's real receive-and-load (what `VLLMEngine.receive_weights` runs)."""
    entered = time.monotonic()
    worker.rlhf_receive_weights(manifest, bucket_bytes, version)
    return entered, time.monotonic()


class ProbedRolloutWorker(RolloutWorker):
    """The real RolloutWorker, plus a way to run a function inside its vLLM worker."""

    def probe(self, fn: Callable, *args: Any) -> Any:
        return self.engine.llm.collective_rpc(fn, args=args)[0]


# ---------------------------------------------------------------- sender side: peers
class ProcessPeer:
    """A spawned receiver process in a sync group of its own with this process."""

    kind = "process"

    def __init__(self, backend: str) -> None:
        store = host_store(HOST, 2, TIMEOUT_S)
        endpoint = SyncEndpoint(
            HOST, int(store.port), 0, 2, backend, TIMEOUT_S, ("learner", "receiver")
        )
        ctx = mp.get_context("spawn")
        self.commands, self.results = ctx.Queue(), ctx.Queue()
        self.proc = ctx.Process(
            target=process_receiver,
            args=(endpoint.for_rank(1).to_wire(), self.commands, self.results),
            daemon=True,
        )
        self.proc.start()
        self.group = WeightSyncGroup.join(endpoint, device_for(backend), store)

    def start(self, op: str, model: Model, bucket_bytes: int, version: int) -> None:
        if op == "flat":
            self.commands.put(("flat", (model.nbytes,)))
        else:
            self.commands.put(("ours", (model.manifest, bucket_bytes, version)))

    def finish(self, _pending: None) -> tuple[float, float]:
        got = self.results.get(timeout=TIMEOUT_S)
        if isinstance(got, str):
            raise RuntimeError(got)
        return got

    def close(self) -> None:
        self.commands.put(None)
        self.proc.join(timeout=60)
        if self.proc.is_alive():
            self.proc.kill()
        self.group.close()


class EnginePeer:
    """A ProbedRolloutWorker (Ray actor, real vLLM engine) in a sync group with this process."""

    kind = "vLLM engine"

    def __init__(self, cfg: Config, folder: str, backend: str) -> None:
        import ray

        actor_cls = ray.remote(num_cpus=cfg.topology.rollout.num_cpus)(ProbedRolloutWorker)
        self.actor = actor_cls.remote(cfg, 0, folder)
        ray.get(self.actor.ready.remote(), timeout=START_TIMEOUT_S)
        store = host_store(HOST, 2, TIMEOUT_S)
        endpoint = SyncEndpoint(
            HOST, int(store.port), 0, 2, backend, TIMEOUT_S, ("learner", "rollout-0")
        )
        joined = self.actor.init_weight_sync.remote(endpoint.for_rank(1))
        self.group = WeightSyncGroup.join(endpoint, device_for(backend), store)
        ray.get(joined, timeout=TIMEOUT_S)

    def start(self, op: str, model: Model, bucket_bytes: int, version: int) -> Any:
        if op == "flat":
            return self.actor.probe.remote(engine_flat, model.nbytes)
        fn = engine_ours if op == "ours" else engine_load
        return self.actor.probe.remote(fn, manifest_to_wire(model.manifest), bucket_bytes, version)

    def finish(self, pending: Any) -> tuple[float, float]:
        import ray

        return tuple(ray.get(pending, timeout=TIMEOUT_S))

    def run_style(self, model: Model, bucket_bytes: int, version: int) -> float:
        """Like `Pools.sync_weights`: the receive call and the send at once, timed around both."""
        import ray

        t0 = time.monotonic()
        receive = self.actor.receive_weights.remote(model.manifest, bucket_bytes, version)
        self.group.send(model.state.items(), model.manifest, bucket_bytes, version)
        ray.get(receive, timeout=TIMEOUT_S)
        settle_device(self.group.device)
        return time.monotonic() - t0

    def close(self) -> None:
        import ray

        try:
            ray.get(self.actor.shutdown.remote(), timeout=60)
        finally:
            ray.kill(self.actor)
            self.group.close()


# ---------------------------------------------------------------- measuring
@dataclass
class Timings:
    by_op: dict[str, list[float]] = field(default_factory=dict)
    handshake: list[float] = field(default_factory=list)  # inside our send, sender side

    def add(self, op: str, seconds: float) -> None:
        self.by_op.setdefault(op, []).append(seconds)


class Sender:
    def __init__(self, bucket_bytes: int, settle_s: float) -> None:
        self.bucket_bytes = bucket_bytes
        self.settle_s = settle_s
        self.version = 0
        self.flat: torch.Tensor | None = None

    def _flat_of(self, model: Model, device: torch.device) -> torch.Tensor:
        if self.flat is None or self.flat.numel() != model.nbytes:
            self.flat = None  # free the previous size first
            self.flat = torch.ones(model.nbytes, dtype=torch.uint8, device=device)
        return self.flat

    def one(self, peer: ProcessPeer | EnginePeer, op: str, model: Model, stats: Timings) -> float:
        """One timed transfer, started once the receiver waits; re-run if it entered late."""
        settle = self.settle_s
        for _attempt in range(4):
            self.version += 1
            pending = peer.start(op, model, self.bucket_bytes, self.version)
            time.sleep(settle)  # the receiver reaches its wait (checked below)
            t0 = time.monotonic()
            if op == "flat":
                peer.group._broadcast(self._flat_of(model, peer.group.device), "flat limit")
                settle_device(peer.group.device)
            else:
                sent = peer.group.send(
                    model.state.items(), model.manifest, self.bucket_bytes, self.version
                )
                stats.handshake.append(sent["handshake_seconds"])
            entered, done = peer.finish(pending)
            if entered <= t0:
                return done - t0
            settle *= 2
        raise RuntimeError(f"{op}: the receiver kept arriving after the sender started")

    def measure(
        self, peer: ProcessPeer | EnginePeer, ops: list[str], model: Model, reps: int
    ) -> Timings:
        """Interleaved: every op once per rep, so a burst of load hits all of them alike."""
        for op in ops:  # warm-up: connections, first allocations, vLLM's first reload
            self.one(peer, op, model, Timings())
        stats = Timings()
        for _ in range(reps):
            for op in ops:
                stats.add(op, self.one(peer, op, model, stats))
            if isinstance(peer, EnginePeer):
                self.version += 1
                stats.add("run", peer.run_style(model, self.bucket_bytes, self.version))
        return stats


# ---------------------------------------------------------------- the default run's share
def default_run_sync_share() -> list[tuple[str, float, float]]:
    """(seed, s/iteration, sync s) per row of the table in results/default_run.md."""
    rows = [line for line in (RESULTS / "default_run.md").read_text().splitlines()]
    rows = [line for line in rows if line.startswith("|")]
    cells = [[c.strip().strip("*") for c in line.strip("|").split("|")] for line in rows]
    header = cells[0]
    at_iteration = next(i for i, h in enumerate(header) if h.startswith("s/iteration"))
    at_sync = header.index("sync")
    out = []
    for row in cells[2:]:
        if len(row) != len(header) or not re.fullmatch(r"[\d.]+", row[at_sync]):
            break  # the end of the first table
        out.append((row[0], float(row[at_iteration]), float(row[at_sync])))
    return out


def share_section(run_style_1m: float | None) -> str:
    try:
        rows = default_run_sync_share()
    except (OSError, ValueError) as err:
        return f"(results/default_run.md unreadable: {err})"
    if not rows:
        return "(no table found in results/default_run.md)"
    lines = [
        "| seed | s/iteration | sync (s) | sync share |",
        "|---|---|---|---|",
    ]
    lines += [f"| {seed} | {it:.2f} | {sync:.3f} | {sync / it:.1%} |" for seed, it, sync in rows]
    shares = [sync / it for _, it, sync in rows]
    text = "\n".join(lines)
    text += (
        f"\n\nIn the default run weight sync takes {min(shares):.1%} to {max(shares):.1%} of an "
        f"iteration (target < 5%: {'met' if max(shares) < 0.05 else 'missed'})."
    )
    if run_style_1m is not None:
        its = [it for _, it, _ in rows]
        text += (
            f" With this run's run-style 1M sync ({run_style_1m * 1e3:.1f} ms median) the share "
            f"would be {run_style_1m / max(its):.1%} to {run_style_1m / min(its):.1%}."
        )
    return text


# ---------------------------------------------------------------- report
def gbps(nbytes: int, seconds: float) -> str:
    return f"{nbytes / seconds / 1e9:.2f}"


def efficiency(limit: list[float], ours: list[float]) -> str:
    """limit / ours from the medians, and (in brackets) from the minimums."""
    (lm, ln), (om, on) = median_min(limit), median_min(ours)
    return f"{lm / om:.0%} ({ln / on:.0%})"


def transport_rows(results: list[tuple[Model, str, Timings]], bucket_bytes: int) -> list[list]:
    rows = []
    for model, kind, t in results:
        flat, ours = t.by_op["flat"], t.by_op["ours"]
        rows.append(
            [
                model.name,
                f"{model.params / 1e6:.2f}",
                f"{model.nbytes / 1e6:.1f}",
                str(len(plan_buckets(model.manifest, bucket_bytes))),
                kind,
                fmt_seconds(flat),
                gbps(model.nbytes, median_min(flat)[0]),
                fmt_seconds(ours),
                gbps(model.nbytes, median_min(ours)[0]),
                f"{median_min(t.handshake)[0] * 1e3:.2f}",
                efficiency(flat, ours),
            ]
        )
    return rows


def engine_rows(results: list[tuple[Model, str, Timings]]) -> list[list]:
    rows = []
    for model, kind, t in results:
        if kind != EnginePeer.kind:
            continue
        flat, ours, load, run = (t.by_op[k] for k in ("flat", "ours", "load", "run"))
        rows.append(
            [
                model.name,
                fmt_seconds(flat),
                fmt_seconds(ours),
                fmt_seconds(load),
                fmt_seconds(run),
                gbps(model.nbytes, median_min(load)[0]),
                efficiency(flat, load),
                efficiency(flat, run),
            ]
        )
    return rows


TRANSPORT_HEADER = [
    "model",
    "params (M)",
    "MB",
    "buckets",
    "receiver",
    "flat limit median / min (s)",
    "limit GB/s",
    "our send median / min (s)",
    "our GB/s",
    "handshake (ms)",
    "efficiency limit/ours median (min)",
]
ENGINE_HEADER = [
    "model",
    "flat limit (s)",
    "our transport (s)",
    "receive + load (s)",
    "run-style RolloutWorker.receive_weights (s)",
    "GB/s receive + load",
    "efficiency limit / (receive + load)",
    "efficiency limit / run-style",
]


# ---------------------------------------------------------------- main
def start_ray() -> None:
    import ray

    env = {
        "VLLM_ALLOW_INSECURE_SERIALIZATION": "1",  # the probes are functions (see top)
        "PYTHONPATH": os.pathsep.join(
            p for p in (os.getcwd(), os.environ.get("PYTHONPATH", "")) if p
        ),
    }
    os.environ.update(env)
    ray_workers_at_our_niceness()  # the receiver actor at the sender's niceness (see benchlib)
    ray.init(
        num_cpus=max(2, os.cpu_count() or 1),
        include_dashboard=False,
        namespace="bench-weight-sync",
        runtime_env={"env_vars": env},
    )


def parse_args() -> argparse.Namespace:
    cfg = Config()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    ap.add_argument(
        "--vllm-sizes", nargs="*", default=list(SIZES), choices=list(SIZES), help="into vLLM too"
    )
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--bucket-bytes", type=int, default=cfg.sync.bucket_bytes)
    ap.add_argument("--backend", choices=["gloo", "nccl"], default="gloo")
    ap.add_argument("--settle", type=float, default=0.2, help="s to let the receiver wait")
    ap.add_argument("--no-write", action="store_true", help="print only")
    return ap.parse_args()


def run(args: argparse.Namespace, cfg: Config) -> list[tuple[Model, str, Timings]]:
    device = device_for(args.backend)
    models = {n: make_model(n, cfg) for n in dict.fromkeys([*args.sizes, *args.vllm_sizes])}
    for m in models.values():
        m.state = {k: v.to(device) for k, v in m.state.items()}
    sender = Sender(args.bucket_bytes, args.settle)
    results = []
    peer = ProcessPeer(args.backend)
    try:
        for name in args.sizes:
            stats = sender.measure(peer, ["flat", "ours"], models[name], args.reps)
            results.append((models[name], peer.kind, stats))
            print(f"[weight_sync] {name} -> process done", flush=True)
    finally:
        peer.close()
    if not args.vllm_sizes:
        return results
    start_ray()
    scratch = Path(tempfile.mkdtemp(prefix="weight-sync-"))
    try:
        for name in args.vllm_sizes:
            model = models[name]
            folder = model.folder or build_folder(model, models_folder(cfg), scratch)
            engine = EnginePeer(cfg, folder, args.backend)
            try:
                stats = sender.measure(engine, ["flat", "ours", "load"], model, args.reps)
            finally:
                engine.close()
            results.append((model, engine.kind, stats))
            print(f"[weight_sync] {name} -> vLLM done", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return results


def models_folder(cfg: Config) -> str:
    from rlhf.models.default_model import prepare_model

    return prepare_model(cfg)


def report(args: argparse.Namespace, results: list) -> str:
    bucket_mib = args.bucket_bytes / 2**20
    run_1m = [t.by_op["run"] for m, k, t in results if m.name == "1M" and "run" in t.by_op]
    parts = [
        "Timings depend on other load on the machine: the load averages above and at the "
        "end say how quiet it was.",
        "",
        f"Backend {args.backend}, bucket {bucket_mib:g} MiB, fp32, 1 torch thread per process, "
        f"{args.reps} reps (after one warm-up each), one sender and one receiver.",
        "",
        "## Transport: send and receive, nothing loaded",
        "",
        markdown_table(TRANSPORT_HEADER, transport_rows(results, args.bucket_bytes)),
    ]
    engine = engine_rows(results)
    if engine:
        parts += [
            "",
            "## Full sync into a vLLM engine (RolloutWorker, Ray actor)",
            "",
            markdown_table(ENGINE_HEADER, engine),
        ]
    parts += [
        "",
        "## Weight sync in an iteration of the default run (results/default_run.md)",
        "",
        share_section(median_min(run_1m[0])[0] if run_1m else None),
        "",
        f"Load average at the end: {load_average()}.",
    ]
    return "\n".join(parts)


def main() -> None:
    args = parse_args()
    cfg = Config()
    torch.set_num_threads(1)  # the learner's share (topology.learner.num_cpus = 1)
    facts = machine_facts()
    results = run(args, cfg)
    body = report(args, results)
    print(body)
    if not args.no_write:
        print(f"wrote {write_results('weight_sync', TITLE, facts, body + NOTES)}")


TITLE = "Weight sync, learner -> rollout: our send against the transport limit"
NOTES = """

## How to read it

- flat limit: one tensor of the model's total size, one broadcast on the same group's process
  group (the collective `send` uses per bucket), into a receive buffer allocated once.
- our send: `WeightSyncGroup.send` (store handshake, buckets packed into a reused buffer)
  to `WeightSyncGroup.receive` drained (each bucket's buffer reused from the last sync;
  tensors dropped).
- receive + load: the same into vLLM's worker with the engine's real `rlhf_receive_weights`
  (`reload_weights`: layer by layer, fresh parameters, the weights copied in, every linear
  layer repacked into a oneDNN handle, the result copied back into the running model).
- run-style: `RolloutWorker.receive_weights` through Ray while this process sends, timed
  around both, as `Pools.sync_weights` is (there the send is a Ray call to the learner too).
- Each rep starts once the receiver waits, and ends when it has everything.
- Ray workers run at this script's niceness (RAY_worker_niceness=0; Ray's default renices
  them by +15), so the vLLM receiver is not deprioritized against the sender.
- efficiency: flat limit / ours, from the medians and (in brackets) from the minimums.
- Sizes: 1M is the default policy's own weights (39 tensors); 50M and 200M are random
  Llama-shaped fp32 weights (vocab 32000; hidden 512 / 1024, 6 / 12 layers), saved as a
  model folder for the vLLM rows.
- nccl: the same code with CUDA tensors (`--backend nccl`), not run here (no GPU); two ranks
  on one GPU are refused by NCCL, so it needs two GPUs.
"""


if __name__ == "__main__":
    main()
