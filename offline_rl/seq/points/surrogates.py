"""P8 surrogate losses: `surrogate(ctx) -> per-token loss (B, T)`, from ctx.log_ratio (P7) and the advantages."""

from __future__ import annotations

import torch
from torch import Tensor

from offline_rl.seq.context import LossContext
from offline_rl.seq.ops import masked_mean
from offline_rl.seq.registry import SURROGATES


def clipped_branch(a: Tensor, rho: Tensor, eps_low: float, eps_high: float) -> Tensor:
    """Where the clipped term is the larger one in max(-A rho, -A clip(rho)): the token carries no gradient."""
    return ((a > 0) & (rho > 1 + eps_high)) | ((a < 0) & (rho < 1 - eps_low))


@SURROGATES.register("clip")
def clip(ctx: LossContext, eps_low: float = 0.2, eps_high: float = 0.2, clip_c: float | None = None) -> Tensor:
    """PPO clipped surrogate: l = max(-A rho, -A clip(rho, 1 - eps_low, 1 + eps_high)).

    eps_high > eps_low is DAPO's clip-higher; clip_c (e.g. 3) adds verl's dual clip for A < 0: min(l, -A c).
    """
    a, rho = ctx.token_advantages, torch.exp(ctx.log_ratio)
    loss = torch.maximum(-a * rho, -a * torch.clamp(rho, 1 - eps_low, 1 + eps_high))
    if clip_c is not None:
        loss = torch.where(a < 0, torch.minimum(loss, -a * clip_c), loss)
    ctx.metrics["clip_frac"] = masked_mean(clipped_branch(a, rho.detach(), eps_low, eps_high).float(), ctx.mask)
    return loss


@SURROGATES.register("pg")
def policy_gradient(ctx: LossContext) -> Tensor:
    """On-policy policy gradient, -A rho with rho = exp(log pi - sg[log pi]) = 1 (GTPO's loss). No clipping."""
    return -ctx.token_advantages * torch.exp(ctx.logp - ctx.logp.detach())


def k3_kl(ctx: LossContext) -> Tensor:
    """The k3 estimator of KL(pi || pi_ref) per token: exp(ref - logp) - (ref - logp) - 1."""
    assert ctx.ref_logp is not None, "a KL term needs reference log-probs"
    d = ctx.ref_logp - ctx.logp
    return torch.exp(d) - d - 1
