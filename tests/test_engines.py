"""Generation engines on a real tiny model: samples, log-probs, and weight sync into them.

The weights are perturbed and sent by another process through a real gloo sync group; after
the sync, the engine's greedy output must equal plain transformers greedy generation with
the perturbed weights (and must have differed before, so the check can fail).
"""

from __future__ import annotations

import math
import multiprocessing as mp
import random

import pytest
import torch

from rlhf.sync import SyncEndpoint, free_port, manifest_of

pytestmark = pytest.mark.slow

# The long prompt fills a whole KV block (128 tokens on CPU), so vLLM caches its prefix: a
# cache left stale by a sync would show.
PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12, 13], [20, 21], [3 + i % 40 for i in range(140)]]
NEW_TOKENS = 12
BUCKET = 64 * 1024  # several buckets for a ~1M-param model


def _corpus() -> list[str]:
    r = random.Random(0)
    return [
        f"{a}+{b}={a + b}" for a, b in ((r.randrange(100), r.randrange(100)) for _ in range(500))
    ]


def _perturbed(model_path: str, version: int) -> dict[str, torch.Tensor]:
    """The learner's weights for `version`: the same in every process."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    g = torch.Generator().manual_seed(1000 + version)
    state = {}
    for name, t in model.state_dict().items():
        state[name] = t + 0.05 * torch.randn(t.shape, generator=g)
    # A sharper output layer: greedy choices far from ties, so kernels' rounding cannot flip them.
    state["lm_head.weight"] = state["lm_head.weight"] * 4
    return state


def _sender(model_path: str, port: int, versions: list[int], q) -> None:
    from rlhf.sync import WeightSyncGroup

    try:
        group = WeightSyncGroup("127.0.0.1", port, 0, 2, "gloo", 120.0, ["learner-0", "engine"])
        for v in versions:
            state = _perturbed(model_path, v)
            stats = group.send(state.items(), manifest_of(state.items()), BUCKET, v)
            q.put(("sent", v, stats["buckets"]))
        group.close()
    except Exception as err:  # surface the reason in the test's failure
        q.put(("error", -1, repr(err)))


def _hf_greedy(model_path: str, state: dict[str, torch.Tensor] | None) -> list[list[int]]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    if state is not None:
        model.load_state_dict(state)
    out = []
    with torch.inference_mode():
        for p in PROMPTS:
            ids = torch.tensor([p])
            seq = model.generate(
                ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=NEW_TOKENS
            )
            out.append(seq[0, len(p) :].tolist())
    return out


def _greedy(engine) -> list[list[int]]:
    out = engine.generate(PROMPTS, n=1, max_new_tokens=NEW_TOKENS, temperature=0.0)
    return out.completion_ids


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> str:
    from rlhf.models.tiny import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("tiny"), _corpus()))


@pytest.fixture(scope="module")
def vllm_engine(model_path):
    from rlhf.engines.vllm_engine import VLLMEngine

    engine = VLLMEngine(model_path, seed=0, max_model_len=256, kv_cache_bytes=128 * 2**20)
    yield engine
    engine.shutdown()


@pytest.fixture(scope="module")
def hf_engine(model_path):
    from rlhf.engines.hf_engine import HFEngine

    engine = HFEngine(model_path, seed=0)
    yield engine
    engine.shutdown()


def _check_samples(engine, model_path: str) -> None:
    n, temperature = 3, 0.7
    out = engine.generate(PROMPTS, n=n, max_new_tokens=NEW_TOKENS, temperature=temperature, seed=11)
    completions, logprobs, reasons = out.completion_ids, out.logprobs, out.finish_reasons
    assert len(completions) == len(logprobs) == len(reasons) == n * len(PROMPTS)
    for c, lp, r in zip(completions, logprobs, reasons, strict=True):
        assert 1 <= len(c) <= NEW_TOKENS and len(lp) == len(c)
        if r == "stop":  # EOS ends a completion and is part of it
            assert c[-1] in engine.eos_ids
        else:
            assert r == "length" and len(c) == NEW_TOKENS and c[-1] not in engine.eos_ids
        assert all(math.isfinite(x) and x <= 0 for x in lp)
    again = engine.generate(
        PROMPTS, n=n, max_new_tokens=NEW_TOKENS, temperature=temperature, seed=11
    )
    assert again.completion_ids == completions  # a seed makes sampling reproducible
    # The same prompt twice in one call: independent draws, not the same ones (a seed shared
    # by every request would make sample j of both prompts identical).
    twice = engine.generate(
        [PROMPTS[0], PROMPTS[0]], n=n, max_new_tokens=NEW_TOKENS, temperature=1.0, seed=11
    )
    assert twice.completion_ids[:n] != twice.completion_ids[n:]
    assert len({tuple(c) for c in completions[:n]}) > 1  # the n samples of a prompt differ

    # The log-probs are log_softmax(logits / T) of a plain forward pass, prompt-major.
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    for i, (c, lp) in enumerate(zip(completions, logprobs, strict=True)):
        prompt = PROMPTS[i // n]
        with torch.inference_mode():
            logits = model(torch.tensor([prompt + c])).logits[0, len(prompt) - 1 : -1]
        want = torch.log_softmax(logits / temperature, -1).gather(-1, torch.tensor(c)[:, None])
        torch.testing.assert_close(torch.tensor(lp), want[:, 0], atol=2e-3, rtol=0)


def _check_sync(engine, model_path: str) -> None:
    versions = [1, 2]
    wants = {v: _hf_greedy(model_path, _perturbed(model_path, v)) for v in versions}
    before = _greedy(engine)
    assert before == _hf_greedy(model_path, None)
    assert all(before != w for w in wants.values())  # the sync must change the output

    manifest = manifest_of(_perturbed(model_path, 0).items())
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    port = free_port()
    proc = ctx.Process(target=_sender, args=(model_path, port, versions, q))
    proc.start()
    try:
        engine.init_weight_sync(
            SyncEndpoint("127.0.0.1", port, 1, 2, "gloo", 120.0, ("learner-0", "engine"))
        )
        for v in versions:
            engine.receive_weights(manifest, BUCKET, v)
            kind, version, buckets = q.get(timeout=60)
            assert (kind, version) == ("sent", v), buckets
            assert buckets > 1
            assert _greedy(engine) == wants[v], f"version {v}"
        engine.close_weight_sync()
    finally:
        proc.join(timeout=60)
        if proc.is_alive():
            proc.kill()
    assert proc.exitcode == 0


def test_vllm_samples_and_logprobs(vllm_engine, model_path):
    _check_samples(vllm_engine, model_path)


def test_vllm_weight_sync_matches_transformers(vllm_engine, model_path):
    _check_sync(vllm_engine, model_path)


def test_hf_samples_and_logprobs(hf_engine, model_path):
    _check_samples(hf_engine, model_path)


def test_hf_weight_sync_matches_transformers(hf_engine, model_path):
    _check_sync(hf_engine, model_path)


# ---------------------------------------------------------------- rollout.ignore_eos
@pytest.fixture(scope="module")
def eos_model_path(model_path, tmp_path_factory) -> str:
    """The tiny model made to say EOS first with probability ~1: every embedding gets a large
    first component, which survives the (small, random) layers and the final norm with a
    positive sign, and the EOS row of the output layer reads that component."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    eos = model.config.eos_token_id
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] = 10.0
        model.lm_head.weight[eos, 0] = 5.0
    out = tmp_path_factory.mktemp("eos_first")
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(model_path).save_pretrained(out)
    return str(out)


