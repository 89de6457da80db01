"""ST-PPO / S-PPO (Li et al., arXiv 2511.20718; v2 names them SORL; no public code).

Turn-level IS (Turn-PPO): rho_k = exp((1/|y^k|) sum_{t in y^k} log rho_t) for every token of turn k, in the
GSPO-token form, clipped per turn (eps 0.2). UNVERIFIED: that the paper's Eq. 4 is this length-normalised mean.
Clipping-bias correction (S-PPO): normalise the policy gradient by a statistic of the clipping; v2 calls it
"clipping-triggered normalization". UNVERIFIED (Eq. 8): our form divides the loss by the fraction of valid tokens
whose gradient survives clipping, (N_unclipped / N)^-power, a `loss_scale` hook; with ratio 1 it is 1.
ST-PPO is both. One turn spanning the response is GSPO; one token per turn is token-level PPO.
"""

from __future__ import annotations

import torch
from torch import Tensor

from offline_rl.seq.context import LossContext
from offline_rl.seq.methods import register_method
from offline_rl.seq.methods.base import Choice, Method
from offline_rl.seq.points.surrogates import clipped_branch
from offline_rl.seq.registry import LOSS_SCALES


@LOSS_SCALES.register("clip_normalizer")
def clip_normalizer(ctx: LossContext, eps_low: float = 0.2, eps_high: float = 0.2, power: float = 1.0) -> Tensor:
    """(N / N_unclipped)^power over this rank's valid tokens (detached). UNVERIFIED exact form (see module doc)."""
    rho = torch.exp(ctx.log_ratio.detach())
    kept = (~clipped_branch(ctx.token_advantages, rho, eps_low, eps_high)).float() * ctx.mask
    n = ctx.mask.sum()
    scale = (n / kept.sum().clamp(min=1)).pow(power)
    ctx.metrics["clip_scale"] = scale
    return scale


@register_method("turn_ppo")
def turn_ppo() -> Method:
    return Method("turn_ppo", description="turn-level importance ratio (turns split at the turn marker)",
                  segmenter=Choice("turns"), ratio=Choice("segment"))


@register_method("s_ppo")
def s_ppo() -> Method:
    return Method("s_ppo", description="token-level ratio with the clipping-bias correction (unverified form)",
                  loss_scale=Choice("clip_normalizer"))


@register_method("st_ppo")
def st_ppo() -> Method:
    return Method("st_ppo", description="turn-level ratio + clipping-bias correction (unverified form)",
                  segmenter=Choice("turns"), ratio=Choice("segment"), loss_scale=Choice("clip_normalizer"))
