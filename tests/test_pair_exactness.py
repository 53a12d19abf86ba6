"""Preference pairs on the real DeepSpeed learner (Ray actors, gloo): a pair never splits, so
the first step's gradient on 2 ranks (several micro-batches, one of them filler) equals the
gradient of the global online-DPO loss computed by plain PyTorch in one pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rlhf.algorithms import make_algorithm
from rlhf.algorithms.base import ForwardOutput
from rlhf.batch import plan_shards
from rlhf.config import load_config
from rlhf.models.logprobs import model_token_logprobs
from rlhf.rewards.comparisons import Comparisons
from rlhf.training.train_step import to_tensors
from tests.rows import sampled_rows, tiny_model
from tests.test_learner import assert_close_grads, call_all, hf_model

pytestmark = pytest.mark.slow

TEMPERATURE = 1.0
PROMPTS, SAMPLES = 5, 3
MICRO = 4  # two pairs per micro-batch: 5 pairs on 2 ranks give 2 + 1 micro-batches (a filler)


def make_cfg():
    return load_config(
        None,
        [
            "algorithm.name=online_dpo",
            "algorithm.beta=0.5",
            "algorithm.nll_coef=0.2",
            "learner.zero_stage=2",
            f"learner.micro_batch_size={MICRO}",
            f"rollout.samples_per_prompt={SAMPLES}",
            "learner.backend=gloo",
            "learner.lr=0.001",
            "topology.learner.num_cpus=1",
            "run.call_timeout_s=300",
            "sync.timeout_s=60",
        ],
    )


@pytest.fixture(scope="module")
def setup(tmp_path_factory, ray_cluster):
    path = tiny_model(tmp_path_factory.mktemp("pairs") / "tiny", 64, 2, 1, 128)
    cfg = make_cfg()
    algo = make_algorithm(cfg.algorithm, cfg.rollout.max_new_tokens)
    sampled = sampled_rows(path, PROMPTS, SAMPLES, TEMPERATURE, seed=1)
    # The reference differs from the policy, so the log-ratios are not all zero.
    sampled["ref_logprobs"] = sampled["sampler_logprobs"] - 0.3 * sampled["completion_mask"]
    rng = np.random.default_rng(2)
    firsts = np.arange(PROMPTS) * SAMPLES
    second = firsts + rng.integers(1, SAMPLES, size=PROMPTS)
    comparisons = Comparisons(firsts, second, rng.uniform(0.05, 0.95, size=PROMPTS))
    pairs, _ = algo.arrange(sampled, comparisons)
    algo.prepare(pairs)
    assert len(pairs) == 2 * PROMPTS
    return path, cfg, algo, pairs


def start_group(path: str, cfg, world: int) -> list:
    import ray

    from rlhf.workers.learner import LearnerWorker

    remote = ray.remote(num_cpus=0.5)(LearnerWorker)
    actors = [remote.remote(cfg, r, world, path) for r in range(world)]
    addr, port = ray.get(actors[0].host_training_store.remote())
    ray.get([a.init_training.remote(addr, port) for a in actors], timeout=300)
    return actors


def plain_gradient(path: str, algo, pairs) -> dict[str, np.ndarray]:
    model = hf_model(path)
    t = to_tensors(pairs, "cpu")
    lp = model_token_logprobs(model, t["input_ids"], t["attention_mask"], TEMPERATURE)
    loss, _ = algo.loss(ForwardOutput(logprobs=lp), t)
    loss.backward()
    return {n: p.grad.numpy().copy() for n, p in model.named_parameters()}


def test_pairs_on_two_ranks_give_the_global_gradient(setup):
    import ray

    path, cfg, algo, pairs = setup
    two = plan_shards(pairs, 2, 1, MICRO)
    assert sorted(len(s.steps[0]) for s in two) == [2, 2]  # equal micro-batch counts
    assert any(s.rows[-1] < 0 for s in two)  # one rank pads with a filler micro-batch
    for shard in two:  # whole pairs, chosen then rejected
        real = shard.rows[shard.rows >= 0]
        assert shard.batch["pair_sign"][: len(real)].tolist() == [1.0, -1.0] * (len(real) // 2)
    want = plain_gradient(path, algo, pairs)
    for world, shards in ((1, plan_shards(pairs, 1, 1, MICRO)), (2, two)):
        actors = start_group(path, cfg, world)
        out = call_all(actors, "train_step_capturing_gradients", shards)
        for _, grads in out:
            assert_close_grads(grads, want)
        total = sum(m["loss/total"] for m, _ in out)
        with torch.no_grad():
            t = to_tensors(pairs, "cpu")
            lp = model_token_logprobs(hf_model(path), t["input_ids"], t["attention_mask"], 1.0)
            expected = float(algo.loss(ForwardOutput(logprobs=lp), t)[0])
        assert total == pytest.approx(expected, rel=1e-4)
        for a in actors:
            ray.get(a.shutdown.remote(), timeout=60)
            ray.kill(a)
