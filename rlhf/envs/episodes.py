"""Multi-turn episodes on a generation engine: turns of the policy, observations between them.

Every episode of a call advances together, one turn at a time: each turn is one generate call
holding a request for every episode still running (so the engine batches them, and its prefix
cache keeps the shared context cheap), then every running episode's environment steps at once
(in threads, under one deadline). An episode's tokens after the prompt are the policy's turns
(loss mask 1, the sampler's log-probs) and the observations between them (mask 0, log-prob 0),
token ids as sampled: nothing is decoded and re-encoded.

An episode ends when its environment says `done` (finish reason "stop"), or on a limit
(finish reason "length", counted): `max_turns` policy turns, or its token budget (policy and
observation tokens after the prompt). An environment that raises, returns something that is
not a Step, or does not answer within `timeout_s` ends its episode with `on_error`'s reward:
NaN ("drop": the sample gets no loss weight), 0 ("zero"), or EpisodeError ("raise"). A step
that never returns leaves its thread behind (Python cannot stop a thread); the thread is a
daemon, so it does not keep the worker alive.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rlhf.engines.base import Generation
from rlhf.envs.base import EpisodeError, Step, checked_step

log = logging.getLogger(__name__)


# What every call reports (summed over calls and workers), beside the environments' own info.
COUNTS = (
    "env/episodes",
    "env/errors",  # reset or step raised, or returned something that is not a Step
    "env/timeouts",  # reset or step did not answer within timeout_s
    "env/observations_cut",  # longer than max_observation_tokens
    "env/max_turns_reached",
    "env/out_of_tokens",  # the episode's token budget ran out
    "env/waited_s",  # waiting on the environments (resets and steps), wall time
)


@dataclass(frozen=True)
class EpisodeLimits:
    max_turns: int  # policy turns
    max_new_tokens: int  # one policy turn
    max_tokens: int  # policy and observation tokens after the prompt
    max_observation_tokens: int  # one observation; longer ones are cut (counted)
    timeout_s: float  # one reset or step
    on_error: str = "drop"  # "drop" | "zero" | "raise"
    # the episode's reward from its turns': "sum", "last", "discounted" (sum of
    # turn_discount^k r_k), "per_turn" (the sum, and each turn's reward on its last token)
    turn_rewards: str = "sum"
    turn_discount: float = 1.0


@dataclass
class Episode:
    prompt_ids: list[int]
    env: Any  # made (and reset) in a thread of its own: None until then
    tokens: list[int] = field(default_factory=list)
    policy: list[int] = field(default_factory=list)  # 1: the policy's token, 0: observation
    logprobs: list[float] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)  # one per policy turn
    turn_ends: list[int] = field(default_factory=list)  # each turn's last token, in `tokens`
    turns: int = 0
    finish: str | None = None  # set when the episode is over
    failed: str | None = None  # why the environment failed

    def room(self, limits: EpisodeLimits) -> int:
        return limits.max_tokens - len(self.tokens)


@dataclass
class Episodes:
    """A call's episodes, prompt-major (n per prompt), as the Rollout's columns."""

    generation: Generation  # completion = every token after the prompt; finish reasons
    policy_masks: list[list[int]]
    rewards: list[float]  # the environment's reward per episode (NaN: dropped on an error)
    turns: list[int]
    metrics: dict[str, float]
    # turn_rewards "per_turn": per completion token, each turn's reward on its last token
    token_rewards: list[list[float]] = field(default_factory=list)


# Threads that run one generate call's environment calls, at most. The pool starts small and
# grows while calls wait in its queue: a thread per call cost ~0.1 ms each (a tenth of a
# short-turn game's generating time at 512 episodes), while slow environments (a sandbox, a
# remote judge) still get up to this many steps at once.
ENV_THREADS = 128
FIRST_THREADS = 4


class EnvCalls:
    """Runs environment calls on at most `size` daemon threads, kept for the turns of one
    generate call. A call that hangs keeps its thread (daemon: it cannot block the process's
    exit) and the others go on serving; calls still queued at the deadline time out too."""

    def __init__(self, size: int = ENV_THREADS) -> None:
        self.size, self.threads = size, 0
        self.waited_s = 0.0  # wall time call_all spent waiting for its calls, over all calls
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.lock = threading.Lock()

    def _grow(self, wanted: int) -> None:
        with self.lock:
            while self.threads < min(self.size, wanted):
                self.threads += 1
                name = f"env-{self.threads}"
                threading.Thread(target=self._serve, daemon=True, name=name).start()

    def _serve(self) -> None:
        while (job := self.queue.get()) is not None:
            if not self.queue.empty():  # calls are waiting: one more thread takes them
                self._grow(self.threads + 1)
            call, i, results, done = job
            try:
                results[i] = ("ok", call())
            except Exception as err:  # the environment's own failure: reported, not raised here
                results[i] = ("error", err)
            done[i].set()

    def call_all(self, calls: list[Callable[[], Any]], timeout_s: float) -> list[tuple[str, Any]]:
        """Run `calls` at once under one deadline. Per call: ("ok", value), ("error",
        exception) or ("timeout", None)."""
        results: list[tuple[str, Any]] = [("timeout", None)] * len(calls)
        done = [threading.Event() for _ in calls]
        for i, call in enumerate(calls):
            self.queue.put((call, i, results, done))
        self._grow(min(FIRST_THREADS, len(calls)))
        started = time.monotonic()
        deadline = started + timeout_s
        for event in done:
            event.wait(max(0.0, deadline - time.monotonic()))
        self.waited_s += time.monotonic() - started
        return [results[i] if done[i].is_set() else ("timeout", None) for i in range(len(calls))]

    def close(self) -> None:
        """Lets the threads that are not stuck in a call end."""
        with self.lock:
            for _ in range(self.threads):
                self.queue.put(None)

    def __enter__(self) -> EnvCalls:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def run_episodes(
    engine,
    tokenizer,
    make_env: Callable[[], Any],
    prompts: list[tuple[str, dict[str, Any]]],
    prompt_ids: list[list[int]],
    n: int,
    seed: int | None,
    limits: EpisodeLimits,
    stop: list[str] | None = None,
    **sampling: Any,
) -> Episodes:
    """n episodes per prompt. `prompts`: each prompt's text and dataset columns (what `reset`
    gets); `sampling`: the engine's sampling settings (temperature, top_p, ...)."""
    episodes = [Episode(list(ids), None) for ids in prompt_ids for _ in range(n)]
    texts = [prompts[i] for i in range(len(prompt_ids)) for _ in range(n)]
    counts = dict.fromkeys(COUNTS, 0.0)
    counts["env/episodes"] = float(len(episodes))
    info_sums: dict[str, float] = {}

    def fail(ep: Episode, kind: str, err: object) -> None:
        ep.failed, ep.finish = f"{kind}: {err}", "stop"
        counts["env/timeouts" if kind == "timeout" else "env/errors"] += 1

    def start(e: Episode, text: str, columns: dict[str, Any]) -> None:
        e.env = make_env()  # a constructor that raises fails its episode, as reset would
        e.env.reset(text, **columns)

    with EnvCalls() as threads:  # threads for this call's turns, ended with it
        resets = threads.call_all(
            [lambda e=e, t=t: start(e, *t) for e, t in zip(episodes, texts, strict=True)],
            limits.timeout_s,
        )
        for ep, (status, value) in zip(episodes, resets, strict=True):
            if status != "ok":
                fail(ep, "timeout" if status == "timeout" else "reset raised", value)

        turn = 0
        while running := [e for e in episodes if e.finish is None]:
            budgets = [min(limits.max_new_tokens, e.room(limits)) for e in running]
            out = engine.generate(
                [e.prompt_ids + e.tokens for e in running],
                n=1,
                max_new_tokens=max(budgets),
                seed=None if seed is None else seed + 7919 * turn,
                stop=stop,
                **sampling,
            )
            turns = []
            for e, budget, toks, lps in zip(
                running, budgets, out.completion_ids, out.logprobs, strict=True
            ):
                toks, lps = toks[:budget], lps[:budget]  # a shorter budget than the call's
                e.tokens += toks
                e.policy += [1] * len(toks)
                e.logprobs += lps
                e.turns += 1
                e.turn_ends.append(len(e.tokens) - 1)
                turns.append(toks)
            decoded = tokenizer.batch_decode(turns, skip_special_tokens=True)
            steps = threads.call_all(
                [lambda e=e, t=t: e.env.step(t) for e, t in zip(running, decoded, strict=True)],
                limits.timeout_s,
            )
            answered: list[tuple[Episode, Step]] = []
            for e, (status, value) in zip(running, steps, strict=True):
                if status == "ok":
                    try:
                        answered.append((e, checked_step(value)))
                    except ValueError as err:
                        fail(e, "step returned garbage", err)
                else:
                    fail(e, "timeout" if status == "timeout" else "step raised", value)
            # each distinct observation tokenized once, in one call: per episode it was most
            # of the runner's own time
            distinct = list({step.observation for _, step in answered if step.observation})
            ids = tokenizer(distinct, add_special_tokens=False)["input_ids"] if distinct else []
            observed = dict(zip(distinct, ids, strict=True))
            for e, step in answered:
                _observe(e, step, observed.get(step.observation, []), limits, counts, info_sums)
            turn += 1
    counts["env/waited_s"] = threads.waited_s

    failures = [e.failed for e in episodes if e.failed]
    if failures:
        log.warning(
            "%d of %d episodes ended on an environment failure (reward.on_error=%s); first: %s",
            len(failures),
            len(episodes),
            limits.on_error,
            failures[0],
        )
        if limits.on_error == "raise":
            raise EpisodeError(f"the environment failed: {failures[0]}")
    generation = Generation()
    for e in episodes:
        generation.add(e.tokens, e.logprobs, e.finish or "length")
    counts.update({f"env/{k}": v for k, v in info_sums.items()})
    return Episodes(
        generation=generation,
        policy_masks=[e.policy for e in episodes],
        rewards=[_episode_reward(e, limits) for e in episodes],
        turns=[e.turns for e in episodes],
        metrics=counts,
        token_rewards=[_token_rewards(e) for e in episodes]
        if limits.turn_rewards == "per_turn"
        else [],
    )


