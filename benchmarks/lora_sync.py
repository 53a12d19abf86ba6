"""LoRA weight sync, measured: full fine-tuning's sync against LoRA's two modes.

For each model size, one learner-side process and one vLLM engine (in this process, as a
rollout worker holds it) joined by a real `WeightSyncGroup` over gloo; per mode, several
syncs of successive versions (median):
- full: every weight, as full fine-tuning sends it;
- merged: a LoRA policy (PEFT, `--rank`, every linear layer), its weights merged as they
  stream (`rlhf.models.lora.merged_parameters`): the same bytes, plus the merge;
- adapter: only the adapter matrices (`adapter_parameters`), which the engine writes as a
  PEFT folder and loads into vLLM (`VLLMEngine.receive_adapter`).
Reported: bytes per sync, the sync's seconds as the engine sees them (from its receive call
to the weights or adapter loaded; the sender is ready and waiting by then, so this is the
transfer and the load), and a fixed generation's seconds on the engine after the sync: vLLM
applies an adapter at every step, so adapter mode trades sync time for generation time.

    .venv/bin/python benchmarks/lora_sync.py --sizes 1M,200M --rank 8
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import tempfile
import time
from pathlib import Path

import torch
from benchlib import machine_facts, write_results
from weight_sync import SIZES, build_folder, make_model

from rlhf.config import LoraConfig, load_config
from rlhf.sync import SyncEndpoint, free_port, manifest_of

MODES = ("full", "merged", "adapter")
BUCKET = 16 * 2**20  # the default sync.bucket_bytes
VERSIONS = 4  # syncs per mode; the first is a warm-up, not counted
PROMPTS, SAMPLES, NEW_TOKENS = 16, 4, 32


def learner_state(folder: str, mode: str, rank: int, version: int) -> dict[str, torch.Tensor]:
    """What the learner sends at `version` in `mode` (adapters moved a little per version)."""
    from transformers import AutoModelForCausalLM

    from rlhf.models import lora
    from rlhf.training.export import full_parameters

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    if mode == "full":
        g = torch.Generator().manual_seed(version)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1e-3 * torch.randn(p.shape, generator=g))
        return {n: p.detach() for n, p in model.named_parameters()}
    torch.manual_seed(0)
    peft = lora.apply_lora(model, LoraConfig(rank=rank))
    g = torch.Generator().manual_seed(version)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if ".lora_B." in name:
                p.copy_(0.01 * torch.randn(p.shape, generator=g))
    named = full_parameters(peft, "cpu")
    if mode == "adapter":
        return dict(lora.adapter_parameters(named))
    return dict(lora.merged_parameters(peft, named))


def sender(folder: str, port: int, plan: tuple[str, int], q) -> None:
    """The learner's side: each version's state built (merged or not), then sent."""
    from rlhf.sync import WeightSyncGroup

    mode, rank = plan
    try:
        group = WeightSyncGroup("127.0.0.1", port, 0, 2, "gloo", 300.0, ["learner-0", "engine"])
        for v in range(VERSIONS):
            state = learner_state(folder, mode, rank, v)
            group.send(state.items(), manifest_of(state.items()), BUCKET, v)
            q.put((v, "", sum(t.numel() * t.element_size() for t in state.values())))
        group.close()
    except Exception as err:
        q.put((-1, repr(err), 0))


def measure(folder: str, mode: str, rank: int) -> dict[str, float]:
    from rlhf.engines.vllm_engine import VLLMEngine

    engine = VLLMEngine(
        folder,
        seed=0,
        max_model_len=256,
        kv_cache_bytes=256 * 2**20,
        lora_rank=rank if mode == "adapter" else 0,
    )
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    port = free_port()
    proc = ctx.Process(target=sender, args=(folder, port, (mode, rank), q))
    proc.start()
    receives, gens, nbytes = [], [], 0
    try:
        engine.init_weight_sync(
            SyncEndpoint("127.0.0.1", port, 1, 2, "gloo", 300.0, ("learner-0", "engine"))
        )
        manifest = manifest_of(learner_state(folder, mode, rank, 0).items())
        config = None
        if mode == "adapter":
            from rlhf.models.lora import adapter_config_of

            config = adapter_config_of(LoraConfig(rank=rank), [s.name for s in manifest])
        prompts = [[5 + (i * 7 + j) % 200 for j in range(24)] for i in range(PROMPTS)]
        for v in range(VERSIONS):
            t0 = time.perf_counter()
            if mode == "adapter":
                engine.receive_adapter(manifest, BUCKET, v, config)
            else:
                engine.receive_weights(manifest, BUCKET, v)
            received = time.perf_counter() - t0
            version, error, nbytes = q.get(timeout=600)
            if version < 0:
                raise RuntimeError(error)
            t0 = time.perf_counter()
            engine.generate(prompts, n=SAMPLES, max_new_tokens=NEW_TOKENS, temperature=1.0,
                            seed=v, ignore_eos=True)  # fmt: skip
            generated = time.perf_counter() - t0
            if v > 0:
                receives.append(received)
                gens.append(generated)
        engine.close_weight_sync()
    finally:
        proc.join(timeout=120)
        if proc.is_alive():
            proc.kill()
        engine.shutdown()
    return {
        "bytes": nbytes,
        "receive": statistics.median(receives),
        "generate": statistics.median(gens),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1M,200M", help=f"of {sorted(SIZES)}")
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--out", default="lora_sync")
    args = ap.parse_args()
    cfg = load_config(None, [])
    rows = []
    with tempfile.TemporaryDirectory(prefix="lora-sync-") as tmp:
        for size in args.sizes.split(","):
            model = make_model(size, cfg)
            folder = model.folder or build_folder(model, make_model("1M", cfg).folder, Path(tmp))
            results = {mode: measure(folder, mode, args.rank) for mode in MODES}
            full = results["full"]
            for mode in MODES:
                r = results[mode]
                rows.append(
                    f"| {size} ({model.params / 1e6:.1f}M) | {mode} | {r['bytes'] / 2**20:.2f} "
                    f"| {full['bytes'] / r['bytes']:.1f}x | {r['receive']:.3f} "
                    f"| {full['receive'] / r['receive']:.1f}x | {r['generate']:.3f} |"
                )
                print(rows[-1], flush=True)
    body = "\n".join(
        [
            f"LoRA rank {args.rank} on every linear layer (PEFT's all-linear), fp32, one vLLM "
            f"engine, gloo, {BUCKET // 2**20} MiB buckets; medians of {VERSIONS - 1} syncs "
            f"after a warm-up. Generation: {PROMPTS} prompts x {SAMPLES} samples x "
            f"{NEW_TOKENS} tokens after each sync.",
            "",
            "| model | mode | MiB per sync | fewer bytes than full | sync s (engine: receive "
            "+ load) | less sync time than full | generate s |",
            "|---|---|---|---|---|---|---|",
            *rows,
        ]
    )
    path = write_results(args.out, "LoRA weight sync: full, merged, adapter", machine_facts(), body)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
