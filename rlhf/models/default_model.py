"""The policy a run starts from: a user's model folder, or the tiny default built and cached.

The tiny default (tokenizer trained on the task's corpus, random weights of the family
`model.tiny.family` names, Llama by default, and a short supervised warm start) is kept in
`model.cache_dir` under a hash of every setting that shapes it, so a second run with the same
settings skips the build.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from rlhf.config import Config, ConfigError

# Bump whenever the way the default model is built changes (tokenizer, architecture
# constants, warm-start recipe), so stale caches are never reused.
BUILD_VERSION = 2
READY_FILE = "rlhf_ready.json"
# model.tiny fields added after version 2, with the value every earlier model was built with
FIELDS_ADDED_AFTER_V2 = {"family": "llama", "vocab_size": 512, "max_position_embeddings": 256}
WARM_START_FIELDS_ADDED_AFTER_V2 = {"autocast": "off", "schedule_steps": None}


def cache_key(cfg: Config) -> str:
    """A hash of everything that determines the built model (all seeds included)."""
    tiny = cfg.model.tiny.model_dump(mode="json")
    # Settings added after version 2 enter the key only away from the value every model had
    # before, so the models built then (the addition default's among them) keep their keys.
    for field, before in FIELDS_ADDED_AFTER_V2.items():
        if tiny[field] == before:
            del tiny[field]
    warm = cfg.warm_start.model_dump(mode="json")
    for field, before in WARM_START_FIELDS_ADDED_AFTER_V2.items():
        if warm[field] == before:
            del warm[field]
    from rlhf.data.tasks import TASKS

    parts = {
        "version": BUILD_VERSION,
        "tiny": tiny,
        "task": cfg.task.model_dump(mode="json"),
        "warm_start": warm,
    }
    examples = TASKS[cfg.task.name].examples_version
    if examples > 1:  # (the models built before examples were versioned keep their keys)
        parts["examples"] = examples
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def check_model_path(path_text: str) -> str:
    """A user's model folder, or `ConfigError` naming model.path."""
    path = Path(path_text).expanduser()
    if not path.exists():
        raise ConfigError(f"model.path: {str(path)!r} does not exist")
    if not (path / "config.json").is_file():
        raise ConfigError(
            f"model.path: {str(path)!r} is not a Hugging Face model folder (no config.json)"
        )
    return str(path)


def build_untrained(cfg: Config, work: Path, task) -> None:
    """model.tiny's model with random weights and its tokenizer, trained on `task`'s corpus."""
    from rlhf.models.tiny import build_tiny_model

    build_tiny_model(work, task.corpus(), **cfg.model.tiny.model_dump())


def _build(cfg: Config, work: Path) -> dict[str, float]:
    from rlhf.data.tasks import make_task
    from rlhf.models.warm_start import warm_start

    task = make_task(cfg.task)
    t = cfg.model.tiny
    build_untrained(cfg, work, task)
    if not (cfg.warm_start.enabled and cfg.warm_start.steps > 0):
        return {}
    print(
        f"[rlhf] warm start: {cfg.warm_start.steps} supervised steps on {task.name} "
        "(cached for later runs)",
        flush=True,
    )
    stats = warm_start(work, task, cfg.warm_start, seed=t.seed)
    print(
        "[rlhf] warm start done in {:.0f} s: loss {:.3f}, greedy accuracy {:.3f}".format(
            stats["warm_start/seconds"],
            stats["warm_start/loss"],
            stats["warm_start/greedy_accuracy"],
        ),
        flush=True,
    )
    return stats


def prepare_model(cfg: Config) -> str:
    """Return a Hugging Face model folder for the policy (and the reference)."""
    if cfg.model.path is not None:
        return check_model_path(cfg.model.path)

    cache = Path(cfg.model.cache_dir).expanduser()
    final = cache / f"tiny-{cfg.task.name}-{cache_key(cfg)}"
    if (final / READY_FILE).is_file():
        return str(final)
    cache.mkdir(parents=True, exist_ok=True)
    # One builder at a time per key (others wait, then reuse its result); the build itself
    # happens in a private folder renamed into place, so no one ever sees half a model.
    with open(cache / f".{final.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (final / READY_FILE).is_file():
            return str(final)
        work = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=cache))
        try:
            stats = _build(cfg, work)
            (work / READY_FILE).write_text(json.dumps(stats, indent=2))
            if final.exists():  # a broken leftover (no ready file): replace it
                shutil.rmtree(final)
            os.rename(work, final)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
    return str(final)
