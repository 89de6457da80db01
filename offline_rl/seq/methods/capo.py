"""CAPO: Curvature-Aware Policy Optimization (Melo, Abate, Gal, arXiv 2510.00819; no public code).

Our formulation (UNVERIFIED against the paper): a curvature model of the last layer. With h_t the LM head's input
and z_t = W h_t the logits, a gradient-ascent step on sum A log pi moves the head by
    dW_i = (eta/N) sum_{t in i} A_{i,t} (e_{y_t} - pi_t) h_t^T            (sample i alone; N valid tokens)
and the logits of any token s by dz_s = dW h_s = (eta/N) sum_t (h_s . h_t) A_t (e_{y_t} - pi_t): eta is the step
size of plain SGD on the head under a token-mean loss (the spec's sketch has no 1/N). The predicted KL is
    KL_s ~ 1/2 dz_s^T (diag pi_s - pi_s pi_s^T) dz_s.
Sample masking: drop samples whose own predicted KL (mean over their tokens) exceeds delta, then, while the
predicted KL of the kept samples' joint update (mean over all valid tokens) exceeds delta, drop the kept sample
with the largest own KL. Token masking: zero the tokens whose predicted KL under the joint update exceeds
delta_token. delta = inf gives the base loss. Over data-parallel ranks, N, the joint update dW and the joint mean
KL are global (all-reduced) and the sample dropped next is the global one with the largest own KL. """

from __future__ import annotations

import math

import torch
from torch import Tensor

from offline_rl.seq.context import LossContext
from offline_rl.seq.methods import register_method
from offline_rl.seq.methods.base import Choice, Method
from offline_rl.seq.registry import SELECTIONS, TOKEN_WEIGHTS


def head_probs(hidden: Tensor, weight: Tensor) -> Tensor:
    return torch.softmax(hidden.double() @ weight.double().T, dim=-1)


def _global_sum(ctx: LossContext, x: Tensor) -> Tensor:
    return ctx.world.all_sum(x) if ctx.world.size > 1 else x


def logit_gradients(ctx: LossContext, probs: Tensor) -> Tensor:
    """u_t = A_t m_t (e_{y_t} - pi_t) / N: each token's ascent direction in logit space, (B, T, V); N global."""
    onehot = torch.nn.functional.one_hot(ctx.token_ids, probs.shape[-1]).to(probs.dtype)
    n = _global_sum(ctx, ctx.mask.sum().double().reshape(1))[0]
    weight = (ctx.token_advantages * ctx.mask).double() / n.clamp(min=1)
    return weight[..., None] * (onehot - probs)


def predicted_kl(dz: Tensor, probs: Tensor) -> Tensor:
    """1/2 dz^T (diag pi - pi pi^T) dz per token."""
    return 0.5 * ((dz * dz * probs).sum(-1) - (dz * probs).sum(-1) ** 2)


def own_update_logits(ctx: LossContext, u: Tensor, eta: float) -> Tensor:
    """dz of each token under its own sample's update dW_i: eta sum_{t in i} (h_s . h_t) u_t, (B, T, V)."""
    h = ctx.hidden.double()
    return eta * torch.bmm(torch.bmm(h, h.transpose(1, 2)), u)


def joint_update_logits(ctx: LossContext, u: Tensor, keep: Tensor, eta: float) -> Tensor:
    """dz of every token under the summed update of the kept samples (of every rank): dW = eta sum_i u_i^T h_i."""
    h = ctx.hidden.double()
    dw = _global_sum(ctx, eta * torch.einsum("btv,btd->vd", u * keep[:, None, None], h))
    return h @ dw.T


def _valid_mean(ctx: LossContext, x: Tensor, mask: Tensor) -> Tensor:
    sums = _global_sum(ctx, torch.stack([(x * mask).sum(), mask.sum()]))
    return sums[0] / sums[1].clamp(min=1)


def _drop_largest(ctx: LossContext, keep: Tensor, own: Tensor) -> None:
    """Drop the kept sample with the largest own KL over the global batch (in place)."""
    scores = torch.where(keep, own, torch.full_like(own, -math.inf))
    everything = ctx.world.all_gather_cat(scores) if ctx.world.size > 1 else scores
    offset = ctx.world.rank_offset(own.numel()) if ctx.world.size > 1 else 0
    i = int(torch.argmax(everything)) - offset
    if 0 <= i < own.numel():
        keep[i] = False


def _any_kept(ctx: LossContext, keep: Tensor) -> bool:
    return bool(_global_sum(ctx, keep.sum().double().reshape(1))[0] > 0)


@SELECTIONS.register("capo")
def capo_samples(ctx: LossContext, delta: float = 0.05, eta: float = 1.0) -> Tensor:
    """Keep the samples whose predicted KL stays in the trust region delta (see the module doc)."""
    assert ctx.hidden is not None and ctx.head_weight is not None, "CAPO needs the hidden states (needs_hidden)"
    keep = ctx.mask.sum(-1) > 0
    if math.isinf(delta):
        return keep
    probs = head_probs(ctx.hidden, ctx.head_weight)
    u = logit_gradients(ctx, probs)
    mask = ctx.mask.double()
    own = (predicted_kl(own_update_logits(ctx, u, eta), probs) * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    keep = keep & (own <= delta)
    while _any_kept(ctx, keep) and _valid_mean(ctx, predicted_kl(joint_update_logits(ctx, u, keep, eta), probs),
                                               mask) > delta:
        _drop_largest(ctx, keep, own)  # at most B iterations
    ctx.metrics["capo_rejected"] = 1 - keep.float().mean()
    ctx.metrics["capo_predicted_kl"] = _valid_mean(ctx, predicted_kl(joint_update_logits(ctx, u, keep, eta), probs),
                                                   mask)
    return keep


@TOKEN_WEIGHTS.register("capo")
def capo_tokens(ctx: LossContext, delta_token: float = math.inf, eta: float = 1.0) -> Tensor:
    """0 for tokens whose predicted KL under the joint update of the (kept) batch exceeds delta_token."""
    if math.isinf(delta_token):
        return torch.ones_like(ctx.mask)
    probs = head_probs(ctx.hidden, ctx.head_weight)
    u = logit_gradients(ctx, probs)
    kl = predicted_kl(joint_update_logits(ctx, u, ctx.mask.sum(-1) > 0, eta), probs)
    return (kl <= delta_token).to(ctx.mask.dtype) * ctx.mask


@register_method("capo")
def capo() -> Method:
    """Our formulation: sample masking at delta = 0.05 with eta = 1 (UNVERIFIED defaults; token masking off)."""
    return Method("capo", description="last-layer curvature model: mask samples/tokens by predicted KL "
                  "(our formulation)", selection=Choice("capo"), token_weights=Choice("capo"), needs_hidden=True)
