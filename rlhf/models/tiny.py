"""Tiny causal LMs and tokenizers made locally (no downloads), saved in Hugging Face format.

Everything downstream loads them through the real `from_pretrained` paths (transformers,
vLLM, DeepSpeed), so tests exercise the same code a user's real model would.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from rlhf.data.chat import CHAT_TEMPLATE

PAD, BOS, EOS = "<pad>", "<s>", "</s>"


def train_tokenizer(corpus: list[str], vocab_size: int = 512):
    """A byte-level BPE whose digits are always single tokens (arithmetic stays learnable)."""
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, bos_token=BOS, eos_token=EOS
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_model(
    path: str | Path,
    corpus: list[str],
    *,
    family: str = "llama",
    hidden_size: int = 128,
    num_layers: int = 4,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 512,
    vocab_size: int = 512,
    max_position_embeddings: int = 256,
    seed: int = 0,
) -> Path:
    """Train a tokenizer on `corpus`, build a random model of `family` (see
    `rlhf.models.families`), save both to `path` in Hugging Face format (safetensors)."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    from rlhf.models.families import SpecialIds, TinyShape, family_config

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(corpus, vocab_size=vocab_size)
    shape = TinyShape(
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
    )
    ids = SpecialIds(
        len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(family_config(family, shape, ids), dtype=torch.float32)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    (path / "rlhf_tiny.json").write_text(
        json.dumps({"family": family, "seed": seed, "corpus_size": len(corpus)})
    )
    return path
