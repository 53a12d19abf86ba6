"""What a run evaluates with, or why it evaluates nothing, and a summary that stays valid JSON
(rlhf/run/preflight.py, rlhf/driver/trainer.py `json_safe`, rlhf/run/train.py `format_summary`)."""

from __future__ import annotations

import json
import math

import pytest

from rlhf.config import ConfigError, load_config
from rlhf.data.prompt_files import make_prompts
from rlhf.driver.trainer import json_safe
from rlhf.evaluation.plan import evaluation_skipped
from rlhf.run.preflight import check_before_start
from rlhf.run.train import format_summary


@pytest.fixture
def files(tmp_path, monkeypatch):
    """A prompt file without `answer`, one with it, and a model folder (config only)."""
    from transformers import LlamaConfig

    monkeypatch.chdir(tmp_path)
    (tmp_path / "questions.jsonl").write_text(
        "".join(json.dumps({"prompt": f"q{i}", "topic": "t"}) + "\n" for i in range(20))
    )
    (tmp_path / "answered.jsonl").write_text(
        "".join(json.dumps({"prompt": f"{i}+1=", "answer": str(i + 1)}) + "\n" for i in range(20))
    )
    (tmp_path / "judges.py").write_text(
        "def by_topic(prompts, completions_a, completions_b, topic):\n"
        "    return [0.5] * len(prompts)\n"
        "def by_level(prompts, completions_a, completions_b, level, **_):\n"
        "    return [0.5] * len(prompts)\n"
    )
    LlamaConfig(hidden_size=32, num_attention_heads=2).save_pretrained(tmp_path / "model")
    return tmp_path


def cfg_of(*overrides: str):
    return load_config(None, ["model.path=model", *overrides])


def test_a_preference_run_judged_by_a_function_skips_an_evaluation_it_cannot_score(files):
    cfg = cfg_of(
        "data.train=questions.jsonl",
        "algorithm.name=online_dpo",
        "reward.judge.kind=function",
        "reward.judge.function=judges:by_topic",
    )
    task = check_before_start(cfg)  # training never calls addition_exact: no error
    reason = evaluation_skipped(cfg, task)
    assert reason is not None and "answer" in reason and "rlhf eval" in reason


def test_training_on_rewards_that_need_a_missing_column_stops_before_the_run(files):
    with pytest.raises(ConfigError, match=r"^reward.functions\[0\]: 'addition_exact' needs"):
        check_before_start(cfg_of("data.train=questions.jsonl"))


def test_a_judge_that_needs_a_missing_column_stops_before_the_run(files):
    cfg = cfg_of(
        "data.train=questions.jsonl",
        "algorithm.name=online_dpo",
        "reward.judge.kind=function",
        "reward.judge.function=judges:by_level",
    )
    with pytest.raises(ConfigError, match="^reward.judge.function: 'judges:by_level' needs"):
        check_before_start(cfg)


def test_the_configured_rewards_evaluate_a_prompt_file_that_feeds_them(files):
    cfg = cfg_of("data.train=answered.jsonl")
    assert evaluation_skipped(cfg, check_before_start(cfg)) is None


def test_no_held_out_prompts_means_no_evaluation_and_says_how_to_get_one(files):
    cfg = cfg_of("data.train=answered.jsonl", "data.eval_fraction=0")
    task = make_prompts(cfg)
    assert len(task.train_prompts) == 20 and task.eval_prompts == []
    assert "data.eval" in evaluation_skipped(cfg, task)


def test_the_summary_is_strict_json_and_reads_without_numbers():
    summary = {
        "eval/greedy_reward_before": None,
        "eval/greedy_reward_after": None,
        "eval/greedy_rise": None,
        "eval/skipped": "no held-out prompts",
        "reward/first_10pct": math.nan,
        "reward/last_10pct": 0.5,
        "reward/rise": math.nan,
        "nested": [math.inf, {"x": -math.inf}],
        "iterations": 3,
        "seconds/total": 1.0,
        "run_dir": "runs/x",
    }
    text = json.dumps(json_safe(summary))

    def refuse(name: str) -> None:
        raise ValueError(f"not JSON: {name}")

    loaded = json.loads(text, parse_constant=refuse)
    assert loaded["reward/first_10pct"] is None and loaded["nested"] == [None, {"x": None}]
    shown = format_summary(summary)
    assert "skipped (no held-out prompts)" in shown and "nan" not in shown
