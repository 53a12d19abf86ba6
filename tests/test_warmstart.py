"""Supervised warm start and the cached default model."""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlhf.config import ConfigError, TaskConfig, WarmStartConfig, load_config
from rlhf.data.tasks import make_task
from rlhf.models import default_model
from rlhf.models.default_model import cache_key, prepare_model
from rlhf.models.generation import greedy_accuracy
from rlhf.models.tiny import build_tiny_model
from rlhf.models.warm_start import accumulated_step, micro_batches_of, warm_start
from rlhf.rewards.builtin import addition_exact

SMALL_MODEL = {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2}


@pytest.fixture(autouse=True)
def one_thread():
    # Models this small gain nothing from a second thread, and OpenMP threads on busy cores
    # (other tests, other jobs) slow training down several-fold.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_warm_start_teaches_addition_on_held_out_pairs(tmp_path):
    # Sums of 0..19 + 0..19: 360 training pairs, 40 held out; about 20 s on one core.
    task = make_task(TaskConfig(max_operand=19, num_prompts=360))
    build_tiny_model(tmp_path, task.corpus(), intermediate_size=256, **SMALL_MODEL)
    before = greedy_accuracy(tmp_path, None, task.eval_prompts, addition_exact, task.max_new_tokens)
    stats = warm_start(tmp_path, task, WarmStartConfig(steps=300, batch_size=64, lr=3e-3), seed=0)
    assert before <= 0.05
    assert stats["warm_start/greedy_accuracy"] >= 0.5, stats
    assert stats["warm_start/loss"] < 0.6
    # The folder now holds the trained weights: reloading gives the same accuracy.
    after = greedy_accuracy(tmp_path, None, task.eval_prompts, addition_exact, task.max_new_tokens)
    assert after == pytest.approx(stats["warm_start/greedy_accuracy"])


def test_warm_start_in_bfloat16_autocast_learns_as_fp32_does(tmp_path):
    """warm_start.autocast=bfloat16 (the word_problems recipe): the same sums, learnt, and
    the saved weights stay fp32. On a CPU without bf16 this runs emulated, just slower."""
    task = make_task(TaskConfig(max_operand=19, num_prompts=360))
    build_tiny_model(tmp_path, task.corpus(), intermediate_size=256, **SMALL_MODEL)
    cfg = WarmStartConfig(steps=300, batch_size=64, lr=3e-3, autocast="bfloat16")
    stats = warm_start(tmp_path, task, cfg, seed=0)
    assert stats["warm_start/greedy_accuracy"] >= 0.5, stats
    from transformers import AutoModelForCausalLM

    weights = AutoModelForCausalLM.from_pretrained(tmp_path).state_dict().values()
    assert {w.dtype for w in weights} == {torch.float32}


def test_checkpoint_hook_sees_every_nth_step_and_changes_nothing(tmp_path):
    """benchmarks/warm_start_curve.py evaluates inside the warm start: the hook runs after
    every `every` steps, and the trained weights are those of a run without it."""
    from transformers import AutoModelForCausalLM

    task = make_task(TaskConfig(max_operand=9, num_prompts=80))
    cfg = WarmStartConfig(steps=6, batch_size=16, lr=3e-3)
    folders = [tmp_path / "plain", tmp_path / "hooked"]
    for folder in folders:
        build_tiny_model(folder, task.corpus(), intermediate_size=64, **SMALL_MODEL)
    warm_start(folders[0], task, cfg, seed=0)
    seen = []

    def hook(step, loss, model, tokenizer):
        seen.append((step, loss > 0))
        greedy_accuracy(model, tokenizer, task.eval_prompts[:4], addition_exact, 3)

    warm_start(folders[1], task, cfg, seed=0, every=2, on_checkpoint=hook)
    assert seen == [(2, True), (4, True), (6, True)]
    plain, hooked = (AutoModelForCausalLM.from_pretrained(f).state_dict() for f in folders)
    for name, weight in plain.items():
        assert torch.equal(weight, hooked[name]), name


