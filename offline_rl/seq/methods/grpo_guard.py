"""GRPO-Guard's regulated clipping (Wang et al., arXiv 2510.22319, for flow models), adapted to tokens.

RatioNorm: per bucket b (a position, a segment index or a sequence), re-centre and rescale log rho before clipping,
    log rho^ = (log rho - mu_b) * sigma_target / sigma_b        (mu_b, sigma_b detached; log-space, as verl-omni)
so each bucket's mean log-ratio is 0 (geometric-mean ratio 1) and its spread is sigma_target. Our adaptation:
sigma_target defaults to the batch's pooled std of log rho ("a consistent spread"); a bucket with no spread is
only re-centred (so on-policy ratios, all 1, leave the loss unchanged).
All bucket statistics are over the global batch (one all-reduce per bucket table).
Per-bucket reweighting: token weights N / (n_buckets * n_b) so that every bucket contributes equally (the paper's
1/(sqrt(-dt))^2 step weights, for tokens).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from offline_rl.seq.context import LossContext
from offline_rl.seq.methods import register_method
from offline_rl.seq.methods.base import Choice, Method
from offline_rl.seq.ops import bucket_stats
from offline_rl.seq.registry import RATIOS, TOKEN_WEIGHTS


def bucket_ids(ctx: LossContext, bucket: str) -> Tensor:
    """Ids meaning the same bucket on every rank: the position, the segment index, or the global row."""
    B, T = ctx.mask.shape
    if bucket == "position":
        return torch.arange(T, device=ctx.mask.device).expand(B, T)
    if bucket == "segment":
        assert ctx.segment_ids is not None
        return ctx.segment_ids
    if bucket == "sequence":
        first = ctx.world.rank_offset(B) if ctx.world.size > 1 else 0
        return torch.arange(first, first + B, device=ctx.mask.device)[:, None].expand(B, T)
    raise ValueError(f"bucket must be position, segment or sequence, not {bucket!r}")


def pooled_std(x: Tensor, mask: Tensor, world: Any) -> Tensor:
    """The population std of the valid entries of `x` over the global batch."""
    m = mask.double()
    sums = torch.stack([m.sum(), (x.double() * m).sum(), (x.double() ** 2 * m).sum()])
    n, s1, s2 = (world.all_sum(sums) if world.size > 1 else sums).tolist()
    n = max(n, 1.0)
    return torch.tensor(max(s2 / n - (s1 / n) ** 2, 0.0) ** 0.5, dtype=x.dtype, device=x.device)


@RATIOS.register("ratio_norm")
def ratio_norm(ctx: LossContext, bucket: str = "position", target_std: float | None = None,
               base: str = "token") -> Tensor:
    """RatioNorm on the `base` ratio's log rho, per bucket."""
    log_rho = RATIOS.get(base)(ctx)
    mean, std, _ = bucket_stats(log_rho.detach(), bucket_ids(ctx, bucket), ctx.mask, ctx.world)
    target = target_std if target_std is not None else pooled_std(log_rho.detach(), ctx.mask, ctx.world)
    scale = torch.where(std > 1e-8, target / std.clamp(min=1e-8), torch.ones_like(std))
    return (log_rho - mean) * scale


@TOKEN_WEIGHTS.register("bucket_balance")
def bucket_balance(ctx: LossContext, bucket: str = "position") -> Tensor:
    """w = N / (n_buckets * n_b): every non-empty bucket carries the same total weight (global N, n_b, buckets)."""
    _, _, count = bucket_stats(ctx.mask, bucket_ids(ctx, bucket), ctx.mask, ctx.world)
    totals = torch.stack([(1 / count.clamp(min=1) * ctx.mask).sum(), ctx.mask.sum()]).double()
    n_buckets, n = (ctx.world.all_sum(totals) if ctx.world.size > 1 else totals).tolist()
    return torch.where(ctx.mask > 0, n / (n_buckets * count.clamp(min=1)), torch.zeros_like(ctx.mask))


@register_method("grpo_guard")
def grpo_guard() -> Method:
    return Method("grpo_guard", description="per-bucket ratio normalisation and bucket-balanced weights",
                  ratio=Choice("ratio_norm"), token_weights=Choice("bucket_balance"))
