"""Sequence packing vs padded micro-batches for long rows of varied lengths (CPU).

A learner pass (forward + backward of the token log-probs, no optimizer) and a no-grad pass
(what the reference and old-log-prob stages run) over a GRPO-shaped batch of long rows, in
micro-batches of at most `--budget` token slots, five ways:

- padded, batch order: units (a prompt's samples) in the order they come, each micro-batch
  right-padded to its longest row (a token budget without sorting);
- padded, longest first: the learner's plan (`rlhf.batch.plan_shards` with
  `max_tokens_per_micro_batch`): units by decreasing length, so neighbours share a width;
- packed within those micro-batches: the learner's micro-batches, each one's sequences
  packed (first fit, longest first) into rows as wide as its longest sequence: fewer rows,
  the same width, so no longer attention;
- packed, one row a micro-batch: whole units, largest first, into single rows of at most
  `--budget` tokens;
- packed, one row, flex_attention: the same rows with transformers' flex attention, whose
  block mask skips the blocks the diagonal leaves out (compiled on first use); torch 2.13
  has no flex-attention backward on CPU, so it runs the no-grad pass only.

Packed rows carry position ids that restart at each sequence and no attention mask:
transformers then masks attention across sequences (with sdpa, a dense block-diagonal mask:
every query still scores every key of its row). The model is a randomly initialised Llama
(grouped-query attention); the rows are the real shapes (prompts 100-2,000 tokens, answers
100-4,000) scaled down about 5x, so a pass takes seconds on a CPU. Each way runs one warm-up
pass and `--reps` timed passes of each kind, interleaved with the other ways; the table gives
median / min seconds. A no-grad pass first checks that every way gives each sequence the same
log-probs.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/packing.py
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from benchlib import fmt_seconds, machine_facts, markdown_table, median_min, write_results

from rlhf.batch import TrainBatch, pack_micro_batches, plan_shards, trimmed_width
from rlhf.models.logprobs import pad_rows

TITLE = "Sequence packing vs padded micro-batches under a token budget (CPU)"


@dataclass(frozen=True)
class MicroBatch:
    """Model inputs of one forward/backward: padded rows (attention mask, one sequence a row)
    or packed rows (several sequences a row, position ids restarting at each, no mask), and
    where each sequence sits: (sequence, row, first column, tokens)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor | None
    position_ids: torch.Tensor
    targets: torch.Tensor  # [B, T-1] 1 where token t+1 is predicted within its sequence
    spans: list[tuple[int, int, int, int]]

    @property
    def slots(self) -> int:
        return int(self.input_ids.numel())


# ---------------------------------------------------------------- the workload
def workload(args: argparse.Namespace) -> tuple[list[list[int]], list[int]]:
    """Rows (prompt + answer tokens) and their units: `--samples` answers per prompt."""
    rng = np.random.default_rng(args.seed)
    rows, units = [], []
    for u in range(args.prompts):
        prompt = rng.integers(3, args.vocab, size=rng.integers(*args.prompt_tokens)).tolist()
        for _ in range(args.samples):
            answer = rng.integers(3, args.vocab, size=rng.integers(*args.answer_tokens)).tolist()
            rows.append(prompt + answer)
            units.append(u)
    return rows, units


def as_batch(rows: list[list[int]], units: list[int]) -> TrainBatch:
    ids, mask = pad_rows(rows, pad=0)
    return TrainBatch({"input_ids": ids.numpy(), "attention_mask": mask.numpy()}, units)


# ---------------------------------------------------------------- micro-batch layouts
def padded(rows: list[list[int]], group: list[int]) -> MicroBatch:
    """One sequence a row, right-padded to the longest (the learner's layout)."""
    ids, mask = pad_rows([rows[i] for i in group], pad=0)
    position = (mask.cumsum(-1) - 1).clamp(min=0)
    spans = [(i, k, 0, len(rows[i])) for k, i in enumerate(group)]
    return MicroBatch(ids, mask, position, mask[:, 1:].float(), spans)


def packed(rows: list[list[int]], layout: list[list[int]]) -> MicroBatch:
    """Each entry of `layout` one row: its sequences end to end, right-padded to the widest
    row. Position ids restart at each sequence and at the padding (a sequence of its own, so
    no real token attends to it: transformers masks across sequences when given position
    ids and no attention mask)."""
    width = max(sum(len(rows[i]) for i in seqs) for seqs in layout)
    ids = torch.zeros(len(layout), width, dtype=torch.long)
    position = torch.zeros(len(layout), width, dtype=torch.long)
    targets = torch.zeros(len(layout), width - 1)
    spans = []
    for r, seqs in enumerate(layout):
        start = 0
        for i in seqs:
            n = len(rows[i])
            ids[r, start : start + n] = torch.tensor(rows[i])
            position[r, start : start + n] = torch.arange(n)
            targets[r, start : start + n - 1] = 1.0
            spans.append((i, r, start, n))
            start += n
        position[r, start:] = torch.arange(width - start)
    return MicroBatch(ids, None, position, targets, spans)


