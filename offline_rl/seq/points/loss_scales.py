"""P9 hook, loss scales: `loss_scale(ctx) -> scalar` multiplying the aggregated loss (S-PPO's correction)."""

from __future__ import annotations

import torch
from torch import Tensor

from offline_rl.seq.context import LossContext
from offline_rl.seq.registry import LOSS_SCALES


@LOSS_SCALES.register("none")
def none(ctx: LossContext) -> Tensor:
    return torch.ones((), dtype=ctx.mask.dtype, device=ctx.mask.device)
