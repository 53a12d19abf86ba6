"""Real shapes on the default engine: long prompts, many samples per call and long answers on
vLLM's CPU backend, where a step's prefills are chunked under a token budget.

Seeded requests whose prefill was chunked used to kill the engine (`CPU Generator does not use
offset`, see rlhf/engines/cpu_seeded_sampling.py). Here chunking happens for sure: the call's
distinct prompt tokens are more than twice the step budget. The engine must sample every
sequence in full, reproducibly, each request with its own draws, and a chunked request must
get exactly the samples it gets when its prompt is prefilled whole (alone in a call).
"""

from __future__ import annotations

import math

import pytest

from rlhf.engines.vllm_engine import request_seeds
from tests.engine_checks import corpus

pytestmark = pytest.mark.slow

PROMPTS, SAMPLES, NEW_TOKENS, SEED = 32, 8, 128, 3  # 256 sequences per call


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    from rlhf.engines.vllm_engine import VLLMEngine
    from rlhf.models.tiny import build_tiny_model

    path = build_tiny_model(tmp_path_factory.mktemp("long"), corpus(), max_position_embeddings=1024)
    engine = VLLMEngine(str(path), seed=0, max_model_len=1024, kv_cache_bytes=256 * 2**20)
    yield engine
    engine.shutdown()


def long_prompts() -> list[list[int]]:
    """32 prompts of 300 to 331 tokens; the first two are the same prompt."""
    rows = [[3 + (i * 7 + j * j) % 40 for j in range(300 + i)] for i in range(PROMPTS)]
    rows[1] = list(rows[0])
    return rows


def test_long_prompts_many_samples_long_answers(engine):
    prompts = long_prompts()
    budget = engine.llm.llm_engine.vllm_config.scheduler_config.max_num_batched_tokens
    assert sum(len(p) for p in prompts) > 2 * budget  # prefills must be chunked
    engine.take_chunked_prefill_seeds()  # forget earlier calls

    kwargs = dict(n=SAMPLES, max_new_tokens=NEW_TOKENS, temperature=1.0, ignore_eos=True)
    out = engine.generate(prompts, seed=SEED, **kwargs)
    chunked = set(engine.take_chunked_prefill_seeds())
    assert len(out.completion_ids) == PROMPTS * SAMPLES
    for c, lp in zip(out.completion_ids, out.logprobs, strict=True):
        assert len(c) == len(lp) == NEW_TOKENS
        assert all(math.isfinite(x) and x <= 0 for x in lp)

    # Seeded requests had their prefill chunked (the case that crashed).
    seeds = request_seeds(SEED, PROMPTS)  # sample j of prompt k is seeded seeds[k] + j
    chunked_samples = {
        (k, j) for k in range(PROMPTS) for j in range(SAMPLES) if seeds[k] + j in chunked
    }
    assert chunked_samples, "no seeded request was chunked: the test lost its point"

    # Reproducible: the same call again gives the same samples.
    again = engine.generate(prompts, seed=SEED, **kwargs)
    assert again.completion_ids == out.completion_ids
    engine.take_chunked_prefill_seeds()

    # Per-request draws: the same prompt twice in one call gets different samples, and a
    # prompt's samples differ from each other.
    assert out.completion_ids[:SAMPLES] != out.completion_ids[SAMPLES : 2 * SAMPLES]
    assert len({tuple(c) for c in out.completion_ids[:SAMPLES]}) == SAMPLES

    # A chunked request samples what it samples when its prompt is prefilled whole: its
    # generator advanced once per kept token, however the prompt was cut. (Without the fix's
    # hold-out, or with the draw of a discarded step kept, every chunked sample would shift.)
    # Exact equality is safe: a different batch only changes logits by rounding (~1e-6), and
    # a token flips only on a near-tie that close, about 1e-6 per token.
    k = max(range(PROMPTS), key=lambda p: sum((p, j) in chunked_samples for j in range(SAMPLES)))
    alone = _alone(engine, prompts[k], seeds[k], **kwargs)
    assert alone == out.completion_ids[k * SAMPLES : (k + 1) * SAMPLES]


def _alone(engine, prompt, seed, n, max_new_tokens, temperature, ignore_eos) -> list[list[int]]:
    """One prompt in a call of its own, its request seeded `seed` (as in a batch)."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(
        n=n,
        max_tokens=max_new_tokens,
        temperature=temperature,
        seed=seed,
        logprobs=0,
        detokenize=False,
        ignore_eos=ignore_eos,
    )
    [request] = engine.llm.generate(
        [TokensPrompt(prompt_token_ids=prompt)], [params], use_tqdm=False
    )
    assert engine.take_chunked_prefill_seeds() == []  # prefilled whole
    return [list(o.token_ids) for o in sorted(request.outputs, key=lambda o: o.index)]
