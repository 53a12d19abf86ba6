"""Every row of docs/user_errors.md, run as written: exit code 2, the documented message on
stderr, and no run folder. The table is the test's data, so the docs cannot drift."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

import rlhf.run.train
from rlhf.cli import main

DOC = Path(__file__).resolve().parent.parent / "docs" / "user_errors.md"


def _rows() -> list[tuple[str, str, str]]:
    rows = []
    for line in DOC.read_text().splitlines():
        m = re.match(r"\| ([^|`]+) \| `([^`]+)` \| (.+) \|$", line)
        if m:
            rows.append((m.group(1).strip(), m.group(2), m.group(3)))
    return rows


def test_the_table_has_every_mistake_the_docs_promise():
    mistakes = {r[0] for r in _rows()}
    for kind in ("unknown task", "missing model folder", "malformed YAML in a file",
                 "malformed YAML in an override", "misspelt built-in reward function",
                 "unknown dataset file", "a dataset without the prompt key"):  # fmt: skip
        assert kind in mistakes


@pytest.fixture(scope="module")
def short_model(tmp_path_factory) -> Path:
    """A model folder whose config takes 64 positions (never run: only read)."""
    from rlhf.models.tiny import build_tiny_model

    corpus = [f"{a}+{a}={2 * a}" for a in range(50)]
    path = tmp_path_factory.mktemp("short") / "model"
    return build_tiny_model(path, corpus, hidden_size=64, num_heads=2, max_position_embeddings=64)


@pytest.mark.parametrize("mistake,command,message", _rows(), ids=[r[0] for r in _rows()])
def test_a_mistake_exits_2_with_its_message_before_anything_starts(
    mistake, command, message, tmp_path, monkeypatch, capsys, short_model
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.yaml").write_text("rollout: {temperature: [1\n")
    (tmp_path / "prompts.jsonl").write_text('{"question": "1+2=", "answer": "3"}\n' * 4)
    (tmp_path / "questions.jsonl").write_text('{"question": "1+2="}\n' * 4)
    (tmp_path / "one.jsonl").write_text('{"question": "1+2=", "answer": "3"}\n')
    (tmp_path / "short-model").symlink_to(short_model)
    (tmp_path / "old-run").mkdir()
    (tmp_path / "old-run" / "config.yaml").write_text("run: {iterations: 2}\n")

    def started(cfg):  # the checks must stop the run before this
        raise AssertionError(f"{mistake}: got past the checks to the run folder")

    monkeypatch.setattr(rlhf.run.train, "make_run_dir", started)
    argv = shlex.split(command)
    assert argv[0] == "rlhf"
    runs = tmp_path / "runs"
    assert main([*argv[1:], f"run.output_dir={runs}"]) == 2
    err = capsys.readouterr().err.strip()
    quoted = re.findall(r"`([^`]+)`", message)
    if message == f"`{quoted[0]}`":  # the whole message
        assert err == quoted[0]
    else:  # its first words (the rest is described)
        assert err.startswith(quoted[0]), err
    assert not runs.exists()
