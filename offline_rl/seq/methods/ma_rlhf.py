"""MA-RLHF: macro actions (Chai et al., ICLR 2025, arXiv 2410.02743; code ernie-research/MA-RLHF).

Segmentation (P10): `fixed` n-grams, `randomized` n-grams from {1, 2, 3, 5, 10} x repeat_times, or `ppl`
(boundaries where the reference perplexity rises). As in the official code, the last token is its own macro
action (its `split_list += [1]`), so that the outcome reward it carries is not averaged with other tokens.
(The code applies this to the last position of the padded tensor; we apply it to the last valid token, which is
the same for a completion that fills the length budget and what the code's comment asks for.)

Advantage (P4, `macro`), as the code's macro GAE with no critic (V = 0; this backend has no value model):
    r_t = -beta (log pi_old,t - log pi_ref,t)       per token: the KL penalty in the reward (DeepSpeed-Chat)
    r_last += A_i                                   the outcome advantage (`base`, GRPO) at the last token
    r_tau = sum_{t in tau} sigma_t r_t              sigma: equal 1/|tau| (the run's), unit (last token), position
    A_tau = sum_l (gamma lambda)^l r_{tau+l}        gamma = 1, lambda = 0.95; every token of tau gets A_tau
Loss, as the code: every token keeps its own ratio rho_t with its macro's advantage, clipped at 0.2, and the
token mean (`ratio=token`, `aggregation=token-mean`; with the run's one sequence per micro-batch this is also the
sequence mean of token means). The paper writes the ratio at macro level: `--set ratio=product` (prod rho_t) or
`ratio=segment` (exp mean log rho_t). beta = 0, lambda = 1 and n = 1 give GRPO with token-mean aggregation.
Run configuration: KL coefficient 0.05, clip 0.2, gamma 1, lambda 0.95, n = 5 (UNVERIFIED: n ~ 5 as the best).
"""

from __future__ import annotations

import torch
from torch import Tensor

from offline_rl.seq.context import LossContext
from offline_rl.seq.methods import register_method
from offline_rl.seq.methods.base import Choice, Method
from offline_rl.seq.ops import segment_sum
from offline_rl.seq.registry import ADVANTAGES


def macro_weights(segment_ids: Tensor, mask: Tensor, sigma: str) -> Tensor:
    """sigma_t within each macro: equal 1/|tau|, unit (1 on the macro's last token) or position (1/(i+1), normed)."""
    m = mask.to(torch.double)
    if sigma == "equal":
        return m / segment_sum(m, segment_ids, mask).clamp(min=1)
    starts = torch.ones_like(segment_ids, dtype=torch.bool)
    starts[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
    if sigma == "unit":
        ends = torch.ones_like(starts)
        ends[:, :-1] = (segment_ids[:, 1:] != segment_ids[:, :-1]) | (mask[:, 1:] == 0)
        return (ends & (mask > 0)).to(torch.double)
    if sigma == "position":
        pos = torch.arange(mask.shape[1], device=mask.device).expand_as(segment_ids)
        first = torch.where(starts, pos, torch.zeros_like(pos)).cummax(-1).values  # start of each token's macro
        w = m / (pos - first + 1).to(torch.double)
        return w / segment_sum(w, segment_ids, mask).clamp(min=1e-12)
    raise ValueError(f"sigma must be equal, unit or position, not {sigma!r}")


@ADVANTAGES.register("macro")
def macro_advantage(ctx: LossContext, kl_coef: float = 0.05, gamma: float = 1.0, lam: float = 0.95,
                    sigma: str = "equal", base: str = "grpo") -> Tensor:
    """Per-token A_tau of the token's macro (see the module doc); (B, T)."""
    assert ctx.segment_ids is not None, "macro advantages need a segmenter"
    mask = ctx.mask.double()
    a = ADVANTAGES.get(base)(ctx).double()
    r = torch.zeros_like(mask)
    if kl_coef:
        assert ctx.ref_logp is not None, "the macro KL reward needs a reference model"
        r = -kl_coef * (ctx.old_logp.double() - ctx.ref_logp.double()) * mask
    last = (mask.sum(-1).long() - 1).clamp(min=0)
    r = r.scatter_add(1, last[:, None], (a * (mask.sum(-1) > 0))[:, None])
    weighted = macro_weights(ctx.segment_ids, ctx.mask, sigma) * r
    B, T = mask.shape
    macro_r = torch.zeros(B, T, dtype=torch.double, device=mask.device).scatter_add(1, ctx.segment_ids, weighted)
    k = torch.arange(T, device=mask.device, dtype=torch.double)
    discount = torch.where(k[None, :] >= k[:, None], (gamma * lam) ** (k[None, :] - k[:, None]), 0.0)
    macro_a = macro_r @ discount.T  # A_tau = sum_{j >= tau} (gamma lambda)^(j - tau) r_j
    return (macro_a.gather(1, ctx.segment_ids) * mask).to(ctx.mask.dtype)


@register_method("ma_rlhf")
def ma_rlhf() -> Method:
    """The official run: fixed 5-grams (last token alone), macro returns with the KL in the reward, per-token
    ratios clipped at 0.2, token mean."""
    return Method("ma_rlhf", description="macro actions: macro returns (KL in the reward), per-token ratios",
                  segmenter=Choice("fixed", {"n": 5}), advantage=Choice("macro"), ratio=Choice("token"),
                  aggregation=Choice("token-mean"), needs_reference=True)
