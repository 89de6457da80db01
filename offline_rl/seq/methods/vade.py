"""VADE: Variance-Aware Dynamic Sampling (Hu et al., arXiv 2511.18902; no public code).

Each training problem i has a Beta(alpha_i, beta_i) posterior over its correctness (prior Beta(1, 1)).
    update (after its rollouts): pseudo-counts decay towards the prior, then alpha += sum r, beta += sum (1 - r)
    two-scale decay: (alpha, beta) <- lam_u * lam_t^(dt - 1) * (alpha - a0, beta - b0) + (a0, b0)
        lam_u per update (non-stationarity as the policy moves), lam_t per step elapsed since the last update
        (dt = steps since it, 1 for consecutive steps)
    Thompson sampling: p~_i ~ Beta(alpha_i, beta_i), score s_i = p~_i (1 - p~_i) (the reward variance, largest at
        p = 0.5); the batch is the top-B problems by score (no extra rollouts).
UNVERIFIED: the information-gain form (p(1 - p) here) and the decay scales and constants (lam_u = 0.9 and
lam_t = 0.99 are our defaults). The posterior lives in the method state (checkpointed, same on every rank).
"""

from __future__ import annotations

from typing import Any

from offline_rl.seq.methods import register_method
from offline_rl.seq.methods.base import Choice, Method
from offline_rl.seq.points.samplers import SamplerContext
from offline_rl.seq.registry import SAMPLERS


def decayed(a: float, b: float, prior: tuple[float, float], factor: float) -> tuple[float, float]:
    a0, b0 = prior
    return factor * (a - a0) + a0, factor * (b - b0) + b0


def posterior_update(post: dict[str, Any], index: int, rewards: list[float], step: int, prior: tuple[float, float],
                     lam_update: float, lam_time: float) -> None:
    """Decay item `index`'s pseudo-counts towards the prior, then add its successes and failures (in place)."""
    a, b = post["alpha"].get(index, prior[0]), post["beta"].get(index, prior[1])
    last = post["last"].get(index)
    if last is not None:
        a, b = decayed(a, b, prior, lam_update * lam_time ** max(step - last - 1, 0))
    post["alpha"][index] = a + sum(rewards)
    post["beta"][index] = b + sum(1.0 - r for r in rewards)
    post["last"][index] = step


@SAMPLERS.register("vade")
def vade_sampler(ctx: SamplerContext, lam_update: float = 0.9, lam_time: float = 0.99,
                 prior: tuple[float, float] = (1.0, 1.0)) -> list[int]:
    """Top-B pool problems by Thompson-sampled p~(1 - p~), after updating the posteriors on the last step."""
    post = ctx.state.setdefault("vade", {"alpha": {}, "beta": {}, "last": {}, "keys": {}, "updated": -1})
    if post["updated"] < ctx.step:
        for r in ctx.stats.last_step:
            for index in post["keys"].get(r.key, []):
                posterior_update(post, index, r.rewards, r.step, prior, lam_update, lam_time)
        post["updated"] = ctx.step
    pool = ctx.pool or []
    scores = []
    for i in pool:
        p = ctx.rng.betavariate(post["alpha"].get(i, prior[0]), post["beta"].get(i, prior[1]))
        scores.append(p * (1 - p))
    order = sorted(range(len(pool)), key=lambda j: -scores[j])
    chosen = [pool[order[j % len(pool)]] for j in range(ctx.n_prompts)]
    for i in chosen:
        key = ctx.task.problem(i).key
        if i not in post["keys"].setdefault(key, []):
            post["keys"][key].append(i)
    return chosen


vade_sampler.requires = ("finite_pool",)  # type: ignore[attr-defined]


@register_method("vade")
def vade() -> Method:
    return Method("vade", description="Beta posteriors per problem, Thompson sampling on p(1-p), prior decay",
                  sampler=Choice("vade"))
