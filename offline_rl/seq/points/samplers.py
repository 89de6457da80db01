"""P1 prompt samplers: `sampler(ctx) -> list of problem indices` for this step (the global batch, every rank).

A sampler sees the task, the training pool (finite tasks hold out their evaluation problems), the statistics
store (with `stats.last_step`, the previous step's groups and their |A|) and `ctx.state`, its persistent state
(checkpointed; every rank computes the same update from the same global records).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from offline_rl.seq.registry import SAMPLERS
from offline_rl.seq.stats import PromptStats

ENDLESS = 2**31 - 1  # index range of an endless task's fresh problems


@dataclass
class SamplerContext:
    step: int
    n_prompts: int  # prompts in the global batch this step
    pool: list[int] | None  # the training problems' indices; None: an endless generator
    rng: random.Random  # seeded per step; identical on every rank
    stats: PromptStats
    task: Any = None  # offline_rl.seq.tasks.Task: task.problem(i) gives index i's prompt (its key) and meta
    state: dict[str, Any] = field(default_factory=dict)
    total_steps: int = 1

    @property
    def task_size(self) -> int | None:
        return None if self.pool is None else len(self.pool)


@SAMPLERS.register("uniform")
def uniform(ctx: SamplerContext) -> list[int]:
    """Uniform with replacement over a finite pool; fresh problems from an endless generator."""
    if ctx.pool is None:
        return [ctx.rng.randrange(ENDLESS) for _ in range(ctx.n_prompts)]
    return [ctx.pool[ctx.rng.randrange(len(ctx.pool))] for _ in range(ctx.n_prompts)]


@SAMPLERS.register("sequential")
def sequential(ctx: SamplerContext) -> list[int]:
    """The pool in order, n per step (wrapping round: epochs); consecutive indices of an endless task."""
    start = ctx.step * ctx.n_prompts
    idx = range(start, start + ctx.n_prompts)
    return [ctx.pool[i % len(ctx.pool)] for i in idx] if ctx.pool is not None else list(idx)
