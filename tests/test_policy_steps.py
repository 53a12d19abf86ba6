"""One training step of each algorithm on the real stack (Ray actors, DeepSpeed over gloo)
moves the policy the right way, and PPO's critic learns.

For each algorithm: a batch of sampled-looking rows with rewards, the stages it needs (old
log-probs from the learner, values from the critic) run through the controller's own stage
code, `prepare` gives advantages, one `train_step`, then the learner's log-probs again.
Checked: summed over a row's completion tokens, the log-prob change is positive on average
over rows whose advantage is positive and negative over rows whose advantage is negative.
One Adam step with lr 1e-3 moves a row's summed log-prob by about 0.5 nats here (measured),
a first-order effect in the direction of the gradient, far above float noise (~1e-6).
"""

from __future__ import annotations

import numpy as np
import pytest
import ray

from rlhf.algorithms import make_algorithm
from rlhf.batch import plan_shards
from rlhf.config import load_config
from rlhf.driver.stages import OldLogprobStage, Sampled, ValueStage
from rlhf.runtime.dispatch import Pool, wait_all
from tests.rows import sampled_rows, tiny_model

pytestmark = pytest.mark.slow

PROMPTS, SAMPLES = 6, 4
TIMEOUT = 300.0


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> str:
    return tiny_model(tmp_path_factory.mktemp("steps") / "tiny", 64, 2, 1, 128)


def cfg_for(algorithm: str, *extra: str):
    return load_config(
        None,
        [
            f"algorithm.name={algorithm}",
            f"rollout.samples_per_prompt={SAMPLES}",
            "learner.micro_batch_size=8",
            "critic.micro_batch_size=8",
            "learner.lr=0.001",
            "critic.lr=0.001",
            "learner.warmup_iterations=0",
            "critic.warmup_iterations=0",
            "learner.backend=gloo",
            "critic.backend=gloo",
            "topology.learner.num_cpus=0.5",
            "topology.critic.num_cpus=0.5",
            *extra,
        ],
    )


def sampled_batch(model_path: str) -> Sampled:
    """Rows as a rollout would give them, with rewards 1 and 0 in every group."""
    batch = sampled_rows(model_path, PROMPTS, SAMPLES, temperature=1.0, seed=1)
    rewards = np.tile([1.0, 0.0, 0.0, 1.0], PROMPTS).astype(np.float32)
    np.random.default_rng(1).shuffle(rewards)
    for g in range(PROMPTS):  # every group gets both rewards
        rewards[g * SAMPLES : g * SAMPLES + 2] = [1.0, 0.0]
    batch["rewards"] = rewards
    return Sampled([], [], batch, [""] * len(batch), batch.units.copy())


def start(worker_cls, cfg, model_path: str, role: str) -> Pool:
    remote = ray.remote(num_cpus=0.5)(worker_cls)
    pool = Pool(role, {f"{role}-0": remote.remote(cfg, 0, 1, model_path)})
    ((host, port),) = pool.lead().call_all("host_training_store").wait(TIMEOUT)
    pool.call_all("init_training", host, port).wait(TIMEOUT)
    return pool


def logprobs(pool: Pool, s: Sampled) -> np.ndarray:
    probe = Sampled(
        [],
        [],
        s.batch.only(["input_ids", "attention_mask", "completion_mask", "sampler_logprobs"]),
        s.texts,
        s.prompt_of_row,
    )
    stage = OldLogprobStage(pool, TIMEOUT, 8)
    stage.collect(stage.submit(probe), probe)
    return probe.batch["old_logprobs"]


def stop(pool: Pool) -> None:
    for actor in pool.actors.values():
        ray.get(actor.shutdown.remote(), timeout=60)
        ray.kill(actor)


@pytest.mark.parametrize(
    ("algorithm", "extra"),
    [
        ("grpo", ["algorithm.beta=0.04"]),
        ("grpo", ["algorithm.scale_rewards=batch", "algorithm.beta=0"]),
        (
            "grpo",
            ["algorithm.scale_rewards=none", "algorithm.loss_aggregation=constant_normalizer"],
        ),
        ("rloo", ["algorithm.beta=0.05"]),
        ("reinforce_pp", ["algorithm.beta=0.01", "algorithm.baseline=group"]),
        ("ppo", ["algorithm.beta=0.01", "algorithm.mini_batches=2"]),
    ],
)
def test_a_step_moves_the_policy_the_right_way(algorithm, extra, model_path, ray_cluster):
    from rlhf.workers.critic import CriticWorker
    from rlhf.workers.learner import LearnerWorker

    cfg = cfg_for(algorithm, *extra)
    algo = make_algorithm(cfg.algorithm, cfg.rollout.max_new_tokens)
    learner = start(LearnerWorker, cfg, model_path, "learner")
    critic = start(CriticWorker, cfg, model_path, "critic") if algo.trains_critic else None
    try:
        s = sampled_batch(model_path)
        stages = []
        if "old_logprobs" in algo.needs:
            stages.append(OldLogprobStage(learner, TIMEOUT, 8))
        if "values" in algo.needs:
            stages.append(ValueStage(critic, TIMEOUT, 8))
        metrics = {}
        for stage, pending in [(st, st.submit(s)) for st in stages]:
            metrics.update(stage.collect(pending, s))
        if "old_logprobs" in algo.needs:  # the learner starts on the sampler's weights
            assert metrics["sync/logprob_abs_diff"] < 1e-5
        batch = s.batch
        algo.prepare(batch)
        before = logprobs(learner, s)

        shards = plan_shards(batch, 1, algo.mini_batches, 8, algo.epochs)
        train = [learner.call_each("train_step", [(sh,) for sh in shards])]
        if critic is not None:
            train.append(critic.call_each("train_step", [(sh,) for sh in shards]))
        wait_all(train, TIMEOUT, "train_step")
        after = logprobs(learner, s)

        mask = batch["completion_mask"]
        moved = ((after - before) * mask).sum(axis=1)
        adv = (batch["advantages"] * mask).sum(axis=1)
        used = batch["loss_weights"].sum(axis=1) > 0
        up, down = moved[used & (adv > 0)], moved[used & (adv < 0)]
        assert up.size and down.size
        assert up.mean() > 0 > down.mean(), (up, down)

        if critic is not None:  # the critic's squared error to the returns falls
            probe = Sampled(
                [],
                [],
                batch.only(["input_ids", "attention_mask", "completion_mask"]),
                s.texts,
                s.prompt_of_row,
            )
            stage = ValueStage(critic, TIMEOUT, 8)
            stage.collect(stage.submit(probe), probe)
            w = batch["loss_weights"]
            err_before = float((w * (batch["values"] - batch["returns"]) ** 2).sum())
            err_after = float((w * (probe.batch["values"] - batch["returns"]) ** 2).sum())
            assert err_after < err_before, (err_before, err_after)
    finally:
        stop(learner)
        if critic is not None:
            stop(critic)
