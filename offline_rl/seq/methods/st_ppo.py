"""ST-PPO / S-PPO (Li et al., arXiv 2511.20718; v2 names them SORL: SO-PPO, SO-GRPO; no public code).

Turn-level IS (Turn-PPO): rho_k = exp((1/|y^k|) sum_{t in y^k} log rho_t) for every token of turn k, in the
GSPO-token form, clipped per turn (eps 0.2). UNVERIFIED: that the paper's Eq. 4 is this length-normalised mean.
Clipping-bias correction (S-PPO): the paper normalises the policy gradient by a statistic of the clipping so as
to down-weight unreliable, highly off-policy updates (v2: "clipping-triggered normalization"). Its Eq. 8 could not
be checked here, so the form is ours (UNVERIFIED): the policy-gradient term is multiplied by
    s = (N_unclipped / N)^power  <= 1                   (N: valid tokens of the global batch)
so the more of the batch clipping discards (the further off-policy it is), the smaller the step; on-policy
(ratio 1, nothing clipped) s = 1. A `loss_scale` hook; N and N_unclipped are global over ranks.
ST-PPO is both. One turn spanning the response is GSPO; one token per turn is token-level PPO.

Defaults: GRPO advantages (the paper's SO-GRPO form; no critic here), clip 0.2, and two mini-batches per rollout
batch so that the updates are off-policy (UNVERIFIED: the paper's exact PPO mini-batch setting; 2 follows the
Search-R1 verl configuration, 512 prompts in mini-batches of 256). Turn-PPO and ST-PPO need turn markers.
"""

from __future__ import annotations

import torch
from torch import Tensor

from offline_rl.seq.context import LossContext
from offline_rl.seq.methods import register_method
from offline_rl.seq.methods.base import Choice, Method
from offline_rl.seq.points.surrogates import clipped_branch
from offline_rl.seq.registry import LOSS_SCALES

OFF_POLICY_MINIBATCHES = 2  # UNVERIFIED (see the module doc)


@LOSS_SCALES.register("clip_normalizer")
def clip_normalizer(ctx: LossContext, eps_low: float = 0.2, eps_high: float = 0.2, power: float = 1.0) -> Tensor:
    """(N_unclipped / N)^power over the global batch's valid tokens (detached), <= 1. UNVERIFIED form."""
    rho = torch.exp(ctx.log_ratio.detach())
    kept = (~clipped_branch(ctx.token_advantages, rho, eps_low, eps_high)).to(ctx.mask.dtype) * ctx.mask
    counts = torch.stack([ctx.mask.sum(), kept.sum()]).double()
    n, n_kept = (ctx.world.all_sum(counts) if ctx.world.size > 1 else counts).tolist()
    scale = torch.tensor((n_kept / max(n, 1.0)) ** power, dtype=ctx.mask.dtype, device=ctx.mask.device)
    ctx.metrics["clip_scale"] = scale
    return scale


@register_method("turn_ppo")
def turn_ppo() -> Method:
    return Method("turn_ppo", description="turn-level importance ratio (turns split at the turn marker)",
                  segmenter=Choice("turns"), ratio=Choice("segment"), minibatches=OFF_POLICY_MINIBATCHES,
                  requires=("turn_marker",))


@register_method("s_ppo")
def s_ppo() -> Method:
    return Method("s_ppo", description="token-level ratio with the clipping-bias correction (unverified form)",
                  loss_scale=Choice("clip_normalizer"), minibatches=OFF_POLICY_MINIBATCHES)


@register_method("st_ppo")
def st_ppo() -> Method:
    return Method("st_ppo", description="turn-level ratio + clipping-bias correction (unverified form)",
                  segmenter=Choice("turns"), ratio=Choice("segment"), loss_scale=Choice("clip_normalizer"),
                  minibatches=OFF_POLICY_MINIBATCHES, requires=("turn_marker",))
