"""The base of every config section, shared by `rlhf.config` and the algorithm modules
(each algorithm declares its own block next to its code)."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict


class ConfigError(ValueError):
    """A config problem, phrased for the user: which field, what was given, what is allowed."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def load_named(name: str, field: str, builtins: Mapping[str, Any], form: str) -> Any:
    """What a config entry names: a built-in by its key in `builtins`, or `form`
    ('package.module:attribute') imported; a `ConfigError` naming `field` otherwise. Whether
    the object is usable (callable, has the right methods) is the caller's check."""
    if name in builtins:
        return builtins[name]
    if ":" not in name:
        what = f"neither a built-in ({', '.join(sorted(builtins))}) nor" if builtins else "not"
        raise ConfigError(f"{field}: {name!r} is {what} of the form '{form}'")
    module_name, attr = name.split(":", 1)
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"{field}: cannot load {name!r}: {err}") from err
