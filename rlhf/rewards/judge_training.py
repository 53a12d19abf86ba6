"""A tiny LLM judge trained locally, for tests and demos of `reward.judge.kind=llm`.

The warm-started default policy (it already adds) is fine-tuned to answer the judge template
filled with an addition prompt and two completions, exactly one of them right, with "A" or
"B". The wrong one is a plausible mistake (off by one or ten, a wrong, dropped or extra
digit), so the judge must check the sum, not spot junk. Every pair is shown in both orders in
the same batch: each position is the right one equally often, and a position bias costs loss.
Plain torch in one process, like the warm start; the loss is on the verdict token and the
EOS after it (EOS makes the judge stop after its verdict, as a chat model would).

Two identity-initialised layers are added on top of the policy's four: the policy spends its
depth on the sum, and checking an answer against a sum needs layers after it (with them the
judge agreed with the exact reward more often at equal steps, docs/algorithms.md "Judges").
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from rlhf.config import Config
from rlhf.models.grow import add_identity_layers
from rlhf.models.logprobs import model_logits, pad_id_of, pad_rows
from rlhf.models.warm_start import _lr_factor, supervised_step
from rlhf.rewards.verdicts import DEFAULT_TEMPLATE, Verdict, fill_template
from rlhf.types import Prompt

MISTAKES = (
    "plus_one",
    "minus_one",
    "plus_ten",
    "minus_ten",
    "wrong_digit",
    "drop_digit",
    "add_digit",
)


def mistake_of_kind(answer: str, kind: str, rng: np.random.Generator) -> str | None:
    """`answer` (a decimal number) with one mistake of `kind` (one of MISTAKES), or None where
    that kind cannot make a different non-negative number (0 - 1, dropping the only digit)."""
    offsets = {"plus_one": 1, "minus_one": -1, "plus_ten": 10, "minus_ten": -10}
    if kind in offsets:
        wrong = str(int(answer) + offsets[kind])
    elif kind == "wrong_digit":
        i = int(rng.integers(len(answer)))
        digit = str((int(answer[i]) + int(rng.integers(1, 10))) % 10)  # never the same digit
        wrong = answer[:i] + digit + answer[i + 1 :]
    elif kind == "drop_digit":
        i = int(rng.integers(len(answer)))
        wrong = answer[:i] + answer[i + 1 :]
    elif kind == "add_digit":
        j = int(rng.integers(len(answer) + 1))
        wrong = answer[:j] + str(int(rng.integers(10))) + answer[j:]
    else:
        raise ValueError(f"unknown mistake {kind!r}; allowed: {', '.join(MISTAKES)}")
    return wrong if wrong and not wrong.startswith("-") and wrong != answer else None


def plausible_mistake(answer: str, rng: np.random.Generator) -> str:
    """A wrong answer a weak adder might give, of a kind drawn uniformly (kinds impossible
    for this answer are drawn again)."""
    while True:
        wrong = mistake_of_kind(answer, MISTAKES[int(rng.integers(len(MISTAKES)))], rng)
        if wrong is not None:
            return wrong


def judge_pairs(prompts: Sequence[Prompt], rng: np.random.Generator) -> list[tuple[str, str, str]]:
    """(prompt, right answer, plausible wrong answer) for each prompt."""
    out = []
    for p in prompts:
        right = str(p.columns["answer"])
        out.append((p.text, right, plausible_mistake(right, rng)))
    return out


def both_orders(pairs: Sequence[tuple[str, str, str]], template: str) -> list[tuple[str, Verdict]]:
    """Each (prompt, right, wrong) as two judge inputs: right shown first (verdict A) and
    second (verdict B)."""
    out: list[tuple[str, Verdict]] = []
    for prompt, right, wrong in pairs:
        out.append((fill_template(template, prompt, right, wrong), "A"))
        out.append((fill_template(template, prompt, wrong, right), "B"))
    return out


def _verdict_ids(tokenizer) -> dict[Verdict, int]:
    ids = {}
    for letter in ("A", "B"):
        tokens = tokenizer(letter, add_special_tokens=False).input_ids
        if len(tokens) != 1:
            raise ValueError(f"the judge's tokenizer splits {letter!r} into {tokens}")
        ids[letter] = tokens[0]
    return ids


@torch.no_grad()
def verdict_agreement(
    model, tokenizer, pairs: Sequence[tuple[str, str, str]], template: str
) -> float:
    """Fraction of pairs whose both-order P(right > wrong), from the A/B logits at the verdict
    position, is above 1/2: the judge's agreement with the exact reward (transformers)."""
    letters = _verdict_ids(tokenizer)
    rows = [tokenizer(text).input_ids for text, _ in both_orders(pairs, template)]
    ids, mask = pad_rows(rows, pad_id_of(tokenizer))
    model.eval()
    logits = model_logits(model, ids, mask)
    last = logits[torch.arange(len(rows)), torch.tensor([len(r) - 1 for r in rows])]
    p_a = torch.sigmoid(last[:, letters["A"]] - last[:, letters["B"]]).double()
    # rows alternate (right first: P(right) = p_A), (right second: P(right) = 1 - p_A)
    p_right = (p_a[0::2] + (1.0 - p_a[1::2])) / 2.0
    return float((p_right > 0.5).double().mean())


def train_addition_judge(
    cfg: Config,
    out_dir: str | Path,
    *,
    steps: int = 300,
    pairs_per_step: int = 32,
    lr: float = 1e-3,
    extra_layers: int = 2,
    seed: int = 0,
    template: str = DEFAULT_TEMPLATE,
    eval_pairs: int = 256,
) -> dict[str, float]:
    """Fine-tune the warm-started default policy of `cfg` (`prepare_model`) into an A/B judge
    of the addition task and save it, weights and tokenizer, to `out_dir`. Returns
    judge_training/loss (mean of the last 10% of steps), judge_training/eval_agreement (on
    held-out prompts, with transformers) and judge_training/seconds."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlhf.data.tasks import make_task
    from rlhf.models.default_model import prepare_model

    started = time.perf_counter()
    task = make_task(cfg.task)
    source = prepare_model(cfg)
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    letters = _verdict_ids(tokenizer)
    add_identity_layers(model, extra_layers, seed)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, steps))
    losses: list[float] = []
    model.train()
    for _ in range(steps):
        chosen = rng.choice(len(task.train_prompts), size=pairs_per_step, replace=False)
        examples = both_orders(judge_pairs([task.train_prompts[i] for i in chosen], rng), template)
        rows, starts = [], []
        for text, verdict in examples:
            prompt_ids = tokenizer(text).input_ids
            rows.append(prompt_ids + [letters[verdict], tokenizer.eos_token_id])
            starts.append(len(prompt_ids))
        ids, mask = pad_rows(rows, pad_id_of(tokenizer))
        target = torch.zeros_like(mask, dtype=torch.float32)
        for row, start in enumerate(starts):
            target[row, start : start + 2] = 1.0  # the verdict and EOS only
        losses.append(supervised_step(model, opt, sched, ids, mask, target))
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    held_out = judge_pairs(task.eval_prompts[:eval_pairs], np.random.default_rng(seed + 1))
    tail = losses[-max(1, len(losses) // 10) :]
    return {
        "judge_training/loss": sum(tail) / len(tail) if tail else math.nan,
        "judge_training/eval_agreement": verdict_agreement(model, tokenizer, held_out, template),
        "judge_training/seconds": time.perf_counter() - started,
    }
