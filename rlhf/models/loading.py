"""Loading Hugging Face models for training: fp32 weights, dropout off."""

from __future__ import annotations

import torch


def without_dropout(config):
    """An HF config with every dropout probability set to 0.

    Dropout off: old log-probs, new log-probs and the sampler must see the same function,
    or the importance ratio is noise at step 0.
    """
    for key, value in list(vars(config).items()):
        if "dropout" in key and isinstance(value, float):
            setattr(config, key, 0.0)
    return config


def load_policy(model_path: str, gradient_checkpointing: bool) -> torch.nn.Module:
    """The HF model in fp32 (DeepSpeed casts it for bf16/fp16), with dropout off."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = without_dropout(AutoConfig.from_pretrained(model_path))
    model = AutoModelForCausalLM.from_pretrained(model_path, config=config, dtype=torch.float32)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    model.train()
    return model
