"""Sequence tasks on digit strings: copy ("123=" -> "123"), reverse ("123<" -> "321"), sort ("312>" -> "123")."""

from __future__ import annotations

from typing import Any

from offline_rl.seq.tasks.base import TASKS, Problem, Task


class SequenceTask(Task):
    symbol = "="

    def __init__(self, seed: int = 0, min_len: int = 1, max_len: int = 4, digits: str = "0123456789") -> None:
        super().__init__(seed)
        self.min_len, self.max_len, self.digits = min_len, max_len, digits
        if max_len == min_len == 1:
            self.size = len(digits)  # small enough to enumerate

    def transform(self, s: str) -> str:
        raise NotImplementedError

    def problem(self, index: int) -> Problem:
        if self.size is not None:
            s = self.digits[index % self.size]
        else:
            rng = self.rng(index)
            s = "".join(rng.choice(self.digits) for _ in range(rng.randint(self.min_len, self.max_len)))
        answer = self.transform(s)
        return Problem(f"{s}{self.symbol}", answer, {"solution_breakdown_parts": list(answer)})

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "min_len": self.min_len, "max_len": self.max_len}


@TASKS.register("copy")
class Copy(SequenceTask):
    name, symbol = "copy", "="

    def transform(self, s: str) -> str:
        return s


@TASKS.register("reverse")
class Reverse(SequenceTask):
    name, symbol = "reverse", "<"

    def transform(self, s: str) -> str:
        return s[::-1]


@TASKS.register("sort")
class Sort(SequenceTask):
    name, symbol = "sort", ">"

    def transform(self, s: str) -> str:
        return "".join(sorted(s))
