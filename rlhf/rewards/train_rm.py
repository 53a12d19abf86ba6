"""`rlhf train-rm`: a reward model from preference pairs, with the Bradley-Terry loss.

DeepSpeed on one rank in this process, set up as the learner sets up its ranks (gloo on
CPU, a torch AdamW instance, the same lr schedule). The classifier starts from the policy
`rlhf train` would start from (or `init_from`) with a fresh one-label score head. The saved
folder is then loaded back by the reward workers' scorer, and the accuracies reported are
that scorer's: exactly what a run will see.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlhf.batch import longest_first, pack_micro_batches
from rlhf.config import Config, ConfigError, RewardModelTrainingConfig, dump_config
from rlhf.models.dtypes import pool_dtype
from rlhf.models.logprobs import pad_rows
from rlhf.models.reward_model import ScalarReward, encode, init_from_folder, pad_id_of
from rlhf.rewards.bradley_terry import bradley_terry_loss, pair_accuracy
from rlhf.rewards.pairs import Pair, read_pairs, sampled_pairs, split_by_prompt, task_pairs
from rlhf.rewards.reward_model_scorer import RewardModelScorer
from rlhf.training.deepspeed_setup import single_rank_engine

METRICS_FILE = "reward_model_metrics.json"
TRAIN_ACCURACY_PAIRS = 2048  # training pairs re-scored at the end (a sample, for speed)


def _initial_folder(cfg: Config) -> str:
    path = cfg.reward_model_training.init_from
    if path is None:
        from rlhf.models.default_model import prepare_model

        steps = cfg.reward_model_training.backbone_warm_start_steps
        if steps is not None and cfg.model.path is None:
            warm = cfg.warm_start.model_copy(update={"steps": steps})
            cfg = cfg.model_copy(update={"warm_start": warm})
        return prepare_model(cfg)  # built like the policy `rlhf train` starts from (cached)
    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        raise ConfigError(
            f"reward_model_training.init_from: {str(folder)!r} is not a Hugging Face model "
            "folder (no config.json)"
        )
    return str(folder)


HELD_OUT_POLICY_SAMPLES = 4  # answers per held-out prompt sampled for the policy-mistake check


def policy_mistakes(cfg: Config, prompts, samples: int, seed: int) -> list[Pair]:
    """The starting policy's own wrong answers on `prompts` (`samples` draws each, plain
    transformers at temperature 1) against the right answers."""
    from rlhf.data.tasks import make_task
    from rlhf.models.default_model import prepare_model
    from rlhf.models.generation import sample_completions

    task = make_task(cfg.task)
    texts = [p.text for p in prompts for _ in range(samples)]
    answers = [task.target(p).strip() for p in prompts for _ in range(samples)]
    completions = sample_completions(prepare_model(cfg), texts, task.max_new_tokens, 1.0, seed)
    return sampled_pairs(texts, answers, completions)


def load_pairs(cfg: Config) -> tuple[list[Pair], list[Pair], str]:
    """(training pairs, held-out pairs, where they came from)."""
    s = cfg.reward_model_training
    if s.pairs is not None:
        train, held = split_by_prompt(read_pairs(s.pairs), s.held_out_fraction, s.seed)
        return train, held, s.pairs
    from rlhf.data.tasks import make_task

    task = make_task(cfg.task)
    train, held = task_pairs(task, s.rejected_per_prompt, s.seed)
    if s.policy_samples:
        train += policy_mistakes(cfg, task.train_prompts, s.policy_samples, s.seed)
    return train, held, f"task:{task.name}"


# ---------------------------------------------------------------- training (DeepSpeed)
def batches(n: int, size: int, steps: int, seed: int) -> Iterator[list[int]]:
    """`steps` batches of `min(size, n)` indices: a seeded shuffle, epoch after epoch (a
    batch may span two epochs)."""
    rng = np.random.default_rng(seed)
    stream: list[int] = []
    for _ in range(steps):
        while len(stream) < min(size, n):
            stream.extend(rng.permutation(n).tolist())
        batch, stream = stream[: min(size, n)], stream[min(size, n) :]
        yield batch


def pair_micro_batches(
    take: list[int],
    chosen: list[list[int]],
    rejected: list[list[int]],
    max_pairs: int,
    max_tokens: int | None,
) -> list[list[int]]:
    """The step's pairs in micro-batches of at most `max_pairs` pairs and `max_tokens` token
    slots (both rows of every pair, padded to the longest), longest pairs first."""
    widths = [max(len(chosen[j]), len(rejected[j]), 1) for j in take]
    order = longest_first(list(range(len(take))), widths)
    packed = pack_micro_batches(order, [2] * len(take), widths, 2 * max_pairs, max_tokens)
    return [[take[i] for i in mb] for mb in packed]


def fit(
    engine,
    chosen: list[list[int]],
    rejected: list[list[int]],
    pad: int,
    s: RewardModelTrainingConfig,
    log_every: int = 0,
) -> list[dict[str, float]]:
    """`s.steps` optimizer steps of `s.batch_size` pairs, each accumulated over micro-batches
    (`pair_micro_batches`; chosen and rejected rows in one forward). Returns one
    record per step: loss, accuracy on the step's pairs, lr."""
    history: list[dict[str, float]] = []
    for step, take in enumerate(batches(len(chosen), s.batch_size, s.steps, s.seed)):
        record = {"lr": float(engine.get_lr()[0]), "loss": 0.0, "accuracy": 0.0}
        parts = pair_micro_batches(
            take, chosen, rejected, s.micro_batch_size, s.max_tokens_per_micro_batch
        )
        for i, part in enumerate(parts):
            engine.set_gradient_accumulation_boundary(i == len(parts) - 1)
            ids, mask = pad_rows([chosen[j] for j in part] + [rejected[j] for j in part], pad)
            scores = engine(ids.to(engine.device), mask.to(engine.device)).float()
            r_chosen, r_rejected = scores[: len(part)], scores[len(part) :]
            # weighted by its share of the step's pairs: the parts sum to the step's mean loss
            loss = bradley_terry_loss(r_chosen, r_rejected) * (len(part) / len(take))
            engine.backward(loss, scale_wrt_gas=False)
            record["loss"] += float(loss.item())
            record["accuracy"] += float((r_chosen > r_rejected).sum().item()) / len(take)
        engine.step()
        history.append(record)
        if log_every and ((step + 1) % log_every == 0 or step + 1 == s.steps):
            print(
                "[rlhf] train-rm step {}/{}: loss {:.4f}, pair accuracy {:.3f}, lr {:.2e}".format(
                    step + 1, s.steps, record["loss"], record["accuracy"], record["lr"]
                ),
                flush=True,
            )
    return history


