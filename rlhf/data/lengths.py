"""Lengths a run can hold: the engines' context, and the prompts that fit in it.

A sequence is its prompt plus up to `rollout.max_new_tokens` generated tokens (with an
environment: a whole episode, `RolloutConfig.completion_tokens`), and must fit the
engines' context (`rollout.max_model_len`), which must fit the model's positions. Checked once,
before anything starts (`rlhf train` calls `fit_prompts` before it makes the run folder):

- `rollout.max_model_len` larger than the model's positions: a `ConfigError` naming both;
- unset (None): the context follows the run, the longest prompt that fits the model's
  positions plus `max_new_tokens` (as veRL's prompt + response lengths do), so the KV cache is
  not sized for 32k-token sequences a run never makes;
- prompts with no room for `max_new_tokens` are dropped from training and evaluation, counted
  (`data/filtered_too_long` in every iteration's metrics) and named in one warning; none left
  to train on is a `ConfigError`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from rlhf.config import Config, ConfigError
from rlhf.data.tasks import Task
from rlhf.types import Prompt

log = logging.getLogger(__name__)

# Config attributes that bound a model's positions, as transformers' families name them.
POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length")


def model_positions(model_path: str) -> tuple[int, str] | None:
    """The most positions the model at `model_path` takes, and the config key saying so (the
    smallest if several do); None if its config names none."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    found = [
        (int(v), key)
        for key in POSITION_KEYS
        if isinstance(v := getattr(text, key, None), int) and v > 0
    ]
    return min(found) if found else None


@dataclass(frozen=True)
class PromptFit:
    """What `fit_prompts` decided: the engines' context and what it cost."""

    max_model_len: int  # the rollout engines' context, prompt + completion
    filtered_train: int  # training prompts dropped: too long for that context
    filtered_eval: int  # held-out prompts dropped
    longest_prompt: int  # tokens, of the prompts kept

    @property
    def filtered(self) -> int:
        return self.filtered_train + self.filtered_eval


def fit_prompts(
    cfg: Config, task: Task, model_path: str, prompt_length: Callable[[Prompt], int]
) -> PromptFit:
    """Decide the engines' context and drop the prompts that leave no room for the answer,
    from `task`'s training and held-out prompts (in place); `ConfigError` for what cannot
    work. `prompt_length`: a prompt's token count as the run will feed it."""
    new, budget = cfg.rollout.completion_tokens(), _budget_field(cfg)
    given = cfg.rollout.max_model_len
    positions = model_positions(model_path)
    if positions is not None and given is not None and given > positions[0]:
        raise ConfigError(
            f"rollout.max_model_len={given} exceeds the model's {positions[1]}={positions[0]} "
            f"({model_path}): set rollout.max_model_len <= {positions[0]}, or leave it unset "
            "(null) to follow the model and the prompts"
        )
    if given is not None:
        limit, where = given, "rollout.max_model_len"
    elif positions is not None:
        limit, where = positions[0], f"the model's {positions[1]}"
    else:  # a model with no position limit (a state-space model): the prompts decide
        limit, where = None, "no limit"
    if limit is not None and new >= limit:
        raise ConfigError(
            f"{budget}={new} leaves no room for a prompt in {where}={limit}: "
            f"lower {budget} below {limit}"
        )
    room = None if limit is None else limit - new  # the longest prompt that fits
    kept_train, long_train, longest_train = _keep(task.train_prompts, prompt_length, room)
    kept_eval, long_eval, longest_eval = _keep(task.eval_prompts, prompt_length, room)
    if not kept_train:
        raise ConfigError(
            f"every training prompt is too long: the shortest has {min(long_train)} tokens, "
            f"and {where}={limit} leaves {room} for a prompt after {budget}={new}; "
            "raise rollout.max_model_len (up to the model's positions), lower "
            f"{budget}, or shorten the prompts"
        )
    if long_train or long_eval:
        log.warning(
            "%d training and %d held-out prompts are longer than the %d tokens %s=%d leaves "
            "after %s=%d: they are left out (metric data/filtered_too_long)",
            len(long_train),
            len(long_eval),
            room,
            where,
            limit,
            budget,
            new,
        )
    task.train_prompts, task.eval_prompts = kept_train, kept_eval
    longest = max(longest_train, longest_eval)
    return PromptFit(
        max_model_len=given if given is not None else longest + new,
        filtered_train=len(long_train),
        filtered_eval=len(long_eval),
        longest_prompt=longest,
    )


def _budget_field(cfg: Config) -> str:
    """The setting that sizes a sample after its prompt, as an error names it."""
    r = cfg.rollout
    if not r.runs_episodes():
        return "rollout.max_new_tokens"
    if r.max_episode_tokens is not None:
        return "rollout.max_episode_tokens"
    return "rollout.max_new_tokens x rollout.max_turns"


def _keep(
    prompts: list[Prompt], length: Callable[[Prompt], int], room: int | None
) -> tuple[list[Prompt], list[int], int]:
    """The prompts that fit in `room` tokens, the lengths of those that do not, and the
    longest kept."""
    kept, too_long, longest = [], [], 0
    for p in prompts:
        n = length(p)
        if room is not None and n > room:
            too_long.append(n)
        else:
            kept.append(p)
            longest = max(longest, n)
    return kept, too_long, longest
