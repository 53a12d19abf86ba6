"""The controller: drives one iteration after another over the actor pools.

    generate (rollout pool, through the rollout scheduler)
    -> the stages the algorithm needs: rewards (reward pool), reference log-probs
       (reference pool), old log-probs (learner pool), values (critic pool)
    -> algorithm.prepare (advantages, returns, loss weights; numpy, here)
    -> train: learner and critic pools, each on its planned shards
    -> weight sync (learner rank 0 -> every rollout worker)

Pools that are not colocated work at the same time (the stages, learner and critic);
colocated pools take turns, each on all the cores they share. With
`rollout.max_staleness = k > 0` the next k batches are submitted before training, so the
rollout workers generate them while the learner trains; no sample is trained on more than k
versions after the weights that generated it.

It never touches model weights: they flow from the learner to the rollout engines directly.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from rlhf.algorithms.base import STAGES
from rlhf.batch import (
    Shard,
    TrainBatch,
    collate_rollouts,
    padding_fraction,
    plan_shards,
    weighted_units,
)
from rlhf.checkpoint import (
    RunState,
    checkpoint_dir,
    count_lines,
    partial_dir,
    publish,
    truncate_lines,
)
from rlhf.config import Config, LearnerConfig, dump_config
from rlhf.data.chat import prompt_ids
from rlhf.data.lengths import PromptFit, fit_prompts
from rlhf.driver.membership import Membership
from rlhf.driver.scheduler import RolloutScheduler
from rlhf.driver.stages import (
    RewardStage,
    Sampled,
    Stage,
    rollout_metrics,
    stage_class,
)
from rlhf.evaluation.plan import evaluation_skipped
from rlhf.models.logprobs import pad_id_of
from rlhf.runtime.dispatch import Pending, Pool, wait_all
from rlhf.runtime.placement_report import startup_summary
from rlhf.runtime.pools import Pools
from rlhf.telemetry.events import EventLog
from rlhf.telemetry.memory import MemoryProbe
from rlhf.telemetry.metrics import MetricsLog, combine, console_line, mean_over
from rlhf.telemetry.ray_metrics import RayMetrics
from rlhf.telemetry.tensorboard_log import TensorBoardLog
from rlhf.types import Prompt
from rlhf.workers.rollout import uses_sleep_mode

log = logging.getLogger(__name__)


class Trainer:
    def __init__(
        self,
        cfg: Config,
        run_dir: Path,
        model_path: str,
        task,
        resume_from: Path | None = None,
        fit: PromptFit | None = None,
    ) -> None:
        """`fit`: the engines' context and the prompts left out (`rlhf.data.lengths`, which
        `rlhf train` runs before it makes the run folder); None: decided here."""
        from transformers import AutoTokenizer

        from rlhf.envs.tools import schemas_of
        from rlhf.runtime.learner_ranks import resolve_learner_ranks

        written = dump_config(cfg)  # config.yaml keeps what was asked; resolved values aside
        # Resuming: the checkpoint's state (its learner ranks too), logs cut back to it.
        self.resume_from = resume_from
        self.resumed = RunState.read(resume_from) if resume_from is not None else None
        ranks = resolve_learner_ranks(cfg, model_path, self.resumed and self.resumed.learner_ranks)
        if ranks:
            print(f"[rlhf] {ranks}", flush=True)
        self.cfg = cfg
        self.run_dir = run_dir
        self.model_path = model_path
        self.task = task
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.tool_schemas = schemas_of(cfg.rollout.tools)  # listed in chat prompts
        self.fit = fit or fit_prompts(cfg, task, model_path, self.prompt_length)
        self.eval_skipped = evaluation_skipped(cfg, task)
        self.algorithm = cfg.make_algorithm()
        self.policy_version = 0
        self.pools: Pools | None = None
        self.scheduler: RolloutScheduler | None = None
        self._ahead: dict[int, tuple[list[Prompt], int]] = {}  # batches submitted early
        if self.resumed is not None:
            truncate_lines(run_dir / "metrics.jsonl", self.resumed.metrics_lines)
            truncate_lines(run_dir / "batches.jsonl", self.resumed.batches_lines)
        self.metrics = MetricsLog(run_dir, continues=self.resumed is not None)
        self.events = EventLog(run_dir)
        self.timeout = cfg.run.call_timeout_s
        self.membership: Membership | None = None
        self.ray_metrics: RayMetrics | None = None
        self.tensorboard: TensorBoardLog | None = None
        self._examples: list[tuple[str, str, float]] = []
        self._warned: set[str] = set()
        self._positions: dict[int, dict[str, float]] = {}  # iteration -> data/epoch, position
        (run_dir / "config.yaml").write_text(written)

    # ------------------------------------------------------------------ set-up
    def start(self) -> None:
        from rlhf.runtime import worker_logs
        from rlhf.runtime.cluster import connect

        needs = self.algorithm.needs
        connect(self.cfg, needs)
        cfg = self.cfg.run
        worker_logs.route_to(self.run_dir / "logs", also_console=cfg.worker_logs_to_console)
        self.pools = Pools.start(
            self.cfg, self.model_path, needs, self.events, self.fit.max_model_len
        )
        places = self.pools.whereabouts(self.timeout)
        for name, place in places.items():
            worker_logs.register(str(place["node_ip"]), int(place["pid"]), name)
        for line in startup_summary(self.pools, places, self.run_dir):
            print(f"[rlhf] {line}", flush=True)
        self.ray_metrics = RayMetrics(self.run_dir.name)
        if cfg.tensorboard:
            # Resumed: steps after the checkpoint that an earlier attempt wrote are dropped.
            purge = self.resumed.iterations_done if self.resumed is not None else None
            self.tensorboard = TensorBoardLog(self.run_dir / "tensorboard", purge_step=purge)
        self.scheduler = RolloutScheduler(
            self.pools.rollout, self.cfg.rollout.prompts_per_call, self.pools.elastic["rollout"]
        )
        self.membership = Membership(
            self.pools,
            self.scheduler,
            self.events,
            self.run_dir,
            self.timeout,
            lambda: self.policy_version,
        )
        self._sleeps = uses_sleep_mode(self.cfg)
        generating_ahead = {"rollout"} if self.cfg.rollout.max_staleness else set()
        self.memory = MemoryProbe(min(self.timeout, MemoryProbe.WAIT_S), generating_ahead)

    def scale(self, **sizes: int) -> None:
        """Resize elastic pools of the running job (`Membership.scale`)."""
        assert self.membership is not None
        self.membership.scale(**sizes)

    def _stages(self, columns: set[str] | frozenset[str]) -> list[Stage]:
        assert self.pools is not None
        table = self.cfg.stage_table()
        return [
            stage_class(c, table).build(self.pools, self.cfg, self.timeout)
            for c in STAGES
            if c in columns
        ]

    # ------------------------------------------------------------------ one iteration
    def iteration(self, it: int) -> dict[str, Any]:
        assert self.pools is not None and self.scheduler is not None
        cfg, algo = self.cfg, self.algorithm
        record: dict[str, Any] = {"iteration": it, "policy_version": self.policy_version}
        started = time.perf_counter()
        self.events.iteration = it
        assert self.membership is not None
        self.membership.between_iterations()

        t0 = time.perf_counter()
        sampled = self._batch(it)
        record["time/generate"] = time.perf_counter() - t0
        record.update(self._positions.pop(it, {}))
        record["data/filtered_too_long"] = float(self.fit.filtered)
        # Asynchronous generation: the next batches are generated while this one trains.
        for ahead in range(it + 1, min(it + cfg.rollout.max_staleness, cfg.run.iterations - 1) + 1):
            self._submit_batch(ahead)
        needs = set(algo.needs)
        if algo.refill_rounds > 0:
            sampled, refill_metrics = self._refill(sampled, it)
            record.update(refill_metrics)
            needs.discard("rewards")
        record.update(self._run_stages(needs, sampled))
        record.update(rollout_metrics(sampled))
        record.update(self._check_staleness(sampled))
        self._examples = examples(sampled)
        if cfg.run.record_batches:
            self._record_batch(it, sampled)

        batch, arranged = algo.arrange(sampled.batch, sampled.comparisons)
        record.update(arranged)
        record.update(algo.prepare(batch))
        t0 = time.perf_counter()
        # A batch with no loss weight at all (every sample dropped) trains nothing: an
        # optimizer step on zero gradients would still move the weights (Adam's momentum).
        skip = float(batch["loss_weights"].sum()) == 0.0
        record["train/skipped"] = float(skip)
        train_policy = not algo.critic_only(it) and not skip
        # units with no loss weight (e.g. dropped flat groups) add nothing: not computed
        batch, full_rows = weighted_units(batch), len(batch)
        record["batch/trained_row_fraction"] = 0.0 if skip else len(batch) / max(full_rows, 1)
        learner_plan = self._plan(batch, self.pools.learner, cfg.learner)
        # what the learner computes (or would, on an iteration it skips) that is padding
        record["batch/padding_fraction"] = padding_fraction(learner_plan)
        trained: list[tuple[Pool, list[Shard]]] = []
        if train_policy:
            trained.append((self.pools.learner, learner_plan))
        if algo.trains_critic and not skip:
            trained.append((self.pools.critic, self._plan(batch, self.pools.critic, cfg.critic)))
        if self._sleeps:  # colocated on GPUs: the engines make room for training
            self.pools.rollout.call_all("sleep").wait(self.timeout)
        for turn in self._turns(trained, lambda p: p[0]):
            pending = [pool.call_each("train_step", [(s,) for s in plan]) for pool, plan in turn]
            for part in self.scheduler.wait(pending, self.timeout, "train_step"):
                record.update(combine(part))
        if self._sleeps:
            self.pools.rollout.call_all("wake_up").wait(self.timeout)
        record["time/train"] = time.perf_counter() - t0
        _derive_sampler_gap(record)

        if train_policy:
            t0 = time.perf_counter()
            self.scheduler.drain(self.timeout)  # a sync lands between generate calls
            record["time/sync_wait"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            self.policy_version += 1
            stats = self.membership.sync_rollout(self.policy_version)
            record["time/sync"] = time.perf_counter() - t0
            record["sync/bytes"] = stats.get("bytes", 0.0)
            record["sync/send_seconds"] = stats.get("seconds", 0.0)
        record.update(algo.after_iteration(record))
        record.update(self.membership.metrics())
        record.update(self.memory.read(self.pools))
        record["time/iteration"] = time.perf_counter() - started
        return record

    def _record_batch(self, it: int, sampled: Sampled) -> None:
        """`batches.jsonl` (run.record_batches): per prompt of the batch, how many samples it
        has, which worker made them and from which weights version."""
        worker = [r.worker for r in sampled.rollouts for _ in range(len(r))]
        units, versions = sampled.batch.units, sampled.batch["sample_version"]
        entry: dict[str, Any] = {"iteration": it, "policy_version": self.policy_version}
        order = list(dict.fromkeys(int(u) for u in units))
        entry["prompts"] = [
            sampled.prompts[int(sampled.prompt_of_row[units == u][0])].text for u in order
        ]
        entry["samples"] = [int((units == u).sum()) for u in order]
        if len(worker) == len(units):  # (dynamic sampling keeps only some rows)
            entry["workers"] = [
                sorted({worker[i] for i in np.flatnonzero(units == u)}) for u in order
            ]
        entry["versions"] = [sorted({int(v) for v in versions[units == u]}) for u in order]
        with (self.run_dir / "batches.jsonl").open("a") as f:
            f.write(json.dumps(entry) + "\n")

    def _plan(self, batch: TrainBatch, pool: Pool, settings: LearnerConfig) -> list[Shard]:
        """One shard per rank of a DeepSpeed pool: its part of this iteration's train step."""
        algo = self.algorithm
        return plan_shards(
            batch,
            len(pool),
            algo.mini_batches,
            settings.micro_batch_size,
            algo.epochs,
            settings.max_tokens_per_micro_batch,
        )

    def _prompts(self, num_prompts: int, it: int, round_: int) -> tuple[list[Prompt], int]:
        """Prompts for (iteration, round) and their sampling seed: a pure function of the
        run's seed, so a batch generated ahead is the batch a synchronous run would get."""
        if round_ == 0:  # the dataset in epochs
            prompts, self._positions[it] = self.task.batch_at(it, num_prompts, self.cfg.run.seed)
        else:  # dynamic sampling's refills: drawn at random (seeded)
            seed = self.cfg.run.seed * 100_003 + it + 7919 * round_
            prompts = self.task.sample_train(num_prompts, seed=seed)
        return prompts, self.cfg.run.seed * 1_000_003 + it * 1_009 + round_

    def _submit_batch(self, it: int) -> None:
        if it in self._ahead:
            return
        prompts, seed = self._prompts(self.cfg.rollout.prompts_per_iteration, it, 0)
        self._ahead[it] = (prompts, self._submit(prompts, seed))

    def _batch(self, it: int) -> Sampled:
        """Iteration `it`'s batch: submitted earlier (asynchronous) or now, and collected."""
        self._submit_batch(it)
        prompts, rid = self._ahead.pop(it)
        return self._collect(prompts, rid)

    def _sample(self, num_prompts: int, it: int, round_: int) -> Sampled:
        prompts, seed = self._prompts(num_prompts, it, round_)
        return self._generate(prompts, seed)

    def prompt_length(self, prompt: Prompt) -> int:
        """Tokens of a prompt as the engines get it."""
        return len(prompt_ids(self.tokenizer, prompt, self.tool_schemas))

    def _submit(self, prompts: list[Prompt], seed: int, greedy: bool = False) -> int:
        assert self.scheduler is not None
        n = 1 if greedy else self.cfg.samples_per_prompt()
        ids = [prompt_ids(self.tokenizer, p, self.tool_schemas) for p in prompts]
        what = "evaluate" if greedy else "generate"
        contexts = None
        if self.cfg.rollout.runs_episodes():  # episodes: reset gets these
            contexts = [(p.text, p.columns) for p in prompts]
        return self.scheduler.submit(ids, n, seed, greedy, what, contexts)

    def _collect(self, prompts: list[Prompt], rid: int) -> Sampled:
        assert self.scheduler is not None
        rollouts = self.scheduler.result(rid, self.timeout)  # in prompt order
        batch = collate_rollouts(rollouts, pad_id_of(self.tokenizer))
        return Sampled(
            prompts=prompts,
            rollouts=rollouts,
            batch=batch,
            texts=[t for r in rollouts for t in r.completion_texts],
            prompt_of_row=batch.units.copy(),
        )

    def _generate(self, prompts: list[Prompt], seed: int, greedy: bool = False) -> Sampled:
        return self._collect(prompts, self._submit(prompts, seed, greedy))

    def _check_staleness(self, sampled: Sampled) -> dict[str, float]:
        """Invariant: no sample is more than `rollout.max_staleness` versions behind the
        weights being trained (0: every sample comes from them)."""
        k = self.cfg.rollout.max_staleness
        age = self.policy_version - sampled.batch["sample_version"]
        if age.min() < 0 or age.max() > k:
            bad = sorted(
                {
                    r.worker
                    for r in sampled.rollouts
                    if not 0 <= self.policy_version - r.policy_version <= k
                }
            )
            raise RuntimeError(
                f"rollouts from {bad} are {int(age.max())} versions old (learner at "
                f"{self.policy_version}, rollout.max_staleness={k})"
            )
        return {
            "rollout/staleness_mean": float(age.mean()),
            "rollout/staleness_max": float(age.max()),
        }

    @staticmethod
    def _turns(items: list, pool_of) -> list[list]:
        """Items grouped into turns: every item on a pool that is not colocated in the first
        turn (they run at the same time), each colocated pool's item in a turn of its own."""
        shared = [x for x in items if not pool_of(x).colocated]
        alone = [[x] for x in items if pool_of(x).colocated]
        return ([shared] if shared else []) + alone

    def _run_stages(self, columns: set[str], sampled: Sampled) -> dict[str, float]:
        """The needed stages: those on pools that are not colocated at the same time, while
        each colocated pool's stage takes its turn alone."""
        assert self.scheduler is not None
        metrics: dict[str, float] = {}
        stages = self._stages(columns)
        first, *rest = self._turns(stages, lambda st: st.pool) or [[]]
        pending = [stage.submit(sampled) for stage in first]
        for (stage,) in rest:
            metrics.update(self._finish_stage(stage, stage.submit(sampled), sampled))
        for stage, p in zip(first, pending, strict=True):
            metrics.update(self._finish_stage(stage, p, sampled))
        return metrics

    def _finish_stage(self, stage: Stage, pending: Pending, sampled: Sampled) -> dict[str, float]:
        assert self.scheduler is not None
        self.scheduler.wait([pending], self.timeout, pending.what)  # the workers stay fed
        return stage.collect(pending, sampled)

    def _refill(self, first: Sampled, it: int) -> tuple[Sampled, dict[str, float]]:
        """Dynamic sampling with refill (DAPO): score, keep the units the algorithm keeps
        (groups whose rewards differ), and generate more prompts until the batch has
        `prompts_per_iteration` of them or the rounds run out (the shortfall is counted)."""
        algo, target = self.algorithm, self.cfg.rollout.prompts_per_iteration
        kept: list[Sampled] = []
        per_round: list[dict[str, float]] = []
        have, sampled, generate_seconds = 0, first, 0.0
        scored_last = first
        for round_ in range(algo.refill_rounds + 1):
            if round_ > 0:
                t0 = time.perf_counter()
                sampled = self._sample(target - have, it, round_)
                generate_seconds += time.perf_counter() - t0
            per_round.append(self._run_stages({"rewards"}, sampled))
            scored_last = sampled
            keep = algo.keep_units(sampled.batch)
            rows = np.arange(len(sampled.batch)) if keep is None else np.flatnonzero(keep)
            units = np.unique(sampled.batch.units[rows])[: target - have]
            rows = rows[np.isin(sampled.batch.units[rows], units)]
            kept.append(sampled.select_rows(rows))
            have += len(units)
            if have >= target:
                break
        metrics = combine(per_round)
        metrics["reward/mean"] = float(np.mean([m["reward/mean"] for m in per_round]))
        metrics["reward/std"] = float(np.mean([m["reward/std"] for m in per_round]))
        metrics["time/generate_refill"] = generate_seconds
        metrics["dynamic/rounds"] = float(len(per_round))
        metrics["dynamic/kept_groups"] = float(have)
        metrics["dynamic/short_by"] = float(max(target - have, 0))
        if have == 0:  # nothing to learn from: the iteration trains nothing (counted)
            log.warning("dynamic sampling: no informative group in %d rounds", len(per_round))
            return scored_last, metrics
        return Sampled.concat(kept), metrics

    # ------------------------------------------------------------------ evaluation
    def evaluate(self) -> float | None:
        """Greedy mean reward on held-out prompts, generated by the rollout engines and
        scored with the task's own reward (for the built-in tasks: exact-answer accuracy), or
        for a prompt file with the configured reward functions. None when the run has no
        evaluation (`self.eval_skipped` says why)."""
        assert self.pools is not None
        if self.eval_skipped is not None:
            return None
        prompts = self.task.eval_prompts[: self.cfg.run.eval_prompts]
        sampled = self._generate(prompts, seed=0, greedy=True)
        default = self.task.default_reward  # None (a prompt file): the configured functions
        if self.cfg.rollout.environment is not None:  # episodes are scored as in training
            stage = RewardStage.build(self.pools, self.cfg, self.timeout)
        else:
            stage = RewardStage(self.pools.reward, self.timeout, default and [default])
        self._finish_stage(stage, stage.submit(sampled), sampled)
        return float(np.nanmean(sampled.batch["rewards"]))

    # ------------------------------------------------------------------ the run
    def run(self, progress: bool = True) -> dict[str, Any]:
        from tqdm import tqdm

        cfg = self.cfg
        started = time.perf_counter()
        summary: dict[str, Any] = {"run_dir": str(self.run_dir)}
        first = self._restore() if self.resumed is not None else 0
        if self.resumed is not None and self.resumed.eval_before is not None:
            summary["eval/greedy_reward_before"] = self.resumed.eval_before
        else:
            summary["eval/greedy_reward_before"] = self.evaluate()
        bar = tqdm(
            range(first, cfg.run.iterations),
            desc="rlhf",
            disable=not progress,
            dynamic_ncols=True,
            initial=first,
            total=cfg.run.iterations,
        )
        say = bar.write if progress else print
        for it in bar:
            record = self.iteration(it)
            if cfg.run.eval_every and (it + 1) % cfg.run.eval_every == 0:
                greedy = self.evaluate()
                if greedy is not None:
                    record["eval/greedy_reward"] = greedy
            self.metrics.write(record)
            self._export(record)
            bar.set_postfix(
                reward=f"{record.get('reward/mean', float('nan')):.3f}",
                sec=f"{record['time/iteration']:.1f}",
            )
            say(console_line(record))
            if cfg.run.save_every and (it + 1) % cfg.run.save_every == 0:
                path = self.save_checkpoint(it + 1, summary["eval/greedy_reward_before"])
                say(f"[rlhf] checkpoint: {path}")
        summary["eval/greedy_reward_after"] = self.evaluate()
        before, after = summary["eval/greedy_reward_before"], summary["eval/greedy_reward_after"]
        summary["eval/greedy_rise"] = None if before is None or after is None else after - before
        if self.eval_skipped is not None:
            summary["eval/skipped"] = self.eval_skipped
        summary["data/filtered_too_long"] = self.fit.filtered
        summary["rollout/max_model_len"] = self.fit.max_model_len
        h = self.metrics.history
        summary["reward/first_10pct"] = mean_over(h, "reward/mean", first=True)
        summary["reward/last_10pct"] = mean_over(h, "reward/mean", first=False)
        summary["reward/rise"] = summary["reward/last_10pct"] - summary["reward/first_10pct"]
        summary["iterations"] = len(h)
        summary["seconds/train_loop"] = time.perf_counter() - started
        summary["seconds/iteration"] = (
            float(np.mean([r["time/iteration"] for r in h])) if h else 0.0
        )
        if cfg.run.save_model:
            final = self.run_dir / "final"
            assert self.pools is not None
            self.pools.learner.call_all("save_pretrained", str(final)).wait(self.timeout)
            summary["final_model"] = str(final)
        (self.run_dir / "summary.json").write_text(json.dumps(json_safe(summary), indent=2))
        return summary

    # ------------------------------------------------------------------ checkpoints
    def _trained_pools(self) -> list[Pool]:
        assert self.pools is not None
        return [p for p in (self.pools.learner, self.pools.critic) if len(p)]

    def save_checkpoint(self, iterations_done: int, eval_before: float | None) -> Path:
        """A checkpoint after `iterations_done` iterations (`rlhf.checkpoint`), published
        once complete; older ones beyond `run.keep_checkpoints` are deleted."""
        assert self.pools is not None
        t0 = time.perf_counter()
        partial = partial_dir(self.run_dir, iterations_done)
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        saves = [
            p.call_all("save_checkpoint", str(partial / p.role)) for p in self._trained_pools()
        ]
        wait_all(saves, self.timeout, "save_checkpoint")
        self.pools.learner.call_all("save_pretrained", str(partial / "hf")).wait(self.timeout)
        RunState(
            iterations_done=iterations_done,
            policy_version=self.policy_version,
            metrics_lines=len(self.metrics.history),
            batches_lines=count_lines(self.run_dir / "batches.jsonl"),
            eval_before=_finite_or_none(eval_before),
            algorithm=self.algorithm.state(),
            learner_ranks=len(self.pools.learner) if self.pools else None,
        ).write(partial)
        final = checkpoint_dir(self.run_dir, iterations_done)
        removed = publish(partial, final, self.cfg.run.keep_checkpoints)
        self.events.record(
            "checkpoint_saved",
            path=str(final),
            seconds=round(time.perf_counter() - t0, 3),
            removed=[p.name for p in removed],
        )
        return final

    def _restore(self) -> int:
        """Load the checkpoint being resumed into the learner (and critic) ranks, give the
        rollout engines its weights; returns the first iteration to run."""
        assert self.resumed is not None and self.resume_from is not None
        assert self.membership is not None
        state, folder = self.resumed, self.resume_from
        loads = [p.call_all("load_checkpoint", str(folder / p.role)) for p in self._trained_pools()]
        wait_all(loads, self.timeout, "load_checkpoint")
        self.policy_version = state.policy_version
        self.algorithm.load_state(state.algorithm)
        if self.policy_version > 0:  # the engines started from the initial weights
            self.membership.sync_rollout(self.policy_version)
        self.events.iteration = state.iterations_done
        self.events.record("resumed", path=str(folder), policy_version=self.policy_version)
        return state.iterations_done

    def _export(self, record: dict[str, Any]) -> None:
        """The iteration's metrics to Ray's metrics and TensorBoard; a warning that matters
        reaches the console once."""
        it = record["iteration"]
        if self.ray_metrics is not None:
            self.ray_metrics.record(record)
        if self.tensorboard is not None:
            self.tensorboard.scalars(record)
            every = self.cfg.run.samples_every
            if every and it % every == 0 and self._examples:
                self.tensorboard.samples(it, self._examples)
        dropped = record.get("reward/dropped") or 0.0
        if dropped > 0 and "dropped" not in self._warned:
            self._warned.add("dropped")
            log.warning(
                "iteration %d: %d samples got no reward (a reward function raised or returned "
                "NaN; reward.on_error=%s): see metric reward/dropped and %s/logs/reward-*.log",
                it,
                int(dropped),
                self.cfg.reward.on_error,
                self.run_dir,
            )

    def close(self) -> None:
        from rlhf.runtime import worker_logs

        self.metrics.close()
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None
        if self.pools is not None:
            self.pools.shutdown()
            self.pools = None
        worker_logs.stop_routing()


