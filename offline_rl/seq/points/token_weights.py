"""P6 token weights: `token_weights(ctx) -> w (B, T)` multiplying the per-token surrogate.

As in TRL's `top_entropy_quantile` and verl's `clip_cov`, a weight of 0 removes a token from the loss but not from
the aggregation normaliser (the mask). Batch statistics (quantiles, top fractions) are over the global batch: the
scores of every data-parallel rank are gathered, as TRL gathers the entropies for its threshold.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from offline_rl.seq.context import LOCAL, LossContext, World
from offline_rl.seq.registry import TOKEN_WEIGHTS


@TOKEN_WEIGHTS.register("ones")
def ones(ctx: LossContext) -> Tensor:
    return torch.ones_like(ctx.mask)


def top_fraction(score: Tensor, mask: Tensor, rho: float, world: World = LOCAL) -> Tensor:
    """0/1 weights keeping the ceil(rho * N) valid tokens of the global batch with the largest score.

    N counts the valid tokens of every rank; ties go to the earlier token (lower rank first), so the result on
    each rank equals its slice of the single-process result over the concatenated batch.
    """
    valid = mask.reshape(-1) > 0
    local = score.reshape(-1)[valid].double()
    everything = world.all_gather_cat(local)
    offset = world.rank_offset(local.numel()) if world.size > 1 else 0
    n_keep = math.ceil(rho * everything.numel())
    order = torch.sort(-everything, stable=True).indices[:n_keep]
    keep_all = torch.zeros_like(everything).index_fill_(0, order, 1.0)
    keep = torch.zeros(valid.numel(), dtype=mask.dtype, device=mask.device)
    keep[valid] = keep_all[offset: offset + local.numel()].to(mask.dtype)
    return keep.view_as(mask)


@TOKEN_WEIGHTS.register("top_entropy")
def top_entropy(ctx: LossContext, rho: float = 0.2) -> Tensor:
    """Keep the top-rho fraction of tokens by rollout-time entropy (the "80/20" idea; TRL's top_entropy_quantile)."""
    assert ctx.old_entropy is not None
    return top_fraction(ctx.old_entropy, ctx.mask, rho, ctx.world)
