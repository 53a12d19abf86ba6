"""Test data shared by the learner tests: a tiny model on disk, and rows that look sampled."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from rlhf.batch import TrainBatch, collate_rollouts
from rlhf.models.logprobs import model_token_logprobs, pad_rows
from rlhf.models.tiny import build_tiny_model
from rlhf.types import Rollout

CORPUS = ["12+30=42", "7+5=12", "the quick brown fox jumps over the lazy dog"] * 30


def tiny_model(path: Path, hidden: int, heads: int, kv_heads: int, inter: int) -> str:
    build_tiny_model(
        path,
        CORPUS,
        hidden_size=hidden,
        num_layers=1,
        num_heads=heads,
        num_kv_heads=kv_heads,
        intermediate_size=inter,
    )
    return str(path)


def sampled_rows(
    model_path: str,
    prompts: int,
    samples: int,
    temperature: float,
    seed: int,
    prompt_lengths: list[int] | None = None,
    completion_tokens: tuple[int, int] = (1, 7),
) -> TrainBatch:
    """Random prompts (of the given lengths; None: 2 to 5 tokens) and completions (of
    [low, high) tokens), collated; the sampler log-probs are the model's own at `temperature`
    (as a synced rollout engine would report) and so are the reference's (a fresh reference
    is the initial policy)."""
    from transformers import AutoModelForCausalLM

    rng = np.random.default_rng(seed)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    vocab = model.config.vocab_size
    if prompt_lengths is None:
        prompt_lengths = [int(rng.integers(2, 6)) for _ in range(prompts)]
    heads = [rng.integers(3, vocab, size=n).tolist() for n in prompt_lengths]
    prompt_ids = [p for p in heads for _ in range(samples)]
    completions = [
        rng.integers(3, vocab, size=rng.integers(*completion_tokens)).tolist() for _ in prompt_ids
    ]
    rows = [p + c for p, c in zip(prompt_ids, completions, strict=True)]
    ids, mask = pad_rows(rows, pad=0)
    with torch.no_grad():
        lp = model_token_logprobs(model, ids, mask, temperature)
    own = [
        lp[i, len(p) : len(r)].tolist()
        for i, (p, r) in enumerate(zip(prompt_ids, rows, strict=True))
    ]
    rollout = Rollout(
        prompt_ids=prompt_ids,
        completion_ids=completions,
        sampler_logprobs=own,
        finish_reasons=["length"] * len(rows),
        prompt_index=[i for i in range(prompts) for _ in range(samples)],
        policy_version=0,
    )
    batch = collate_rollouts([rollout], pad_id=0)
    batch["ref_logprobs"] = batch["sampler_logprobs"]
    return batch
