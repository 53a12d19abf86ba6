"""The environment of a multi-turn episode: what a user writes, and how it is loaded.

An environment is a class named in config (`rollout.environment: "my_env:Calculator"`); the
rollout worker makes one instance per episode, so an environment keeps its episode's state in
plain attributes:

    class Calculator:
        stop = ["</calc>"]  # optional: strings that end a policy turn (kept in the turn)

        def reset(self, prompt: str, **columns) -> None:
            self.answer = columns["answer"]  # the prompt file's columns, as reward functions get

        def step(self, text: str) -> Step:  # the policy's turn, decoded
            ...
            return Step(observation="<result>408</result>", reward=0.0, done=False)

Why this shape. gym's reset/step is what SkyRL (`BaseTextEnv`), OpenRLHF (`AgentInstanceBase`),
ROLL and NeMo-RL converged on, so users arrive knowing it. One instance per episode, as TRL's
`environment_factory`, rather than one object keyed by an episode id (veRL's tools take an
`instance_id`): nothing to clean up, no state shared by mistake between episodes. The step
takes the turn's text, never tokens: the runner keeps the token ids the policy sampled, and
appends the observation's tokens after them, so the learner trains on exactly what was sampled
(no re-tokenisation of a whole transcript, the source of the log-prob mismatches in veRL's and
TRL's issue trackers). The environment always decides when an episode ends: a chat model ends
every turn with its end-of-turn token, so EOS cannot mean "episode over".
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from rlhf.configbase import ConfigError, load_named


@dataclass
class Step:
    """What an environment answers to one policy turn.

    observation: text appended to the episode after the turn (a tool's output, feedback), as
        tokens that get no loss; "" for none.
    reward: this turn's reward; the episode's rewards are combined by `rollout.turn_rewards`.
    done: the episode is over (no further policy turn).
    info: numbers to report (averaged over episodes as `env/<key>`).
    """

    observation: str = ""
    reward: float = 0.0
    done: bool = False
    info: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class Environment(Protocol):
    def reset(self, prompt: str, **columns: Any) -> None: ...

    def step(self, text: str) -> Step: ...


class EpisodeError(RuntimeError):
    """An environment failed (raised, returned garbage, or passed its time limit) and
    reward.on_error is 'raise'."""


def checked_step(value: object) -> Step:
    """`value` as a Step, or ValueError saying what is wrong with it (an environment that
    returns garbage ends its episode like one that raises)."""
    if isinstance(value, Step):
        step = value
    elif isinstance(value, tuple) and len(value) in (3, 4):  # gym-like (obs, reward, done[, info])
        step = Step(*value)
    else:
        raise ValueError(f"step returned {type(value).__name__}, want rlhf.envs.Step")
    if not isinstance(step.observation, str):
        raise ValueError(f"observation is {type(step.observation).__name__}, want str")
    try:
        step.reward = float(step.reward)
    except (TypeError, ValueError):
        raise ValueError(f"reward {step.reward!r} is not a number") from None
    if not math.isfinite(step.reward):
        raise ValueError(f"reward is {step.reward}")
    if not isinstance(step.done, bool):
        raise ValueError(f"done is {type(step.done).__name__}, want bool")
    if not isinstance(step.info, dict):
        raise ValueError(f"info is {type(step.info).__name__}, want dict")
    return step


def resolve_environment(name: str, field: str = "rollout.environment") -> Callable[[], Any]:
    """The class (any zero-argument callable returning an environment) that `name` gives:
    a built-in, or 'package.module:Class' importable in the rollout worker; a ConfigError
    naming `field` otherwise."""
    from rlhf.envs.builtin import BUILTIN_ENVIRONMENTS

    factory = load_named(name, field, BUILTIN_ENVIRONMENTS, "package.module:Class")
    if not callable(factory):
        raise ConfigError(f"{field}: {name!r} is not a class or callable")
    for method in ("reset", "step"):
        if isinstance(factory, type) and not callable(getattr(factory, method, None)):
            raise ConfigError(f"{field}: {name!r} has no {method}() method")
    return factory
