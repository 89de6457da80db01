"""P6 token weights: `token_weights(ctx) -> w (B, T)` multiplying the per-token loss.

As in TRL's `top_entropy_quantile` and verl's `clip_cov`, a weight of 0 removes a token from the loss but not from
the aggregation normaliser (the mask).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from offline_rl.seq.context import LossContext
from offline_rl.seq.registry import TOKEN_WEIGHTS


@TOKEN_WEIGHTS.register("ones")
def ones(ctx: LossContext) -> Tensor:
    return torch.ones_like(ctx.mask)


def top_fraction(score: Tensor, mask: Tensor, rho: float) -> Tensor:
    """0/1 weights keeping the ceil(rho * N) valid tokens with the largest score (ties: the earlier token)."""
    valid = mask.reshape(-1) > 0
    n_keep = math.ceil(rho * int(valid.sum()))
    flat = torch.where(valid, score.reshape(-1).double(), -math.inf)
    order = torch.sort(-flat, stable=True).indices[:n_keep]
    keep = torch.zeros_like(flat).index_fill_(0, order, 1.0)
    return keep.view_as(mask).to(mask.dtype)


@TOKEN_WEIGHTS.register("top_entropy")
def top_entropy(ctx: LossContext, rho: float = 0.2) -> Tensor:
    """Keep the top-rho fraction of tokens by rollout-time entropy (the "80/20" idea; TRL's top_entropy_quantile)."""
    assert ctx.old_entropy is not None
    return top_fraction(ctx.old_entropy, ctx.mask, rho)
