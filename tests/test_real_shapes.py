"""`rlhf train` as a new user runs it on their own chat data, with the default engine (vLLM)
and every other setting default: the command that used to crash vLLM on CPU at any prompt over
~16 tokens (chunked prefill with seeded requests), and the same with 400-token prompts and
256-token answers, where prompts too long for the model are left out and counted."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf.config import load_config
from tests.run_options import NO_DASHBOARD, ONE_EACH

pytestmark = pytest.mark.slow

# The user's reward module, beside their prompt file: it reads both extra columns.
REWARDS = """
def uses_target(prompts, completions, target, level, **_):
    assert all(lv in ("easy", "hard") for lv in level)  # a missing column fails the sample
    return [1.0 if c.strip() == t else 0.0 for c, t in zip(completions, target)]
"""
TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def train(folder: Path, *overrides: str) -> subprocess.CompletedProcess:
    """`rlhf train` launched from the user's folder, as they would."""
    return subprocess.run(
        [sys.executable, "-m", "rlhf.cli", "train", *overrides, "run.progress_bar=false",
         f"run.output_dir={folder / 'runs'}", "run.name=run"],
        capture_output=True, text=True, timeout=900, cwd=folder,
    )  # fmt: skip


def strict_json(path: Path) -> dict:
    """A JSON file that must be strict JSON (no bare NaN or Infinity)."""

    def refuse(name: str) -> None:
        raise AssertionError(f"{path.name} holds {name}: not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def records_of(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def chat_row(content: str, a: int, b: int) -> dict:
    return {
        "prompt": [{"role": "user", "content": content}],
        "target": str(a + b),
        "level": "easy" if a + b < 50 else "hard",
    }


def test_the_new_users_command_trains_on_vllm(tmp_path):
    """100 chat prompts with two extra columns, the default model's folder (a chat template of
    its own here, and no pad token), the user's reward function, defaults otherwise."""
    from transformers import AutoTokenizer

    from rlhf.models.default_model import prepare_model

    model = tmp_path / "model"
    shutil.copytree(prepare_model(load_config(None, [])), model)
    tokenizer = AutoTokenizer.from_pretrained(model)
    tokenizer.pad_token = None
    tokenizer.chat_template = TEMPLATE
    tokenizer.save_pretrained(model)
    rows = [chat_row(f"{a}+{b}=", a, b) for a, b in ((i % 50, (7 * i) % 50) for i in range(100))]
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "myrewards.py").write_text(REWARDS)

    proc = train(tmp_path, f"model.path={model}", "data.train=prompts.jsonl",
                 "data.prompt_key=prompt", 'reward.functions=[{name: "myrewards:uses_target"}]',
                 "run.iterations=5", "run.record_batches=true")  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = tmp_path / "runs" / "run"
    records = records_of(run)
    assert len(records) == 5
    assert [(r["data/epoch"], r["data/position"]) for r in records[:2]] == [(0, 0), (0, 64)]
    for r in records:  # every sample scored against its row's columns
        assert r["reward/dropped"] == 0 and 0.0 <= r["reward/uses_target/mean"] <= 1.0
        assert r["data/filtered_too_long"] == 0
        assert r["rollout/prompt_length_max"] > 16  # past where vLLM used to crash
        # the engines sample what the learner computes, on chat prompts (float32 rounding)
        assert r["sync/logprob_abs_diff"] < 1e-5
    summary = strict_json(run / "summary.json")
    assert summary["eval/greedy_reward_before"] is not None and "eval/skipped" not in summary
    batches = [json.loads(x) for x in (run / "batches.jsonl").read_text().splitlines()]
    held = {r["prompt"][0]["content"] for r in rows}
    assert all(set(b["prompts"]) <= held for b in batches)  # the file's prompts


def test_400_token_prompts_and_256_token_answers_train_on_vllm(tmp_path):
    """The same command on a model with 1,024 positions (one engine, one learner rank): prompts
    of about 400 tokens, a tenth of them about 900 (no room for 256 new tokens: left out and
    counted), 256-token answers."""
    from transformers import AutoTokenizer

    from rlhf.data.chat import prompt_ids
    from rlhf.models.tiny import build_tiny_model
    from rlhf.types import Prompt

    words = "a farmer has apples and gives some to a friend who buys more at the market".split()
    corpus = [" ".join(words[i:] + words[:i]) + f" {i}+{i}={2 * i}" for i in range(200)]
    model = build_tiny_model(tmp_path / "model", corpus, max_position_embeddings=1024)
    tokenizer = AutoTokenizer.from_pretrained(model)

    def tokens(content: str) -> int:
        messages = [{"role": "user", "content": content}]
        return len(prompt_ids(tokenizer, Prompt(content, messages=messages)))

    sentence = " ".join(words) + ". "
    base, unit = tokens("1+2="), tokens(sentence * 2 + "1+2=") - tokens(sentence + "1+2=")
    rows = []
    for i in range(40):
        a, b = i % 50, (7 * i) % 50
        want = 900 if i % 10 == 0 else 400
        rows.append(chat_row(sentence * ((want - base) // unit + 1) + f"{a}+{b}=", a, b))
    lengths = [tokens(r["prompt"][0]["content"]) for r in rows]
    assert min(lengths) >= 400 and max(lengths) > 1024 - 256  # the shapes this test is about
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "myrewards.py").write_text(REWARDS)

    proc = train(tmp_path, f"model.path={model}", "data.train=prompts.jsonl",
                 "data.prompt_key=prompt", 'reward.functions=[{name: "myrewards:uses_target"}]',
                 "run.iterations=2", "rollout.max_new_tokens=256",
                 "rollout.prompts_per_iteration=8", "rollout.samples_per_prompt=4",
                 *ONE_EACH, NO_DASHBOARD)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    too_long = sum(n > 1024 - 256 for n in lengths)
    assert f"{too_long} prompts too long" in proc.stdout
    run = tmp_path / "runs" / "run"
    records = records_of(run)
    assert len(records) == 2
    kept = [n for n in lengths if n <= 1024 - 256]
    for r in records:
        assert r["data/filtered_too_long"] == too_long and r["reward/dropped"] == 0
        assert min(kept) <= r["rollout/prompt_length_max"] <= max(kept)
        assert r["rollout/length_max"] == 256  # a random tiny model rarely says EOS
        for pool in ("rollout", "learner", "reward"):  # each pool's memory, every iteration
            assert 0.1 < r[f"memory/{pool}/peak_gib"] < 24
        assert r["sync/logprob_abs_diff"] < 1e-5
    summary = strict_json(run / "summary.json")
    # the engines' context follows the prompts: the longest kept one plus the answer budget
    assert summary["rollout/max_model_len"] == max(kept) + 256
    assert summary["data/filtered_too_long"] == too_long
