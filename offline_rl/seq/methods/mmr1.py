"""MMR1 Variance-Aware Sampling (Leng et al., arXiv 2509.21268; code LengSicong/MMR1, README Algorithm 1).

Per training problem, from its recent rollouts (the statistics store):
    OVS = p^(1 - p^)                 the Bernoulli variance of correctness (p^: the success rate)
    TDS = 1 - self-similarity       trajectory diversity: one minus the mean over ordered pairs of completions of
                                    their shared-n-gram precision (n = 1, 2), a BLEU-2-style inverse self-BLEU
    VPS = w_ovs OVS + w_tds TDS      the variance promotion score
A fraction lam of each batch is drawn with probability proportional to VPS (with replacement), the rest
uniformly; VPS is re-estimated every `update_every` steps. A problem not yet rolled out gets the optimistic
VPS w_ovs / 4 + w_tds (the largest possible). README settings: lam = 1.0 (full VAS) or 0.5 (mixed, ours).
UNVERIFIED: the weights w_ovs = 1, w_tds = 0.1, the TDS measure and update_every = 1 are ours.
"""

from __future__ import annotations

from collections import Counter

from offline_rl.seq.methods import register_method
from offline_rl.seq.methods.base import Choice, Method
from offline_rl.seq.points.samplers import SamplerContext
from offline_rl.seq.registry import SAMPLERS


def ngram_precision(a: str, b: str, n: int) -> float:
    """Clipped n-gram precision of `a` against `b` (as in BLEU); 1 when `a` has no n-grams."""
    grams_a = Counter(a[i: i + n] for i in range(len(a) - n + 1))
    if not grams_a:
        return 1.0
    grams_b = Counter(b[i: i + n] for i in range(len(b) - n + 1))
    return sum(min(c, grams_b[g]) for g, c in grams_a.items()) / sum(grams_a.values())


def trajectory_diversity(texts: list[str], orders: tuple[int, ...] = (1, 2)) -> float:
    """1 - mean over ordered pairs (i != j) of the mean n-gram precision of text i against text j."""
    pairs = [(a, b) for i, a in enumerate(texts) for j, b in enumerate(texts) if i != j]
    if not pairs:
        return 0.0
    sim = sum(sum(ngram_precision(a, b, n) for n in orders) / len(orders) for a, b in pairs) / len(pairs)
    return 1.0 - sim


def vps_score(success_rate: float, diversity: float, w_ovs: float, w_tds: float) -> float:
    return w_ovs * success_rate * (1 - success_rate) + w_tds * diversity


@SAMPLERS.register("vps")
def vps_sampler(ctx: SamplerContext, lam: float = 0.5, w_ovs: float = 1.0, w_tds: float = 0.1,
                update_every: int = 1) -> list[int]:
    """round(lam n) draws proportional to VPS, the rest uniform over the pool."""
    st = ctx.state.setdefault("vps", {"scores": {}, "tds": {}, "updated": -1})
    pool = ctx.pool or []
    for r in ctx.stats.last_step:  # the diversity of each problem's latest group
        st["tds"][r.key] = trajectory_diversity(r.texts)
    if ctx.step - st["updated"] >= update_every or not st["scores"]:
        optimistic = w_ovs / 4 + w_tds
        scores = {}
        for i in pool:
            key = ctx.task.problem(i).key
            p = ctx.stats.success_rate(key)
            scores[i] = optimistic if p is None else vps_score(p, st["tds"].get(key, 0.0), w_ovs, w_tds)
        st["scores"], st["updated"] = scores, ctx.step
    n_vps = round(lam * ctx.n_prompts)
    weights = [st["scores"][i] for i in pool]
    drawn = ctx.rng.choices(pool, weights=weights, k=n_vps) if n_vps and sum(weights) > 0 else \
        [pool[ctx.rng.randrange(len(pool))] for _ in range(n_vps)]
    return drawn + [pool[ctx.rng.randrange(len(pool))] for _ in range(ctx.n_prompts - n_vps)]


vps_sampler.requires = ("finite_pool",)  # type: ignore[attr-defined]


@register_method("mmr1_vps")
def mmr1_vps() -> Method:
    return Method("mmr1_vps", description="variance-aware sampling: draws proportional to OVS + TDS",
                  sampler=Choice("vps"))
