"""Length limits with defined outcomes (rlhf/data/lengths.py): the engines' context follows the
model and the prompts, prompts with no room for the answer are left out and counted, and what
cannot work is a `ConfigError` naming the field. Prompt lengths here are their texts' lengths,
so every expected number can be read off the test."""

from __future__ import annotations

import pytest

from rlhf.config import ConfigError, load_config
from rlhf.data.lengths import fit_prompts, model_positions
from rlhf.data.tasks import Task
from rlhf.types import Prompt


class Prompts(Task):
    name = "lengths"
    default_reward = None
    max_new_tokens = 4

    def __init__(self, train: list[int], held_out: list[int]) -> None:
        self.train_prompts = [Prompt("x" * n) for n in train]
        self.eval_prompts = [Prompt("y" * n) for n in held_out]

    def target(self, prompt: Prompt) -> str:
        return ""


def length(p: Prompt) -> int:
    return len(p.text)


@pytest.fixture(scope="module")
def model_64(tmp_path_factory) -> str:
    """A model folder whose config takes 64 positions (only its config is read)."""
    from transformers import LlamaConfig

    path = tmp_path_factory.mktemp("m64")
    LlamaConfig(max_position_embeddings=64, hidden_size=32, num_attention_heads=2).save_pretrained(
        path
    )
    return str(path)


def fit(model: str, task: Prompts, *overrides: str):
    return fit_prompts(load_config(None, list(overrides)), task, model, length)


def test_positions_are_read_from_the_config(model_64):
    assert model_positions(model_64) == (64, "max_position_embeddings")


def test_unset_context_follows_the_longest_prompt_that_fits_the_model(model_64):
    task = Prompts([10, 30, 54, 55, 70], held_out=[20, 60])
    got = fit(model_64, task, "rollout.max_new_tokens=10")  # room: 64 - 10 = 54
    assert [len(p.text) for p in task.train_prompts] == [10, 30, 54]
    assert [len(p.text) for p in task.eval_prompts] == [20]
    assert (got.filtered_train, got.filtered_eval, got.filtered) == (2, 1, 3)
    assert got.longest_prompt == 54 and got.max_model_len == 64


def test_the_context_is_no_longer_than_the_run_needs(model_64):
    task = Prompts([5, 12], held_out=[7])
    got = fit(model_64, task, "rollout.max_new_tokens=8")
    assert got.max_model_len == 12 + 8 and got.filtered == 0


def test_a_given_context_filters_prompts_and_is_kept(model_64):
    task = Prompts([5, 20, 21], held_out=[30])
    got = fit(model_64, task, "rollout.max_model_len=28", "rollout.max_new_tokens=8")
    assert got.max_model_len == 28 and got.filtered == 2
    assert [len(p.text) for p in task.train_prompts] == [5, 20]
    assert task.eval_prompts == []


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["rollout.max_model_len=65"],
         "rollout.max_model_len=65 exceeds the model's max_position_embeddings=64"),
        (["rollout.max_new_tokens=64"],
         "rollout.max_new_tokens=64 leaves no room for a prompt in the model's "
         "max_position_embeddings=64"),
        (["rollout.max_model_len=20", "rollout.max_new_tokens=20"],
         "rollout.max_new_tokens=20 leaves no room for a prompt in rollout.max_model_len=20"),
        (["rollout.max_new_tokens=60"],
         "every training prompt is too long: the shortest has 5 tokens, and the model's "
         "max_position_embeddings=64 leaves 4 for a prompt"),
    ],
)  # fmt: skip
def test_what_cannot_work_names_the_field(model_64, overrides, message):
    task = Prompts([5, 9], held_out=[1])
    with pytest.raises(ConfigError, match="^" + message.replace("(", r"\(")):
        fit(model_64, task, *overrides)
    assert len(task.train_prompts) == 2  # nothing dropped on the way to an error


def test_a_model_without_positions_keeps_every_prompt(tmp_path):
    from transformers import MambaConfig

    MambaConfig(hidden_size=32, num_hidden_layers=1).save_pretrained(tmp_path)  # a state space
    assert model_positions(str(tmp_path)) is None
    task = Prompts([500, 3000], held_out=[])
    got = fit(str(tmp_path), task, "rollout.max_new_tokens=10")
    assert got.filtered == 0 and got.max_model_len == 3010
