"""The interface every generation engine implements (vLLM, plain transformers)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from rlhf.sync.buckets import ParamSpec
from rlhf.sync.group import SyncEndpoint


@dataclass
class Generation:
    """What an engine returns for one generate call, prompt-major (n samples per prompt)."""

    completion_ids: list[list[int]] = field(default_factory=list)  # EOS included if generated
    logprobs: list[list[float]] = field(default_factory=list)  # of each sampled token
    finish_reasons: list[str] = field(default_factory=list)  # "stop" | "length"

    def add(self, completion: list[int], logprobs: list[float], finish_reason: str) -> None:
        self.completion_ids.append(completion)
        self.logprobs.append(logprobs)
        self.finish_reasons.append(finish_reason)


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
        mixture_coef: float = 0.0,
        ignore_eos: bool = False,
        stop: list[str] | None = None,
    ) -> Generation:
        """Prompt-major: n samples per prompt, in order. Returns completion token ids (EOS
        included when generated), the sampled tokens' log-probs under the sampling
        distribution (after temperature, top-k and top-p, so with top_p=1 and top_k=0 they
        equal a learner's log_softmax(logits / T)), and finish reasons ("stop" | "length").
        temperature == 0 means greedy (log-probs are then log_softmax(logits)).
        mixture_coef = b > 0 samples the geometric mixture pi^(1-b) · pi_ref^b (IPO-MD,
        Nash-MD) and returns its log-probs; only engines built with a reference support it,
        others raise ValueError.
        ignore_eos: EOS is sampled like any token but does not stop a completion, so every
        completion is max_new_tokens long (finish reason "length").
        stop: strings that end a completion (finish reason "stop") on the token whose text
        completes one; the completion keeps that token, so its decoded text contains the
        string (and may run past it within that token)."""
        ...

    def init_weight_sync(self, endpoint: SyncEndpoint) -> None:
        """Join the learner's weight-sync group as a receiver (endpoint.rank >= 1)."""
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


def finish_reason(completion: list[int], eos_ids: set[int], ignore_eos: bool = False) -> str:
    # With EOS ignored a completion only ever ends at the length limit, even on an EOS token.
    if ignore_eos:
        return "length"
    return "stop" if completion and completion[-1] in eos_ids else "length"
