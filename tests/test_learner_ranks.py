"""topology.learner.workers=auto: the learner's rank count from the model and the machine."""

from __future__ import annotations

import pytest

from rlhf.config import ConfigError, load_config
from rlhf.runtime.learner_ranks import (
    TWO_CPU_RANKS_MAX_PARAMETERS,
    auto_learner_ranks,
    model_parameters,
    resolve_learner_ranks,
)


def test_auto_is_the_learners_default_and_only_the_learners():
    assert load_config(None, []).topology.learner.workers == "auto"
    assert load_config(None, ["topology.learner.workers=1"]).topology.learner.workers == 1
    with pytest.raises(ConfigError, match=r"topology\.rollout\.workers: 'auto' is for"):
        load_config(None, ["topology.rollout.workers=auto"])
    with pytest.raises(ConfigError, match=r"topology\.learner\.workers"):
        load_config(None, ["topology.learner.workers=many"])


def test_two_cpu_ranks_for_small_models_one_for_big_ones_and_on_gpus():
    # the measured points (benchmarks/results/learner_ranks.md): 1M and 11M, 104M
    assert auto_learner_ranks(1_000_000, 2, False)[0] == 2
    assert auto_learner_ranks(11_000_000, 2, False)[0] == 2
    assert auto_learner_ranks(104_000_000, 2, False)[0] == 1
    assert auto_learner_ranks(TWO_CPU_RANKS_MAX_PARAMETERS + 1, 16, False)[0] == 1
    assert auto_learner_ranks(1_000_000, 1, False)[0] == 1  # one core: nothing to split
    ranks, why = auto_learner_ranks(1_000_000, 16, True)
    assert ranks == 1 and "GPUs" in why


def test_resolve_counts_the_folders_parameters_and_leaves_a_number(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(tmp_path / "st", safe_serialization=True)  # read from its header
    assert model_parameters(str(tmp_path / "st")) == sum(p.numel() for p in model.parameters())
    # a folder without safetensors: counted from its config on the meta device
    config.save_pretrained(tmp_path / "cfg_only")
    assert model_parameters(str(tmp_path / "cfg_only")) == sum(
        p.numel() for p in LlamaForCausalLM(config).parameters()
    )

    cfg = load_config(None, [])
    line = resolve_learner_ranks(cfg, str(tmp_path / "st"))
    assert cfg.topology.learner.workers in (1, 2) and line is not None
    assert f"learner ranks: {cfg.topology.learner.workers}" in line
    assert resolve_learner_ranks(cfg, str(tmp_path / "st")) is None  # a number stays as it is
