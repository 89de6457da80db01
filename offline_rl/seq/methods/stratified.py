"""Stratified GRPO: Stratified Advantage Normalization (Zhu et al., arXiv 2510.06214; no official code).

    A_SAN(i) = (R_i - mu_k) / (sigma_k + eps)    within stratum k of the prompt's group
    A_GN(i)  = (R_i - mu) / (sigma + eps)        within the group (GRPO)
    A = alpha A_SAN + (1 - alpha) A_GN

A stratum is a structural key of a trajectory (e.g. the number of search calls), from a `stratum` function:
a registered name or any callable `ctx -> (B,) integer keys`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from offline_rl.seq.context import LossContext
from offline_rl.seq.methods import register_method
from offline_rl.seq.methods.base import Choice, Method
from offline_rl.seq.ops import dense_ids, group_stats
from offline_rl.seq.points.advantages import group_normalised, scalar_rewards
from offline_rl.seq.points.segments import turns
from offline_rl.seq.registry import ADVANTAGES, STRATA


@STRATA.register("turn_count")
def turn_count(ctx: LossContext) -> Tensor:
    """The number of turn markers in the completion (a proxy for the number of tool/search calls)."""
    return (turns(ctx) * ctx.mask).amax(-1).long()


@STRATA.register("length_bins")
def length_bins(ctx: LossContext, width: int = 4) -> Tensor:
    """Completion length // width."""
    return (ctx.seq_lengths // width).long()


@ADVANTAGES.register("stratified")
def stratified_advantage(ctx: LossContext, stratum: str | Callable[[LossContext], Tensor] = "turn_count",
                         alpha: float = 0.5, eps: float = 1e-4, unbiased: bool = True,
                         singleton: str = "global") -> Tensor:
    """alpha A_SAN + (1 - alpha) A_GN. UNVERIFIED: the paper's value of alpha (0.5 here is our default).

    A singleton stratum has no within-stratum baseline (A_SAN = 0): `singleton="global"` uses A_GN there (our
    fallback), `"zero"` keeps 0.
    """
    key_fn = STRATA.get(stratum) if isinstance(stratum, str) else stratum
    r = scalar_rewards(ctx)
    a_gn = group_normalised(r, ctx.group_ids, ctx, "group", eps, unbiased)
    strata = dense_ids(ctx.group_ids, key_fn(ctx))
    mu_k, sigma_k, n_k = group_stats(r, strata, unbiased)
    a_san = ((r.double() - mu_k) / (sigma_k + eps)).to(a_gn.dtype)
    a_san = torch.where(n_k > 1, a_san, a_gn if singleton == "global" else torch.zeros_like(a_gn))
    return alpha * a_san + (1 - alpha) * a_gn


stratified_advantage.requires = (  # type: ignore[attr-defined]
    lambda params: ("turn_marker",) if params.get("stratum", "turn_count") == "turn_count" else ())


@register_method("stratified_grpo")
def stratified_grpo() -> Method:
    """Strata: the number of turns of the completion (needs turn markers, e.g. the `multistep` task)."""
    return Method("stratified_grpo", description="stratified advantage normalisation blended with GRPO's",
                  advantage=Choice("stratified"))
