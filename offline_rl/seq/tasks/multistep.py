"""Multi-step tasks: completions made of turns separated by a turn marker, and problems with categories.

multistep: "3+4+2=" -> "7|9": the running sums, one turn per addition, the turns separated by "|" (the task's
    turn marker). Turn-level methods (Turn-PPO, ST-PPO, EMPG steps, Stratified GRPO's turn-count strata) act on
    these turns. Reward: exact match of the whole chain (default) or of the final sum only (`reward="final"`).
levels: a finite pool of problems in difficulty categories (Problem.meta["category"]), for curriculum samplers
    (SEC's arms): 0 copy one digit, 1 a one-digit sum, 2 copy two digits, 3 a two-digit sum.
"""

from __future__ import annotations

from typing import Any

from offline_rl.errors import UserError
from offline_rl.seq.tasks.arithmetic import arithmetic_hints
from offline_rl.seq.tasks.base import TASKS, Problem, Task

MARKER = "|"


@TASKS.register("multistep")
class MultiStep(Task):
    name = "multistep"
    turn_marker = MARKER

    def __init__(self, seed: int = 0, min_terms: int = 2, max_terms: int = 4, max_operand: int = 9,
                 reward: str = "chain") -> None:
        super().__init__(seed)
        if not 2 <= min_terms <= max_terms:
            raise UserError(f"multistep needs 2 <= min_terms <= max_terms, got {min_terms}, {max_terms}")
        if reward not in ("chain", "final"):
            raise UserError(f"multistep reward must be chain or final, not {reward!r}")
        self.min_terms, self.max_terms, self.max_operand, self.reward_kind = min_terms, max_terms, max_operand, reward

    def problem(self, index: int) -> Problem:
        rng = self.rng(index)
        terms = [rng.randint(0, self.max_operand) for _ in range(rng.randint(self.min_terms, self.max_terms))]
        sums = [sum(terms[: k + 1]) for k in range(1, len(terms))]
        steps = [str(s) for s in sums]
        return Problem("+".join(map(str, terms)) + "=", MARKER.join(steps),
                       {"turns": len(steps), "solution_breakdown_parts": steps,
                        "knowledge_components_parts": [f"{terms[0]}+{terms[1]}={sums[0]}"]})

    def reward(self, completion: str, problem: Problem) -> float:
        if self.reward_kind == "final":
            return float(completion.strip().split(MARKER)[-1] == problem.answer.split(MARKER)[-1])
        return float(completion.strip() == problem.answer)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "min_terms": self.min_terms, "max_terms": self.max_terms,
                "max_operand": self.max_operand, "reward": self.reward_kind}


@TASKS.register("levels")
class Levels(Task):
    """`per_level` seeded problems in each of the categories `levels` (a subset of 0-3), a finite pool."""

    name = "levels"
    KINDS = ("copy1", "sum1", "copy2", "sum2")

    def __init__(self, seed: int = 0, per_level: int = 32, levels: str = "0123") -> None:
        super().__init__(seed)
        cats = sorted({int(c) for c in str(levels)})
        if not cats or any(c not in range(4) for c in cats) or per_level < 1:
            raise UserError(f"levels: categories are digits 0-3 and per_level >= 1, got {levels!r}, {per_level}")
        self.per_level, self.levels = per_level, cats
        self.size = per_level * len(cats)

    def problem(self, index: int) -> Problem:
        position = index % self.size
        cat = self.levels[position // self.per_level]
        rng = self.rng(position)
        if cat in (0, 2):  # copy one digit (each digit in turn) or two random digits
            s = str(position % self.per_level % 10) if cat == 0 else f"{rng.randint(0, 99):02d}"
            return Problem(f"{s}=", s, {"category": cat, "solution_breakdown_parts": list(s)})
        high = 4 if cat == 1 else 49  # one-digit sums (<= 8) or two-digit sums
        a, b = rng.randint(0, high), rng.randint(0, high)
        return Problem(f"{a}+{b}=", str(a + b), {"category": cat, **arithmetic_hints(a, "+", b, a + b)})

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "per_level": self.per_level, "levels": "".join(map(str, self.levels))}
