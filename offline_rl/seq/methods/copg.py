"""CoPG: Contrastive Policy Gradient (Flet-Berliac et al., arXiv 2406.19185; no official code).

For two completions y, y' of the same prompt, from any behaviour policy (no importance sampling):
    l(y, y') = ( R(y) - R(y') - beta [ log pi(y)/pi_ref(y) - log pi(y')/pi_ref(y') ] )^2
with sequence log-probabilities. Its gradient is -2 beta (R_beta(y) - R_beta(y')) (grad log pi(y) - grad log pi(y')),
R_beta = R - beta log pi/pi_ref: a policy gradient whose baseline is the other sample's regularised reward; the
fixed point is pi* proportional to pi_ref exp(R / beta). Pairs: all pairs of a group (default), or disjoint adjacent
pairs. The loss is the mean over pairs: row i carries sum_{j paired with i} l_ij / (its number of pairs), whose mean
over the rows is the pair mean. UNVERIFIED: the loss's normalisation (reconstructed from the stated gradient and
the IPO equivalence) and beta = 0.1 (our default).
"""

from __future__ import annotations

import torch
from torch import Tensor

from offline_rl.seq.context import LossContext
from offline_rl.seq.methods import register_method
from offline_rl.seq.methods.base import Choice, Method
from offline_rl.seq.ops import dense_ids
from offline_rl.seq.points.advantages import scalar_rewards
from offline_rl.seq.registry import SURROGATES


def pair_mask(group_ids: Tensor, pairs: str) -> Tensor:
    """(B, B) bool: True for each ordered pair (i, j), i != j, that the scheme pairs within a group."""
    gid = dense_ids(group_ids)
    same = (gid[:, None] == gid[None, :]) & ~torch.eye(gid.numel(), dtype=torch.bool, device=gid.device)
    if pairs == "all":
        return same
    if pairs == "adjacent":  # (0, 1), (2, 3), ... in each group's row order; an odd last row is unpaired
        rank = torch.zeros_like(gid)
        for g in torch.unique(gid):
            rows = torch.nonzero(gid == g).squeeze(1)
            rank[rows] = torch.arange(rows.numel(), device=gid.device)
        partner = rank ^ 1
        return same & (rank[None, :] == partner[:, None])
    raise ValueError(f"pairs must be all or adjacent, not {pairs!r}")


@SURROGATES.register("copg")
def copg(ctx: LossContext, beta: float = 0.1, pairs: str = "all") -> Tensor:
    """Per-sequence CoPG loss (B,): the mean of l_ij over the row's pairs."""
    assert ctx.ref_logp is not None, "CoPG needs a reference model (needs_reference)"
    s = ((ctx.logp - ctx.ref_logp) * ctx.mask).sum(-1)  # log pi(y) / pi_ref(y), with the gradient
    r = scalar_rewards(ctx).to(s.dtype)
    paired = pair_mask(ctx.group_ids, pairs) & (ctx.mask.sum(-1) > 0)[None, :]
    diff = (r[:, None] - r[None, :]) - beta * (s[:, None] - s[None, :])
    n_pairs = paired.sum(-1)
    per_row = (diff ** 2 * paired).sum(-1) / n_pairs.clamp(min=1)
    return torch.where(n_pairs > 0, per_row, torch.zeros_like(per_row))


@register_method("copg")
def copg_method() -> Method:
    return Method("copg", description="contrastive policy gradient: squared regularised-reward differences of pairs",
                  surrogate=Choice("copg"), needs_reference=True)
