"""SEC: Self-Evolving Curriculum (Chen et al., arXiv 2505.14970; code: a verl fork, flags trainer.sec.*).

A non-stationary bandit over problem categories c (difficulty levels, domains):
    r_t(c) = mean over this step's problems of category c of mean_i |A_i|     (|A| approximates the learning gain)
    Q_{t+1}(c) = alpha r_t(c) + (1 - alpha) Q_t(c)                            (TD(0) / EMA; unseen arms keep Q)
    pi(c) = exp(Q(c) / tau) / sum_c' exp(Q(c') / tau)                         (Boltzmann)
A batch: sample a category from pi for each prompt, then a problem uniformly within it. The update runs on the
previous step's groups (the statistics store's `last_step`, recorded after the advantages), at the start of the
next sampling, so Q (in the method state) is the same on every rank and is checkpointed.
Defaults (README launch lines): alpha = 0.5, tau = 1.0 (Countdown; 0.4 for Math, 0.2 for 2-D puzzles); Q_0 = 0.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

from offline_rl.seq.methods import register_method
from offline_rl.seq.methods.base import Choice, Method
from offline_rl.seq.points.samplers import SamplerContext
from offline_rl.seq.registry import SAMPLERS


def q_update(q: dict[Any, float], records: list[Any], alpha: float) -> dict[Any, float]:
    """One TD(0) step per category observed in `records` (GroupRecord: category, abs_advantage)."""
    per_cat: dict[Any, list[float]] = defaultdict(list)
    for r in records:
        per_cat[r.category].append(r.abs_advantage)
    out = dict(q)
    for c, values in per_cat.items():
        out[c] = alpha * (sum(values) / len(values)) + (1 - alpha) * q.get(c, 0.0)
    return out


def boltzmann(q: dict[Any, float], categories: list[Any], tau: float) -> list[float]:
    """pi(c) proportional to exp(Q(c) / tau), over `categories` (stable: the max is subtracted)."""
    z = [q.get(c, 0.0) / tau for c in categories]
    top = max(z)
    e = [math.exp(v - top) for v in z]
    total = sum(e)
    return [v / total for v in e]


def categories_of(ctx: SamplerContext) -> dict[Any, list[int]]:
    """The training pool's indices by category, in pool order."""
    by_cat: dict[Any, list[int]] = defaultdict(list)
    for i in ctx.pool or []:
        by_cat[ctx.task.problem(i).meta["category"]].append(i)
    return dict(sorted(by_cat.items(), key=lambda kv: str(kv[0])))


@SAMPLERS.register("sec")
def sec_sampler(ctx: SamplerContext, alpha: float = 0.5, tau: float = 1.0) -> list[int]:
    """Boltzmann over categories on Q (updated from the previous step's |A|), then uniform within a category."""
    st = ctx.state.setdefault("sec", {"q": {}, "updated": -1})
    if ctx.stats.last_step and st["updated"] < ctx.step:
        st["q"] = q_update(st["q"], ctx.stats.last_step, alpha)
        st["updated"] = ctx.step
    by_cat = categories_of(ctx)
    cats = list(by_cat)
    probs = boltzmann(st["q"], cats, tau)
    st["probs"] = {str(c): p for c, p in zip(cats, probs)}
    picked = ctx.rng.choices(cats, weights=probs, k=ctx.n_prompts)
    return [by_cat[c][ctx.rng.randrange(len(by_cat[c]))] for c in picked]


sec_sampler.requires = ("categories", "finite_pool")  # type: ignore[attr-defined]


@register_method("sec")
def sec() -> Method:
    return Method("sec", description="self-evolving curriculum: a Boltzmann bandit over categories on |A|",
                  sampler=Choice("sec"))
