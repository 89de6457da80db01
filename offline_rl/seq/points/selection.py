"""P5 sample selection: `selection(ctx) -> keep (B,) bool`; dropped rows leave the loss and its normalisers."""

from __future__ import annotations

import torch
from torch import Tensor

from offline_rl.seq.context import LossContext
from offline_rl.seq.registry import SELECTIONS


@SELECTIONS.register("all")
def keep_all(ctx: LossContext) -> Tensor:
    return torch.ones(ctx.mask.shape[0], dtype=torch.bool, device=ctx.mask.device)


@SELECTIONS.register("nonzero_advantage")
def nonzero_advantage(ctx: LossContext) -> Tensor:
    """Drop completions whose advantage is zero everywhere (degenerate groups, as DAPO's filter)."""
    a = ctx.token_advantages * ctx.mask
    return (a.abs().sum(-1) > 0)
