"""Vectorised group and segment statistics (scatter-based, no Python loop over rows or tokens)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def dense_ids(*keys: Tensor) -> Tensor:
    """Map rows of (key_1, ..., key_n) to 0..U-1, the same id for equal tuples."""
    stacked = torch.stack([k.reshape(-1).long() for k in keys], dim=1)
    return torch.unique(stacked, dim=0, return_inverse=True)[1]


def group_stats(x: Tensor, ids: Tensor, unbiased: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """Per-element mean, std and size of the group given by `ids` (any integers). x: (B,)."""
    gid = dense_ids(ids)
    n_groups = int(gid.max()) + 1 if gid.numel() else 0
    x = x.double()
    count = torch.zeros(n_groups, dtype=x.dtype, device=x.device).index_add_(0, gid, torch.ones_like(x))
    total = torch.zeros_like(count).index_add_(0, gid, x)
    mean = total / count
    sq = torch.zeros_like(count).index_add_(0, gid, (x - mean[gid]) ** 2)
    var = sq / (count - 1).clamp(min=1) if unbiased else sq / count
    return mean[gid], var.sqrt()[gid], count[gid]


def segment_sum(x: Tensor, segment_ids: Tensor, mask: Tensor) -> Tensor:
    """For each token, the masked sum of `x` over its segment (its row and segment id). All (B, T)."""
    B, T = x.shape
    key = (torch.arange(B, device=x.device).unsqueeze(1) * T + segment_ids.clamp(0, T - 1)).reshape(-1)
    sums = torch.zeros(B * T, dtype=x.dtype, device=x.device).index_add(0, key, (x * mask.to(x.dtype)).reshape(-1))
    return sums[key].view(B, T)


def segment_mean(x: Tensor, segment_ids: Tensor, mask: Tensor) -> Tensor:
    """For each token, the masked mean of `x` over its segment."""
    size = segment_sum(torch.ones_like(x), segment_ids, mask)
    return segment_sum(x, segment_ids, mask) / size.clamp(min=1)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    m = mask.to(x.dtype)
    if dim is None:
        return (x * m).sum() / m.sum().clamp(min=1)
    return (x * m).sum(dim) / m.sum(dim).clamp(min=1)


def bucket_stats(x: Tensor, bucket: Tensor, mask: Tensor, world: Any = None) -> tuple[Tensor, Tensor, Tensor]:
    """Per-token mean, population std and count of `x` over its bucket, summed over every rank of `world`.

    Bucket ids are non-negative integers that mean the same bucket on every rank (a position, a segment index, a
    global row id). One all-reduce of the per-bucket (count, sum, sum of squares).
    """
    key = bucket.reshape(-1).long()
    n_local = torch.tensor([int(key.max()) + 1 if key.numel() else 1])
    n = int(world.all_gather_cat(n_local).max()) if world is not None and world.size > 1 else int(n_local)
    m = mask.reshape(-1).double()
    xv = x.reshape(-1).double()
    sums = torch.zeros(3, n, dtype=torch.double, device=x.device)
    sums[0].index_add_(0, key, m)
    sums[1].index_add_(0, key, xv * m)
    sums[2].index_add_(0, key, xv * xv * m)
    if world is not None and world.size > 1:
        sums = world.all_sum(sums)
    count = sums[0]
    mean = sums[1] / count.clamp(min=1)
    var = (sums[2] / count.clamp(min=1) - mean ** 2).clamp(min=0)
    shape = x.shape
    out = (mean[key].view(shape), var.sqrt()[key].view(shape), count[key].view(shape))
    return tuple(t.to(x.dtype) for t in out)  # type: ignore[return-value]