# ---------------------------------------------------------------- saving and measuring
def save(model: ScalarReward, tokenizer, out: Path) -> None:
    """The classifier in Hugging Face format (AutoModelForSequenceClassification) and the
    tokenizer. Parameters are gathered first, in case ZeRO-3 partitioned them."""
    from rlhf.training.export import full_parameters

    out.mkdir(parents=True, exist_ok=True)
    state = dict(full_parameters(model.classifier, "cpu"))
    model.classifier.save_pretrained(out, state_dict=state, safe_serialization=True)
    tokenizer.save_pretrained(out)


def measure(scorer: RewardModelScorer, pairs: list[Pair]) -> dict[str, Any]:
    """Pair accuracy of a scorer, overall and per kind of wrong answer (built-in pairs)."""
    if not pairs:
        return {"accuracy": math.nan, "pairs": 0}
    prompts = [p.prompt for p in pairs]
    scores = scorer(prompts + prompts, [p.chosen for p in pairs] + [p.rejected for p in pairs])
    chosen, rejected = scores[: len(pairs)], scores[len(pairs) :]
    result: dict[str, Any] = {"accuracy": pair_accuracy(chosen, rejected), "pairs": len(pairs)}
    kinds = sorted({p.kind for p in pairs if p.kind})
    if kinds:
        result["accuracy_by_kind"] = {
            k: pair_accuracy(
                [c for c, p in zip(chosen, pairs, strict=True) if p.kind == k],
                [r for r, p in zip(rejected, pairs, strict=True) if p.kind == k],
            )
            for k in kinds
        }
    return result


