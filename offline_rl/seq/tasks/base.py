"""Verifiable tasks: seeded problem generators (or a user's file) with exact checkers."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from offline_rl.seq.registry import Registry
from offline_rl.seq.tokenizer import BUILTIN_ALPHABET


@dataclass(frozen=True)
class Problem:
    prompt: str
    answer: str
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.prompt


Checker = Callable[[str, Problem], float]
CHECKERS: Registry[Checker] = Registry("checker", "completion, problem -> reward in [0, 1]")
TASKS: Registry[Callable[..., Task]] = Registry("task", "verifiable tasks")


@CHECKERS.register("exact")
def exact(completion: str, problem: Problem) -> float:
    """1 if the completion equals the answer (surrounding whitespace ignored), else 0."""
    return float(completion.strip() == problem.answer.strip())


@CHECKERS.register("numeric")
def numeric(completion: str, problem: Problem, tol: float = 1e-6) -> float:
    """1 if both parse as numbers within `tol`, else 0."""
    try:
        return float(abs(float(completion.strip()) - float(problem.answer)) <= tol)
    except ValueError:
        return 0.0


@CHECKERS.register("case_insensitive")
def case_insensitive(completion: str, problem: Problem) -> float:
    return float(completion.strip().lower() == problem.answer.strip().lower())


HINT_TIERS = ("knowledge_components_parts", "planning_skeleton_parts", "solution_breakdown_parts")
"""Scaf-GRPO's per-problem hint fields (Problem.meta keys): knowledge, planning, solution tiers."""


class Task:
    """A source of problems. `problem(i)` is deterministic given the task's seed; `size` None means endless.

    Optional features some methods need: `turn_marker` (the character ending a turn: multi-turn tasks),
    `Problem.meta["category"]` (curriculum samplers) and the HINT_TIERS lists in `Problem.meta` (hint scaffolds).
    Every built-in task has a reference answer (a demonstration, for HPT and OTR).
    """

    name: str = "task"
    size: int | None = None
    alphabet: str = BUILTIN_ALPHABET
    checker: Checker = staticmethod(exact)
    turn_marker: str | None = None

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def rng(self, index: int) -> random.Random:
        return random.Random(f"{self.name}:{self.seed}:{index}")

    def problem(self, index: int) -> Problem:
        raise NotImplementedError

    def reward(self, completion: str, problem: Problem) -> float:
        return self.checker(completion, problem)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "seed": self.seed, "size": self.size}
