"""A small Trainer on the real stack, for the tests that drive iterations themselves."""

from __future__ import annotations

from pathlib import Path

from rlhf.config import load_config
from rlhf.data.tasks import make_task
from rlhf.driver.trainer import Trainer
from rlhf.models.default_model import prepare_model

PROMPTS, SAMPLES = 8, 4  # a batch: prompts per iteration, samples per prompt


def small_trainer(tmp_path: Path, name: str, overrides: list[str]) -> Trainer:
    """A Trainer with the plain-transformers engine (it starts in seconds) on batches of
    PROMPTS x SAMPLES; the default model with a short warm start, cached beside the test's
    folder. Its run folder is `tmp_path / name`; `overrides` come last."""
    cfg = load_config(
        None,
        [
            "rollout.engine=hf",
            f"rollout.prompts_per_iteration={PROMPTS}",
            f"rollout.samples_per_prompt={SAMPLES}",
            "learner.micro_batch_size=16",
            "learner.warmup_iterations=0",
            "warm_start.steps=60",
            f"model.cache_dir={tmp_path.parent / 'model-cache'}",
            f"run.output_dir={tmp_path}",
            "run.progress_bar=false",
            *overrides,
        ],
    )
    (tmp_path / name).mkdir(exist_ok=True)
    return Trainer(cfg, tmp_path / name, prepare_model(cfg), make_task(cfg.task))
