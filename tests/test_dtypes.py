"""dtype per pool: `model.dtype` with per-pool overrides, "auto" resolved for the device, and
the resolved dtype reaching the engines, the reference worker and DeepSpeed's config.
Tests that pretend a GPU is present say "mock" in their name."""

from __future__ import annotations

import pytest
import torch

from rlhf.config import ConfigError, LearnerConfig, RolloutConfig, load_config
from rlhf.models.dtypes import device_kind, pool_choice, pool_dtype, resolve_dtype
from rlhf.training.deepspeed_setup import ds_config

POOLS = ("rollout", "learner", "reference", "critic", "reward_model_training")


@pytest.mark.parametrize(
    ("choice", "kind", "want"),
    [
        ("auto", "cpu", "float32"),
        ("auto", "cuda", "float32"),  # a GPU without bfloat16 (pre-Ampere)
        ("auto", "cuda-bf16", "bfloat16"),
        ("float32", "cuda-bf16", "float32"),
        ("bfloat16", "cpu", "bfloat16"),  # slow on most CPUs, but allowed when asked for
        ("float16", "cuda", "float16"),
    ],
)
def test_resolve_dtype(choice, kind, want):
    assert resolve_dtype(choice, kind) == want


def test_resolve_dtype_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"^rollout\.dtype: bfloat16 needs a GPU that supports"):
        resolve_dtype("bfloat16", "cuda", "rollout.dtype")
    with pytest.raises(ConfigError, match=r"^learner\.dtype: 'bf16' is not a dtype; allowed: auto"):
        resolve_dtype("bf16", "cpu", "learner.dtype")


def test_a_pool_follows_model_dtype_unless_it_has_its_own():
    assert pool_choice("auto", None, "rollout") == ("auto", "model.dtype")
    assert pool_choice("auto", "float16", "rollout") == ("float16", "rollout.dtype")


def test_every_pool_computes_in_float32_by_default_on_cpu():
    cfg = load_config(None, [])
    assert cfg.model.dtype == "auto"
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the CPU default is not what runs here")
    assert device_kind(True) == "cpu"  # asked for a GPU, none visible: the CPU
    for pool in POOLS:
        assert pool_dtype(cfg, pool, use_cuda=True) == "float32", pool


def test_overrides_per_pool_on_cpu():
    cfg = load_config(None, ["model.dtype=float16", "learner.dtype=bfloat16", "critic.dtype=auto"])
    got = {pool: pool_dtype(cfg, pool, use_cuda=False) for pool in POOLS}
    assert got == {
        "rollout": "float16",
        "learner": "bfloat16",
        "reference": "float16",
        "critic": "float32",
        "reward_model_training": "float16",
    }


@pytest.mark.parametrize("pool", POOLS)
def test_a_bad_pool_dtype_names_its_field(pool):
    with pytest.raises(ConfigError, match=rf"{pool}\.dtype: Input should be 'auto', 'float32'"):
        load_config(None, [f"{pool}.dtype=bf16"])


def _mock_gpu(monkeypatch, bf16: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)


def test_auto_is_bfloat16_on_a_mock_bf16_gpu(monkeypatch):
    _mock_gpu(monkeypatch, bf16=True)
    cfg = load_config(None, ["reference.dtype=float32"])
    assert device_kind(True) == "cuda-bf16"
    assert pool_dtype(cfg, "learner", use_cuda=True) == "bfloat16"
    assert pool_dtype(cfg, "rollout", use_cuda=True) == "bfloat16"
    assert pool_dtype(cfg, "reference", use_cuda=True) == "float32"  # its own choice
    assert pool_dtype(cfg, "learner", use_cuda=False) == "float32"  # a pool on the CPU


def test_bfloat16_on_a_mock_gpu_without_it_names_the_field(monkeypatch):
    _mock_gpu(monkeypatch, bf16=False)
    cfg = load_config(None, ["rollout.dtype=bfloat16"])
    assert pool_dtype(cfg, "learner", use_cuda=True) == "float32"  # auto falls back
    with pytest.raises(ConfigError, match=r"^rollout\.dtype: bfloat16 needs a GPU"):
        pool_dtype(cfg, "rollout", use_cuda=True)


def test_deepspeed_config_follows_the_dtype():
    cfg = LearnerConfig()
    sections = {}
    for dtype in ("float32", "bfloat16", "float16"):
        ds = ds_config(cfg, dtype, 1)
        sections[dtype] = (ds["bf16"], ds["fp16"])
    assert sections == {
        "float32": ({"enabled": False}, {"enabled": False}),
        "bfloat16": ({"enabled": True}, {"enabled": False}),
        "float16": ({"enabled": False}, {"enabled": True}),
    }
    with pytest.raises(ValueError, match="resolved dtype"):
        ds_config(cfg, "auto", 1)  # "auto" must be resolved first, not read as float32


# ---------------------------------------------------------------- the dtype reaches the models
@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    from rlhf.models.tiny import build_tiny_model

    path = tmp_path_factory.mktemp("dtype") / "m"
    build_tiny_model(path, ["1+2=3", "hello"] * 20, hidden_size=32, num_layers=1)
    return str(path)


def test_the_hf_engine_loads_in_the_rollout_dtype(tiny):
    from rlhf.engines import make_engine

    engine = make_engine(RolloutConfig(engine="hf"), tiny, seed=0, dtype="bfloat16")
    assert {p.dtype for p in engine.model.parameters()} == {torch.bfloat16}
    out = engine.generate([[5, 6]], n=2, max_new_tokens=3, temperature=1.0, seed=0)
    assert len(out.completion_ids) == 2


def test_the_reference_worker_loads_in_the_reference_dtype(tiny):
    from rlhf.workers.reference import ReferenceWorker

    for override, want in (([], torch.float32), (["reference.dtype=bfloat16"], torch.bfloat16)):
        worker = ReferenceWorker(load_config(None, override), 0, tiny)
        assert {p.dtype for p in worker.model.parameters()} == {want}
