"""Whether a run measures greedy held-out reward, and why not when it cannot: decided once
when the run starts (`Trainer`) and checked by the tests of the evaluation plan."""

from __future__ import annotations

from rlhf.config import Config
from rlhf.data.tasks import Task
from rlhf.rewards.scoring import launch_dir_importable, missing_columns, resolve_reward_function


def prompt_columns(task: Task) -> list[str]:
    """The dataset columns the prompts carry (every row of a file has the same)."""
    first = (task.train_prompts or task.eval_prompts)[:1]
    return list(first[0].columns) if first else []


def evaluation_skipped(cfg: Config, task: Task) -> str | None:
    """Why a run has no greedy held-out evaluation, or None when it has one. It scores with
    the built-in task's reward, or with the configured reward functions; a preference run
    judged otherwise may carry functions its prompts cannot feed (the default
    `addition_exact` on a file without `answer`): then there is nothing to measure with."""
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
        for i, fn in enumerate(cfg.reward_functions()):
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
