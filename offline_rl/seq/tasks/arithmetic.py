"""Arithmetic: "a op b=" -> the integer result."""

from __future__ import annotations

from typing import Any

from offline_rl.errors import UserError
from offline_rl.seq.tasks.base import TASKS, Problem, Task

OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def arithmetic_hints(a: int, op: str, b: int, result: int) -> dict[str, list[str]]:
    """Scaf-GRPO-style tiers: knowledge (the units' result, then the tens'), solution (the answer's digits)."""
    units = f"{a % 10}{op}{b % 10}={OPS[op](a % 10, b % 10)}"
    tens = f"{a // 10 * 10}{op}{b // 10 * 10}={OPS[op](a // 10 * 10, b // 10 * 10)}"
    return {"knowledge_components_parts": [units, tens], "solution_breakdown_parts": list(str(result))}


@TASKS.register("arithmetic")
class Arithmetic(Task):
    """Operands in [0, max_operand], operators from `ops`; `max_answer` keeps results in [0, max_answer]
    (e.g. 9 for single-digit answers)."""

    name = "arithmetic"

    def __init__(self, seed: int = 0, max_operand: int = 9, ops: str = "+-", max_answer: int | None = None) -> None:
        super().__init__(seed)
        if not ops or set(ops) - set(OPS):
            raise UserError(f"arithmetic ops must be drawn from {''.join(OPS)!r}, got {ops!r}")
        self.max_operand, self.ops, self.max_answer = max_operand, ops, max_answer

    def problem(self, index: int) -> Problem:
        rng = self.rng(index)
        for _ in range(1000):
            a, b = rng.randint(0, self.max_operand), rng.randint(0, self.max_operand)
            op = rng.choice(self.ops)
            result = OPS[op](a, b)
            if self.max_answer is None or 0 <= result <= self.max_answer:
                return Problem(f"{a}{op}{b}=", str(result), arithmetic_hints(a, op, b, result))
        raise UserError("no arithmetic problem satisfies max_answer; widen the options")

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "max_operand": self.max_operand, "ops": self.ops, "max_answer": self.max_answer}