def test_a_warm_start_stopped_part_way_down_its_schedule_is_the_longer_one_at_that_step(tmp_path):
    """warm_start.schedule_steps=8 with steps=4 is the 8-step warm start's state after its
    4th step (the same batches, the same lr each step); with the schedule as long as the
    steps, the 4th step's lr is lower and the weights differ. Same machine, same operations in
    the same order, so equal means bit for bit."""
    task = make_task(TaskConfig(max_operand=9, num_prompts=80))
    folders = {name: tmp_path / name for name in ("long", "stopped", "short")}
    for folder in folders.values():
        build_tiny_model(folder, task.corpus(), intermediate_size=64, **SMALL_MODEL)
    at_four = {}

    def keep(step, loss, model, tokenizer):
        if step == 4:
            at_four.update({k: v.clone() for k, v in model.state_dict().items()})

    warm_start(folders["long"], task, WarmStartConfig(steps=8, batch_size=16, lr=3e-3), seed=0,
               every=4, on_checkpoint=keep)  # fmt: skip
    stopped = WarmStartConfig(steps=4, schedule_steps=8, batch_size=16, lr=3e-3)
    warm_start(folders["stopped"], task, stopped, seed=0)
    warm_start(folders["short"], task, WarmStartConfig(steps=4, batch_size=16, lr=3e-3), seed=0)
    got, short = (
        AutoModelForCausalLM.from_pretrained(folders[n]).state_dict() for n in ("stopped", "short")
    )
    for name, weight in at_four.items():
        assert torch.equal(weight, got[name]), name
    assert any(not torch.equal(weight, short[name]) for name, weight in at_four.items())
    with pytest.raises(ConfigError, match=r"warm_start\.schedule_steps \(3\) is less than"):
        load_config(None, ["warm_start.steps=4", "warm_start.schedule_steps=3"])


def _small_cfg(tmp_path: Path, *extra: str):
    return load_config(
        None,
        [
            f"model.cache_dir={tmp_path / 'cache'}",
            "model.tiny.hidden_size=32",
            "model.tiny.num_layers=1",
            "model.tiny.intermediate_size=64",
            "task.max_operand=9",
            "warm_start.steps=5",
            "warm_start.batch_size=8",
            *extra,
        ],
    )


def test_prepare_model_builds_once_then_reuses_the_cache(tmp_path, monkeypatch):
    cfg = _small_cfg(tmp_path)
    first = prepare_model(cfg)
    stats = json.loads((Path(first) / "rlhf_ready.json").read_text())
    assert set(stats) >= {"warm_start/loss", "warm_start/greedy_accuracy"}
    weights = Path(first) / "model.safetensors"
    stamp = (weights.stat().st_ino, weights.stat().st_mtime_ns)

    def no_rebuild(*_: object) -> dict[str, float]:
        raise AssertionError("prepare_model rebuilt a model that is in the cache")

    monkeypatch.setattr(default_model, "_build", no_rebuild)
    second = prepare_model(cfg)
    assert second == first
    assert (weights.stat().st_ino, weights.stat().st_mtime_ns) == stamp  # same file, untouched
    assert [p.name for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")] == [
        Path(first).name
    ]
    # Every setting that shapes the model is in the key; the run's own seed is not.
    shaping = ("warm_start.steps=6", "model.tiny.seed=1", "task.seed=1", "model.tiny.family=qwen2")
    for override in shaping:
        assert cache_key(_small_cfg(tmp_path, override)) != cache_key(cfg), override
    assert cache_key(_small_cfg(tmp_path, "run.seed=5")) == cache_key(cfg)


