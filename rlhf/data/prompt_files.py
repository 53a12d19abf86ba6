"""Prompts from the user's files: JSONL, Parquet, CSV, or a saved Hugging Face dataset folder,
read with the `datasets` library.

`data.prompt_key` names the prompt column: a string, or a list of chat messages. Every other
column travels with its prompt and reaches reward functions as a keyword argument of that
name (as in TRL). The order is shuffled with `run.seed`; without `data.eval`, the last
`data.eval_fraction` of the shuffled rows is held out for evaluation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rlhf.config import Config, ConfigError
from rlhf.data.tasks import Task
from rlhf.types import Prompt

FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def read_rows(path: str, field: str) -> list[dict[str, Any]]:
    """Every row of the file or saved dataset at `path`; errors name `field`."""
    import datasets

    datasets.disable_progress_bars()
    where = Path(path).expanduser()
    try:
        if where.is_dir():
            loaded = datasets.load_from_disk(str(where))
            if isinstance(loaded, datasets.DatasetDict):
                if "train" not in loaded:
                    raise ConfigError(
                        f"{field}: {str(where)!r} has splits {list(loaded)}, no train"
                    )
                loaded = loaded["train"]
        elif where.is_file():
            kind = FORMATS.get(where.suffix.lower())
            if kind is None:
                raise ConfigError(
                    f"{field}: {str(where)!r} is not {', '.join(FORMATS)} nor a dataset folder"
                )
            loaded = datasets.load_dataset(kind, data_files=str(where), split="train")
        else:
            raise ConfigError(f"{field}: {str(where)!r} does not exist")
    except ConfigError:
        raise
    except Exception as err:  # datasets and pyarrow raise many kinds for a broken file
        raise ConfigError(f"{field}: cannot read {str(where)!r}: {err}") from None
    return loaded.to_list()


def _prompt(row: dict[str, Any], key: str, mode: str, where: str) -> Prompt:
    value = row[key]
    columns = {k: v for k, v in row.items() if k != key}
    if isinstance(value, str):
        if mode == "always":
            return Prompt(value, columns, [{"role": "user", "content": value}])
        return Prompt(value, columns)
    ok = (
        isinstance(value, list)
        and value
        and all(
            isinstance(m, dict)
            and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str)
            for m in value
        )
    )
    if not ok:
        raise ConfigError(
            f"data.prompt_key: {where}: {key!r} must be a string or a list of "
            f"{{role, content}} messages, got {str(value)[:100]!r}"
        )
    if mode == "never":
        raise ConfigError(f"data.chat_template=never, but {where} holds chat messages")
    messages = [{"role": m["role"], "content": m["content"]} for m in value]
    users = [m["content"] for m in messages if m["role"] == "user"]
    return Prompt(users[-1] if users else messages[-1]["content"], columns, messages)


def _prompts(rows: list[dict[str, Any]], cfg: Config, field: str) -> list[Prompt]:
    key = cfg.data.prompt_key
    if not rows:
        raise ConfigError(f"{field}: no rows")
    if key not in rows[0]:
        raise ConfigError(
            f"data.prompt_key: {getattr(cfg.data, field.split('.')[1])!r} has no column {key!r}; "
            f"its columns: {', '.join(rows[0])}"
        )
    return [_prompt(r, key, cfg.data.chat_template, f"{field} row {i}") for i, r in enumerate(rows)]


class PromptFileTask(Task):
    """The prompts of `data.train` (and `data.eval`)."""

    name = "data"
    default_reward = None  # evaluation scores with the configured reward functions

    def __init__(self, cfg: Config) -> None:
        assert cfg.data.train is not None
        train = _prompts(read_rows(cfg.data.train, "data.train"), cfg, "data.train")
        order = np.random.default_rng(cfg.run.seed).permutation(len(train))
        train = [train[i] for i in order]
        if cfg.data.eval is not None:
            self.eval_prompts = _prompts(read_rows(cfg.data.eval, "data.eval"), cfg, "data.eval")
        elif cfg.data.eval_fraction == 0:
            self.eval_prompts = []
        else:
            held = max(1, int(round(len(train) * cfg.data.eval_fraction)))
            if held >= len(train):
                raise ConfigError(
                    f"data.train: {len(train)} row(s), and data.eval_fraction="
                    f"{cfg.data.eval_fraction} holds {held} out for evaluation, leaving none to "
                    "train on: give held-out prompts in data.eval, or set data.eval_fraction=0 "
                    "(no held-out evaluation)"
                )
            train, self.eval_prompts = train[:-held], train[-held:]
        self.train_prompts = train

    @property
    def max_new_tokens(self) -> int:
        raise ConfigError(
            "data.train: the tiny default model needs a built-in task; set model.path"
        )

    def target(self, prompt: Prompt) -> str:
        raise ConfigError("data.train: the warm start needs a built-in task; set model.path")


def make_prompts(cfg: Config) -> Task:
    """The run's prompts: `data.train` when given, else the built-in task."""
    from rlhf.data.tasks import make_task

    if cfg.data.train is not None:
        return PromptFileTask(cfg)
    return make_task(cfg.task)
