"""Mistakes in what the user asked for, found before anything starts.

`rlhf train` runs `check_before_start` before it makes the run folder or starts Ray: an
unknown task, a model folder that is not there, a reward function that cannot be loaded, an
unusable reward-model or judge folder each raise `ConfigError` naming the field, and the CLI
exits with code 2 and that one message (docs/user_errors.md lists them, tested). Reward
functions are imported here as the reward workers will import them, relative to the
directory the user launched from.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

from rlhf.config import Config, ConfigError
from rlhf.data.lengths import PromptFit
from rlhf.data.tasks import Task


@contextlib.contextmanager
def launch_dir_importable() -> Iterator[None]:
    """The workers import 'module:function' with the launch directory on PYTHONPATH; the
    `rlhf` console script's sys.path lacks it."""
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        yield
    finally:
        if added:
            sys.path.remove(cwd)


def check_before_start(cfg: Config) -> Task:
    """Raise `ConfigError` for the first thing in `cfg` that cannot work; returns the run's
    prompts (read once, here)."""
    from rlhf.data.prompt_files import make_prompts
    from rlhf.models.default_model import check_model_path
    from rlhf.rewards.judges import resolve_judge_function
    from rlhf.rewards.scoring import missing_columns, resolve_reward_function

    if cfg.data.train is not None and cfg.model.path is None:
        raise ConfigError(
            "data.train needs model.path (a Hugging Face model folder): the tiny default "
            "model is built for a built-in task"
        )
    task = make_prompts(cfg)
    if cfg.model.path is not None:
        check_model_path(cfg.model.path)
    columns = prompt_columns(task)
    with launch_dir_importable():
        for i, fn in enumerate(cfg.reward.functions):
            if fn.remote is not None:  # the service may be reachable from the cluster only
                from rlhf.rewards.service import read_token

                read_token(fn.token_file, f"reward.functions[{i}].token_file")
                continue
            missing = missing_columns(
                resolve_reward_function(fn.name, f"reward.functions[{i}]"), 2, columns
            )
            if missing and training_scores_rewards(cfg):
                raise ConfigError(
                    f"reward.functions[{i}]: {fn.name!r} needs the column(s) "
                    f"{', '.join(missing)}, which the prompts lack (their columns: "
                    f"{', '.join(columns) or 'none'}): add them to the prompt file, or name "
                    "reward functions that fit the data"
                )
        if cfg.reward.judge.kind == "function" and cfg.reward.judge.function:
            judge = resolve_judge_function(cfg.reward.judge.function)
            missing = missing_columns(judge, 3, columns)
            if missing:
                raise ConfigError(
                    f"reward.judge.function: {cfg.reward.judge.function!r} needs the column(s) "
                    f"{', '.join(missing)}, which the prompts lack (their columns: "
                    f"{', '.join(columns) or 'none'})"
                )
    if cfg.ray.address is None:  # on a cluster the folders are the nodes' business
        from rlhf.rewards.llm_judge import judge_model_folder
        from rlhf.train import check_reward_models

        check_reward_models(cfg)
        if cfg.reward.judge.kind == "llm":
            judge_model_folder(cfg.reward.judge.llm.path)
    return task


def fit_to_model(cfg: Config, task: Task, model_path: str) -> PromptFit:
    """The engines' context and the prompts that fit it (`rlhf.data.lengths.fit_prompts`),
    with prompts counted in tokens as the run will feed them."""
    from transformers import AutoTokenizer

    from rlhf.data.chat import prompt_ids
    from rlhf.data.lengths import fit_prompts

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    return fit_prompts(cfg, task, model_path, lambda p: len(prompt_ids(tokenizer, p)))


def prompt_columns(task: Task) -> list[str]:
    """The dataset columns the prompts carry (every row of a file has the same)."""
    first = (task.train_prompts or task.eval_prompts)[:1]
    return list(first[0].columns) if first else []


def training_scores_rewards(cfg: Config) -> bool:
    """Whether training calls the reward functions: a policy-gradient algorithm, or a
    preference algorithm judged by the rewards (`reward.judge.kind=reward`)."""
    from rlhf.algorithms import make_algorithm

    needs = make_algorithm(cfg.algorithm, cfg.rollout.max_new_tokens).needs
    return "rewards" in needs or ("preferences" in needs and cfg.reward.judge.kind == "reward")


def evaluation_skipped(cfg: Config, task: Task) -> str | None:
    """Why a run has no greedy held-out evaluation, or None when it has one. It scores with
    the built-in task's reward, or with the configured reward functions; a preference run
    judged otherwise may carry functions its prompts cannot feed (the default
    `addition_exact` on a file without `answer`): then there is nothing to measure with."""
    from rlhf.rewards.scoring import missing_columns, resolve_reward_function

    if not task.eval_prompts:
        return (
            "no held-out prompts: give data.eval, or a data.eval_fraction above 0"
            if cfg.data.train is not None
            else "no held-out prompts"
        )
    if task.default_reward is not None:
        return None
    columns = prompt_columns(task)
    with launch_dir_importable():
        for i, fn in enumerate(cfg.reward.functions):
            if fn.remote is not None:
                continue
            missing = missing_columns(resolve_reward_function(fn.name), 2, columns)
            if missing:
                return (
                    f"reward.functions[{i}] ({fn.name}) needs the column(s) "
                    f"{', '.join(missing)}, which the prompts lack; the policy is trained by "
                    f"the judge (reward.judge.kind={cfg.reward.judge.kind}): compare policies "
                    "with it by `rlhf eval`"
                )
    return None
