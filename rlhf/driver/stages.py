"""The stages that fill a sampled batch's columns, each on its own pool.

| column        | pool      | what                                                   |
|---------------|-----------|--------------------------------------------------------|
| rewards       | reward    | reward functions over the decoded completions          |
| ref_logprobs  | reference | the frozen reference model's per-token log-probs       |
| old_logprobs  | learner   | the policy's log-probs before this iteration's update  |
| values        | critic    | the critic's values before this iteration's update     |
| preferences   | reward    | a judge's P(a > b) for pairs of samples of each prompt  |

An algorithm names the columns it needs (`Algorithm.needs`); the controller submits those
stages together (they are independent) and collects them, so the pools work at once. Each
stage is `submit` (returns a `Pending`) and `collect` (writes its column, returns metrics).
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from rlhf.algorithms.base import STAGES
from rlhf.batch import TrainBatch, plan_shards, scatter_rows
from rlhf.rewards.comparisons import Comparisons, comparisons_from_rewards, unit_pairs
from rlhf.rewards.judges import JudgeConfig
from rlhf.runtime.dispatch import Pending, Pool
from rlhf.telemetry.metrics import combine
from rlhf.types import Prompt, Rollout

if TYPE_CHECKING:
    from rlhf.config import Config
    from rlhf.runtime.pools import Pools

MODEL_INPUTS = ["input_ids", "attention_mask"]


@dataclass
class Sampled:
    """One round of generation: the batch (units = prompts) and what reward functions read."""

    prompts: list[Prompt]  # one per unit, in unit order
    rollouts: list[Rollout]
    batch: TrainBatch
    texts: list[str]  # decoded completion of every row
    prompt_of_row: np.ndarray  # [B] index into `prompts`
    # judge answers for pairs of rows (the preferences stage); rows renumber on select/concat,
    # so those drop them (they run before any judging)
    comparisons: Comparisons | None = None

    @staticmethod
    def concat(parts: list[Sampled]) -> Sampled:
        """Rounds of generation as one; units (prompts) renumbered so none collide."""
        offsets = np.cumsum([0] + [len(p.prompts) for p in parts[:-1]])
        batches = []
        for p, o in zip(parts, offsets, strict=True):
            b = p.batch.select(np.arange(len(p.batch)))  # a copy: units change
            b.units = b.units + o
            batches.append(b)
        return Sampled(
            prompts=[p for part in parts for p in part.prompts],
            rollouts=[r for part in parts for r in part.rollouts],
            batch=TrainBatch.concat(batches),
            texts=[t for part in parts for t in part.texts],
            prompt_of_row=np.concatenate(
                [p.prompt_of_row + o for p, o in zip(parts, offsets, strict=True)]
            ),
        )

    def select_rows(self, rows: np.ndarray) -> Sampled:
        return Sampled(
            self.prompts,
            self.rollouts,
            self.batch.select(rows),
            [self.texts[i] for i in rows],
            self.prompt_of_row[rows],
        )


class Stage(ABC):
    column: ClassVar[str]
    time_key: ClassVar[str]  # seconds from submit to collected (stages overlap)

    def __init__(self, pool: Pool, timeout_s: float) -> None:
        self.pool = pool
        self.timeout_s = timeout_s
        self._started = 0.0

    @classmethod
    def build(cls, pools: Pools, cfg: Config, timeout_s: float) -> Stage:
        """This stage of a run, on the pool the stage table gives its column."""
        return cls(getattr(pools, cfg.stage_table()[cls.column]), timeout_s)

    def submit(self, s: Sampled) -> Pending:
        self._started = time.perf_counter()
        return self._submit(s)

    def collect(self, pending: Pending, s: Sampled) -> dict[str, float]:
        results = pending.wait(self.timeout_s)
        metrics = self._collect(results, pending, s)
        metrics[self.time_key] = time.perf_counter() - self._started
        return metrics

    @abstractmethod
    def _submit(self, s: Sampled) -> Pending: ...

    @abstractmethod
    def _collect(self, results: list[Any], pending: Pending, s: Sampled) -> dict[str, float]: ...


class RewardStage(Stage):
    column = "rewards"
    time_key = "time/reward"

    def __init__(
        self,
        pool: Pool,
        timeout_s: float,
        functions: list[str] | None = None,
        scored: bool = True,
    ) -> None:
        super().__init__(pool, timeout_s)
        self.functions = functions  # None: the configured reward functions
        # False: no reward function or model is configured (an environment's rewards alone)
        self.scored = scored

    @classmethod
    def build(cls, pools: Pools, cfg: Config, timeout_s: float) -> Stage:
        scored = bool(cfg.reward_functions() or cfg.reward.models)
        return cls(getattr(pools, cfg.stage_table()[cls.column]), timeout_s, scored=scored)

    def _submit(self, s: Sampled) -> Pending:
        keys = list(s.prompts[0].columns) if s.prompts else []

        def args(rows: np.ndarray) -> tuple:
            prompts = [s.prompts[s.prompt_of_row[i]] for i in rows]
            columns = {k: [p.columns[k] for p in prompts] for k in keys}
            return [p.text for p in prompts], [s.texts[i] for i in rows], columns, self.functions

        return self.pool.split("score", s.batch.units, args, what="reward")

    def _collect(self, results, pending, s) -> dict[str, float]:
        rewards = np.full(len(s.batch), np.nan, dtype=np.float32)
        for rows, (values, _) in zip(pending.parts, results, strict=True):
            rewards[rows] = values
        metrics = combine(m for _, m in results)
        if "env_rewards" in s.batch:  # episodes: the environment's reward joins the sum
            env = s.batch["env_rewards"]
            if self.scored or self.functions:
                rewards = env + rewards
            else:  # nothing else scores: the workers' "no valid reward" counts mean nothing
                rewards, metrics = env.copy(), {}
            metrics["reward/env_mean"] = float(np.nanmean(env)) if (env == env).any() else math.nan
            metrics["reward/dropped"] = float(np.isnan(rewards).sum())
        s.batch["rewards"] = rewards
        valid = rewards[~np.isnan(rewards)]
        metrics["reward/mean"] = float(valid.mean()) if valid.size else math.nan
        metrics["reward/std"] = float(valid.std()) if valid.size else math.nan
        return metrics


class PreferenceStage(Stage):
    """Judge answers for every pair of samples of each prompt, into `Sampled.comparisons`.

    With the reward judge every sample is scored once (the rewards column is filled too)
    and pairs are compared here, P = sigmoid((r_a - r_b) / tau); any other judge is asked
    about each pair on the reward pool, split by prompts."""

    column = "preferences"
    time_key = "time/judge"

    @classmethod
    def build(cls, pools: Pools, cfg: Config, timeout_s: float) -> Stage:
        return cls(getattr(pools, cfg.stage_table()[cls.column]), timeout_s, cfg.reward.judge)

    def __init__(self, pool: Pool, timeout_s: float, judge: JudgeConfig) -> None:
        super().__init__(pool, timeout_s)
        self.judge = judge
        self._rewards: RewardStage | None = None

    def _submit(self, s: Sampled) -> Pending:
        if self.judge.kind == "reward":
            self._rewards = RewardStage(self.pool, self.timeout_s)
            return self._rewards._submit(s)
        keys = list(s.prompts[0].columns) if s.prompts else []

        def args(rows: np.ndarray) -> tuple:
            a, b = unit_pairs(s.batch.units, rows)
            prompts = [s.prompts[s.prompt_of_row[i]] for i in a]
            columns = {k: [p.columns[k] for p in prompts] for k in keys}
            texts = s.texts
            return [p.text for p in prompts], [texts[i] for i in a], [texts[i] for i in b], columns

        return self.pool.split("judge", s.batch.units, args, what="judge")

    def _collect(self, results, pending, s) -> dict[str, float]:
        if self._rewards is not None:
            metrics = self._rewards._collect(results, pending, s)
            s.comparisons = comparisons_from_rewards(
                s.batch["rewards"], s.batch.units, self.judge.tau
            )
            return metrics
        parts = [unit_pairs(s.batch.units, rows) for rows in pending.parts]
        s.comparisons = Comparisons(
            np.concatenate([a for a, _ in parts]) if parts else [],
            np.concatenate([b for _, b in parts]) if parts else [],
            np.concatenate([probs for probs, _ in results]) if results else [],
        )
        return combine(m for _, m in results)


class ReferenceStage(Stage):
    column = "ref_logprobs"
    time_key = "time/reference"

    def _submit(self, s: Sampled) -> Pending:
        inputs = s.batch.only(MODEL_INPUTS)
        return self.pool.split(
            "logprobs", s.batch.units, lambda rows: (inputs.select(rows),), what="reference"
        )

    def _collect(self, results, pending, s) -> dict[str, float]:
        out = np.zeros((len(s.batch), s.batch.width), dtype=np.float32)
        for rows, part in zip(pending.parts, results, strict=True):
            out[rows, : part.shape[1]] = part
        s.batch["ref_logprobs"] = out * s.batch["completion_mask"]
        return {}


class ForwardStage(Stage):
    """A no-grad pass of a DeepSpeed pool over every row (a collective under ZeRO-3: every
    rank is called, with shards planned so each runs as many forwards)."""

    field: ClassVar[str]

    def __init__(
        self,
        pool: Pool,
        timeout_s: float,
        micro_batch_size: int,
        max_tokens_per_micro_batch: int | None = None,
    ) -> None:
        super().__init__(pool, timeout_s)
        self.micro_batch_size = micro_batch_size
        self.max_tokens = max_tokens_per_micro_batch
        self._shards: list = []

    @classmethod
    def build(cls, pools: Pools, cfg: Config, timeout_s: float) -> Stage:
        """On a DeepSpeed pool, with that pool's micro-batch limits (`learner.*`, `critic.*`)."""
        pool = cfg.stage_table()[cls.column]
        limits = getattr(cfg, pool)
        return cls(
            getattr(pools, pool),
            timeout_s,
            limits.micro_batch_size,
            limits.max_tokens_per_micro_batch,
        )

    def _submit(self, s: Sampled) -> Pending:
        inputs = s.batch.only([*MODEL_INPUTS, "completion_mask"])
        self._shards = plan_shards(
            inputs, len(self.pool), 1, self.micro_batch_size, 1, self.max_tokens
        )
        return self.pool.call_each(
            "forward_pass", [(shard, self.field) for shard in self._shards], what=self.column
        )

    def _collect(self, results, pending, s) -> dict[str, float]:
        full = scatter_rows(len(s.batch), s.batch.width, self._shards, results)
        s.batch[self.column] = full * s.batch["completion_mask"]
        return self._metrics(s.batch)

    def _metrics(self, batch: TrainBatch) -> dict[str, float]:
        return {}


