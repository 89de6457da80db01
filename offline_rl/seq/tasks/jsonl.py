"""A user's JSONL file of {"prompt": ..., "answer": ...} lines, checked by exact match or a named checker."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from offline_rl.errors import UserError
from offline_rl.seq.tasks.base import CHECKERS, TASKS, Problem, Task
from offline_rl.seq.tokenizer import BUILTIN_ALPHABET


def read_problems(path: Path) -> list[Problem]:
    if not path.is_file():
        raise UserError(f"JSONL task file not found: {path}")
    problems = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{n}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or "answer" not in row:
            raise UserError(f"{path}:{n}: each line needs a string \"prompt\" and an \"answer\"")
        meta = {k: v for k, v in row.items() if k not in ("prompt", "answer")}
        problems.append(Problem(row["prompt"], str(row["answer"]), meta))
    if not problems:
        raise UserError(f"{path}: no problems")
    return problems


@TASKS.register("jsonl")
class JsonlTask(Task):
    name = "jsonl"

    def __init__(self, path: str, seed: int = 0, checker: str = "exact", turn_marker: str | None = None) -> None:
        super().__init__(seed)
        self.turn_marker = turn_marker
        self.path = Path(path)
        self.problems = read_problems(self.path)
        self.size = len(self.problems)
        self.checker_name = checker
        self.checker = CHECKERS.get(checker)
        chars = {c for p in self.problems for c in p.prompt + p.answer}
        self.alphabet = BUILTIN_ALPHABET + "".join(sorted(chars - set(BUILTIN_ALPHABET)))

    def problem(self, index: int) -> Problem:
        return self.problems[index % self.size]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "path": str(self.path), "checker": self.checker_name}
