"""Prompts from the user's files (rlhf/data/prompt_files.py) and chat rendering
(rlhf/data/chat.py): every format gives the same prompts; mistakes name the field."""

from __future__ import annotations

import json

import pytest

from rlhf.config import ConfigError, load_config
from rlhf.data.chat import prompt_ids
from rlhf.data.prompt_files import make_prompts
from rlhf.types import Prompt

ROWS = [{"prompt": f"{a}+{a + 1}=", "answer": f"x{2 * a + 1}", "level": f"l{a % 3}"}
        for a in range(40)]  # fmt: skip
TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def _write_all_formats(folder) -> dict[str, str]:
    import datasets

    paths = {"jsonl": folder / "p.jsonl", "csv": folder / "p.csv", "parquet": folder / "p.parquet",
             "disk": folder / "saved"}  # fmt: skip
    paths["jsonl"].write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    table = datasets.Dataset.from_list(ROWS)
    table.to_csv(str(paths["csv"]), index=False)
    table.to_parquet(str(paths["parquet"]))
    table.save_to_disk(str(paths["disk"]))
    return {k: str(v) for k, v in paths.items()}


def test_every_file_format_gives_the_same_shuffled_split(tmp_path):
    got = {}
    for kind, path in _write_all_formats(tmp_path).items():
        task = make_prompts(load_config(None, [f"data.train={path}", "data.eval_fraction=0.1"]))
        got[kind] = (task.train_prompts, task.eval_prompts)
    first = got["jsonl"]
    assert all(v == first for v in got.values())
    train, held = first
    assert len(train) == 36 and len(held) == 4  # 10% of 40 held out
    assert {p.text for p in train} | {p.text for p in held} == {r["prompt"] for r in ROWS}
    assert [p.text for p in train] != [r["prompt"] for r in ROWS[:36]]  # shuffled (seeded)
    row = next(r for r in ROWS if r["prompt"] == train[0].text)
    assert train[0].columns == {"answer": row["answer"], "level": row["level"]}  # the others
    again = make_prompts(load_config(None, [f"data.train={tmp_path / 'p.jsonl'}",
                                            "data.eval_fraction=0.1"]))  # fmt: skip
    assert again.train_prompts == train  # the same seed, the same order


def test_batches_go_through_each_epoch_in_a_new_order_and_say_where_they_are(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    cfg = load_config(None, [f"data.train={path}", "data.eval_fraction=0.1"])
    task = make_prompts(cfg)  # 36 training prompts: batches of 12, three per epoch
    batches = [task.batch_at(it, 12, cfg.run.seed) for it in range(7)]
    epochs = [[p.text for b, _ in batches[3 * e : 3 * e + 3] for p in b] for e in range(2)]
    for texts in epochs:  # every training prompt once per epoch
        assert sorted(texts) == sorted(p.text for p in task.train_prompts)
    assert epochs[0] != epochs[1]  # a new order each epoch
    assert [w for _, w in batches[:4]] == [
        {"data/epoch": 0.0, "data/position": 0.0},
        {"data/epoch": 0.0, "data/position": 12.0},
        {"data/epoch": 0.0, "data/position": 24.0},
        {"data/epoch": 1.0, "data/position": 0.0},
    ]
    # a pure function of the iteration: another task object (a resumed run) agrees
    assert make_prompts(cfg).batch_at(5, 12, cfg.run.seed) == batches[5]


def test_the_example_config_reads_its_chat_prompt_file():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    cfg = load_config(root / "launch/configs/chat_prompts.yaml", [])
    cfg.data.train = str(root / cfg.data.train)
    task = make_prompts(cfg)
    assert len(task.train_prompts) + len(task.eval_prompts) == 256
    first = task.train_prompts[0]
    assert first.messages[0]["role"] == "system" and first.messages[-1]["content"] == first.text
    assert set(first.columns) == {"answer"}


def test_chat_prompts_render_with_the_template_and_strings_stay_text(tmp_path):
    from transformers import AutoTokenizer

    from rlhf.models.default_model import prepare_model

    rows = [{"prompt": [{"role": "system", "content": "add"}, {"role": "user", "content": "1+2="}],
             "answer": "3"}]  # fmt: skip
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps(rows[0]) + "\n" + json.dumps(rows[0]) + "\n")
    task = make_prompts(load_config(None, [f"data.train={path}"]))
    chat = task.train_prompts[0]
    assert chat.text == "1+2=" and chat.messages == rows[0]["prompt"]
    tokenizer = AutoTokenizer.from_pretrained(prepare_model(load_config(None, [])))
    tokenizer.chat_template = None  # the tiny model's has one: test without, then with ours
    with pytest.raises(ConfigError, match="no chat template"):
        prompt_ids(tokenizer, chat)
    tokenizer.chat_template = TEMPLATE
    rendered = "<system>add<user>1+2=<assistant>"
    assert prompt_ids(tokenizer, chat) == tokenizer(rendered, add_special_tokens=False).input_ids
    plain = Prompt("1+2=")
    assert prompt_ids(tokenizer, plain) == tokenizer("1+2=").input_ids
    # chat_template=always: a string becomes one user message
    text_file = tmp_path / "text.jsonl"
    text_file.write_text('{"prompt": "1+2="}\n{"prompt": "2+2="}\n')
    always = make_prompts(
        load_config(None, [f"data.train={text_file}", "data.chat_template=always"])
    )
    assert all(p.messages == [{"role": "user", "content": p.text}] for p in always.train_prompts)
    with pytest.raises(ConfigError, match="chat_template=never"):
        make_prompts(load_config(None, [f"data.train={path}", "data.chat_template=never"]))