def _check_ignore_eos(engine) -> None:
    n = 3
    kwargs = dict(n=n, max_new_tokens=NEW_TOKENS, temperature=1.0, seed=5)
    stopped = engine.generate(PROMPTS, **kwargs)
    # The check can fail: without ignore_eos this model stops at once.
    assert all(len(c) < NEW_TOKENS for c in stopped.completion_ids)
    assert set(stopped.finish_reasons) == {"stop"}
    forced = engine.generate(PROMPTS, ignore_eos=True, **kwargs)
    assert len(forced.completion_ids) == n * len(PROMPTS)
    for c, lp, r in zip(forced.completion_ids, forced.logprobs, forced.finish_reasons, strict=True):
        assert len(c) == len(lp) == NEW_TOKENS and r == "length"
        assert all(math.isfinite(x) and x <= 0 for x in lp)
    # EOS is still sampled (not suppressed): it just does not end the completion.
    assert any(t in engine.eos_ids for c in forced.completion_ids for t in c[:-1])
    greedy = engine.generate(PROMPTS, n=1, max_new_tokens=NEW_TOKENS, temperature=0.0)
    assert all(len(c) < NEW_TOKENS for c in greedy.completion_ids)  # the default stops


def test_vllm_ignore_eos_forces_full_length(eos_model_path):
    from rlhf.engines.vllm_engine import VLLMEngine

    engine = VLLMEngine(eos_model_path, seed=0, max_model_len=256, kv_cache_bytes=64 * 2**20)
    try:
        _check_ignore_eos(engine)
    finally:
        engine.shutdown()


def test_hf_ignore_eos_forces_full_length(eos_model_path):
    from rlhf.engines.hf_engine import HFEngine

    _check_ignore_eos(HFEngine(eos_model_path, seed=0))
