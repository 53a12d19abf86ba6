"""Generation engines on a real tiny model: samples, log-probs, and weight sync into them
(the sync check is `tests.engine_checks.check_sync`)."""

from __future__ import annotations

import math

import pytest
import torch

from tests.engine_checks import NEW_TOKENS, PROMPTS, check_sync, corpus

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> str:
    from rlhf.models.tiny import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("tiny"), corpus()))


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


def test_vllm_samples_and_logprobs(vllm_engine, model_path):
    _check_samples(vllm_engine, model_path)


def test_vllm_weight_sync_matches_transformers(vllm_engine, model_path):
    check_sync(vllm_engine, model_path)


def test_hf_samples_and_logprobs(hf_engine, model_path):
    _check_samples(hf_engine, model_path)


def test_hf_weight_sync_matches_transformers(hf_engine, model_path):
    check_sync(hf_engine, model_path)


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


def test_only_the_chat_warmup_length_error_is_dropped_from_vllm_logs():
    """vLLM renders a dummy chat when an engine starts; on a context sized to short prompts it
    fails on length and logs a traceback. That record is dropped; any other stays."""
    import logging
    import sys

    from rlhf.engines.vllm_engine import _ChatWarmupTooLong

    class VLLMValidationError(ValueError):  # matched by name, as vLLM's own
        pass

    def record(message: str, exc: BaseException | None) -> logging.LogRecord:
        try:
            if exc is not None:
                raise exc
        except BaseException:
            info = sys.exc_info()
        else:
            info = None
        return logging.LogRecord("vllm.renderers.base", logging.WARNING, "", 0, message, (), info)

    keep = _ChatWarmupTooLong().filter
    length = VLLMValidationError("This model's maximum context length is 10 tokens. However, ...")
    assert not keep(record("Chat template warmup failed", length))
    assert keep(record("Chat template warmup failed", KeyError("messages")))
    assert keep(record("Chat template warmup failed", VLLMValidationError("bad sampling params")))
    assert keep(record("something else", length))
