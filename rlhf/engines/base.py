"""The interface every generation engine implements (vLLM, plain transformers)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from rlhf.sync.buckets import ParamSpec

# (completion token ids, sampled tokens' log-probs, finish reasons), prompt-major
Generation = tuple[list[list[int]], list[list[float]], list[str]]


@runtime_checkable
class GenerationEngine(Protocol):
    def generate(
        self,
        prompt_ids: list[list[int]],
        *,
        n: int,
        max_new_tokens: int,
        temperature: float,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int | None = None,
    ) -> Generation:
        """Prompt-major: n samples per prompt, in order. Returns completion token ids (EOS
        included when generated), the sampled tokens' log-probs under the sampling
        distribution (after temperature, top-k and top-p, so with top_p=1 and top_k=0 they
        equal a learner's log_softmax(logits / T)), and finish reasons ("stop" | "length").
        temperature == 0 means greedy (log-probs are then log_softmax(logits))."""
        ...

    def init_weight_sync(
        self,
        host: str,
        port: int,
        rank: int,
        world_size: int,
        backend: str,
        timeout_s: float,
        peer_names: list[str],
    ) -> None:
        """Join the learner's weight-sync group as a receiver (rank >= 1)."""
        ...

    def receive_weights(self, manifest: list[ParamSpec], bucket_bytes: int, version: int) -> None:
        """Block until every bucket of `version` is received and loaded into the engine."""
        ...

    def close_weight_sync(self) -> None:
        """Leave the sync group (before it is rebuilt, or at shutdown). Safe to call twice."""
        ...

    def shutdown(self) -> None:
        """Stop the engine and every process it started."""
        ...


def finish_reason(completion: list[int], eos_ids: set[int]) -> str:
    return "stop" if completion and completion[-1] in eos_ids else "length"
