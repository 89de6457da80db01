"""The policy loss of a method: P7 ratio -> P8 surrogate (+ KL, entropy) -> P6 weights -> P9 aggregation x scale."""

from __future__ import annotations

from torch import Tensor

from offline_rl.seq.context import LossContext
from offline_rl.seq.methods.base import Method
from offline_rl.seq.ops import masked_mean
from offline_rl.seq.points.surrogates import k3_kl


def policy_loss(method: Method, ctx: LossContext) -> Tensor:
    """L = scale(ctx) * agg( w * (surrogate(rho~) + beta k3 - c_H H) ).  Fills ctx.log_ratio and ctx.metrics."""
    ctx.log_ratio = method.fn("ratio")(ctx)
    per_token = method.fn("surrogate")(ctx)
    if method.kl_coef:
        kl = k3_kl(ctx)
        ctx.metrics["kl"] = masked_mean(kl.detach(), ctx.mask)
        per_token = per_token + method.kl_coef * kl
    if method.entropy_coef:
        assert ctx.entropy is not None
        per_token = per_token - method.entropy_coef * ctx.entropy
    if ctx.token_weights is not None:
        per_token = per_token * ctx.token_weights
    return method.fn("aggregation")(ctx, per_token) * method.fn("loss_scale")(ctx)
