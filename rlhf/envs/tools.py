"""Tools as plain Python functions (`rollout.tools`), run by an environment of their own.

The call protocol is the tag format that Hermes, Qwen 2.5/3 and many chat templates use, and
the fallback for models whose template has none:

    <tool_call>{"name": "multiply", "arguments": {"a": 12, "b": 34}}</tool_call>

at the end of a turn (the turn stops there: `</tool_call>` is a stop string); the observation
is `<tool_response>408</tool_response>` and the policy writes its next turn. A turn without a
call is the final answer: the episode ends and the reward functions score it (the tools
environment gives no reward of its own). Where the model's chat template takes `tools=`, chat
prompts list the functions' JSON schemas, made by transformers from their type hints and
docstrings (`tool_schemas`), as TRL's `tools=` and vLLM's chat endpoint do.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from rlhf.configbase import ConfigError, load_named
from rlhf.envs.base import Step

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
RESPONSE_OPEN, RESPONSE_CLOSE = "<tool_response>", "</tool_response>"
MAX_RESULT_CHARS = 4096  # a tool's answer beyond this is cut (the token limit cuts again)


def resolve_tools(names: list[str], field: str = "rollout.tools") -> dict[str, Callable]:
    """name -> function for 'package.module:function' entries; ConfigError naming the entry."""
    tools: dict[str, Callable] = {}
    for i, name in enumerate(names):
        fn = load_named(name, f"{field}[{i}]", {}, "package.module:function")
        if not callable(fn):
            raise ConfigError(f"{field}[{i}]: {name!r} is not callable")
        tools[fn.__name__] = fn
    return tools


def tool_schemas(tools: dict[str, Callable]) -> list[dict]:
    """The functions' JSON schemas, as a chat template's `tools=` takes them; ConfigError when
    one lacks the type hints or docstring transformers needs."""
    from transformers.utils import get_json_schema

    schemas = []
    for name, fn in tools.items():
        try:
            schemas.append(get_json_schema(fn))
        except Exception as err:  # transformers' own error names what is missing
            raise ConfigError(f"rollout.tools: {name}: {err}") from err
    return schemas


def schemas_of(names: list[str]) -> list[dict] | None:
    """The JSON schemas of the `rollout.tools` entries, imported as the rollout workers will
    (relative to the launch directory); None without tools."""
    if not names:
        return None
    from rlhf.rewards.scoring import launch_dir_importable

    with launch_dir_importable():
        return tool_schemas(resolve_tools(names))


def parse_call(text: str) -> tuple[str, dict[str, Any]] | None:
    """The tool call that ends `text`: (name, arguments); None when the turn ends without one.
    ValueError for a call that is not JSON of that shape."""
    body = text.rstrip()
    if not body.endswith(CALL_CLOSE) or CALL_OPEN not in body:
        return None
    raw = body[body.rindex(CALL_OPEN) + len(CALL_OPEN) : -len(CALL_CLOSE)]
    try:
        call = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ValueError(f"not JSON: {err.msg}") from None
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        raise ValueError('want {"name": ..., "arguments": {...}}')
    arguments = call.get("arguments", {})
    if not isinstance(arguments, dict):
        raise ValueError("arguments must be an object")
    return call["name"], arguments


class ToolEnvironment:
    """Runs the calls the policy writes against `tools`. A call that cannot be parsed, names
    an unknown tool, or raises is answered with the error as the tool's response (the policy
    can read it and try again), counted in `info`: tool_calls, tool_errors."""

    stop = [CALL_CLOSE]

    def __init__(self, tools: dict[str, Callable]) -> None:
        self.tools = tools

    def reset(self, prompt: str, **columns: Any) -> None:
        pass

    def step(self, text: str) -> Step:
        try:
            call = parse_call(text)
        except ValueError as err:
            return self._answer(f"error: the call is malformed: {err}", error=True)
        if call is None:
            return Step(done=True)
        name, arguments = call
        if name not in self.tools:
            known = ", ".join(sorted(self.tools))
            return self._answer(f"error: no tool {name!r} (tools: {known})", error=True)
        try:
            result = self.tools[name](**arguments)
        except Exception as err:  # the tool's failure is the policy's feedback, not ours
            return self._answer(f"error: {type(err).__name__}: {err}", error=True)
        return self._answer(result if isinstance(result, str) else json.dumps(result, default=str))

    @staticmethod
    def _answer(result: str, error: bool = False) -> Step:
        info = {"tool_calls": 1.0, "tool_errors": float(error)}
        if len(result) > MAX_RESULT_CHARS:
            result, info["tool_results_cut"] = result[:MAX_RESULT_CHARS], 1.0
        return Step(observation=f"{RESPONSE_OPEN}{result}{RESPONSE_CLOSE}", info=info)
