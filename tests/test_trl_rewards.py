"""The TRL side of benchmarks/trl_side_by_side.py scores with reward functions restated in
benchmarks/trl_grpo_runner.py (its venv has no `rlhf`): they must give exactly what ours give,
on plain completions and on TRL's conversational ones."""

import importlib.util
from pathlib import Path

import pytest

from rlhf.rewards.builtin import BUILTIN_REWARDS

RUNNER = Path(__file__).resolve().parent.parent / "benchmarks" / "trl_grpo_runner.py"

COMPLETIONS = [
    "72",
    " 72\n",
    "072",
    "72.0",
    "72.00",
    "7 2",
    "+72",
    "-72",
    "--72",
    "72-",
    "1,234",
    "1,234.5",
    "1,2,3",
    "12,",
    "3.14.15",
    ".5",
    "5.",
    "7e2",
    "\u0667\u0662",  # Arabic-Indic 72: \d matches it, Decimal reads it
    "She has 27 - 11 = 16 shells left.\n#### 16",
    "#### 16 then 17",
    "The answer is 40 apples.",
    "no number here",
    "",
    None,
]
ANSWERS = [
    "72",
    " 72 ",
    "1234",
    "16",
    "-72",
    "She has 27 - 11 = 16 shells left.\n#### 16",
    "Half of 80 is 40.\n#### 40.0",
    "#### 1,234",
    "7 apples #### 72 left",
    "no number",
    "3.14",
]


@pytest.fixture(scope="module")
def runner():
    spec = importlib.util.spec_from_file_location("trl_grpo_runner", RUNNER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # imports torch and transformers, not trl
    return module


@pytest.mark.parametrize("name", ["addition_exact", "final_number"])
def test_runner_rewards_match_ours(runner, name):
    assert set(runner.REWARDS) == {"addition_exact", "final_number"}
    pairs = [(c, a) for c in COMPLETIONS for a in ANSWERS]
    completions, answers = [c for c, _ in pairs], [a for _, a in pairs]
    prompts = ["p"] * len(pairs)
    ours = BUILTIN_REWARDS[name](prompts, completions, answer=answers)
    theirs = runner.REWARDS[name](prompts, completions, answer=answers)
    assert theirs == ours
    assert 0.0 in ours and 1.0 in ours  # the cases tell right from wrong
    # TRL hands conversational prompts' completions over as assistant messages
    chats = [[{"role": "assistant", "content": c}] for c in completions]
    assert runner.REWARDS[name](prompts, chats, answer=answers) == ours