@pytest.mark.parametrize(
    "content,override,match",
    [
        ('{"question": "1+2="}\n', "", r"data.prompt_key: .* has no column 'prompt'; its columns: question"),
        ('{"prompt": 3}\n{"prompt": 4}\n', "", r"must be a string or a list of \{role, content\}"),
        ('{"prompt": "a"}\n', "", "1 row\\(s\\), and data.eval_fraction=0.05 holds 1 out"),
        ("not json\n", "", r"data.train: cannot read"),
    ],
)  # fmt: skip
def test_file_mistakes_name_the_field(tmp_path, content, override, match):
    path = tmp_path / "p.jsonl"
    path.write_text(content)
    with pytest.raises(ConfigError, match=match):
        make_prompts(load_config(None, [f"data.train={path}", *filter(None, [override])]))
    with pytest.raises(ConfigError, match="does not exist"):
        make_prompts(load_config(None, [f"data.train={tmp_path / 'none.jsonl'}"]))
    with pytest.raises(ConfigError, match="is not .jsonl"):
        (tmp_path / "p.txt").write_text("x")
        make_prompts(load_config(None, [f"data.train={tmp_path / 'p.txt'}"]))


@pytest.mark.slow
def test_evaluation_generates_from_chat_prompts_as_a_run_does():
    """Greedy evaluation and `rlhf eval` give the model a chat prompt's rendered template (the
    tokens a run generates from), not its bare text."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlhf.models.default_model import prepare_model
    from rlhf.models.generation import greedy_completions
    from rlhf.types import Prompt

    path = prepare_model(load_config(None, []))
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    texts = ["1+2=", "10+20=", "7+85=", "99+99="]
    prompts = [Prompt(t, messages=[{"role": "user", "content": t}]) for t in texts]
    rendered = [
        tokenizer.apply_chat_template(p.messages, add_generation_prompt=True, tokenize=False)
        for p in prompts
    ]
    got = greedy_completions(model, tokenizer, prompts, 4)
    assert got == greedy_completions(model, tokenizer, rendered, 4)
    assert got != greedy_completions(model, tokenizer, texts, 4)  # the check can fail


# ---------------------------------------------------------------- the GPU example with Parquet
GPU_EXAMPLE = "launch/configs/qwen_word_problems.yaml"


def _gpu_example(overrides: list[str]):
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    cfg = load_config(root / GPU_EXAMPLE, overrides)
    cfg.data.train = str(root / cfg.data.train)
    return cfg


def test_the_gpu_example_passes_preflight_with_a_qwen2_folder_and_its_parquet_file(tmp_path):
    """The example through the real loader and `rlhf train`'s checks, a tiny random Qwen2
    folder standing in for Qwen2.5-0.5B-Instruct: the Parquet rows become chat prompts that
    render with the model's template, and the reward scores each answer by its number."""
    from transformers import AutoTokenizer

    from rlhf.models.tiny import build_tiny_model
    from rlhf.rewards.builtin import final_number
    from rlhf.run.preflight import check_before_start

    questions = [p.text for p in make_prompts(_gpu_example([])).train_prompts]
    model = build_tiny_model(tmp_path / "qwen", questions, family="qwen2", num_layers=1)
    cfg = _gpu_example([f"model.path={model}"])
    task = check_before_start(cfg)
    prompts = task.train_prompts + task.eval_prompts
    assert len(prompts) == 200 and len(task.eval_prompts) == 10
    first = prompts[0]
    assert first.messages == [{"role": "user", "content": first.text}]
    assert set(first.columns) == {"answer"} and "\n#### " in first.columns["answer"]

    tokenizer = AutoTokenizer.from_pretrained(model)
    rendered = tokenizer.decode(prompt_ids(tokenizer, first))
    assert rendered == f"user: {first.text}\nassistant: "

    answers = [p.columns["answer"] for p in prompts]
    numbers = [a.rsplit("#### ", 1)[1] for a in answers]
    texts = [p.text for p in prompts]
    right = final_number(texts, [f"So the answer is {n}." for n in numbers], answers)
    wrong = final_number(texts, [f"So the answer is {int(n) + 1}." for n in numbers], answers)
    assert right == [1.0] * 200 and wrong == [0.0] * 200


def test_the_gpu_example_computes_in_bfloat16_on_mock_gpus(monkeypatch):
    import torch

    from rlhf.models.dtypes import pool_dtype

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    cfg = _gpu_example([])
    got = {
        pool: pool_dtype(cfg, pool, getattr(cfg.topology, pool).num_gpus > 0)
        for pool in ("rollout", "learner", "reference")
    }
    assert got == {"rollout": "bfloat16", "learner": "bfloat16", "reference": "bfloat16"}
    cpu = _gpu_example(["topology.reference.num_gpus=0"])
    assert pool_dtype(cpu, "reference", cpu.topology.reference.num_gpus > 0) == "float32"
