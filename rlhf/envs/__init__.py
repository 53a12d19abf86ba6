"""Multi-turn episodes: environments (`base`), built-in ones (`builtin`), the runner (`episodes`)."""

from rlhf.envs.base import Environment, EpisodeError, Step, resolve_environment

__all__ = ["Environment", "EpisodeError", "Step", "resolve_environment"]
