"""The weight-sync check shared by the engine tests: perturbed weights are sent by another
process through a real gloo sync group; after the sync, the engine's greedy output must
equal plain transformers greedy generation with the perturbed weights (and must have
differed before, so the check can fail).

The learner sends `named_parameters` (what `rlhf.training.export.manifest` lists): a tied
output layer is the input embedding, sent once under the embedding's name.
"""

from __future__ import annotations

import multiprocessing as mp
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from rlhf.sync import SyncEndpoint, free_port, manifest_of

# The long prompt fills a whole KV block (128 tokens on CPU), so vLLM caches its prefix: a
# cache left stale by a sync would show.
PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12, 13], [20, 21], [3 + i % 40 for i in range(140)]]
NEW_TOKENS = 12
BUCKET = 64 * 1024  # several buckets for a ~1M-param model


def corpus() -> list[str]:
    r = random.Random(0)
    return [
        f"{a}+{b}={a + b}" for a, b in ((r.randrange(100), r.randrange(100)) for _ in range(500))
    ]


def _load(model_path: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()


def _name_of(model, weight: torch.Tensor) -> str:
    """A parameter's name (the first one: tied weights are listed once)."""
    return next(name for name, p in model.named_parameters() if p is weight)


def final_norm_name(model) -> str:
    """The norm just before the output layer: the last norm module (model.norm, ln_f)."""
    return [name for name, m in model.named_modules() if "Norm" in type(m).__name__][-1]


def perturbed(model_path: str, version: int) -> dict[str, torch.Tensor]:
    """The learner's weights for `version`: the same in every process.

    Sharper logits keep greedy choices far from ties, so kernels' rounding cannot flip them:
    the output layer x4. A tied output layer is also the input embedding, whose large rows
    would then swamp the layers (a random tied model repeats its last input token): there the
    embedding shrinks x0.25 and the final norm grows x16 (logits x4 as well).
    """
    model = _load(model_path)
    g = torch.Generator().manual_seed(1000 + version)
    state = {}
    for name, p in model.named_parameters():
        state[name] = p.detach() + 0.05 * torch.randn(p.shape, generator=g)
    head = _name_of(model, model.get_output_embeddings().weight)
    if head == _name_of(model, model.get_input_embeddings().weight):
        state[head] = state[head] * 0.25
        norm = final_norm_name(model)
        for name in [n for n in state if n.startswith(norm + ".")]:
            state[name] = state[name] * 16
    else:
        state[head] = state[head] * 4
    return state


def _sender(model_path: str, port: int, versions: list[int], q) -> None:
    from rlhf.sync import WeightSyncGroup

    try:
        group = WeightSyncGroup("127.0.0.1", port, 0, 2, "gloo", 120.0, ["learner-0", "engine"])
        for v in versions:
            state = perturbed(model_path, v)
            stats = group.send(state.items(), manifest_of(state.items()), BUCKET, v)
            q.put(("sent", v, stats["buckets"]))
        group.close()
    except Exception as err:  # surface the reason in the test's failure
        q.put(("error", -1, repr(err)))


@torch.no_grad()
def hf_greedy(model_path: str, state: dict[str, torch.Tensor] | None) -> list[list[int]]:
    model = _load(model_path)
    if state is not None:
        params = dict(model.named_parameters())
        assert set(state) == set(params)
        for name, t in state.items():
            params[name].copy_(t)
    out = []
    with torch.inference_mode():
        for p in PROMPTS:
            ids = torch.tensor([p])
            seq = model.generate(
                ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=NEW_TOKENS
            )
            out.append(seq[0, len(p) :].tolist())
    return out


def greedy(engine) -> list[list[int]]:
    out = engine.generate(PROMPTS, n=1, max_new_tokens=NEW_TOKENS, temperature=0.0)
    return out.completion_ids


@contextmanager
def sender_process(target: Callable, source, plan: list) -> Iterator[tuple[SyncEndpoint, object]]:
    """`target(source, port, plan, queue)` in a spawned process, as the learner's side of a
    two-member sync group; yields the engine's endpoint and the queue the sender reports
    on. The sender must have ended well when the block ends without an error."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    port = free_port()
    proc = ctx.Process(target=target, args=(source, port, plan, q))
    proc.start()
    try:
        yield SyncEndpoint("127.0.0.1", port, 1, 2, "gloo", 120.0, ("learner-0", "engine")), q
    finally:
        proc.join(timeout=60)
        if proc.is_alive():
            proc.kill()
    assert proc.exitcode == 0


def check_sync(engine, model_path: str) -> None:
    versions = [1, 2]
    wants = {v: hf_greedy(model_path, perturbed(model_path, v)) for v in versions}
    before = greedy(engine)
    assert before == hf_greedy(model_path, None)
    assert all(before != w for w in wants.values())  # the sync must change the output

    manifest = manifest_of(perturbed(model_path, 0).items())
    with sender_process(_sender, model_path, versions) as (endpoint, q):
        engine.init_weight_sync(endpoint)
        for v in versions:
            engine.receive_weights(manifest, BUCKET, v)
            kind, version, buckets = q.get(timeout=60)
            assert (kind, version) == ("sent", v), buckets
            assert buckets > 1
            assert greedy(engine) == wants[v], f"version {v}"
        engine.close_weight_sync()
