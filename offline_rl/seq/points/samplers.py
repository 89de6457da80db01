"""P1 prompt samplers: `sampler(ctx) -> list of problem indices` for this step."""

from __future__ import annotations

import random
from dataclasses import dataclass

from offline_rl.seq.registry import SAMPLERS
from offline_rl.seq.stats import PromptStats


@dataclass
class SamplerContext:
    step: int
    n_prompts: int  # prompts in the global batch this step
    task_size: int | None  # None: an endless generator (every index is a fresh seeded problem)
    rng: random.Random  # seeded per step; identical on every rank
    stats: PromptStats


@SAMPLERS.register("uniform")
def uniform(ctx: SamplerContext) -> list[int]:
    """Uniform with replacement over a finite pool; fresh problems from an endless generator."""
    high = ctx.task_size if ctx.task_size else 2**31 - 1
    return [ctx.rng.randrange(high) for _ in range(ctx.n_prompts)]


@SAMPLERS.register("sequential")
def sequential(ctx: SamplerContext) -> list[int]:
    """Indices step*n, ..., step*n + n - 1 (wrapping round a finite pool): epochs in order."""
    start = ctx.step * ctx.n_prompts
    idx = range(start, start + ctx.n_prompts)
    return [i % ctx.task_size for i in idx] if ctx.task_size else list(idx)
