"""Multi-step tasks: completions made of turns separated by a turn marker, and problems with categories.

multistep: "3+4+2=" -> "7|9": the running sums, one turn per addition, the turns separated by "|" (the task's
    turn marker). Turn-level methods (Turn-PPO, ST-PPO, EMPG steps, Stratified GRPO's turn-count strata) act on
    these turns. Reward: exact match of the whole chain (default) or of the final sum only (`reward="final"`).
levels: a finite pool of distinct problems in difficulty categories (Problem.meta["category"]), for curriculum
    samplers (SEC's arms): 0 copy one digit, 1 a sum of digits <= 4, 2 copy two digits, 3 a two-digit sum.
"""

from __future__ import annotations

import random
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
    """Distinct problems in each category of `levels` (a subset of 0-3), at most `per_level` each: a finite pool.

    0: copy one digit (the 10 digits), 1: a + b with a, b <= 4 (25 sums), 2: copy two digits, 3: a + b with
    a, b <= 49; the larger categories are seeded samples without replacement.
    """

    name = "levels"

    def __init__(self, seed: int = 0, per_level: int = 32, levels: str = "0123") -> None:
        super().__init__(seed)
        cats = sorted({int(c) for c in str(levels)})
        if not cats or any(c not in range(4) for c in cats) or per_level < 1:
            raise UserError(f"levels: categories are digits 0-3 and per_level >= 1, got {levels!r}, {per_level}")
        self.per_level, self.levels = per_level, cats
        rng = random.Random(f"levels:{seed}")
        self.items: list[Problem] = []
        for cat in cats:
            if cat in (0, 2):
                space = [f"{d}" for d in range(10)] if cat == 0 else [f"{d:02d}" for d in range(100)]
                picked = space if len(space) <= per_level else rng.sample(space, per_level)
                self.items += [Problem(f"{s}=", s, {"category": cat, "solution_breakdown_parts": list(s)})
                               for s in picked]
            else:
                high = 4 if cat == 1 else 49
                space = [(a, b) for a in range(high + 1) for b in range(high + 1)]
                picked = space if len(space) <= per_level else rng.sample(space, per_level)
                self.items += [Problem(f"{a}+{b}=", str(a + b), {"category": cat, **arithmetic_hints(a, "+", b, a + b)})
                               for a, b in picked]
        self.size = len(self.items)

    def problem(self, index: int) -> Problem:
        return self.items[index % self.size]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "per_level": self.per_level, "levels": "".join(map(str, self.levels))}
