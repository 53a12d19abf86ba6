"""Completions with plain transformers, greedy or sampled, and greedy accuracy (tests, studies,
the warm start's check, `rlhf eval`; a run generates with its engines)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from rlhf.data.chat import prompt_ids
from rlhf.models.logprobs import pad_id_of
from rlhf.types import Prompt


@torch.no_grad()
def completions_of(
    model,
    tokenizer,
    prompts: Sequence[Prompt | str],
    max_new_tokens: int,
    temperature: float = 0.0,
    batch_size: int = 256,
) -> list[str]:
    """One completion per prompt (left-padded batches; temperature 0: greedy), decoded
    without special tokens. Chat prompts go through the chat template, as in a run."""
    pad = pad_id_of(tokenizer)
    sampling = (
        {"do_sample": False}
        if temperature == 0
        else {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
    )
    out: list[str] = []
    for start in range(0, len(prompts), batch_size):
        rows = [
            prompt_ids(tokenizer, p if isinstance(p, Prompt) else Prompt(p))
            for p in prompts[start : start + batch_size]
        ]
        width = max(len(r) for r in rows)
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], dtype=torch.long)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        gen = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            pad_token_id=pad,
            eos_token_id=tokenizer.eos_token_id,
            **sampling,
        )
        out.extend(tokenizer.batch_decode(gen[:, width:], skip_special_tokens=True))
    return out


def greedy_completions(
    model, tokenizer, prompts: Sequence[Prompt | str], max_new_tokens: int, batch_size: int = 256
) -> list[str]:
    return completions_of(model, tokenizer, prompts, max_new_tokens, 0.0, batch_size)


def greedy_accuracy(
    model_or_path,
    tokenizer,
    prompts: Sequence[Prompt],
    reward_fn: Callable[..., Sequence[float | None]],
    max_new_tokens: int,
) -> float:
    """Mean reward of greedy completions (for an exact-match reward: accuracy).

    `model_or_path` is a model or a Hugging Face folder; `tokenizer` may be None with a folder.
    Samples the reward function does not score (None) are left out of the mean.
    """
    if isinstance(model_or_path, (str, Path)):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(model_or_path, dtype=torch.float32)
        tokenizer = tokenizer or AutoTokenizer.from_pretrained(model_or_path)
    else:
        model = model_or_path
    was_training = model.training
    model.eval()
    try:
        completions = greedy_completions(model, tokenizer, prompts, max_new_tokens)
    finally:
        model.train(was_training)
    texts = [p.text for p in prompts]
    columns = {k: [p.columns[k] for p in prompts] for k in prompts[0].columns}
    scores = [s for s in reward_fn(texts, completions, **columns) if s is not None]
    return float(sum(scores) / len(scores)) if scores else float("nan")


def sample_completions(
    model_path: str,
    prompts: Sequence[Prompt | str],
    max_new_tokens: int,
    temperature: float,
    seed: int,
    batch_size: int = 256,
) -> list[str]:
    """One completion per prompt with plain transformers (temperature 0: greedy); chat
    prompts through the model's chat template."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    torch.manual_seed(seed)
    return completions_of(model, tokenizer, prompts, max_new_tokens, temperature, batch_size)