def examples(sampled: Sampled, k: int = 4) -> list[tuple[str, str, float]]:
    """(prompt, completion, reward) of the first sample of the first `k` prompts."""
    rewards = sampled.batch["rewards"] if "rewards" in sampled.batch else None
    out, seen = [], set()
    for row, prompt in enumerate(sampled.prompt_of_row):
        if int(prompt) in seen or row >= len(sampled.texts):
            continue
        seen.add(int(prompt))
        reward = float(rewards[row]) if rewards is not None else float("nan")
        out.append((sampled.prompts[int(prompt)].text, sampled.texts[row], reward))
        if len(out) == k:
            break
    return out


def json_safe(value: Any) -> Any:
    """`value` with every NaN or infinity replaced by None: strict JSON (a bare NaN, which
    Python's json writes by default, is not JSON and breaks other readers)."""
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def _finite_or_none(value: float | None) -> float | None:
    return value if value is not None and np.isfinite(value) else None


def _derive_sampler_gap(record: dict[str, Any]) -> None:
    """The learner's per-token |sampler - learner| log-prob gap, from its sums."""
    tokens = record.pop("sync/logprob_tokens", 0.0)
    total = record.pop("sync/logprob_abs_diff_sum", 0.0)
    if tokens and "sync/logprob_abs_diff" not in record:
        record["sync/logprob_abs_diff"] = total / tokens
