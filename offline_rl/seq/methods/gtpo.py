"""GTPO: conflict tokens and entropy filtering (Simoni, Fontana et al., arXiv 2508.03772; code
winstonsmith1897/GTPO `gtpo_training.py`).

Conflict token: the same token at the same position in at least one positive- and one negative-advantage
completion of a group; only the leading run from the start, and the trailing run aligned from the end, count.
    delta = W (2.0) on a positive completion's conflict tokens, 0 on a negative's, 1 elsewhere
            (forward and backward runs multiply, as in the code)
Advantage, as the code: A_i = r_i - mean_group r (no std; `scale="group"` gives the GRPO advantage), then the
entropy filter and shaping, with H_i the completion's mean token entropy:
    A_i <- 0 if H_i > 0.7, else A_i - 0.1 H_i
(the shaping's scale is relative to r - mean, so it is larger against a std-normalised advantage).
Loss (on-policy, no KL, no reference): per completion -sum_t delta A_i rho_t / |o_i|, divided by its number of
conflict tokens (1 when it has none), then the mean over completions. The code sums over completions instead.
Conflict count: we count a completion's conflict tokens as its forward run plus its backward run, both in the
completion's own orientation. The code ORs the forward mask with the backward mask while the latter is still in
reversed (end-aligned) order, and masks that backward run with the unreversed validity mask, so its count (and
the normaliser) can differ from ours when a completion has a shared suffix; the delta weights are the same.
A tiny random model's mean entropy (about log V) is above 0.7, so the filter zeroes every advantage: the method
warns once when that happens (raise `advantage.entropy_threshold`).
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from offline_rl.seq.context import LossContext
from offline_rl.seq.methods import register_method
from offline_rl.seq.methods.base import Choice, Method
from offline_rl.seq.ops import dense_ids, group_stats, masked_mean
from offline_rl.seq.points.advantages import group_normalised, scalar_rewards
from offline_rl.seq.registry import ADVANTAGES, TOKEN_WEIGHTS

log = logging.getLogger("offline_rl.seq")


def _shared(keys: tuple[Tensor, ...], valid: Tensor, positive: Tensor, negative: Tensor) -> Tensor:
    """True where the (group, position, token) key occurs in a positive and in a negative completion."""
    ids = dense_ids(*keys).view(valid.shape)
    n = int(ids.max()) + 1
    def count(rows: Tensor) -> Tensor:
        hits = (valid & rows[:, None]).reshape(-1).float()
        return torch.zeros(n, device=valid.device).index_add_(0, ids.reshape(-1), hits)

    pos, neg = count(positive), count(negative)
    active = (positive | negative)[:, None]
    return (pos[ids] > 0) & (neg[ids] > 0) & valid & active


def _leading_run(flags: Tensor) -> Tensor:
    return torch.cumprod(flags.long(), dim=-1).bool()


def conflict_masks(token_ids: Tensor, mask: Tensor, group_ids: Tensor, positive: Tensor,
                   negative: Tensor) -> tuple[Tensor, Tensor]:
    """(forward run, backward run) of conflict tokens, each (B, T) bool. Completions are left-aligned."""
    B, T = token_ids.shape
    valid = mask > 0
    t = torch.arange(T, device=token_ids.device).expand(B, T)
    g = group_ids[:, None].expand(B, T)
    fwd = _leading_run(_shared((g, t, token_ids), valid, positive, negative))
    length = valid.sum(-1, keepdim=True)
    from_end = (length - 1 - t).clamp(min=0)  # position counted from the last valid token
    shared_bwd = _shared((g, from_end, token_ids), valid, positive, negative)
    reversed_flags = torch.where(t < length, shared_bwd.gather(1, from_end), False)  # [b, u] = flag at len-1-u
    bwd = _leading_run(reversed_flags).gather(1, from_end) & valid
    return fwd, bwd


def conflict_weights(ctx: LossContext, w_conflict: float = 2.0) -> tuple[Tensor, Tensor]:
    """(delta (B, T), number of conflict tokens per completion (B,)). Signs from r - group mean."""
    r = scalar_rewards(ctx)
    mean, _, n = group_stats(r, ctx.group_ids)
    centred = r.double() - torch.where(n > 1, mean, torch.zeros_like(mean))
    positive, negative = centred > 0, centred < 0
    fwd, bwd = conflict_masks(ctx.token_ids, ctx.mask, ctx.group_ids, positive, negative)

    def run_weight(run: Tensor) -> Tensor:
        return torch.where(run, torch.where(positive[:, None], w_conflict, 0.0), 1.0)

    delta = run_weight(fwd) * run_weight(bwd) * ctx.mask
    return delta.to(ctx.mask.dtype), ((fwd | bwd) & (ctx.mask > 0)).sum(-1)


@TOKEN_WEIGHTS.register("gtpo")
def gtpo_token_weights(ctx: LossContext, w_conflict: float = 2.0, per_conflict: bool = True) -> Tensor:
    """delta, divided by the completion's number of conflict tokens when `per_conflict` (GTPO's normaliser)."""
    delta, n_conflict = conflict_weights(ctx, w_conflict)
    ctx.metrics["conflict_tokens"] = n_conflict.float().mean()
    return delta / n_conflict.clamp(min=1)[:, None] if per_conflict else delta


@ADVANTAGES.register("gtpo")
def gtpo_advantage(ctx: LossContext, entropy_threshold: float = 0.7, entropy_scale: float = 0.1,
                   scale: str = "none") -> Tensor:
    """r - mean (the code's), zeroed when the mean entropy H_i > threshold, else shaped to A_i - scale * H_i."""
    assert ctx.old_entropy is not None
    a = group_normalised(scalar_rewards(ctx), ctx.group_ids, ctx, scale)
    h = masked_mean(ctx.old_entropy, ctx.mask, dim=-1)
    low = h <= entropy_threshold
    ctx.metrics["entropy_filtered"] = (~low).float().mean()
    if not low.any() and not ctx.state.get("gtpo_warned"):
        ctx.state["gtpo_warned"] = True
        log.warning("gtpo: the entropy filter removed every completion (mean entropy %.2f > threshold %.2f); "
                    "raise advantage.entropy_threshold", float(h.mean()), entropy_threshold)
    return torch.where(low, a - entropy_scale * h, torch.zeros_like(a))


@register_method("gtpo")
def gtpo() -> Method:
    """The code's defaults (W = 2, threshold 0.7, scale 0.1, A = r - mean). A tiny random model has entropy
    ~log V > 0.7, so on the built-in tasks raise the threshold (`--set advantage.entropy_threshold=5`)."""
    return Method("gtpo", description="conflict-token weights, entropy filter and shaping, no KL",
                  advantage=Choice("gtpo"), token_weights=Choice("gtpo"), surrogate=Choice("pg"),
                  aggregation=Choice("seq-mean-token-mean"))
