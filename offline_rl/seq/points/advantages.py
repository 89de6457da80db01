"""P4 advantage estimators: `advantage(ctx) -> A`, of shape (B,) per sequence or (B, T) per token."""

from __future__ import annotations

import torch
from torch import Tensor

from offline_rl.seq.context import LossContext
from offline_rl.seq.ops import group_stats
from offline_rl.seq.registry import ADVANTAGES


def scalar_rewards(ctx: LossContext) -> Tensor:
    """One reward per completion: multi-component rewards are summed (TRL's `sum_then_normalize`)."""
    return ctx.rewards.sum(-1) if ctx.rewards.dim() == 2 else ctx.rewards


def group_normalised(r: Tensor, group_ids: Tensor, ctx: LossContext, scale: str = "group", eps: float = 1e-4,
                     unbiased: bool = True) -> Tensor:
    """A_i = (r_i - mean_group r) / (std + eps); a group of size 1 has mean 0 and std 1 (verl's convention).

    scale: "group" (std within the group), "batch" (std of the whole global batch), "none" (Dr.GRPO: r - mean).
    """
    mean, std, n = group_stats(r, group_ids, unbiased)
    single = n < 2
    mean = torch.where(single, torch.zeros_like(mean), mean)
    centred = r.double() - mean
    if scale == "none":
        return centred.to(r.dtype)
    if scale == "group":
        std = torch.where(single, torch.ones_like(std), std)
    elif scale == "batch":
        everything = ctx.world.all_gather_cat(r.double())
        std = everything.std(unbiased=unbiased).expand_as(centred) if everything.numel() > 1 else torch.ones_like(std)
    else:
        raise ValueError(f"scale must be group, batch or none, not {scale!r}")
    return (centred / (std + eps)).to(r.dtype)


@ADVANTAGES.register("grpo")
def grpo(ctx: LossContext, scale: str = "group", eps: float = 1e-4, unbiased: bool = True) -> Tensor:
    """GRPO: group-normalised outcome reward, broadcast over tokens."""
    return group_normalised(scalar_rewards(ctx), ctx.group_ids, ctx, scale, eps, unbiased)


@ADVANTAGES.register("dr_grpo")
def dr_grpo(ctx: LossContext) -> Tensor:
    """Dr.GRPO: r - group mean, with no std scaling."""
    return group_normalised(scalar_rewards(ctx), ctx.group_ids, ctx, scale="none")


@ADVANTAGES.register("rloo")
def rloo(ctx: LossContext) -> Tensor:
    """RLOO: r_i minus the mean of the other completions of its group, (sum r - r_i) / (n - 1)."""
    r = scalar_rewards(ctx)
    mean, _, n = group_stats(r, ctx.group_ids)
    baseline = (mean * n - r.double()) / (n - 1).clamp(min=1)
    return torch.where(n > 1, r.double() - baseline, torch.zeros_like(baseline)).to(r.dtype)


@ADVANTAGES.register("zero")
def zero(ctx: LossContext) -> Tensor:
    """No advantage (losses that do not use one, e.g. OTR on demonstrations)."""
    return torch.zeros(ctx.mask.shape[0], dtype=ctx.mask.dtype, device=ctx.mask.device)
