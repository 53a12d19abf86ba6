"""Any local causal LM: tiny random models of several architecture families, built here from
their transformers configs, go through the paths a user's real model takes: the vLLM engine
and the HF engine receive a weight sync and then generate greedily exactly as plain
transformers does (`tests.engine_checks.check_sync`), and the DeepSpeed learner loads them,
lists the names it would send, and takes a step."""

from __future__ import annotations

import pytest
import torch

from rlhf.models.families import FAMILIES
from tests.engine_checks import PROMPTS, check_sync, corpus

pytestmark = pytest.mark.slow

# A vLLM engine test takes ~8 s here (an in-process engine, its model built first), and CI's
# test command must stay under 20 minutes, so the default tier runs it for qwen2 (tied
# embeddings with q/k/v biases, as Qwen2.5) and tests/test_engines.py for llama; every family
# runs with `-m long` (gpt2's Conv1D and mistral's sliding window too: all five passed when
# this was written). The HF engine and the learner take all five here.
VLLM_FAMILIES = [f if f == "qwen2" else pytest.param(f, marks=pytest.mark.long) for f in FAMILIES]


# First in the module, on folders of its own: a vLLM engine's shutdown ends the process's
# torch.distributed world (vLLM's engine core tears it down), so it must not run inside the
# module's training group below (DeepSpeed keeps the first group it sees, per process).
@pytest.mark.parametrize("name", VLLM_FAMILIES)
def test_vllm_sync_then_greedy_matches_transformers(name, tmp_path):
    from rlhf.engines.vllm_engine import VLLMEngine
    from rlhf.models.tiny import build_tiny_model

    model_path = str(build_tiny_model(tmp_path, corpus(), family=name, num_layers=2))
    engine = VLLMEngine(model_path, seed=0, max_model_len=256, kv_cache_bytes=32 * 2**20)
    try:
        check_sync(engine, model_path)
    finally:
        engine.shutdown()


@pytest.fixture(scope="module", params=FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def model_path(family, tmp_path_factory) -> str:
    from rlhf.models.tiny import build_tiny_model

    folder = tmp_path_factory.mktemp(family)
    return str(build_tiny_model(folder, corpus(), family=family, num_layers=2))


def test_the_folder_is_the_family_asked_for(family, model_path):
    """Guards the tests below against all of them silently running the same architecture."""
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(model_path).model_type == family


def test_hf_engine_sync_then_greedy_matches_transformers(model_path):
    from rlhf.engines.hf_engine import HFEngine

    engine = HFEngine(model_path, seed=0)
    try:
        check_sync(engine, model_path)
    finally:
        engine.shutdown()


@pytest.fixture(scope="module")
def training_group():
    from rlhf.training.deepspeed_setup import single_rank_group

    with single_rank_group("gloo"):
        yield


def test_learner_sends_the_names_the_engines_load_and_takes_a_step(model_path, training_group):
    """DeepSpeed (ZeRO-2, one rank) on the learner's own loader: its weight manifest is the
    model's named parameters (what the sync checks above send), and one Adam step on a batch
    lowers that batch's loss."""
    from rlhf.config import LearnerConfig
    from rlhf.models.loading import load_policy
    from rlhf.models.logprobs import model_token_logprobs, pad_rows
    from rlhf.training import export
    from rlhf.training.deepspeed_setup import build_engine

    model = load_policy(model_path, gradient_checkpointing=False)
    names = [(name, tuple(p.shape)) for name, p in model.named_parameters()]
    settings = LearnerConfig(lr=1e-3, warmup_iterations=0, backend="gloo", micro_batch_size=4)
    ids, mask = pad_rows(PROMPTS, pad=0)

    def loss(engine) -> torch.Tensor:
        logprobs = model_token_logprobs(engine, ids, mask)
        return -(logprobs * mask).sum() / mask.sum()

    engine = build_engine(model, settings, "float32", world_size=1)
    try:
        manifest = export.manifest(engine.module)
        assert [(s.name, s.shape) for s in manifest] == names
        assert {s.dtype for s in manifest} == {"float32"}
        first = loss(engine)
        engine.backward(first)
        engine.step()
        with torch.no_grad():
            assert loss(engine) < first.detach()
    finally:
        engine.destroy()
