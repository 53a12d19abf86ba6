"""The base of every config section, shared by `rlhf.config` and the algorithm modules
(each algorithm declares its own block next to its code)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ConfigError(ValueError):
    """A config problem, phrased for the user: which field, what was given, what is allowed."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
