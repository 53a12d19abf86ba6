"""A tokenizer without a pad token (Llama 3 and many others) pads with EOS: padding is
masked out, so the id does not matter, but it must exist (issue 10)."""

from __future__ import annotations

import pytest

from rlhf.config import load_config
from rlhf.models.logprobs import pad_id_of


@pytest.fixture(scope="module")
def policy():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlhf.models.default_model import prepare_model

    path = prepare_model(load_config(None, []))
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def test_without_a_pad_token_greedy_answers_are_the_same(policy):
    from transformers import AutoTokenizer

    from rlhf.models.generation import greedy_completions

    model, tokenizer = policy
    bare = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    bare.pad_token = None
    assert bare.pad_token_id is None and tokenizer.pad_token_id is not None
    assert pad_id_of(bare) == bare.eos_token_id != tokenizer.pad_token_id
    texts = ["1+2=", "10+20=", "7+85=", "99+99="]  # different lengths: rows are padded
    assert greedy_completions(model, bare, texts, 4) == greedy_completions(
        model, tokenizer, texts, 4
    )


def test_no_pad_and_no_eos_is_an_error_that_says_so(policy):
    from transformers import AutoTokenizer

    _, tokenizer = policy
    bare = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    bare.pad_token = None
    bare.eos_token = None
    with pytest.raises(ValueError, match="neither a pad nor an EOS token"):
        pad_id_of(bare)