def test_the_default_model_keeps_its_cache_key():
    """Fields added to model.tiny later (family, vocab_size, max_position_embeddings) leave the
    default's key as it was: a cached default model stays valid. The value is the key
    computed before they existed; away from their old values they change it."""
    assert cache_key(load_config(None, [])) == "ea55765b702ae611"
    for override in (
        "model.tiny.vocab_size=1024",
        "model.tiny.max_position_embeddings=1024",
        "warm_start.autocast=bfloat16",
        "warm_start.schedule_steps=800",
    ):
        assert cache_key(load_config(None, [override])) != "ea55765b702ae611", override


def test_a_task_whose_examples_changed_gets_a_new_cache_key(monkeypatch):
    """A task that raises examples_version (its warm-start examples changed) is built anew;
    version 1, every task's before versions existed, leaves the key as it was."""
    from rlhf.data.tasks import AdditionTask

    cfg = load_config(None, [])
    monkeypatch.setattr(AdditionTask, "examples_version", 2)
    assert cache_key(cfg) != "ea55765b702ae611"
    monkeypatch.setattr(AdditionTask, "examples_version", 1)
    assert cache_key(cfg) == "ea55765b702ae611"


def test_micro_batches_give_the_whole_batch_step(tmp_path):
    """A batch cut into parts of at most `max_tokens` (sorted by length) takes the same step
    as the batch in one piece: same loss, same gradient, same weights after."""
    build_tiny_model(tmp_path, ["12+30=42", "the quick brown fox"] * 20, **SMALL_MODEL)
    gen = torch.Generator().manual_seed(0)
    rows = []
    for length in (5, 23, 9, 31, 17, 12):
        ids = torch.randint(3, 60, (length,), generator=gen).tolist()
        rows.append((ids, length // 2))  # loss on the second half
    steps = {}
    for max_tokens in (10_000, 40):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        parts = micro_batches_of(rows, pad=0, max_tokens=max_tokens)
        assert all(ids.numel() <= max(max_tokens, 31) for ids, _, _ in parts)
        loss = accumulated_step(model, opt, sched, parts)
        steps[max_tokens] = (len(parts), loss, [p.detach().clone() for p in model.parameters()])
    (one, loss_one, after_one), (many, loss_many, after_many) = steps[10_000], steps[40]
    assert one == 1 and many >= 4
    assert loss_many == pytest.approx(loss_one, rel=1e-5)
    for a, b in zip(after_one, after_many, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def _prepare_in_child(cache_dir: str, queue) -> None:
    cfg = _small_cfg(Path(cache_dir).parent, "warm_start.enabled=false")
    queue.put(prepare_model(cfg))


def test_two_processes_building_at_once_get_one_model(tmp_path):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [
        ctx.Process(target=_prepare_in_child, args=(str(tmp_path / "cache"), queue))
        for _ in range(2)
    ]
    for p in procs:
        p.start()
    paths = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert paths[0] == paths[1]
    assert (Path(paths[0]) / "config.json").is_file()
    # No half-built folders are left behind.
    assert [p.name for p in (tmp_path / "cache").iterdir() if p.is_dir()] == [Path(paths[0]).name]


def test_missing_model_path_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match=r"model\.path: .*nowhere.* does not exist"):
        prepare_model(load_config(None, [f"model.path={tmp_path / 'nowhere'}"]))
    with pytest.raises(ConfigError, match=r"model\.path: .*no config\.json"):
        prepare_model(load_config(None, [f"model.path={tmp_path}"]))


def test_prompt_weight_sets_the_loss_on_prompt_tokens():
    """A task that models its prompts (word_problems) weighs their tokens by its
    warm_start_prompt_weight; padding never counts."""
    from rlhf.models.warm_start import micro_batches_of

    rows = [([5, 6, 7, 8], 2), ([5, 6, 7], 1)]
    for weight in (0.0, 1.0, 0.5):
        ((ids, mask, target),) = micro_batches_of(rows, pad=0, prompt_weight=weight)
        assert ids.tolist() == [[5, 6, 7, 8], [5, 6, 7, 0]]
        assert target.tolist() == [[weight, weight, 1, 1], [weight, 1, 1, 0]]
