"""The whole loop on the real stack: Ray actors, vLLM engines, DeepSpeed, gloo weight sync.

2 rollout workers and 2 learner ranks for 3 iterations, in two shapes: PPO under ZeRO-2 (a
2-rank critic pool, reference, old log-probs and values stages, 2 mini-batches, micro-batches
cut by token budgets) and GRPO
under ZeRO-3 with DAPO's switches (dynamic sampling with refill, truncation masking, the
off-policy correction). After the syncs, every rollout engine's greedy output equals
plain-transformers greedy generation with the learner's current weights.
"""

from __future__ import annotations

import math

import pytest
import torch

from rlhf.config import load_config
from rlhf.data.tasks import make_task
from rlhf.driver.trainer import Trainer
from rlhf.models.default_model import prepare_model
from rlhf.runtime.remote import gather

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_cluster")]

ITERATIONS = 3


SHAPES = {
    "ppo-zero2": [
        # Partial credit: even a barely warm-started model gets rewards that differ within
        # a group, so advantages (and updates) are non-zero from the first iteration.
        "reward.functions=[{name: addition_digits}]",
        "learner.zero_stage=2",
        "algorithm.name=ppo",
        "algorithm.mini_batches=2",
        "topology.critic.workers=2",
        "topology.critic.num_cpus=0.5",
        "critic.warmup_iterations=0",
        # token budgets of about one prompt group (4 rows of ~10 tokens) for every
        # DeepSpeed pass (train, old log-probs, values) and the reference's
        "learner.max_tokens_per_micro_batch=64",
        "critic.max_tokens_per_micro_batch=64",
    ],
    "grpo-dapo-zero3": [
        # a reward that differs within most groups even for a barely trained model, so the
        # dynamic sampling keeps groups and refills from the ones it drops
        "reward.functions=[{name: 'tests.rewards_for_tests:distinct_tokens'}]",
        "learner.zero_stage=3",
        "algorithm.name=grpo",
        "algorithm.dynamic_sampling=refill",
        "algorithm.mask_truncated_completions=true",
        "algorithm.importance_sampling_cap=2",
    ],
}


def _cfg(tmp_path, shape: str):
    return load_config(
        None,
        [
            *SHAPES[shape],
            "topology.rollout.workers=2",
            "topology.learner.workers=2",
            # A large step so the weights move enough to change greedy outputs: the equality
            # check below then compares against weights that differ from the start.
            "learner.lr=0.01",
            "learner.warmup_iterations=0",
            "algorithm.beta=0.04",  # exercise the reference pool whatever the default
            "rollout.prompts_per_iteration=8",
            "rollout.samples_per_prompt=4",
            "warm_start.steps=60",
            f"model.cache_dir={tmp_path.parent / 'model-cache'}",
            f"run.output_dir={tmp_path}",
            "run.progress_bar=false",
        ],
    )


def _hf_greedy(model_dir: str, prompt_ids: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    eos = model.config.eos_token_id
    out = []
    with torch.no_grad():
        for ids in prompt_ids:
            gen = model.generate(
                torch.tensor([ids]),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=eos,
            )[0, len(ids) :].tolist()
            # generate pads after EOS; the engines stop at it
            out.append(gen[: gen.index(eos) + 1] if eos in gen else gen)
    return out


@pytest.mark.parametrize("shape", list(SHAPES))
def test_loop_with_two_rollout_workers_and_two_learner_ranks(tmp_path, shape):
    cfg = _cfg(tmp_path, shape)
    task = make_task(cfg.task)
    model_path = prepare_model(cfg)
    trainer = Trainer(cfg, tmp_path, model_path, task)
    trainer.start()
    try:
        records = [trainer.iteration(i) for i in range(ITERATIONS)]
        pools = trainer.pools

        # Every iteration trained on samples of the current version, then bumped it (an
        # iteration whose dynamic sampling found no informative group trains nothing).
        trained = [r["train/skipped"] == 0 for r in records]
        assert trained[0] and [r["policy_version"] for r in records] == [
            sum(trained[:i]) for i in range(ITERATIONS)
        ]
        assert trainer.policy_version == sum(trained)
        for r in records:
            assert r["rollout/tokens"] > 0
            assert 0.0 <= r["batch/padding_fraction"] < 1.0
            if r["train/skipped"]:
                continue
            for key in ("reward/mean", "loss/total", "kl", "learner/grad_norm", "time/sync"):
                assert math.isfinite(r[key]), (key, r)
            # The learner re-scores each batch: the engines' log-probs match its own only if
            # they hold the learner's weights, i.e. the sync of the previous iteration landed.
            assert r["sync/logprob_abs_diff"] < 1e-3, r["sync/logprob_abs_diff"]
            if cfg.algorithm.name == "ppo":
                for key in ("critic/value_error", "critic/grad_norm", "critic/explained_variance"):
                    assert key in r, key
            else:  # every kept group has rewards that differ, and the batch is full
                assert r["batch/flat_group_fraction"] == 0.0
                assert r["dynamic/kept_groups"] + r["dynamic/short_by"] == 8
                assert (r["dynamic/kept_groups"] == 0) == (r["train/skipped"] == 1)
                assert r["offpolicy/is_weight"] == pytest.approx(1.0, abs=1e-3)

        # Both learner ranks hold the same weights, and training moved them.
        sums = pools.learner.call_all("state_checksum").wait(120)
        assert sums[0] == pytest.approx(sums[1], rel=1e-6)

        final = tmp_path / "after-sync"
        pools.learner.call_all("save_pretrained", str(final)).wait(300)
        prompt_ids = [trainer.tokenizer(p.text).input_ids for p in task.eval_prompts[:32]]
        expected = _hf_greedy(str(final), prompt_ids, cfg.rollout.max_new_tokens)
        initial = _hf_greedy(model_path, prompt_ids, cfg.rollout.max_new_tokens)
        assert expected != initial, (
            "training did not change greedy outputs; the check below would be vacuous"
        )
        for name, actor in pools.rollout.items():
            rollout = gather(
                [(name, actor.generate.remote(prompt_ids, 1, 0, True))], 300, "greedy"
            )[0]
            assert rollout.policy_version == trainer.policy_version
            assert rollout.completion_ids == expected, name
    finally:
        trainer.close()
