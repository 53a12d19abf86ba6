"""The DeepSpeed learner in real Ray actors over real gloo groups (CPU).

The core check: one iteration (2 epochs x 2 mini-batches = 4 optimizer steps, several
micro-batches each) on 2 data-parallel ranks gives the same weights as 1 rank on the whole
batch, and both match plain PyTorch (AdamW + clipping + warm-up) on the global loss. Adam is
blind to a constant gradient scale, so the reported (pre-clip) gradient norm is compared with
plain PyTorch's as well: that pins the loss scaling exactly.
"""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest
import torch

from rlhf.algorithms import make_algorithm
from rlhf.algorithms.batching import shard_batch
from rlhf.config import Config, load_config
from rlhf.learner.train_step import batch_tensors, mini_batch_bounds, split_rows, take_rows
from rlhf.models.logprobs import model_token_logprobs, pad_rows
from rlhf.models.tiny import build_tiny_model
from rlhf.types import Rollout, ScoredRollout, TrainBatch

TEMPERATURE = 0.7
EPOCHS, MINI_BATCHES = 2, 2
PROMPTS, SAMPLES = 4, 4  # 16 rows; 8 per rank; 4 per rank per mini-batch


# ---------------------------------------------------------------- plain helpers (no Ray)
def test_row_splits():
    assert [(s.start, s.stop) for s in split_rows(2, 9, 3)] == [(2, 5), (5, 8), (8, 9)]
    assert mini_batch_bounds(16, 2) == [(0, 8), (8, 16)]
    assert mini_batch_bounds(3, 2) == [(0, 2), (2, 3)]
    assert mini_batch_bounds(1, 3) == [(0, 0), (0, 1), (1, 1)]  # same on every rank


def test_take_rows_trims_right_padding():
    ids, mask = pad_rows([[5, 6, 7, 8], [5, 6], [5]], pad=0)
    t = {"input_ids": ids, "attention_mask": mask, "loss_weights": mask.float(), "x": ids[:, 0]}
    mb = take_rows(t, slice(1, 3))
    assert mb["input_ids"].tolist() == [[5, 6], [5, 0]]
    assert mb["loss_weights"].shape == (2, 2)
    assert mb["x"].tolist() == [5, 5]  # not a [B, T] column: only rows taken


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("learner") / "tiny"
    # MLP matrices (256 x 512) exceed ZeRO-3's persistence threshold (1e5 elements) and get
    # partitioned; attention and norms stay whole: both kinds are exercised.
    build_tiny_model(
        path,
        ["12+30=42", "7+5=12", "the quick brown fox jumps over the lazy dog"] * 30,
        hidden_size=256,
        num_layers=1,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=512,
    )
    return str(path)


def make_cfg(stage: int) -> Config:
    return load_config(
        None,
        [
            f"learner.zero_stage={stage}",
            "learner.micro_batch_size=3",
            "learner.lr=0.001",
            "learner.warmup_iterations=3",
            "learner.backend=gloo",
            "topology.learner.num_cpus=1",
            f"rollout.temperature={TEMPERATURE}",
            f"algorithm.epochs={EPOCHS}",
            f"algorithm.mini_batches={MINI_BATCHES}",
            "run.call_timeout_s=300",
            "sync.timeout_s=60",
        ],
    )


def hf_model(path: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).train()


@pytest.fixture(scope="module")
def batch(model_path) -> TrainBatch:
    """16 rows with varied lengths and rewards; sampler and reference log-probs are the
    initial model's own (as a synced rollout engine and a fresh reference would give)."""
    rng = np.random.default_rng(0)
    model = hf_model(model_path)
    vocab = model.config.vocab_size
    prompts = [rng.integers(3, vocab, size=rng.integers(2, 6)).tolist() for _ in range(PROMPTS)]
    prompt_ids = [p for p in prompts for _ in range(SAMPLES)]
    completions = [rng.integers(3, vocab, size=rng.integers(1, 7)).tolist() for _ in prompt_ids]
    rows = [p + c for p, c in zip(prompt_ids, completions, strict=True)]
    ids, mask = pad_rows(rows, pad=0)
    with torch.no_grad():
        lp = model_token_logprobs(model, ids, mask, TEMPERATURE)
    own = [
        lp[i, len(p) : len(r)].tolist()
        for i, (p, r) in enumerate(zip(prompt_ids, rows, strict=True))
    ]
    rollout = Rollout(
        prompt_ids=prompt_ids,
        completion_ids=completions,
        sampler_logprobs=own,
        finish_reasons=["length"] * len(rows),
        prompt_index=[i for i in range(PROMPTS) for _ in range(SAMPLES)],
        policy_version=0,
    )
    rewards = rng.integers(0, 2, size=len(rows)).astype(np.float32)
    rewards[1] = np.nan  # a dropped sample: zero weight
    cfg = make_cfg(2)
    algo = make_algorithm(cfg.algorithm, cfg.rollout.max_new_tokens)
    out, _ = algo.build_batch([ScoredRollout(rollout, rewards, own)], pad_id=0)
    assert np.abs(out.advantages).sum() > 0
    return out


def single_rank_order(rows: int, world: int, mini_batches: int) -> list[int]:
    """A row order under which one rank's mini-batch k holds exactly the rows that the
    `world` ranks' mini-batches k hold together (rank r has rows [r*n, (r+1)*n))."""
    n = rows // world
    m = n // mini_batches
    return [r * n + k * m + j for k in range(mini_batches) for r in range(world) for j in range(m)]


# ---------------------------------------------------------------- Ray actors
class Learners:
    """Learner groups started on demand, keyed by (zero stage, world size), killed at the end."""

    def __init__(self, model_path: str) -> None:
        self.model_path = model_path
        self.groups: dict[tuple[int, int], list] = {}
        self.init_seconds: dict[tuple[int, int], float] = {}

    def start(self, *keys: tuple[int, int]) -> None:
        """Start several groups at once (their start-ups overlap)."""
        import ray

        from rlhf.workers.learner import LearnerWorker

        remote = ray.remote(num_cpus=0.5)(LearnerWorker)
        pending = {}
        for stage, world in keys:
            cfg = make_cfg(stage)
            actors = [remote.remote(cfg, r, world, self.model_path) for r in range(world)]
            ray.get([a.ready.remote() for a in actors])
            addr = ray.get(actors[0].node_address.remote())
            port = ray.get(actors[0].free_port.remote())
            t0 = time.perf_counter()
            pending[(stage, world)] = (t0, [a.init_training.remote(addr, port) for a in actors])
            self.groups[(stage, world)] = actors
        for key, (t0, refs) in pending.items():
            ray.get(refs, timeout=300)
            self.init_seconds[key] = time.perf_counter() - t0

    def get(self, stage: int, world: int) -> list:
        if (stage, world) not in self.groups:
            self.start((stage, world))
        return self.groups[(stage, world)]

    def release(self, stage: int, world: int) -> None:
        import ray

        for a in self.groups.pop((stage, world), []):
            try:
                ray.get(a.shutdown.remote(), timeout=30)
            except Exception:
                pass
            ray.kill(a)


@pytest.fixture(scope="module")
def learners(model_path):
    import ray

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    pool = Learners(model_path)
    try:
        yield pool
    finally:
        for key in list(pool.groups):
            pool.release(*key)
        ray.shutdown()


def call_all(actors: list, method: str, *args_per_rank) -> list:
    """Call `method` on every rank concurrently (collectives need all of them)."""
    import ray

    refs = []
    for r, a in enumerate(actors):
        args = [x[r] if isinstance(x, list) else x for x in args_per_rank]
        refs.append(getattr(a, method).remote(*args))
    return ray.get(refs, timeout=300)


# ---------------------------------------------------------------- plain PyTorch reference
def reference_iteration(model_path: str, batch: TrainBatch, cfg: Config):
    """The learner's iteration written directly: global loss, one backward per mini-batch."""
    model = hf_model(model_path)
    algo = make_algorithm(cfg.algorithm, cfg.rollout.max_new_tokens)
    lc = cfg.learner
    opt = torch.optim.AdamW(model.parameters(), lr=lc.lr, betas=lc.adam_betas, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / lc.warmup_iterations)
    )
    t = batch_tensors(batch, "cpu")
    with torch.no_grad():
        old = model_token_logprobs(model, t["input_ids"], t["attention_mask"], TEMPERATURE)
    norms, lrs = [], []
    per = len(batch) // MINI_BATCHES
    for _ in range(EPOCHS):
        for k in range(MINI_BATCHES):
            rows = slice(k * per, (k + 1) * per)
            mb = {key: v[rows] for key, v in t.items()}
            lp = model_token_logprobs(model, mb["input_ids"], mb["attention_mask"], TEMPERATURE)
            loss, _ = algo.loss(lp, old[rows], mb)
            (loss * MINI_BATCHES).backward()
            norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), lc.grad_clip)))
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
            opt.zero_grad()
    weights = {n: p.detach().numpy().copy() for n, p in model.named_parameters()}
    return weights, float(np.mean(norms)), float(np.mean(lrs))


def assert_same_weights(a: dict, b: dict, atol: float, rtol: float = 1e-4) -> None:
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_allclose(a[name], b[name], atol=atol, rtol=rtol, err_msg=name)


# ---------------------------------------------------------------- the tests
@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_two_ranks_match_one_rank_and_plain_torch(stage, learners, model_path, batch):
    single_key, pair_key = (stage, 1), (stage, 2)
    learners.start(single_key, pair_key)
    single, pair = learners.get(*single_key), learners.get(*pair_key)
    initial = call_all(single, "full_weights")[0]

    order = single_rank_order(len(batch), 2, MINI_BATCHES)
    t0 = time.perf_counter()
    m_single = call_all(single, "train_step", [batch.select(order)])[0]
    t1 = time.perf_counter()
    m_pair = call_all(pair, "train_step", shard_batch(batch, 2))
    t2 = time.perf_counter()
    print(
        f"\nZeRO-{stage}: init 1 rank {learners.init_seconds[single_key]:.1f}s, "
        f"2 ranks {learners.init_seconds[pair_key]:.1f}s; iteration (4 optimizer steps) "
        f"1 rank {t1 - t0:.2f}s, 2 ranks {t2 - t1:.2f}s"
    )
    w_single = call_all(single, "full_weights")[0]
    w_pair = call_all(pair, "full_weights")
    ref_w, ref_norm, ref_lr = reference_iteration(model_path, batch.select(order), make_cfg(stage))

    # Both ranks hold the same model; it moved, identically under every sharding.
    for name in w_pair[0]:
        np.testing.assert_array_equal(w_pair[0][name], w_pair[1][name], err_msg=name)
    moved = max(np.abs(w_single[n] - initial[n]).max() for n in initial)
    assert moved > 1e-4
    assert_same_weights(w_single, w_pair[0], atol=2e-6)
    assert_same_weights(w_single, ref_w, atol=2e-6)

    # The gradient norm is scale-sensitive (Adam is not): it pins the loss scaling.
    for m in [m_single, *m_pair]:
        assert m["learner/grad_norm"] == pytest.approx(ref_norm, rel=1e-4)
        assert m["learner/lr"] == pytest.approx(ref_lr, rel=1e-6)
    # Metric sums add up over ranks; the learner starts on the sampler's weights.
    total = m_pair[0]["loss/total"] + m_pair[1]["loss/total"]
    assert total == pytest.approx(m_single["loss/total"], rel=1e-4, abs=1e-6)
    tokens = m_single["sync/logprob_tokens"]
    assert tokens == sum(m["sync/logprob_tokens"] for m in m_pair) == batch.completion_mask.sum()
    assert m_single["sync/logprob_abs_diff_sum"] / tokens < 1e-5

    learners.release(*single_key)
    if stage != 3:  # the ZeRO-3 pair serves the tests below
        learners.release(*pair_key)


def objective(model_path: str, weights: dict, batch: TrainBatch) -> float:
    """sum(loss_weights * advantages * log p): what the policy-gradient step raises."""
    model = hf_model(model_path)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
    t = batch_tensors(batch, "cpu")
    with torch.no_grad():
        lp = model_token_logprobs(model, t["input_ids"], t["attention_mask"], TEMPERATURE)
    return float((t["loss_weights"] * t["advantages"] * lp).sum())


@pytest.mark.slow
def test_steps_raise_objective_and_save_loads_in_hf(learners, model_path, batch, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    pair = learners.get(3, 2)
    before = objective(model_path, call_all(pair, "full_weights")[0], batch)
    for _ in range(3):
        call_all(pair, "train_step", shard_batch(batch, 2))
    weights = call_all(pair, "full_weights")[0]
    after = objective(model_path, weights, batch)
    assert after > before + 0.1, (before, after)

    out = tmp_path / "saved"
    call_all(pair, "save_pretrained", str(out))
    loaded = AutoModelForCausalLM.from_pretrained(out)
    state = {k: v.numpy() for k, v in loaded.state_dict().items()}
    assert state.keys() == weights.keys()
    for name in weights:
        np.testing.assert_array_equal(state[name], weights[name], err_msg=name)
    assert AutoTokenizer.from_pretrained(out).encode("12+30=42")
    sums = call_all(pair, "state_checksum")
    expected = sum(float(v.astype(np.float64).sum()) for v in weights.values())
    assert sums[0] == sums[1] == pytest.approx(expected, rel=1e-9)


@pytest.mark.slow
def test_broadcast_weights_reach_a_receiver(learners):
    import ray

    from rlhf.sync.group import WeightSyncGroup

    pair = learners.get(3, 2)
    manifest = ray.get(pair[0].weight_manifest.remote())
    weights = call_all(pair, "full_weights")[0]
    assert [s.name for s in manifest] == list(weights)
    assert all(s.shape == weights[s.name].shape for s in manifest)

    host = ray.get(pair[0].node_address.remote())
    port = ray.get(pair[0].free_port.remote())
    names = ["learner-0", "test-receiver"]
    joins = [a.init_weight_sync.remote(host, port, 2, "gloo", 60.0, names) for a in pair]
    receiver = WeightSyncGroup(host, port, 1, 2, "gloo", 60.0, names)
    try:
        ray.get(joins, timeout=60)
        bucket = 256 * 1024  # several buckets, and tensors larger than one
        received: dict[str, np.ndarray] = {}

        def receive() -> None:
            for name, t in receiver.receive(manifest, bucket, version=1):
                received[name] = t.numpy().copy()

        thread = threading.Thread(target=receive)
        thread.start()
        stats = call_all(pair, "broadcast_weights", 1, bucket)
        thread.join(timeout=60)
    finally:
        receiver.close()
    assert stats[1] == {} and stats[0]["buckets"] > 1
    assert math.isclose(stats[0]["bytes"], sum(v.nbytes for v in weights.values()), rel_tol=0.01)
    assert received.keys() == weights.keys()
    for name in weights:
        np.testing.assert_array_equal(received[name], weights[name], err_msg=name)
