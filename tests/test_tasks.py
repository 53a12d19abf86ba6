"""The built-in addition task and the built-in reward functions."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from rlhf.config import TaskConfig
from rlhf.data.tasks import TASKS, make_task
from rlhf.rewards.builtin import (
    BUILTIN_REWARDS,
    addition_digits,
    addition_distance,
    addition_exact,
    final_number,
)


def _texts(prompts):
    return [p.text for p in prompts]


def test_split_is_deterministic_disjoint_and_seeded():
    cfg = TaskConfig(max_operand=99, num_prompts=4096, seed=3)
    a, b = make_task(cfg), make_task(cfg)
    assert _texts(a.train_prompts) == _texts(b.train_prompts)
    assert _texts(a.eval_prompts) == _texts(b.eval_prompts)
    train, held_out = set(_texts(a.train_prompts)), set(_texts(a.eval_prompts))
    assert len(train) == 4096 and len(held_out) == 512  # no duplicates either
    assert not train & held_out
    other = make_task(TaskConfig(max_operand=99, num_prompts=4096, seed=4))
    assert _texts(other.eval_prompts) != _texts(a.eval_prompts)


def test_prompts_carry_their_answer_and_fit_max_new_tokens():
    task = make_task(TaskConfig(max_operand=99, num_prompts=100))
    for p in task.train_prompts + task.eval_prompts:
        left, right = p.text.removesuffix("=").split("+")
        assert p.columns["answer"] == str(int(left) + int(right))
        assert 0 <= int(left) <= 99 and 0 <= int(right) <= 99
    assert task.max_new_tokens == 4  # up to "198" and EOS
    assert make_task(TaskConfig(max_operand=9, num_prompts=10)).max_new_tokens == 3


def test_small_task_caps_train_prompts_at_what_is_left():
    task = make_task(TaskConfig(max_operand=9, num_prompts=4096))
    assert len(task.eval_prompts) == 10 and len(task.train_prompts) == 90


def test_warm_start_examples_and_corpus():
    task = make_task(TaskConfig(max_operand=20, num_prompts=50))
    examples = task.supervised_examples()
    assert len(examples) == 50
    for prompt, completion in examples:
        left, right = prompt.text.removesuffix("=").split("+")
        assert completion == str(int(left) + int(right))
    assert len(task.corpus()) == len(task.train_prompts) + len(task.eval_prompts)
    assert all("=" in line and line[-1].isdigit() for line in task.corpus())


def test_sample_train_is_a_function_of_the_seed():
    task = make_task(TaskConfig())
    first = _texts(task.sample_train(16, seed=7))
    assert first == _texts(task.sample_train(16, seed=7))
    assert len(set(first)) == 16
    assert first != _texts(task.sample_train(16, seed=8))


def test_the_built_in_task_is_walked_in_epochs_like_a_prompt_file():
    task = make_task(TaskConfig(num_prompts=40))
    batches = [task.batch_at(it, 10, seed=3) for it in range(8)]  # 4 batches an epoch
    for epoch in range(2):
        texts = [t for b, _ in batches[4 * epoch : 4 * epoch + 4] for t in _texts(b)]
        assert sorted(texts) == sorted(_texts(task.train_prompts))  # each prompt once
    assert batches[4][1] == {"data/epoch": 1.0, "data/position": 0.0}
    assert _texts(batches[0][0]) != _texts(batches[4][0])  # a new order each epoch
    assert _texts(task.batch_at(0, 10, seed=4)[0]) != _texts(batches[0][0])  # seeded


def test_unknown_task_names_the_choices():
    assert "addition" in TASKS
    with pytest.raises(ValueError, match="task.name 'nope' is unknown; allowed: addition"):
        make_task(TaskConfig(name="nope"))


COMPLETIONS = ["46", " 46\n", "45", "4 6", "abc", "", "046", "467", "4"]


def test_exact_reward_on_hand_made_completions():
    answers = ["46"] * len(COMPLETIONS)
    scores = addition_exact(["12+34="] * len(COMPLETIONS), COMPLETIONS, answer=answers)
    assert scores == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    # Integer answers and unrelated columns are accepted.
    assert addition_exact(["1+1="], ["2"], answer=[2], source=["x"]) == [1.0]


def test_digit_reward_gives_partial_credit_and_agrees_with_exact_at_one():
    answers = ["46"] * len(COMPLETIONS)
    scores = addition_digits(["12+34="] * len(COMPLETIONS), COMPLETIONS, answer=answers)
    assert scores == [1.0, 1.0, 0.5, 0.0, 0.0, 0.0, 0.0, pytest.approx(2 / 3), 0.5]
    exact = addition_exact(["12+34="] * len(COMPLETIONS), COMPLETIONS, answer=answers)
    assert [s == 1.0 for s in scores] == [e == 1.0 for e in exact]


def test_final_number_reads_the_last_number_of_each_side():
    answers = ["2 + 3 = 5\n#### 5", "#### 1,234", "72", "#### -4", "#### 3.50", "no number"]
    completions = ["3 then 5", "It is 1234.", "72.0 is 7 x 10 + 2", "-4", "3.5", "5"]
    assert final_number(["q"] * 6, completions, answer=answers) == [1.0, 1.0, 0.0, 1.0, 1.0, None]
    # the number before '####' is not the answer; a completion without a number scores 0
    assert final_number(["q"] * 2, ["3", "none"], answer=["3 + 4\n#### 7", "#### 7"]) == [0.0, 0.0]


def test_distance_reward_orders_answers_by_closeness():
    got = addition_distance(["12+34="] * 5, ["46", " 47", "56", "x", "1046"], answer=[46] * 5)
    assert got[0] == 0.0
    assert got[1] == pytest.approx(-math.log10(2))
    assert got[2] == pytest.approx(-math.log10(11))
    assert got[3] == -3.0  # not a number: below any answer within 999 of the right one
    assert got[4] == pytest.approx(-math.log10(1001))  # further off than that: lower still
    assert got[0] > got[1] > got[2] > got[3] > got[4]


def test_builtin_registry_and_lengths():
    assert {"addition_exact", "addition_digits"} <= set(BUILTIN_REWARDS)
    for fn in BUILTIN_REWARDS.values():
        assert fn([], [], answer=[]) == []
        assert len(fn(["1+2="] * 3, ["3", "x", ""], answer=["3"] * 3)) == 3
        with pytest.raises(ValueError):  # misaligned columns are an error, not a silent cut
            fn(["1+2="] * 2, ["3", "3"], answer=["3"])


def test_multiplication_prompts_and_the_calculator_episode_they_teach():
    from rlhf.data.tasks import MultiplicationTask
    from rlhf.envs.base import Step
    from rlhf.envs.builtin import Calculator

    task = MultiplicationTask(TaskConfig(name="multiplication", num_prompts=3000))
    assert len(task.eval_prompts) == 512 and len(task.train_prompts) == 3000
    held = {p.text for p in task.eval_prompts}
    assert not held & {p.text for p in task.train_prompts}
    p = task.train_prompts[0]
    a, b = (int(x) for x in p.text[:-1].split("*"))
    assert 100 <= a <= 999 and 10 <= b <= 99 and p.columns["answer"] == str(a * b)
    call, result, answer = task.episode(p)
    env = Calculator()
    env.reset(p.text, **p.columns)
    step = env.step(call)  # the calculator answers the call as the warm start shows it
    assert step.observation == result and not step.done
    assert env.step(answer) == Step("", 1.0, True)
    examples = task.supervised_examples()
    whole = [c for q, c in examples if isinstance(c, list) and q.text.endswith("=")]
    opened = [(q, c) for q, c in examples if q.text.endswith("=<calc>")]
    assert 0.02 * 3000 < len(whole) < 0.1 * 3000  # a few whole episodes from the prompt
    assert 0.2 * 3000 < len(opened) < 0.4 * 3000  # how a call goes once made
    direct = [c for q, c in examples if isinstance(c, str)]
    assert len(whole) + len(opened) + len(direct) == 3000
    q, (rest, result, answer) = opened[0]
    asked = replace(q, text=q.text.removesuffix("<calc>"))
    assert "<calc>" + rest == task.episode(asked)[0]  # the call, its tag in the prompt
    assert result == f"<result>{q.columns['answer']}</result>" and answer == q.columns["answer"]
    corpus = "".join(task.corpus())
    assert "<calc>" in corpus and "<result>" in corpus  # the tokenizer sees the tags


def test_guess_number_games_the_warm_start_shows_are_played_by_the_environment():
    """Every supervised game is what the guess_number environment answers turn by turn, each
    guess among the numbers the answers so far leave possible, the last one the secret; the
    mean length is the unplanned player's (~4.1 turns), above halving's 49/15."""
    from rlhf.data.tasks import GuessNumberTask
    from rlhf.envs.builtin import GuessNumber

    task = GuessNumberTask(TaskConfig(name="guess_number", num_prompts=2000))
    assert len(task.eval_prompts) == 512 and len(task.train_prompts) == 2000
    secrets = {int(str(p.columns["answer"])) for p in task.train_prompts}
    assert secrets == set(range(1, 16))
    turns = []
    for prompt, pieces in task.supervised_examples():
        assert isinstance(pieces, list)
        env = GuessNumber()
        env.reset(prompt.text, **prompt.columns)
        low, high = 1, 15
        for i, guess in enumerate(pieces[::2]):
            assert guess.endswith(";") and low <= int(guess[:-1]) <= high
            step = env.step(guess)
            if i == len(pieces) // 2:
                assert step.done and step.reward == 1.0
            else:
                assert step.observation == pieces[2 * i + 1] and not step.done
                low, high = (int(guess[:-1]) + 1, high) if "higher" in step.observation else (
                    low, int(guess[:-1]) - 1)  # fmt: skip
        turns.append(len(pieces) // 2 + 1)
    # The mean of 2000 games, each with a standard deviation of ~1.3 turns: one SE ~0.03.
    assert 3.9 < sum(turns) / len(turns) < 4.3
