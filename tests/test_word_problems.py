"""The built-in word_problems task: GSM8K-shaped chat prompts and worked answers, the launch
config that runs it, and the model that config builds."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlhf.config import load_config
from rlhf.data.chat import prompt_ids
from rlhf.data.tasks import TASKS, make_task
from rlhf.data.word_problems import generate
from rlhf.models.families import SpecialIds, TinyShape, family_config
from rlhf.models.tiny import train_tokenizer
from rlhf.models.warm_start import _encode
from rlhf.rewards.builtin import final_number

LAUNCH = Path(__file__).resolve().parents[1] / "launch" / "configs" / "word_problems.yaml"
# The shapes: prompts of 150 to 400 tokens, answers of 64 to 256 (EOS included).
PROMPT_TOKENS = (150, 400)
ANSWER_TOKENS = (64, 256)
COMPUTATION = re.compile(r"(\d+) ([-+*/]) (\d+) = (\d+)")


@pytest.fixture(scope="module")
def cfg():
    return load_config(str(LAUNCH), [])


@pytest.fixture(scope="module")
def task(cfg):
    # the launch config's task with fewer training prompts: the same generator and split
    return make_task(cfg.task.model_copy(update={"num_prompts": 1500}))


@pytest.fixture(scope="module")
def tokenizer(cfg, task):
    # what build_tiny_model trains (vocabulary of the launch config), on this task's corpus
    return train_tokenizer(task.corpus(), vocab_size=cfg.model.tiny.vocab_size)


def test_the_launch_config_runs_the_task_with_its_reward_on_vllm(cfg):
    assert cfg.task.name == "word_problems"
    assert [f.name for f in cfg.reward.functions] == ["final_number"]
    assert TASKS[cfg.task.name].default_reward == "final_number"  # greedy evaluation's
    assert cfg.rollout.engine == "vllm"
    assert cfg.model.path is None  # the tiny model, built and warm-started locally
    assert cfg.rollout.max_new_tokens <= ANSWER_TOKENS[1]
    # the longest prompt and answer fit the engine and the model's positions
    need = PROMPT_TOKENS[1] + cfg.rollout.max_new_tokens
    assert need <= cfg.rollout.max_model_len <= cfg.model.tiny.max_position_embeddings
    assert cfg.learner.micro_batch_size >= cfg.samples_per_prompt()


def test_the_launch_config_builds_a_model_of_at_least_10m_parameters(cfg):
    t = cfg.model.tiny
    shape = TinyShape(**t.model_dump(include={f.name for f in dataclasses.fields(TinyShape)}))
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):  # shapes only: nothing is allocated
        model = AutoModelForCausalLM.from_config(
            family_config(t.family, shape, SpecialIds(t.vocab_size, 1, 2, 0))
        )
    total = sum(p.numel() for p in model.parameters())
    embeddings = model.get_input_embeddings().weight.numel()
    embeddings += model.get_output_embeddings().weight.numel()
    assert total >= 10_000_000, total
    assert total - embeddings >= 9_000_000  # the size is in the layers, not the vocabulary
    assert t.family == "llama"


def test_prompts_and_answers_have_the_realistic_shapes(task, tokenizer):
    prompts = task.train_prompts + task.eval_prompts
    prompt_lengths = [len(prompt_ids(tokenizer, p)) for p in prompts]
    answer_lengths = [len(tokenizer(task.target(p)).input_ids) + 1 for p in prompts]  # + EOS
    assert PROMPT_TOKENS[0] <= min(prompt_lengths) and max(prompt_lengths) <= PROMPT_TOKENS[1]
    assert ANSWER_TOKENS[0] <= min(answer_lengths) and max(answer_lengths) <= ANSWER_TOKENS[1]
    assert max(answer_lengths) <= task.max_new_tokens
    # lengths spread out (filler sentences vary), so batches hold rows of unequal length
    assert max(prompt_lengths) - min(prompt_lengths) >= 80
    assert max(answer_lengths) - min(answer_lengths) >= 50
    text = tokenizer.decode(prompt_ids(tokenizer, prompts[0]))
    assert text.startswith("system: You are a careful math tutor.")
    assert f"\nuser: {prompts[0].text}\n" in text and text.endswith("assistant: ")


def test_the_split_is_deterministic_disjoint_and_seeded(cfg, task):
    again = make_task(cfg.task.model_copy(update={"num_prompts": 1500}))
    assert [p.messages for p in again.train_prompts] == [p.messages for p in task.train_prompts]
    assert [p.columns for p in again.eval_prompts] == [p.columns for p in task.eval_prompts]
    train, held_out = {p.text for p in task.train_prompts}, {p.text for p in task.eval_prompts}
    assert len(train) == 1500 and len(held_out) == 512  # distinct questions
    assert not train & held_out
    other = make_task(cfg.task.model_copy(update={"num_prompts": 1500, "seed": 1}))
    assert not {p.text for p in other.eval_prompts} & held_out


def test_worked_answers_compute_each_step_and_end_with_the_answer(task):
    steps = []
    for p in task.train_prompts[:500] + task.eval_prompts:
        solution = task.target(p)
        lines = solution.split("\n")
        assert lines[-1] == f"#### {lines[-1].removeprefix('#### ')}"
        answer = int(lines[-1].removeprefix("#### "))
        found = COMPUTATION.findall(solution)
        for a, op, b, c in found:
            a, b, c = int(a), int(b), int(c)
            assert {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op] == c, solution
            assert op != "/" or a % b == 0  # divisions are exact
            assert max(a, b, c) < 100
        assert int(found[-1][3]) == answer  # the last computation gives the answer
        # each step's new number is read from the prompt (or is the step before's result,
        # or "twice"/"three times" in words), so solving means reading the whole prompt
        previous = found[0][0]
        for _, op, b, c in found:
            in_prompt = re.search(rf"\b{b}\b", p.text) is not None
            assert in_prompt or b == previous or (op == "*" and b in "23"), (b, p.text)
            previous = c
        steps.append(len(found))
    assert min(steps) == 2 and max(steps) >= 5  # 2 or 3 operations, packs take two lines
    ops = {op for p in task.eval_prompts for _, op, _, _ in COMPUTATION.findall(task.target(p))}
    assert ops == {"+", "-", "*", "/"}


def test_the_warm_start_also_practises_the_solutions_arithmetic(task):
    examples = task.supervised_examples()
    problems = [(p, c) for p, c in examples if p.messages is not None]
    practice = [c for p, c in examples if p.messages is None]
    # every training problem once, with its own solution; most without their background
    assert len(problems) == len(task.train_prompts)
    short = 0
    for (p, c), full in zip(problems, task.train_prompts, strict=True):
        assert c == task.target(full) and p.columns == full.columns
        assert p.messages[0] == full.messages[0]  # the system message stays
        user = full.messages[1]["content"]
        if p.messages != full.messages:
            short += 1
            background, problem = user.split("\n\n")
            assert p.messages[1]["content"] == p.text == problem and len(background) > 200
    expected = task.warm_start_short_fraction * len(problems)
    assert abs(short - expected) < 4 * math.sqrt(expected), (short, expected)  # binomial
    assert len(practice) == len(task.train_prompts) // 2
    solutions = "\n".join(c for _, c in problems)
    for row in practice[:50]:
        lines = row.split("\n")
        assert len(lines) == task.practice_row
        for line in lines:
            a, op, b, _, c = line.removeprefix("so ").split(" ")
            assert {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}.get(
                op, int(a) // int(b)
            ) == int(c)
            assert f" {line.removeprefix('so ')} " in solutions  # as a solution writes it
    assert examples == task.supervised_examples()  # seeded


def test_final_number_scores_the_reference_one_and_a_wrong_number_zero(task):
    prompts = task.eval_prompts[:64]
    texts = [p.text for p in prompts]
    answers = [p.columns["answer"] for p in prompts]
    assert final_number(texts, [task.target(p) for p in prompts], answer=answers) == [1.0] * 64
    finals = [int(a.rsplit("#### ", 1)[1]) for a in answers]
    right = [f"so the answer is {n}.\n#### {n}" for n in finals]
    wrong = [f"{a.rsplit('####', 1)[0]}#### {n + 1}" for a, n in zip(answers, finals, strict=True)]
    assert final_number(texts, right, answer=answers) == [1.0] * 64
    assert final_number(texts, wrong, answer=answers) == [0.0] * 64


def test_the_warm_start_trains_on_the_prompt_a_run_sends(task, tokenizer):
    examples = _encode(task, tokenizer)
    supervised = task.supervised_examples()
    for (ids, prompt_length), (p, _) in zip(examples[:20], supervised, strict=False):
        # chat template and all; the short ones are their problem's prompt minus background
        assert ids[:prompt_length] == prompt_ids(tokenizer, p)
        assert p.messages is not None
        completion = tokenizer.decode(ids[prompt_length:])
        assert completion == task.target(p) + tokenizer.eos_token


def test_generation_is_a_pure_function_of_the_seed():
    assert generate(50, seed=3) == generate(50, seed=3)
    assert generate(50, seed=3) != generate(50, seed=4)


@pytest.mark.slow
def test_a_small_model_runs_the_launch_config_end_to_end(tmp_path):
    """`rlhf train -c launch/configs/word_problems.yaml`, shrunk to a 2-layer model and 2
    iterations: prompts of 150+ tokens go through vLLM generation, rewards, DeepSpeed
    training and a weight sync, and greedy evaluation runs before and after."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "rlhf.cli",
            "train",
            "-c",
            str(LAUNCH),
            *SMOKE,
            f"model.cache_dir={tmp_path / 'cache'}",
            f"run.output_dir={tmp_path}",
            "run.name=smoke",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = tmp_path / "smoke"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2
    for r in records:
        assert r["rollout/tokens"] > 0 and r["train/skipped"] == 0
        assert math.isfinite(r["loss/total"]) and r["learner/grad_norm"] > 0
    # The learner's log-probs of the sampled tokens, computed after the long prompt, equal
    # vLLM's: both saw the same prompt, and the first sync reached the engine.
    assert records[1]["sync/logprob_abs_diff"] < 1e-3, records[1]
    summary = json.loads((run / "summary.json").read_text())
    assert 0.0 <= summary["eval/greedy_reward_before"] <= 1.0
    assert 0.0 <= summary["eval/greedy_reward_after"] <= 1.0
    # what was generated from: the iterations' prompts, under the model's own tokenizer
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(run / "final")
    by_text = {p.text: p for p in make_task(load_config(str(LAUNCH), SMOKE).task).train_prompts}
    batches = [json.loads(line) for line in (run / "batches.jsonl").read_text().splitlines()]
    lengths = [len(prompt_ids(tokenizer, by_text[t])) for b in batches for t in b["prompts"]]
    assert len(lengths) == 4 and min(lengths) >= PROMPT_TOKENS[0], lengths


# The launch config shrunk to seconds: a 2-layer model, 2 iterations of 2 prompts x 2 samples,
# one engine and one learner rank. A barely trained model scores 0 on every sample, so the
# training reward is one that differs within groups (the updates are then not zero);
# greedy evaluation still scores with the task's final_number.
SMOKE = [
    "reward.functions=[{name: 'tests.rewards_for_tests:distinct_tokens'}]",
    "task.num_prompts=64",
    "model.tiny.hidden_size=64",
    "model.tiny.num_layers=2",
    "model.tiny.num_heads=2",
    "model.tiny.num_kv_heads=1",
    "model.tiny.intermediate_size=128",
    "warm_start.steps=2",
    "warm_start.batch_size=4",
    "rollout.prompts_per_iteration=2",
    "rollout.samples_per_prompt=2",
    "rollout.max_new_tokens=24",
    "rollout.kv_cache_bytes=67108864",
    "learner.micro_batch_size=2",
    "topology.rollout.workers=1",
    "topology.learner.workers=1",
    "run.iterations=2",
    "run.eval_prompts=4",
    "run.progress_bar=false",
    "ray.include_dashboard=false",
    "run.save_model=true",
    "run.record_batches=true",
    "run.tensorboard=false",
]
