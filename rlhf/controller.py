"""The controller: drives one synchronous iteration after another over the actor pools.

    generate (rollout pool) -> reward + reference (concurrently) -> build batch (algorithm)
    -> train (learner group) -> weight sync (learner rank 0 -> every rollout worker)

It never touches model weights: they flow from the learner to the rollout engines directly.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from rlhf.algorithms import make_algorithm
from rlhf.algorithms.batching import shard_batch
from rlhf.config import Config, dump_config
from rlhf.metrics import MetricsLog, console_line, mean_over
from rlhf.pools import Pools
from rlhf.remote import gather
from rlhf.types import Prompt, Rollout, ScoredRollout

log = logging.getLogger(__name__)

# Learner metrics that are per-rank values (averaged), not weighted sums (added up).
PER_RANK_METRICS = ("learner/grad_norm", "learner/lr", "learner/seconds")


def split_evenly(items: list[Any], parts: int) -> list[list[Any]]:
    """Contiguous, near-equal chunks (some may be empty when items < parts)."""
    bounds = np.linspace(0, len(items), parts + 1).round().astype(int)
    return [items[bounds[i] : bounds[i + 1]] for i in range(parts)]


class Trainer:
    def __init__(self, cfg: Config, run_dir: Path, model_path: str, task) -> None:
        from transformers import AutoTokenizer

        self.cfg = cfg
        self.run_dir = run_dir
        self.model_path = model_path
        self.task = task
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.algorithm = make_algorithm(cfg.algorithm, cfg.rollout.max_new_tokens)
        self.policy_version = 0
        self.pools: Pools | None = None
        self.metrics = MetricsLog(run_dir)
        self.timeout = cfg.run.call_timeout_s
        (run_dir / "config.yaml").write_text(dump_config(cfg))

    # ------------------------------------------------------------------ set-up
    def start(self) -> None:
        self.pools = Pools.start(self.cfg, self.model_path, self.algorithm.needs_reference)

    # ------------------------------------------------------------------ one iteration
    def iteration(self, it: int) -> dict[str, Any]:
        assert self.pools is not None
        cfg, pools = self.cfg, self.pools
        record: dict[str, Any] = {"iteration": it, "policy_version": self.policy_version}
        started = time.perf_counter()

        prompts = self.task.sample_train(
            cfg.rollout.prompts_per_iteration, seed=cfg.run.seed * 100_003 + it
        )
        t0 = time.perf_counter()
        rollouts = self._generate(prompts, seed=cfg.run.seed * 1_000_003 + it * 1_009)
        record["time/generate"] = time.perf_counter() - t0

        scored, score_metrics = self._score(prompts, rollouts)
        record.update(score_metrics)
        # Invariant: in synchronous mode every sample comes from the weights being trained.
        stale = [r.worker for r in rollouts if r.policy_version != self.policy_version]
        if stale:
            raise RuntimeError(
                f"rollouts from {stale} are stale (learner is at {self.policy_version})"
            )

        t0 = time.perf_counter()
        batch, batch_metrics = self.algorithm.build_batch(scored, self.tokenizer.pad_token_id)
        record.update(batch_metrics)
        shards = shard_batch(batch, len(pools.learners))
        learner_metrics = gather(
            [
                (n, a.train_step.remote(s))
                for (n, a), s in zip(pools.learner_items(), shards, strict=True)
            ],
            self.timeout,
            "train_step",
        )
        record.update(_combine_learner_metrics(learner_metrics))
        record["time/train"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        self.policy_version += 1
        pools.sync_weights(self.policy_version, self.timeout)
        record["time/sync"] = time.perf_counter() - t0
        record["time/iteration"] = time.perf_counter() - started
        return record

    def _generate(self, prompts: list[Prompt], seed: int) -> list[Rollout]:
        assert self.pools is not None
        ids = [self.tokenizer(p.text).input_ids for p in prompts]
        chunks = split_evenly(ids, len(self.pools.rollouts))
        calls = [
            (name, actor.generate.remote(chunk, self.cfg.rollout.samples_per_prompt, seed + i))
            for i, ((name, actor), chunk) in enumerate(
                zip(self.pools.rollout_items(), chunks, strict=True)
            )
            if chunk
        ]
        return gather(calls, self.timeout, "generate")

    def _score(
        self, prompts: list[Prompt], rollouts: list[Rollout]
    ) -> tuple[list[ScoredRollout], dict[str, Any]]:
        """Rewards and reference log-probs for every sample, the two pools working at once."""
        assert self.pools is not None
        pools, n = self.pools, self.cfg.rollout.samples_per_prompt
        # Rollouts hold contiguous chunks of `prompts`, n samples per prompt, in order.
        per_sample_prompts = [p for p in prompts for _ in range(n)]
        completions = [t for r in rollouts for t in r.completion_texts]
        flat_prompt_ids = [p for r in rollouts for p in r.prompt_ids]
        flat_completion_ids = [c for r in rollouts for c in r.completion_ids]

        t0 = time.perf_counter()
        sample_idx = list(range(len(completions)))
        reward_parts = split_evenly(sample_idx, len(pools.rewards))
        reward_calls = []
        for (name, actor), part in zip(pools.reward_items(), reward_parts, strict=True):
            if not part:
                continue
            columns = {
                k: [per_sample_prompts[i].columns[k] for i in part]
                for k in per_sample_prompts[0].columns
            }
            reward_calls.append(
                (
                    name,
                    actor.score.remote(
                        [per_sample_prompts[i].text for i in part],
                        [completions[i] for i in part],
                        columns,
                    ),
                )
            )
        ref_calls = []
        if self.algorithm.needs_reference:
            ref_parts = split_evenly(sample_idx, len(pools.references))
            for (name, actor), part in zip(pools.reference_items(), ref_parts, strict=True):
                if part:
                    ref_calls.append(
                        (
                            name,
                            actor.logprobs.remote(
                                [flat_prompt_ids[i] for i in part],
                                [flat_completion_ids[i] for i in part],
                            ),
                        )
                    )
        reward_results = gather(reward_calls, self.timeout, "reward")
        t_reward = time.perf_counter() - t0
        ref_results = gather(ref_calls, self.timeout, "reference")
        t_ref = time.perf_counter() - t0

        rewards = np.concatenate([r for r, _ in reward_results]).astype(np.float32)
        ref_flat = [row for part in ref_results for row in part] if ref_calls else None
        metrics: dict[str, Any] = {}
        for _, m in reward_results:
            for k, v in m.items():
                metrics[k] = (
                    metrics.get(k, 0.0) + v if k.endswith(("dropped", "errors", "nonfinite")) else v
                )
        valid = rewards[~np.isnan(rewards)]
        metrics["reward/mean"] = float(valid.mean()) if valid.size else math.nan
        metrics["reward/std"] = float(valid.std()) if valid.size else math.nan
        lengths = [len(c) for c in flat_completion_ids]
        metrics["rollout/tokens"] = float(sum(lengths))
        metrics["rollout/length_mean"] = float(np.mean(lengths))
        metrics["rollout/truncated_fraction"] = float(
            np.mean([f == "length" for r in rollouts for f in r.finish_reasons])
        )
        # Both pools work at once: time/reward and time/reference overlap (both from submit).
        metrics["time/reward"] = t_reward
        metrics["time/reference"] = t_ref if ref_calls else 0.0

        scored, offset = [], 0
        for r in rollouts:
            k = len(r)
            scored.append(
                ScoredRollout(
                    rollout=r,
                    rewards=rewards[offset : offset + k],
                    ref_logprobs=ref_flat[offset : offset + k] if ref_flat is not None else None,
                )
            )
            offset += k
        return scored, metrics

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, limit: int = 256) -> float:
        """Greedy mean reward on held-out prompts, generated by the rollout engines."""
        assert self.pools is not None
        prompts = self.task.eval_prompts[:limit]
        ids = [self.tokenizer(p.text).input_ids for p in prompts]
        chunks = split_evenly(ids, len(self.pools.rollouts))
        calls = [
            (name, actor.generate.remote(chunk, 1, 0, True))
            for (name, actor), chunk in zip(self.pools.rollout_items(), chunks, strict=True)
            if chunk
        ]
        rollouts = gather(calls, self.timeout, "evaluate")
        completions = [t for r in rollouts for t in r.completion_texts]
        columns = {k: [p.columns[k] for p in prompts] for k in prompts[0].columns}
        name, actor = self.pools.reward_items()[0]
        rewards, _ = gather(
            [(name, actor.score.remote([p.text for p in prompts], completions, columns))],
            self.timeout,
            "evaluate",
        )[0]
        return float(np.nanmean(rewards))

    # ------------------------------------------------------------------ the run
    def run(self, progress: bool = True) -> dict[str, Any]:
        from tqdm import tqdm

        cfg = self.cfg
        started = time.perf_counter()
        summary: dict[str, Any] = {"run_dir": str(self.run_dir)}
        summary["eval/greedy_reward_before"] = self.evaluate()
        bar = tqdm(range(cfg.run.iterations), desc="rlhf", disable=not progress, dynamic_ncols=True)
        for it in bar:
            record = self.iteration(it)
            if cfg.run.eval_every and (it + 1) % cfg.run.eval_every == 0:
                record["eval/greedy_reward"] = self.evaluate()
            self.metrics.write(record)
            bar.set_postfix(
                reward=f"{record['reward/mean']:.3f}", sec=f"{record['time/iteration']:.1f}"
            )
            (bar.write if progress else print)(console_line(record))
        summary["eval/greedy_reward_after"] = self.evaluate()
        h = self.metrics.history
        summary["reward/first_10pct"] = mean_over(h, "reward/mean", first=True)
        summary["reward/last_10pct"] = mean_over(h, "reward/mean", first=False)
        summary["reward/rise"] = summary["reward/last_10pct"] - summary["reward/first_10pct"]
        summary["iterations"] = len(h)
        summary["seconds/train_loop"] = time.perf_counter() - started
        if cfg.run.save_model:
            final = self.run_dir / "final"
            assert self.pools is not None
            gather(
                [(n, a.save_pretrained.remote(str(final))) for n, a in self.pools.learner_items()],
                self.timeout,
                "save_pretrained",
            )
            summary["final_model"] = str(final)
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary

    def close(self) -> None:
        self.metrics.close()
        if self.pools is not None:
            self.pools.shutdown()
            self.pools = None


def _combine_learner_metrics(per_rank: list[dict[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key in per_rank[0]:
        values = [m[key] for m in per_rank]
        out[key] = float(np.mean(values)) if key in PER_RANK_METRICS else float(np.sum(values))
    tokens = out.pop("sync/logprob_tokens", 0.0)
    diff = out.pop("sync/logprob_abs_diff_sum", 0.0)
    if tokens:
        out["sync/logprob_abs_diff"] = diff / tokens
    return out