def _tail_mean(history: list[dict[str, float]], key: str) -> float:
    tail = history[-max(1, len(history) // 10) :]
    return float(np.mean([h[key] for h in tail]))


def train_reward_model(cfg: Config) -> dict[str, Any]:
    """Build or read the pairs, train, save, and measure the saved model; returns the
    metrics that are also written to `<output_dir>/reward_model_metrics.json`."""
    from transformers import AutoTokenizer

    s = cfg.reward_model_training
    started = time.perf_counter()
    # One rank of the learner's kind, with its CPU share: extra OpenMP threads on busy
    # cores made steps several times slower, never faster, for models this small.
    torch.set_num_threads(max(1, math.ceil(cfg.topology.learner.num_cpus)))
    train_pairs, held_out, source = load_pairs(cfg)  # first: a bad file fails in a second
    init = _initial_folder(cfg)
    print(
        f"[rlhf] train-rm: {len(train_pairs)} training pairs, {len(held_out)} held-out "
        f"pairs ({source}); starting from {init}",
        flush=True,
    )
    tokenizer = AutoTokenizer.from_pretrained(init)
    pad = pad_id_of(tokenizer)
    prompts = [p.prompt for p in train_pairs]
    chosen = encode(tokenizer, prompts, [p.chosen for p in train_pairs], s.max_length)
    rejected = encode(tokenizer, prompts, [p.rejected for p in train_pairs], s.max_length)
    model = init_from_folder(init, pad)
    if s.extra_layers:
        from rlhf.models.grow import add_identity_layers

        add_identity_layers(model.classifier, s.extra_layers, s.seed)
    out = Path(s.output_dir).expanduser()
    t0 = time.perf_counter()
    dtype = pool_dtype(cfg, "reward_model_training", torch.cuda.is_available())
    with single_rank_engine(model, s, dtype, seed=s.seed, steps=s.steps) as engine:
        history = fit(engine, chosen, rejected, pad, s, log_every=max(1, s.steps // 10))
        train_seconds = time.perf_counter() - t0
        save(model, tokenizer, out)
    (out / "rlhf_config.yaml").write_text(dump_config(cfg))

    scorer = RewardModelScorer(out, batch_size=2 * s.micro_batch_size, max_length=s.max_length)
    sample = np.random.default_rng(s.seed).permutation(len(train_pairs))[:TRAIN_ACCURACY_PAIRS]
    held = measure(scorer, held_out)
    seen = measure(scorer, [train_pairs[i] for i in sample])
    on_policy_mistakes = math.nan  # only with built-in pairs and policy_samples
    if s.pairs is None and s.policy_samples:
        from rlhf.data.tasks import make_task

        mistakes = policy_mistakes(
            cfg, make_task(cfg.task).eval_prompts, HELD_OUT_POLICY_SAMPLES, s.seed + 1
        )
        on_policy_mistakes = measure(scorer, mistakes)["accuracy"]
    metrics: dict[str, Any] = {
        "held_out_accuracy": held["accuracy"],
        "held_out_pairs": held["pairs"],
        "held_out_accuracy_by_kind": held.get("accuracy_by_kind", {}),
        "held_out_policy_mistake_accuracy": on_policy_mistakes,
        "train_accuracy": seen["accuracy"],
        "train_accuracy_pairs": seen["pairs"],
        "train_accuracy_by_kind": seen.get("accuracy_by_kind", {}),
        "train_loss_last_10pct": _tail_mean(history, "loss"),
        "train_batch_accuracy_last_10pct": _tail_mean(history, "accuracy"),
        "train_pairs": len(train_pairs),
        "steps": s.steps,
        "epochs": s.steps * min(s.batch_size, len(train_pairs)) / len(train_pairs),
        "pairs_source": source,
        "init_from": init,
        "output_dir": str(out),
        "seconds/train": train_seconds,
        "seconds/total": time.perf_counter() - started,
    }
    (out / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
    return metrics


def format_metrics(m: dict[str, Any]) -> str:
    lines = [
        "[rlhf] train-rm done in {:.0f} s ({} steps, {:.1f} epochs)".format(
            m["seconds/total"], m["steps"], m["epochs"]
        ),
        "[rlhf] held-out pair accuracy: {:.3f} ({} pairs)".format(
            m["held_out_accuracy"], m["held_out_pairs"]
        ),
    ]
    if m["held_out_accuracy_by_kind"]:
        lines.append(
            "[rlhf]   by kind: "
            + ", ".join(f"{k} {v:.3f}" for k, v in m["held_out_accuracy_by_kind"].items())
        )
    if math.isfinite(m.get("held_out_policy_mistake_accuracy", math.nan)):
        lines.append(
            "[rlhf]   against the starting policy's own mistakes on held-out prompts: "
            "{:.3f}".format(m["held_out_policy_mistake_accuracy"])
        )
    lines += [
        "[rlhf] train pair accuracy: {:.3f} ({} pairs); train loss (last 10% of steps): {:.4f}".format(
            m["train_accuracy"], m["train_accuracy_pairs"], m["train_loss_last_10pct"]
        ),
        f"[rlhf] reward model: {m['output_dir']} (metrics: {METRICS_FILE})",
    ]
    return "\n".join(lines)