class OldLogprobStage(ForwardStage):
    column = "old_logprobs"
    field = "logprobs"
    time_key = "time/old_logprobs"

    def _metrics(self, batch: TrainBatch) -> dict[str, float]:
        # The engines hold the learner's weights only if these agree (the sync landed).
        mask = batch["completion_mask"]
        if "from_mixture" in batch:  # mixture samples' log-probs are the mixture's
            mask = mask * (1.0 - batch["from_mixture"])[:, None]
        diff = np.abs(batch["sampler_logprobs"] - batch["old_logprobs"]) * mask
        return {"sync/logprob_abs_diff": float(diff.sum() / max(mask.sum(), 1.0))}


class ValueStage(ForwardStage):
    column = "values"
    field = "values"
    time_key = "time/values"


class BaseReferenceStage(ForwardStage):
    """LoRA's reference for free: the learner's own model with its adapters off is the
    starting policy (`Config.reference_from_base`)."""

    column = "ref_logprobs"
    field = "base_logprobs"
    time_key = "time/reference"


# The stage that fills each column of the stage table (rlhf.algorithms.base.STAGES), and
# the one that fills it where a run's table names another pool.
STAGE_CLASSES: dict[str, type[Stage]] = {
    cls.column: cls
    for cls in (RewardStage, PreferenceStage, ReferenceStage, OldLogprobStage, ValueStage)
}
MOVED_STAGE_CLASSES: dict[tuple[str, str], type[Stage]] = {
    ("ref_logprobs", "learner"): BaseReferenceStage,
}


