"""Prompt sources and built-in tasks."""

from rlhf.data.tasks import TASKS, AdditionTask, Task, make_task

__all__ = ["TASKS", "AdditionTask", "Task", "make_task"]