def first_fit(sizes: dict[int, int], capacity: int) -> list[list[int]]:
    """Items, largest first, each into the first bin with room (one over `capacity` alone)."""
    bins: list[list[int]] = []
    room: list[int] = []
    for item in sorted(sizes, key=lambda i: (-sizes[i], i)):
        k = next((k for k, left in enumerate(room) if left >= sizes[item]), None)
        if k is None:
            bins.append([])
            room.append(capacity)
            k = len(bins) - 1
        bins[k].append(item)
        room[k] -= sizes[item]
    return bins


# ---------------------------------------------------------------- the ways
def unit_rows(units: list[int]) -> list[list[int]]:
    return [np.flatnonzero(np.asarray(units) == u).tolist() for u in dict.fromkeys(units)]


def padded_in_batch_order(rows, units, budget: int) -> list[MicroBatch]:
    batch = as_batch(rows, units)
    groups = unit_rows(units)
    widths = [trimmed_width(batch.lengths()[g]) for g in groups]
    sizes = [len(g) for g in groups]
    plan = pack_micro_batches(list(range(len(groups))), sizes, widths, len(rows), budget)
    return [padded(rows, [i for u in mb for i in groups[u]]) for mb in plan]


def longest_first_groups(rows, units, budget: int) -> list[list[int]]:
    """The learner's micro-batches: `plan_shards` with the token budget, one rank."""
    (shard,) = plan_shards(as_batch(rows, units), 1, 1, len(rows), 1, budget)
    return [shard.rows[r].tolist() for step in shard.micro_batches() for r in step]


def padded_longest_first(rows, units, budget: int) -> list[MicroBatch]:
    return [padded(rows, group) for group in longest_first_groups(rows, units, budget)]


def packed_within_micro_batches(rows, units, budget: int) -> list[MicroBatch]:
    """The learner's micro-batches, each one's sequences packed into rows as wide as its
    longest sequence: fewer rows, the same width (no longer attention)."""
    out = []
    for group in longest_first_groups(rows, units, budget):
        lengths = {i: len(rows[i]) for i in group}
        out.append(packed(rows, first_fit(lengths, max(lengths.values()))))
    return out


def packed_one_row(rows, units, budget: int) -> list[MicroBatch]:
    """Whole units, largest first, into single rows of at most `budget` tokens."""
    groups = unit_rows(units)
    tokens = {u: sum(len(rows[i]) for i in g) for u, g in enumerate(groups)}
    return [
        packed(rows, [[i for u in units_ for i in groups[u]]])
        for units_ in first_fit(tokens, budget)
    ]


# ---------------------------------------------------------------- timing
def model_for(args: argparse.Namespace, attention: str) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads // 2,
        intermediate_size=args.intermediate,
        vocab_size=args.vocab,
        max_position_embeddings=8 * args.budget,
    )
    config._attn_implementation = attention
    return LlamaForCausalLM(config).train()


def token_logprobs(model: torch.nn.Module, mb: MicroBatch) -> torch.Tensor:
    """[B, T-1] log p(token t+1 | its sequence up to t)."""
    logits = model(
        input_ids=mb.input_ids,
        attention_mask=mb.attention_mask,
        position_ids=mb.position_ids,
        use_cache=False,
    ).logits[:, :-1]
    return torch.log_softmax(logits.float(), -1).gather(-1, mb.input_ids[:, 1:, None])[..., 0]


def learner_pass(model: torch.nn.Module, micro: list[MicroBatch]) -> float:
    """Seconds for forward + backward over every micro-batch (gradients accumulate)."""
    model.zero_grad(set_to_none=True)
    t0 = time.perf_counter()
    for mb in micro:
        (token_logprobs(model, mb) * mb.targets).sum().backward()
    return time.perf_counter() - t0


@torch.no_grad()
def no_grad_pass(model: torch.nn.Module, micro: list[MicroBatch]) -> float:
    """Seconds for the log-probs of every micro-batch, no gradients."""
    t0 = time.perf_counter()
    for mb in micro:
        token_logprobs(model, mb)
    return time.perf_counter() - t0


@torch.no_grad()
def logprobs_by_row(model: torch.nn.Module, micro: list[MicroBatch]) -> dict[int, torch.Tensor]:
    """Each sequence's log-probs (of its tokens 1..n-1), read out of its micro-batch."""
    out = {}
    for mb in micro:
        lp = token_logprobs(model, mb)
        for i, r, start, n in mb.spans:
            out[i] = lp[r, start : start + n - 1]
    return out


