"""The policy loss of a method:

    L = scale(ctx) * PG + beta * agg(k3 KL) - c_H * agg(H) + sum_terms term(ctx)
    PG = agg(w_t * v_i * surrogate_t)          per-token surrogate (B, T), P6 token weights w, per-row weights v
       = sum_i v_i surrogate_i / (seqs / world) per-sequence surrogate (B,): the mean over global sequences

The order follows TRL's `_compute_loss`: the token weights (TRL's entropy mask) multiply the surrogate only, and
the KL term is added after them (verl adds its entropy and KL terms to the aggregated policy loss the same way).
The P9 loss scale (S-PPO's correction) scales the policy-gradient term only.
"""

from __future__ import annotations

from torch import Tensor

from offline_rl.seq.context import LossContext
from offline_rl.seq.methods.base import Method
from offline_rl.seq.ops import masked_mean
from offline_rl.seq.points.surrogates import k3_kl


def policy_gradient_term(method: Method, ctx: LossContext, surrogate: Tensor) -> Tensor:
    if surrogate.dim() == 1:  # one loss per sequence
        rows = (ctx.mask.sum(-1) > 0).to(surrogate.dtype)
        if ctx.sample_weights is not None:
            rows = rows * ctx.sample_weights
        assert ctx.counts is not None, "global counts are set before the loss"
        return (surrogate * rows).sum() / (ctx.counts.seqs / ctx.counts.world)
    if ctx.token_weights is not None:
        surrogate = surrogate * ctx.token_weights
    if ctx.sample_weights is not None:
        surrogate = surrogate * ctx.sample_weights[:, None]
    return method.fn("aggregation")(ctx, surrogate)


def policy_loss(method: Method, ctx: LossContext) -> Tensor:
    """The method's loss on one (mini-)batch. Fills ctx.log_ratio and ctx.metrics."""
    ctx.log_ratio = method.fn("ratio")(ctx)
    loss = policy_gradient_term(method, ctx, method.fn("surrogate")(ctx)) * method.fn("loss_scale")(ctx)
    aggregate = method.fn("aggregation")
    if method.kl_coef:
        kl = k3_kl(ctx)
        ctx.metrics["kl"] = masked_mean(kl.detach(), ctx.mask)
        loss = loss + method.kl_coef * aggregate(ctx, kl)
    if method.entropy_coef:
        assert ctx.entropy is not None
        loss = loss - method.entropy_coef * aggregate(ctx, ctx.entropy)
    for term in method.term_fns():
        loss = loss + term(ctx)
    return loss
