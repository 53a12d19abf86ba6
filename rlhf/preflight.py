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
    from rlhf.rewards.scoring import resolve_reward_function

    if cfg.data.train is not None and cfg.model.path is None:
        raise ConfigError(
            "data.train needs model.path (a Hugging Face model folder): the tiny default "
            "model is built for a built-in task"
        )
    task = make_prompts(cfg)
    if cfg.model.path is not None:
        check_model_path(cfg.model.path)
    with launch_dir_importable():
        for i, fn in enumerate(cfg.reward.functions):
            if fn.remote is not None:  # the service may be reachable from the cluster only
                from rlhf.rewards.service import read_token

                read_token(fn.token_file, f"reward.functions[{i}].token_file")
                continue
            resolve_reward_function(fn.name, f"reward.functions[{i}]")
        if cfg.reward.judge.kind == "function" and cfg.reward.judge.function:
            resolve_judge_function(cfg.reward.judge.function)
    if cfg.ray.address is None:  # on a cluster the folders are the nodes' business
        from rlhf.rewards.llm_judge import judge_model_folder
        from rlhf.train import check_reward_models

        check_reward_models(cfg)
        if cfg.reward.judge.kind == "llm":
            judge_model_folder(cfg.reward.judge.llm.path)
    return task