@dataclass
class Way:
    name: str
    attention: str
    build: Callable[[list[list[int]], list[int], int], list[MicroBatch]]
    trains: bool = True  # has a backward on this device


WAYS = [
    Way("padded, batch order", "sdpa", padded_in_batch_order),
    Way("padded, longest first (the learner)", "sdpa", padded_longest_first),
    Way("packed within those micro-batches", "sdpa", packed_within_micro_batches),
    Way("packed, one row a micro-batch", "sdpa", packed_one_row),
    Way("packed, one row, flex_attention", "flex_attention", packed_one_row, trains=False),
]
BASELINE = WAYS[1].name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=6)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--prompt-tokens", type=int, nargs=2, default=[25, 400])
    ap.add_argument("--answer-tokens", type=int, nargs=2, default=[25, 800])
    ap.add_argument("--budget", type=int, default=8192, help="token slots per micro-batch")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--intermediate", type=int, default=704)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="default: torch's own")
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    facts = machine_facts()

    rows, units = workload(args)
    micro = {w.name: w.build(rows, units, args.budget) for w in WAYS}
    models = {a: model_for(args, a) for a in {w.attention for w in WAYS}}

    # Packed rows give the padded rows' log-probs (same weights, the masks do the rest).
    reference = logprobs_by_row(models["sdpa"], micro[BASELINE])
    agreement = {}
    for w in WAYS:
        got = logprobs_by_row(models[w.attention], micro[w.name])
        agreement[w.name] = max(float((got[i] - reference[i]).abs().max()) for i in reference)

    train_s: dict[str, list[float]] = {w.name: [] for w in WAYS}
    forward_s: dict[str, list[float]] = {w.name: [] for w in WAYS}
    for rep in range(args.reps + 1):  # interleaved, so a slow spell hits every way alike
        for w in WAYS:
            timed = [(forward_s, no_grad_pass)] + ([(train_s, learner_pass)] if w.trains else [])
            for store, run in timed:
                s = run(models[w.attention], micro[w.name])
                if rep > 0:  # the first pass warms up allocators (and compiles flex attention)
                    store[w.name].append(s)
                print(f"rep {rep} {w.name} {run.__name__}: {s:.2f} s", flush=True)

    real = sum(len(r) for r in rows)
    header = [
        "way",
        "micro-batches",
        "rows per micro-batch",
        "token slots",
        "padding",
        "learner pass (s) median / min",
        "speed-up by min (median)",
        "no-grad pass (s) median / min",
        "speed-up by min (median)",
        "max abs log-prob diff",
    ]

    def versus(seconds: dict[str, list[float]], name: str) -> str:
        """Speed-up over the learner's way, by the fastest pass of each (on a shared machine
        the least disturbed), and by the medians."""
        if not seconds[name]:
            return "-"
        (base_med, base_min), (med, low) = median_min(seconds[BASELINE]), median_min(seconds[name])
        return f"{base_min / low:.2f}x ({base_med / med:.2f}x)"

    table = []
    for w in WAYS:
        mbs = micro[w.name]
        slots = sum(mb.slots for mb in mbs)
        table.append(
            [
                w.name,
                str(len(mbs)),
                "-".join(str(n) for n in sorted({mb.input_ids.shape[0] for mb in mbs})),
                str(slots),
                f"{1 - real / slots:.1%}",
                fmt_seconds(train_s[w.name]) if w.trains else "no backward on CPU",
                versus(train_s, w.name),
                fmt_seconds(forward_s[w.name]),
                versus(forward_s, w.name),
                f"{agreement[w.name]:.1e}",
            ]
        )
    lengths = np.array([len(r) for r in rows])
    setting = (
        f"Llama, hidden {args.hidden}, {args.layers} layers, {args.heads} heads "
        f"({args.heads // 2} key/value), MLP {args.intermediate}, vocab {args.vocab}, fp32, "
        f"torch threads {torch.get_num_threads()}. Batch: {args.prompts} prompts x "
        f"{args.samples} samples, prompts {args.prompt_tokens[0]}-{args.prompt_tokens[1] - 1} "
        f"tokens, answers {args.answer_tokens[0]}-{args.answer_tokens[1] - 1}: rows of "
        f"{int(lengths.min())} to {int(lengths.max())} tokens, {real} in all. Budget "
        f"{args.budget} token slots per micro-batch. A learner pass is forward + backward of "
        f"every micro-batch, a no-grad pass their forwards; {args.reps} timed passes of each "
        "(after a warm-up), interleaved over the ways."
    )
    body = setting + "\n\n" + markdown_table(header, table)
    print("\n" + body)
    if not args.no_write:
        print(f"wrote {write_results('packing', TITLE, facts, body)}")


if __name__ == "__main__":
    main()