def _observe(
    e: Episode,
    step: Step,
    obs: list[int],
    limits: EpisodeLimits,
    counts: dict[str, float],
    info_sums: dict[str, float],
) -> None:
    """The environment's answer to e's turn (`obs`: its observation's tokens): its reward, and
    its observation appended or the episode ended."""
    e.rewards.append(step.reward)
    for k, v in step.info.items():
        info_sums[k] = info_sums.get(k, 0.0) + float(v)
    if step.done:
        e.finish = "stop"
        return
    if e.turns >= limits.max_turns:
        e.finish = "length"
        counts["env/max_turns_reached"] += 1
        return
    if len(obs) > limits.max_observation_tokens:
        obs = obs[: limits.max_observation_tokens]
        counts["env/observations_cut"] += 1
    if len(obs) >= e.room(limits):  # no room left for the policy to answer it
        e.finish = "length"
        counts["env/out_of_tokens"] += 1
        return
    e.tokens += obs
    e.policy += [0] * len(obs)
    e.logprobs += [0.0] * len(obs)


def _episode_reward(e: Episode, limits: EpisodeLimits) -> float:
    if e.failed:
        return math.nan if limits.on_error == "drop" else 0.0
    if not e.rewards:
        return 0.0
    if limits.turn_rewards == "last":
        return e.rewards[-1]
    if limits.turn_rewards == "discounted":
        return float(sum(limits.turn_discount**k * r for k, r in enumerate(e.rewards)))
    return float(np.sum(e.rewards))


def _token_rewards(e: Episode) -> list[float]:
    """Each turn's reward on the turn's last token (zeros for a failed episode: its sequence
    reward says what it gets)."""
    out = [0.0] * len(e.tokens)
    if not e.failed:
        for end, r in zip(e.turn_ends, e.rewards, strict=False):
            out[end] += r
    return out