def stage_class(column: str, table: dict[str, str]) -> type[Stage]:
    pool = table[column]
    return STAGE_CLASSES[column] if pool == STAGES[column] else MOVED_STAGE_CLASSES[column, pool]


def rollout_metrics(s: Sampled) -> dict[str, float]:
    mask = s.batch["completion_mask"]
    lengths = mask.sum(axis=1)  # the policy's tokens (an episode's observations are not)
    busy: dict[str, float] = {}  # each worker's seconds generating this batch
    per_worker: dict[str, float] = {}  # prompts and tokens each worker generated
    for r in s.rollouts:
        busy[r.worker] = busy.get(r.worker, 0.0) + r.seconds
        key = f"worker/{r.worker}"
        per_worker[f"{key}/prompts"] = per_worker.get(f"{key}/prompts", 0.0) + len(
            set(r.prompt_index)
        )
        tokens = float(sum(len(c) for c in r.completion_ids))
        per_worker[f"{key}/tokens"] = per_worker.get(f"{key}/tokens", 0.0) + tokens
    real = s.batch["attention_mask"].sum(axis=1)
    # a completion starts with the policy's first token: the prompt is what comes before
    prompt_lengths = np.where(mask.any(axis=1), mask.argmax(axis=1), real)
    episodes = combine(r.metrics for r in s.rollouts)
    if "env/episodes" in episodes:
        turns = [t for r in s.rollouts for t in r.turns]
        episodes["env/turns_mean"] = float(np.mean(turns)) if turns else 0.0
        episodes["rollout/observation_tokens"] = float((real - prompt_lengths - lengths).sum())
        # the share of the workers' generating time spent waiting on environment code
        episodes["env/waited_share"] = episodes["env/waited_s"] / max(sum(busy.values()), 1e-9)
    return {
        **per_worker,
        **episodes,
        "time/generate_busy": max(busy.values(), default=0.0),
        "rollout/tokens": float(lengths.sum()),
        "rollout/length_mean": float(lengths.mean()),
        "rollout/length_max": float(lengths.max()),
        "rollout/prompt_length_mean": float(prompt_lengths.mean()),
        "rollout/prompt_length_max": float(prompt_lengths.max()),
        "rollout/truncated_fraction": float(s.batch["truncated"].mean()),
    }
