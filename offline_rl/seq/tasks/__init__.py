"""Built-in verifiable tasks and `make_task`."""

from __future__ import annotations

from typing import Any

from offline_rl.errors import UserError
from offline_rl.seq.tasks import arithmetic, countdown, jsonl, multistep, sequence  # noqa: F401  (register on import)
from offline_rl.seq.tasks.base import CHECKERS, TASKS, Problem, Task


def make_task(name: str, seed: int = 0, **options: Any) -> Task:
    """A registered task by name, or a path ending in .jsonl (a user's file)."""
    if name.endswith(".jsonl"):
        return TASKS.get("jsonl")(path=name, seed=seed, **options)
    try:
        return TASKS.get(name)(seed=seed, **options)
    except TypeError as e:
        raise UserError(f"bad options for task {name!r}: {e}") from None


__all__ = ["CHECKERS", "TASKS", "Problem", "Task", "make_task"]
