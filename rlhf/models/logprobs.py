"""Per-token log-probabilities of a causal LM, aligned to target positions.

Convention used everywhere in rlhf: for a row `input_ids[b]`, `logprobs[b, t]` is
log p(input_ids[b, t] | input_ids[b, :t]); position 0 has no prediction and holds 0.
"""

from __future__ import annotations

import torch


def token_logprobs(
    logits: torch.Tensor, input_ids: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """[B, T, V] logits (position t predicts t+1) -> [B, T] log-probs at target positions."""
    logits = logits[:, :-1].float()
    if temperature != 1.0:
        logits = logits / temperature
    targets = input_ids[:, 1:].unsqueeze(-1)
    # log_softmax via logsumexp keeps memory at one [B, T, V] tensor.
    picked = torch.gather(logits, -1, targets).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    return torch.nn.functional.pad(picked, (1, 0), value=0.0)


def token_entropy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """[B, T, V] logits -> [B, T] entropy of the distribution each target was drawn from
    (aligned like `token_logprobs`: position t holds the entropy of the prediction of t)."""
    z = logits[:, :-1].float()
    if temperature != 1.0:
        z = z / temperature
    log_z = torch.logsumexp(z, dim=-1)
    entropy = log_z - (torch.softmax(z, dim=-1) * z).sum(-1)
    return torch.nn.functional.pad(entropy, (1, 0), value=0.0)


def position_ids_of(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens (right padding keeps them 0..len-1)."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


def model_logits(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    logits_to_keep: int | None = None,
) -> torch.Tensor:
    """[B, T, V] logits; with `logits_to_keep=K`, those of the last K positions only,
    [B, K, V] (the output layer is not run on the rest)."""
    extra = {} if logits_to_keep is None else {"logits_to_keep": logits_to_keep}
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_of(attention_mask),
        use_cache=False,
        **extra,
    )
    return out.logits


def completion_tail(completion_mask: torch.Tensor) -> int:
    """How many trailing positions' logits predict every completion token of a micro-batch:
    from the one before its earliest completion token to the end. With long prompts most of
    the [B, T, V] logits (and the output layer's work) are the prompts', which no loss uses."""
    width = completion_mask.shape[1]
    columns = torch.nonzero(completion_mask.sum(0) > 0)
    if columns.numel() == 0:  # a filler micro-batch: one position keeps the graph
        return 1
    return width - max(int(columns[0, 0]) - 1, 0)


def left_pad(values: torch.Tensor, width: int) -> torch.Tensor:
    """[B, K] per-position values of the last K positions -> [B, width], zeros before."""
    return torch.nn.functional.pad(values, (width - values.shape[1], 0), value=0.0)


def model_token_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Run `model` on right-padded rows and return [B, T] target log-probs."""
    return token_logprobs(model_logits(model, input_ids, attention_mask), input_ids, temperature)


def pad_id_of(tokenizer) -> int:
    """The id padding uses (masked out, so any id works): the tokenizer's pad token, or EOS
    where it has none (Llama 3 and many others)."""
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a pad nor an EOS token to pad with")
    return int(pad)


def pad_rows(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad integer rows into (ids, attention_mask)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask
