"""The DeepSpeed learner in real Ray actors over real gloo groups (CPU).

The core check: one iteration (2 epochs x 2 mini-batches = 4 optimizer steps, several
micro-batches each) on 2 data-parallel ranks is the same computation as on 1 rank and as plain
PyTorch (AdamW + clipping + warm-up) on the global loss, for micro-batches cut by rows and for
units of very different lengths cut by a token budget (micro-batches of different row counts
and widths, a unit over the budget alone, filler micro-batches on the rank with less work):
- the first step's gradient (before the optimizer) agrees tightly: it pins the loss scaling
  and the sharding (Adam alone would hide a constant gradient scale);
- the weights after the 4 steps agree within what rounding can do through Adam: an element
  whose gradient is within rounding of zero can take an update of either sign (Adam divides
  by sqrt(v)), up to the step's lr; every other element must agree to a few ulps' worth.
"""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest
import torch

from rlhf.algorithms import make_algorithm
from rlhf.algorithms.base import ForwardOutput
from rlhf.batch import TrainBatch, plan_shards
from rlhf.config import Config, load_config
from rlhf.models.logprobs import model_token_logprobs, pad_rows
from rlhf.training.train_step import take_rows, to_tensors
from tests.rows import sampled_rows, tiny_model

TEMPERATURE = 0.7
EPOCHS, MINI_BATCHES = 2, 2
PROMPTS, SAMPLES = 4, 4  # 16 rows in 4 units; a mini-batch holds 2 units (8 rows)
MICRO = 4  # one unit per micro-batch
# The token-budget case: 8 prompts of 2 to 110 tokens x 2 samples (completions of 1 to 59),
# rows of 42 to 142 tokens; 250 slots hold 1 or 2 units (the 142-token unit, 284 slots, alone).
LONG_PROMPT_LENGTHS = [100, 3, 60, 2, 8, 110, 25, 4]
LONG_SAMPLES = 2
TOKEN_BUDGET = 250
LORA_RANK = 4


# ---------------------------------------------------------------- plain helpers (no Ray)
def test_take_rows_trims_right_padding_of_token_columns_only():
    ids, mask = pad_rows([[5, 6, 7, 8], [5, 6], [5]], pad=0)
    t = {
        "input_ids": ids,
        "attention_mask": mask,
        "loss_weights": mask.float(),
        "rewards": ids[:, 0].float(),
    }
    mb = take_rows(t, slice(1, 3))
    assert mb["input_ids"].tolist() == [[5, 6], [5, 0]]
    assert mb["loss_weights"].shape == (2, 2)
    assert mb["rewards"].tolist() == [5, 5]  # a per-sequence column: only rows taken


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> str:
    # MLP matrices (256 x 512) exceed ZeRO-3's persistence threshold (1e5 elements) and get
    # partitioned; attention and norms stay whole: both kinds are exercised.
    return tiny_model(tmp_path_factory.mktemp("learner") / "tiny", 256, 4, 2, 512)


def make_cfg(stage: int, lora_rank: int = 0) -> Config:
    return load_config(
        None,
        [
            f"model.lora.rank={lora_rank}",
            f"learner.zero_stage={stage}",
            f"learner.micro_batch_size={MICRO}",
            f"rollout.samples_per_prompt={SAMPLES}",
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


def with_rewards(out: TrainBatch) -> TrainBatch:
    """Rewards 0/1 (the first group surely has a signal, one sample dropped: zero weight) and
    GRPO's advantages and loss weights."""
    rewards = np.random.default_rng(0).integers(0, 2, size=len(out)).astype(np.float32)
    rewards[:2] = [1, 0]  # the first group surely has a signal
    rewards[2] = np.nan  # a dropped sample: zero weight
    out["rewards"] = rewards
    cfg = make_cfg(2)
    make_algorithm(cfg.algorithm, cfg.rollout.max_new_tokens).prepare(out)
    assert np.abs(out["advantages"]).sum() > 0
    return out


@pytest.fixture(scope="module")
def batch(model_path) -> TrainBatch:
    """16 rows with varied lengths and rewards; sampler and reference log-probs are the
    initial model's own (as a synced rollout engine and a fresh reference would give)."""
    return with_rewards(sampled_rows(model_path, PROMPTS, SAMPLES, TEMPERATURE, seed=0))


@pytest.fixture(scope="module")
def long_batch(model_path) -> TrainBatch:
    """16 rows in 8 units whose lengths differ by up to 3x (see LONG_PROMPT_LENGTHS)."""
    out = sampled_rows(
        model_path,
        len(LONG_PROMPT_LENGTHS),
        LONG_SAMPLES,
        TEMPERATURE,
        seed=1,
        prompt_lengths=LONG_PROMPT_LENGTHS,
        completion_tokens=(1, 60),
    )
    return with_rewards(out)


def shards_for(batch: TrainBatch, world: int, budget: int | None = None):
    """The iteration's plan: one unit per micro-batch (MICRO rows), or micro-batches of at
    most `budget` token slots (the row limit then out of the way)."""
    if budget is None:
        return plan_shards(batch, world, MINI_BATCHES, MICRO, EPOCHS)
    return plan_shards(batch, world, MINI_BATCHES, len(batch), EPOCHS, budget)


# ---------------------------------------------------------------- Ray actors
Key = tuple[int, ...]  # (zero stage, world size[, LoRA rank])


class Learners:
    """Learner groups started on demand, keyed by (zero stage, world size) or (zero stage,
    world size, LoRA rank), killed at the end."""

    def __init__(self, model_path: str) -> None:
        self.model_path = model_path
        self.groups: dict[Key, list] = {}
        self.init_seconds: dict[Key, float] = {}

    def start(self, *keys: Key) -> None:
        """Start several groups at once (their start-ups overlap)."""
        import ray

        from rlhf.workers.learner import LearnerWorker

        remote = ray.remote(num_cpus=0.5)(LearnerWorker)
        pending = {}
        for key in keys:
            stage, world, *lora_rank = key
            cfg = make_cfg(stage, *lora_rank)
            actors = [remote.remote(cfg, r, world, self.model_path) for r in range(world)]
            ray.get([a.ready.remote() for a in actors])
            addr, port = ray.get(actors[0].host_training_store.remote())
            t0 = time.perf_counter()
            pending[key] = (t0, [a.init_training.remote(addr, port) for a in actors])
            self.groups[key] = actors
        for key, (t0, refs) in pending.items():
            ray.get(refs, timeout=300)
            self.init_seconds[key] = time.perf_counter() - t0

    def get(self, *key: int) -> list:
        if key not in self.groups:
            self.start(key)
        return self.groups[key]

    def release(self, *key: int) -> None:
        import ray

        for a in self.groups.pop(key, []):
            try:
                ray.get(a.shutdown.remote(), timeout=30)
            except Exception:
                pass
            ray.kill(a)


@pytest.fixture(scope="module")
def learners(model_path, ray_cluster):
    pool = Learners(model_path)
    try:
        yield pool
    finally:
        for key in list(pool.groups):
            pool.release(*key)


def call_all(actors: list, method: str, *args_per_rank) -> list:
    """Call `method` on every rank concurrently (collectives need all of them)."""
    import ray

    refs = []
    for r, a in enumerate(actors):
        args = [x[r] if isinstance(x, list) else x for x in args_per_rank]
        refs.append(getattr(a, method).remote(*args))
    return ray.get(refs, timeout=300)


# ---------------------------------------------------------------- plain PyTorch reference
def reference_iteration(
    model_path: str, batch: TrainBatch, cfg: Config, initial: dict | None = None
):
    """The learner's iteration written directly, one forward per optimizer step over every
    row of its mini-batch, padded to the batch's width: mini-batch k holds the k-th half of
    the rows (whole units of equal size), its loss weights scaled so each step sees the whole
    batch's total weight. With LoRA: PEFT's model, its adapters started from `initial` (the
    learner's own random start), only they in the optimizer."""
    model = hf_model(model_path)
    if cfg.model.lora.enabled:
        from rlhf.models.lora import apply_lora

        model = apply_lora(model, cfg.model.lora)
        assert initial is not None
        model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in initial.items()})
    params = [p for p in model.parameters() if p.requires_grad]
    algo = make_algorithm(cfg.algorithm, cfg.rollout.max_new_tokens)
    lc = cfg.learner
    opt = torch.optim.AdamW(params, lr=lc.lr, betas=lc.adam_betas, weight_decay=0.0)
    warmup_steps = lc.warmup_iterations * EPOCHS * MINI_BATCHES  # the warm-up counts iterations
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup_steps))
    t = to_tensors(batch, "cpu")
    total = t["loss_weights"].sum()
    norms, lrs, first_grads = [], [], None
    per = len(batch) // MINI_BATCHES
    for _ in range(EPOCHS):
        for k in range(MINI_BATCHES):
            rows = slice(k * per, (k + 1) * per)
            mb = {key: v[rows] for key, v in t.items()}
            mb["loss_weights"] = mb["loss_weights"] * total / mb["loss_weights"].sum()
            lp = model_token_logprobs(model, mb["input_ids"], mb["attention_mask"], TEMPERATURE)
            loss, _ = algo.loss(ForwardOutput(logprobs=lp), mb)
            loss.backward()
            if first_grads is None:
                first_grads = {
                    n: p.grad.numpy().copy() for n, p in model.named_parameters() if p.requires_grad
                }
            norms.append(float(torch.nn.utils.clip_grad_norm_(params, lc.grad_clip)))
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
            opt.zero_grad()
    weights = {n: p.detach().numpy().copy() for n, p in model.named_parameters()}
    return weights, first_grads, norms, lrs


def assert_close_grads(got: dict, want: dict) -> None:
    """float32 sums in another order: agreement to ~1e-5 of the largest gradient entry."""
    assert got.keys() == want.keys()
    scale = max(float(np.abs(g).max()) for g in want.values())
    for name in want:
        np.testing.assert_allclose(
            got[name], want[name], rtol=1e-4, atol=1e-5 * scale, err_msg=name
        )


def assert_close_weights(got: dict, want: dict, first_grads: dict, lrs: list[float]) -> None:
    """Within rounding through Adam (see the module docstring)."""
    scale = max(float(np.abs(g).max()) for g in first_grads.values())
    loose = 2.0 * sum(lrs)  # an update of either sign, at most lr per step
    for name in want:
        if name not in first_grads:  # frozen (LoRA's base): not a bit may move
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)
            continue
        near_zero = np.abs(first_grads[name]) < 1e-5 * scale
        atol = np.where(near_zero, loose, 1e-5)
        diff = np.abs(got[name] - want[name])
        assert (diff <= atol + 1e-4 * np.abs(want[name])).all(), (name, float(diff.max()))


# ---------------------------------------------------------------- the tests
def assert_budget_plan_is_varied(batch: TrainBatch) -> None:
    """What the token-budget case is meant to exercise, so it cannot pass vacuously."""
    for world in (1, 2):
        shards = shards_for(batch, world, TOKEN_BUDGET)
        steps = [step for s in shards for step in s.steps]
        assert any(len(set(step)) > 1 for step in steps), steps  # different row counts
        assert all(len(step) > 1 for step in steps), steps  # several micro-batches a step
    pair = shards_for(batch, 2, TOKEN_BUDGET)
    assert any((s.rows < 0).any() for s in pair)  # a filler micro-batch on 2 ranks
    widths = [int(batch.lengths()[batch.units == u].max()) for u in np.unique(batch.units)]
    assert max(widths) * LONG_SAMPLES > TOKEN_BUDGET  # a unit over the budget
    assert max(widths) > 2.5 * min(widths)


@pytest.mark.slow
@pytest.mark.parametrize(
    "stage, budget, lora_rank",
    [(2, None, 0), (3, None, 0), (3, TOKEN_BUDGET, 0), (3, None, LORA_RANK)],
    ids=["2", "3", "3-token-budget", "3-lora"],
)
def test_two_ranks_match_one_rank_and_plain_torch(
    stage, budget, lora_rank, learners, model_path, request, tmp_path
):
    """With LoRA (PEFT) as without: the adapters' gradients and updates are the same under
    every sharding, and the frozen base (partitioned under ZeRO-3) does not move."""
    batch = request.getfixturevalue("batch" if budget is None else "long_batch")
    if budget is not None:
        assert_budget_plan_is_varied(batch)
    lora = (lora_rank,) if lora_rank else ()
    single_key, pair_key = (stage, 1, *lora), (stage, 2, *lora)
    learners.start(single_key, pair_key)
    single, pair = learners.get(*single_key), learners.get(*pair_key)
    initial = call_all(single, "full_weights")[0]

    # The old-log-prob stage: a no-grad pass over planned shards gives the policy's own
    # log-probs (the batch's sampler log-probs were computed from the same weights).
    inputs = batch.only(["input_ids", "attention_mask"])
    plain = plan_shards(inputs, 2, 1, MICRO if budget is None else len(batch), 1, budget)
    old = call_all(pair, "forward_pass", plain, "logprobs")
    for shard, part in zip(plain, old, strict=True):
        real = shard.rows >= 0
        mask = batch["completion_mask"][shard.rows[real]]
        want = batch["sampler_logprobs"][shard.rows[real]]
        np.testing.assert_allclose(part[real] * mask, want, atol=1e-5)
    batch["old_logprobs"] = batch["sampler_logprobs"]

    t0 = time.perf_counter()
    one_rank = shards_for(batch, 1, budget)
    m_single, g_single = call_all(single, "train_step_capturing_gradients", one_rank)[0]
    t1 = time.perf_counter()
    pair_out = call_all(pair, "train_step_capturing_gradients", shards_for(batch, 2, budget))
    t2 = time.perf_counter()
    print(
        f"\nZeRO-{stage}: init 1 rank {learners.init_seconds[single_key]:.1f}s, "
        f"2 ranks {learners.init_seconds[pair_key]:.1f}s; iteration (4 optimizer steps) "
        f"1 rank {t1 - t0:.2f}s, 2 ranks {t2 - t1:.2f}s"
    )
    w_single = call_all(single, "full_weights")[0]
    w_pair = call_all(pair, "full_weights")
    ref_w, ref_g, ref_norms, ref_lrs = reference_iteration(
        model_path, batch, make_cfg(stage, lora_rank), initial
    )
    if lora_rank:  # only the adapters trained
        assert ref_g and all(".lora_" in name for name in [*ref_g, *g_single])

    # The first step's gradient, before the optimizer: the same under every sharding.
    assert_close_grads(g_single, ref_g)
    for _, grads in pair_out:
        assert_close_grads(grads, ref_g)
    # Both ranks hold the same model; it moved, identically under every sharding.
    for name in w_pair[0]:
        np.testing.assert_array_equal(w_pair[0][name], w_pair[1][name], err_msg=name)
    moved = max(np.abs(w_single[n] - initial[n]).max() for n in initial)
    assert moved > 1e-4
    assert_close_weights(w_single, ref_w, ref_g, ref_lrs)
    assert_close_weights(w_pair[0], ref_w, ref_g, ref_lrs)

    for m in [m_single, *(m for m, _ in pair_out)]:
        assert m["learner/grad_norm"] == pytest.approx(np.mean(ref_norms), rel=1e-3)
        assert m["learner/lr"] == pytest.approx(np.mean(ref_lrs), rel=1e-6)
    # Loss metrics are weighted sums: they add up over ranks.
    total = sum(m["loss/total"] for m, _ in pair_out)
    assert total == pytest.approx(m_single["loss/total"], rel=1e-3, abs=1e-5)

    if lora_rank:
        assert_lora_export(pair, w_pair[0], make_cfg(stage, lora_rank), model_path, tmp_path)
        # The reference for free: adapters off, the trained model is the starting policy
        # (the batch's reference log-probs are the initial model's, from transformers).
        base = call_all(pair, "forward_pass", plain, "base_logprobs")
        adapted = call_all(pair, "forward_pass", plain, "logprobs")
        gap = 0.0
        for shard, part, now in zip(plain, base, adapted, strict=True):
            real = shard.rows >= 0
            mask = batch["completion_mask"][shard.rows[real]]
            want = batch["ref_logprobs"][shard.rows[real]]
            np.testing.assert_allclose(part[real] * mask, want, atol=1e-5)
            gap = max(gap, float(np.abs(now[real] * mask - want).max()))
        assert gap > 1e-3  # while the adapted policy has moved

    learners.release(*single_key)
    if stage != 3 or lora_rank:  # the plain ZeRO-3 pair serves the tests below
        learners.release(*pair_key)
    elif budget is None:  # the token-budget case starts its own fresh pair
        learners.release(*pair_key)


def assert_lora_export(pair: list, peft_weights: dict, cfg: Config, model_path: str, out) -> None:
    """A LoRA learner's `save_pretrained` (ZeRO-3: gathered) writes the merged policy, which
    plain transformers loads, equal to W + (alpha / rank) * B @ A computed here from the
    learner's own tensors; and the adapter alone, which PEFT loads onto the base."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    call_all(pair, "save_pretrained", str(out / "final"))
    merged = AutoModelForCausalLM.from_pretrained(out / "final").state_dict()
    scaling = cfg.model.lora.alpha / cfg.model.lora.rank
    checked = 0
    for name, w in peft_weights.items():
        if ".lora_" in name:
            continue
        plain = name.removeprefix("base_model.model.").replace(".base_layer", "")
        if ".base_layer." in name:
            a = peft_weights[name.replace("base_layer", "lora_A.default")]
            b = peft_weights[name.replace("base_layer", "lora_B.default")]
            w = w + scaling * (b.astype(np.float64) @ a.astype(np.float64))
            checked += 1
        # float32 rounding of the product and the sum: ~1e-7 of the weights' scale
        np.testing.assert_allclose(merged[plain].numpy(), w, rtol=1e-5, atol=1e-6, err_msg=name)
    assert checked > 0 and len(merged) == len([n for n in peft_weights if ".lora_" not in n])
    adapted = PeftModel.from_pretrained(hf_model(model_path), out / "final" / "adapter")
    for name, t in adapted.state_dict().items():
        np.testing.assert_array_equal(t.numpy(), peft_weights[name], err_msg=name)


def objective(model_path: str, weights: dict, batch: TrainBatch) -> float:
    """sum(loss_weights * advantages * log p): what the policy-gradient step raises."""
    model = hf_model(model_path)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
    t = to_tensors(batch, "cpu")
    with torch.no_grad():
        lp = model_token_logprobs(model, t["input_ids"], t["attention_mask"], TEMPERATURE)
    return float((t["loss_weights"] * t["advantages"] * lp).sum())


@pytest.mark.slow
def test_steps_raise_objective_and_save_loads_in_hf(learners, model_path, batch, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    pair = learners.get(3, 2)
    batch = batch.select(np.arange(len(batch)))
    batch.columns.pop("old_logprobs", None)  # one step per batch: ratio 1, no stage needed
    before = objective(model_path, call_all(pair, "full_weights")[0], batch)
    for _ in range(3):
        call_all(pair, "train_step", plan_shards(batch, 2, 1, MICRO))
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

    from rlhf.sync.group import SyncEndpoint, WeightSyncGroup

    pair = learners.get(3, 2)
    manifest = ray.get(pair[0].weight_manifest.remote())
    weights = call_all(pair, "full_weights")[0]
    assert [s.name for s in manifest] == list(weights)
    assert all(s.shape == weights[s.name].shape for s in manifest)

    names = ["learner-0", "test-receiver"]
    host, port = ray.get(pair[0].host_sync_store.remote(len(names)))
    endpoint = SyncEndpoint(host, port, 0, 2, "gloo", 60.0, tuple(names))
    joins = [a.init_weight_sync.remote(endpoint) for a in pair]
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
