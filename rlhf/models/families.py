"""Transformers configs of tiny random causal LMs, one per architecture family.

Each family keeps the traits that make its real models load differently downstream, so a
test on the tiny one covers the real layout: Qwen2 has q/k/v biases and (like
Qwen2.5-0.5B) tied embeddings; Qwen3 normalises queries and keys; Mistral has its sliding
window; GPT-2 stores Conv1D (transposed) weights, learned positions and tied embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

Family = Literal["llama", "qwen2", "qwen3", "mistral", "gpt2"]
FAMILIES: tuple[str, ...] = get_args(Family)


@dataclass(frozen=True)
class TinyShape:
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2  # GPT-2 has no grouped-query attention: it uses num_heads
    intermediate_size: int = 512
    max_position_embeddings: int = 256


@dataclass(frozen=True)
class SpecialIds:
    vocab_size: int
    bos: int
    eos: int
    pad: int


def family_config(family: str, shape: TinyShape, ids: SpecialIds):
    """The `PretrainedConfig` of a random model of `family` (one of FAMILIES), float32."""
    import transformers

    special = dict(
        vocab_size=ids.vocab_size,
        bos_token_id=ids.bos,
        eos_token_id=ids.eos,
        pad_token_id=ids.pad,
        torch_dtype="float32",
    )
    if family == "gpt2":
        return transformers.GPT2Config(
            n_embd=shape.hidden_size,
            n_layer=shape.num_layers,
            n_head=shape.num_heads,
            n_inner=shape.intermediate_size,
            n_positions=shape.max_position_embeddings,
            tie_word_embeddings=True,
            **special,
        )
    decoder = dict(
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_kv_heads,
        max_position_embeddings=shape.max_position_embeddings,
        # Some configs default to head_dim 128 whatever the width: keep hidden = heads x dim.
        head_dim=shape.hidden_size // shape.num_heads,
        **special,
    )
    if family == "llama":
        return transformers.LlamaConfig(tie_word_embeddings=False, **decoder)
    if family == "qwen2":
        return transformers.Qwen2Config(tie_word_embeddings=True, **decoder)
    if family == "qwen3":
        return transformers.Qwen3Config(tie_word_embeddings=False, **decoder)
    if family == "mistral":
        # A window shorter than the context, so the sliding-window path is the one that runs.
        window = shape.max_position_embeddings // 2
        return transformers.MistralConfig(
            tie_word_embeddings=False, sliding_window=window, **decoder
        )
    raise ValueError(f"unknown model family {family!r}; known: {', '.join(FAMILIES)}")
