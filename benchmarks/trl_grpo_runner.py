"""TRL's GRPOTrainer on a job written by benchmarks/trl_side_by_side.py (the TRL side).

Runs in the benchmark's own TRL virtual environment (benchmarks/.venv-trl), never in ours, and
imports nothing from `rlhf`: everything it needs (model folder, prompts in order, answers, the
reward's name, settings) comes in the job file. The reward functions restate ours; the module
imports without trl, so tests/test_trl_rewards.py can hold them to ours.

    benchmarks/.venv-trl/bin/python benchmarks/trl_grpo_runner.py --job job.json --out DIR

Writes DIR/result.json (per optimizer step: wall seconds, generation seconds, mean sampled
reward, completion lengths, learning rate; the prompts of every generation batch, in order;
the tokenisation check; versions) and the trained policy in DIR/final.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
from collections.abc import Callable, Sequence
from decimal import Decimal
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

if TYPE_CHECKING:
    from trl import GRPOConfig, GRPOTrainer


# ---------------------------------------------------------------- rewards
# The rules of rlhf.rewards.builtin, restated (this side may not import rlhf); a completion is
# a string for text prompts and [{"role": "assistant", "content": ...}] for conversational ones.
def completion_text(completion: object) -> str | None:
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        completion = completion[-1].get("content")
    return completion if isinstance(completion, str) else None


def addition_exact(
    prompts: list, completions: list, answer: Sequence[object], **_: object
) -> list[float]:
    """1.0 iff the completion, stripped of white space, is exactly the answer."""
    texts = [completion_text(c) for c in completions]
    return [
        1.0 if t is not None and t.strip() == str(a).strip() else 0.0
        for t, a in zip(texts, answer, strict=True)
    ]


NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")  # thousands commas allowed


def last_number(text: str) -> Decimal | None:
    numbers = NUMBER.findall(text)
    return Decimal(numbers[-1].replace(",", "")) if numbers else None


def final_number(
    prompts: list, completions: list, answer: Sequence[object], **_: object
) -> list[float | None]:
    """1.0 iff the completion's last number equals the answer's last number after its final
    '####' (as decimals: 72 == 72.00); None where the answer has no number."""
    out: list[float | None] = []
    for c, a in zip(completions, answer, strict=True):
        want = last_number(str(a).rsplit("####", 1)[-1])
        text = completion_text(c)
        got = last_number(text) if text is not None else None
        out.append(None if want is None else float(got == want))
    return out


REWARDS: dict[str, Callable[..., list]] = {f.__name__: f for f in (addition_exact, final_number)}


# ---------------------------------------------------------------- the trainer
def lr_factor(warmup: int, total: int, min_ratio: float) -> Callable[[int], float]:
    """Linear warm-up (step 0 at lr / warmup), then a cosine decay to min_ratio at `total`:
    the schedule of the other side, step for step (TRL's own "cosine" starts at lr 0)."""

    def factor(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        if total <= warmup:
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def timed_trainer(**kwargs: Any) -> GRPOTrainer:
    """A GRPOTrainer that also records how long each generation takes and which prompts it
    was given (to prove the order); nothing else changes. (trl is imported here, not at the
    top, so the reward functions above import without it.)"""
    from trl import GRPOTrainer

    class TimedGRPOTrainer(GRPOTrainer):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.generate_seconds: list[float] = []
            self.generation_prompts: list[list] = []

        def _generate(self, prompts: list):
            self.generation_prompts.append(list(prompts))
            return super()._generate(prompts)

        def _generate_single_turn(self, *args: Any, **kwargs: Any):
            t0 = time.perf_counter()
            out = super()._generate_single_turn(*args, **kwargs)
            self.generate_seconds.append(time.perf_counter() - t0)
            return out

    return TimedGRPOTrainer(**kwargs)


class StepRecorder(TrainerCallback):
    """Wall time of every optimizer step (on_step_begin to on_step_end: generation, reward,
    forward/backward of every micro-batch, clipping, optimizer and scheduler step) and the
    metrics TRL logs for it (logging_steps=1)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.logs: list[dict[str, float]] = []
        self._t0 = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.seconds.append(time.perf_counter() - self._t0)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "reward" in logs:
            self.logs.append({"step": state.global_step, **logs})


def grpo_config(s: dict[str, Any], out: Path) -> GRPOConfig:
    from trl import GRPOConfig

    # Every knob the comparison depends on is set here, not left to TRL's defaults (which
    # differ: bf16 and gradient checkpointing on, lr 1e-6, shuffled prompts).
    force = {"min_new_tokens": s["max_new_tokens"]} if s["force_length"] else None
    return GRPOConfig(
        output_dir=str(out / "trainer"),
        max_steps=s["steps"],
        per_device_train_batch_size=s["micro_batch_size"],
        gradient_accumulation_steps=s["gradient_accumulation_steps"],
        num_generations=s["samples_per_prompt"],
        num_iterations=1,
        shuffle_dataset=False,
        max_completion_length=s["max_new_tokens"],
        generation_kwargs=force,
        temperature=s["temperature"],
        top_p=s["top_p"],
        top_k=s["top_k"],
        beta=s["beta"],
        epsilon=s["clip_low"],
        epsilon_high=s["clip_high"],
        loss_type="dapo",
        scale_rewards=s["scale_rewards"],
        mask_truncated_completions=False,
        learning_rate=s["lr"],
        max_grad_norm=s["grad_clip"],
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        use_cpu=True,
        seed=s["seed"],
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_num_workers=0,
    )


def make_optimizer(
    model: torch.nn.Module, s: dict[str, Any]
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """torch AdamW (weight decay given explicitly: torch's default is 0.01) and the shared
    schedule, handed to the trainer so both sides step the same optimizer."""
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=s["lr"], betas=tuple(s["adam_betas"]), weight_decay=s["weight_decay"]
    )
    schedule = lr_factor(s["warmup_steps"], s["steps"], s["min_lr_ratio"])
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def check_tokenization(trainer: GRPOTrainer, job: dict[str, Any]) -> int:
    """TRL's own prompt path must give the ids the other side generates from: raw text as it
    is, chat messages through the same chat template, the same special tokens."""
    from trl.data_utils import is_conversational

    expected = job["expected_prompt_ids"]
    prompts = [r["prompt"] for r in job["rows"][: len(expected)]]
    if is_conversational({"prompt": prompts[0]}) != isinstance(prompts[0], list):
        raise SystemExit(f"TRL took {prompts[0]!r} for the other kind of prompt")
    got, _, _ = trainer._tokenize_prompts(prompts)
    got = [list(map(int, ids)) for ids in got]
    if got != expected:
        bad = next(i for i, (a, b) in enumerate(zip(got, expected, strict=True)) if a != b)
        raise SystemExit(f"prompt {prompts[bad]!r}: TRL ids {got[bad]} != expected {expected[bad]}")
    return len(expected)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--job", required=True, help="JSON written by trl_side_by_side.py")
    p.add_argument("--out", required=True, help="folder for result.json and final/")
    args = p.parse_args()
    job = json.loads(Path(args.job).read_text())
    s = job["settings"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    from datasets import Dataset

    model = AutoModelForCausalLM.from_pretrained(job["model_path"], dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(job["model_path"])
    recorder = StepRecorder()
    trainer = timed_trainer(
        model=model,
        reward_funcs=[REWARDS[job["reward"]]],
        args=grpo_config(s, out),
        train_dataset=Dataset.from_list(job["rows"]),
        processing_class=tokenizer,
        callbacks=[recorder],
        optimizers=make_optimizer(model, s),
    )
    checked = check_tokenization(trainer, job)
    t0 = time.perf_counter()
    trainer.train()
    loop_seconds = time.perf_counter() - t0
    trainer.save_model(str(out / "final"))
    result = {
        "steps": step_records(recorder, trainer),
        "loop_seconds": loop_seconds,
        "process_seconds": time.perf_counter() - started,
        "generation_prompts": trainer.generation_prompts,
        "tokenization_checked_prompts": checked,
        "torch_threads": torch.get_num_threads(),
        "final_model": str(out / "final"),
        "versions": {k: version(k) for k in ("trl", "transformers", "torch", "accelerate")},
    }
    (out / "result.json").write_text(json.dumps(result))
    return 0


def step_records(recorder: StepRecorder, trainer: GRPOTrainer) -> list[dict[str, float]]:
    if not (len(recorder.seconds) == len(recorder.logs) == len(trainer.generate_seconds)):
        raise SystemExit(
            f"{len(recorder.seconds)} steps timed, {len(recorder.logs)} logged, "
            f"{len(trainer.generate_seconds)} generations: expected one of each per step"
        )
    keys = {
        "reward": "reward",
        "learning_rate": "learning_rate",
        "completions/min_length": "length_min",
        "completions/max_length": "length_max",
        "completions/mean_length": "length_mean",
        "grad_norm": "grad_norm",
    }
    rows = []
    for sec, gen, log in zip(
        recorder.seconds, trainer.generate_seconds, recorder.logs, strict=True
    ):
        rows.append(
            {"seconds": sec, "generate_seconds": gen, **{v: log.get(k) for k, v in keys.items()}}
        )
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
