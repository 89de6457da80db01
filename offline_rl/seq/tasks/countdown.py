"""Countdown: reach a target with +, -, * and / over the given numbers, each used exactly once.

Prompt "3,5,7:22=", completion e.g. "(3+5)*7-34"... any expression that the safe evaluator accepts.
"""

from __future__ import annotations

import ast
from collections import Counter
from fractions import Fraction
from typing import Any

from offline_rl.seq.tasks.base import CHECKERS, TASKS, Problem, Task

_BINOPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
           ast.Div: lambda a, b: a / b}


def safe_eval(expr: str) -> tuple[Fraction, list[int]]:
    """Exact value and the integer literals of an expression of + - * / and parentheses; ValueError otherwise."""
    try:
        tree = ast.parse(expr.strip(), mode="eval").body
    except SyntaxError as e:
        raise ValueError("not an expression") from e
    numbers: list[int] = []

    def ev(node: ast.AST) -> Fraction:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            numbers.append(node.value)
            return Fraction(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            left, right = ev(node.left), ev(node.right)
            if isinstance(node.op, ast.Div) and right == 0:
                raise ValueError("division by zero")
            return _BINOPS[type(node.op)](left, right)
        raise ValueError(f"{type(node).__name__} is not allowed")

    return ev(tree), numbers


@CHECKERS.register("countdown")
def countdown_checker(completion: str, problem: Problem) -> float:
    """1 if the expression uses exactly the given numbers (as a multiset) and equals the target."""
    try:
        value, used = safe_eval(completion)
    except (ValueError, RecursionError):
        return 0.0
    return float(Counter(used) == Counter(problem.meta["numbers"]) and value == problem.meta["target"])


@TASKS.register("countdown")
class Countdown(Task):
    name = "countdown"
    checker = staticmethod(countdown_checker)

    def __init__(self, seed: int = 0, n_numbers: int = 3, max_number: int = 9) -> None:
        super().__init__(seed)
        self.n_numbers, self.max_number = n_numbers, max_number

    def problem(self, index: int) -> Problem:
        rng = self.rng(index)
        while True:
            nums = [rng.randint(1, self.max_number) for _ in range(self.n_numbers)]
            expr = str(nums[0])
            for n in nums[1:]:
                op = rng.choice("+-*")
                expr = f"({expr}){op}{n}" if op == "*" and ("+" in expr or "-" in expr) else f"{expr}{op}{n}"
            target = safe_eval(expr)[0]
            if target > 0 and target.denominator == 1:
                target_int = int(target)
                return Problem(f"{','.join(map(str, nums))}:{target_int}=", expr,
                               {"numbers": nums, "target": target_int})

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "n_numbers": self.n_numbers, "max_number": self.max_number}
