"""Built-in environments, named in config by their key in BUILTIN_ENVIRONMENTS."""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable
from typing import Any

from rlhf.envs.base import Step
from rlhf.rewards.builtin import GSM8K_MARK, last_number

_OPERATORS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}
MAX_OPERAND = 10**12  # keeps a hostile expression from computing a huge power of ten


def evaluate_arithmetic(expression: str) -> int | float:
    """+, -, *, / and parentheses on numbers; ValueError on anything else (no names, no
    calls, no powers: the policy's text is untrusted input)."""

    def walk(node: ast.AST) -> int | float:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -walk(node.operand)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            left, right = walk(node.left), walk(node.right)
            if max(abs(left), abs(right)) > MAX_OPERAND:
                raise ValueError("operand too large")
            return _OPERATORS[type(node.op)](left, right)
        raise ValueError(f"not arithmetic: {type(node).__name__}")

    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as err:
        raise ValueError(f"not arithmetic: {err.msg}") from None
    try:
        value = walk(tree)
    except ZeroDivisionError:
        raise ValueError("division by zero") from None
    return int(value) if float(value).is_integer() else round(float(value), 6)


class Calculator:
    """A calculator tool in a tag protocol, for models whose chat template has no tools.

    A turn that ends `<calc>EXPR</calc>` is a call: the observation is `<result>VALUE</result>`
    (or `<result>error</result>`), reward 0. Any other turn is the final answer: the episode
    ends with reward 1 iff its last number equals the `answer` column's (after '####'), as
    the `final_number` reward function scores it. `info`: tool_calls, tool_errors.
    """

    stop = ["</calc>"]
    OPEN, CLOSE = "<calc>", "</calc>"

    def reset(self, prompt: str, answer: object, **columns: Any) -> None:
        self.answer = last_number(str(answer).rsplit(GSM8K_MARK, 1)[-1])

    def step(self, text: str) -> Step:
        call = text.rstrip()
        if call.endswith(self.CLOSE) and self.OPEN in call:
            expression = call[call.rindex(self.OPEN) + len(self.OPEN) : -len(self.CLOSE)]
            try:
                value, errors = str(evaluate_arithmetic(expression)), 0.0
            except ValueError:
                value, errors = "error", 1.0
            return Step(
                f"<result>{value}</result>", 0.0, False, {"tool_calls": 1.0, "tool_errors": errors}
            )
        got = last_number(text)
        right = self.answer is not None and got == self.answer
        return Step("", 1.0 if right else 0.0, True)


class GuessNumber:
    """Guess a secret whole number (the `answer` column): each wrong guess is answered
    " higher" or " lower", and the turn that names the secret ends the episode with reward 1
    (0 for every other turn). With `rollout.turn_rewards: discounted` and a `turn_discount`
    below 1, an earlier solve is worth more, so the turns an episode takes to solve fall as
    the policy learns to halve the range. A turn with no number is answered " a number?".
    info: solved, invalid (turns with no number).
    """

    stop = [";"]  # a guess ends its turn ('guess 1-15: 8; lower 3;', the built-in task's form)

    def reset(self, prompt: str, answer: object, **columns: Any) -> None:
        self.secret = int(str(answer))

    def step(self, text: str) -> Step:
        guess = last_number(text)
        if guess is None:
            return Step(" a number?", 0.0, False, {"invalid": 1.0})
        if guess == self.secret:
            return Step("", 1.0, True, {"solved": 1.0})
        return Step(" higher" if guess < self.secret else " lower", 0.0, False)


BUILTIN_ENVIRONMENTS: dict[str, Callable[[], Any]] = {
    "calculator": Calculator,
    "guess_number": GuessNumber,
}
