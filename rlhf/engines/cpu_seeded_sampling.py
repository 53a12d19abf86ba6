"""Seeded sampling with chunked prefill on vLLM's CPU backend.

vLLM schedules a step's prefills under a token budget (4,096 tokens and 256 sequences per
step on CPU); a prompt that does not fit is prefilled in chunks over several steps. Every
running request is sampled at every step, and the token of a request whose prefill is not
finished is thrown away. To keep seeded sampling independent of how prompts were chunked,
vLLM then rewinds that request's own generator by one draw, `gen.set_offset(gen.get_offset()
- 4)` in `GPUModelRunner._bookkeeping_sync`: a CUDA (Philox) generator has an offset, a CPU
(Mersenne Twister) generator has none, so any seeded request whose prefill is chunked raises
`RuntimeError: CPU Generator does not use offset` and kills the engine. Requests carry
per-request seeds (`request_seeds`), so on CPU a call of 32 prompts x 8 samples died as soon
as the prompts passed ~16 tokens.

The fix keeps vLLM's intent without the rewind: while a step samples and does its
bookkeeping, the generators of the requests whose token will be thrown away are held out of
the batch's generator table. Their rows draw from the engine's global generator instead (the
draw is discarded), nothing asks to rewind them, and each request's generator advances once
per kept token, exactly as it would had its prompt not been chunked. So samples stay
reproducible, per-request distinct, and independent of the chunking.
"""

from __future__ import annotations

import functools

import numpy as np

_PATCHED = "_rlhf_seeded_chunked_prefill"

# The seeds of the generators held out of a step since the last `take_held_out_seeds` (a test
# and debugging probe: which seeded requests had a prefill chunked). Bounded: a long run that
# never reads it keeps only the first ones.
_HELD_OUT_SEEDS: set[int] = set()
_MAX_RECORDED = 4096


def take_held_out_seeds() -> list[int]:
    """The initial seeds of every generator held out since the last call, and forget them."""
    seeds = sorted(_HELD_OUT_SEEDS)
    _HELD_OUT_SEEDS.clear()
    return seeds


def install() -> bool:
    """Patch vLLM's CPU model runner (idempotent). Returns whether the patch is in place.

    Runs where the model runner lives: vLLM imports the worker extension module
    (`rlhf.engines.vllm_extension`) in its worker process before the first step."""
    try:
        from vllm.v1.worker.cpu_model_runner import CPUModelRunner
    except ImportError:  # a GPU build of vLLM: its generators have offsets
        return False
    if getattr(CPUModelRunner, _PATCHED, False):
        return True
    original = CPUModelRunner.sample_tokens

    @functools.wraps(original)
    def sample_tokens(self, *args, **kwargs):
        if getattr(self, "execute_model_state", None) is None:
            return original(self, *args, **kwargs)
        generators = self.input_batch.generators
        num_reqs = self.input_batch.num_reqs
        discarded = np.flatnonzero(self.discard_request_mask.np[:num_reqs])
        held = {int(i): generators.pop(int(i)) for i in discarded if int(i) in generators}
        if held and len(_HELD_OUT_SEEDS) < _MAX_RECORDED:
            _HELD_OUT_SEEDS.update(g.initial_seed() for g in held.values())
        try:
            return original(self, *args, **kwargs)
        finally:
            generators.update(held)

    CPUModelRunner.sample_tokens = sample_tokens
    setattr(CPUModelRunner, _PATCHED, True)
    return True
