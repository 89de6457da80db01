"""EMPG: Entropy-Modulated Policy Gradients (Wang, Liu, Fu et al., arXiv 2509.09265; pseudocode only).

A step is a segment (an assistant turn; P10 `turns`); H_k = its mean token entropy under the old policy.
    H~ = (H - min) / (max - min + 1e-8)                 over the steps of the batch
    g(H) = exp(-k H~) / mean_batch exp(-k H~)            self-calibrating: mean g = 1
    f(H) = exp(-k_f H~)                                  future clarity
    A_mod(i, k) = g(H_k) A_i + zeta f(H_{k+1})           (the last step gets no bonus)
then batch-level zero-mean normalisation. Defaults k = k_f = 1, zeta = 0.1.
UNVERIFIED: whether the zero-mean step is over steps or tokens; here over steps (each step counts once).
"""

from __future__ import annotations

import torch
from torch import Tensor

from offline_rl.seq.context import LossContext
from offline_rl.seq.methods import register_method
from offline_rl.seq.methods.base import Choice, Method
from offline_rl.seq.registry import ADVANTAGES


def step_table(values: Tensor, segment_ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Per (row, step) slot: the mean of `values` and whether the step exists; both (B, T) indexed [b, k]."""
    B, T = values.shape
    key = (torch.arange(B, device=values.device).unsqueeze(1) * T + segment_ids.clamp(0, T - 1)).reshape(-1)
    m = mask.reshape(-1).to(values.dtype)
    sums = torch.zeros(B * T, dtype=values.dtype, device=values.device).index_add(0, key, values.reshape(-1) * m)
    counts = torch.zeros_like(sums).index_add(0, key, m)
    return (sums / counts.clamp(min=1)).view(B, T), (counts > 0).view(B, T)


def modulated_advantage(a: Tensor, h: Tensor, exists: Tensor, ctx: LossContext, k: float, k_f: float,
                        zeta: float) -> Tensor:
    """A_mod per step slot (B, T) from sequence advantages a (B,) and step entropies h (B, T)."""
    all_h = ctx.world.all_gather_cat(h[exists])
    h_norm = (h - all_h.min()) / (all_h.max() - all_h.min() + 1e-8)
    e = torch.exp(-k * h_norm)
    g = e / ctx.world.all_gather_cat(e[exists]).mean()
    f_next = torch.zeros_like(h)
    f_next[:, :-1] = torch.where(exists[:, 1:], torch.exp(-k_f * h_norm[:, 1:]), 0.0)
    a_mod = g * a[:, None] + zeta * f_next
    ctx.metrics["empg_g_mean"] = g[exists].mean()
    return a_mod - ctx.world.all_gather_cat(a_mod[exists]).mean()


@ADVANTAGES.register("empg")
def empg_advantage(ctx: LossContext, k: float = 1.0, k_f: float = 1.0, zeta: float = 0.1,
                   base: str = "grpo") -> Tensor:
    """Per-token A_mod of the token's step; the base advantage A_i comes from the registered `base` estimator."""
    assert ctx.old_entropy is not None and ctx.segment_ids is not None
    a = ADVANTAGES.get(base)(ctx)
    h, exists = step_table(ctx.old_entropy, ctx.segment_ids, ctx.mask)
    a_mod = modulated_advantage(a, h, exists, ctx, k, k_f, zeta)
    return a_mod.gather(1, ctx.segment_ids.clamp(0, h.shape[1] - 1)) * ctx.mask


@register_method("empg")
def empg() -> Method:
    """Steps are turns (one per completion on single-turn tasks); the ratio stays per token."""
    return Method("empg", description="entropy-modulated step advantages with a future-clarity bonus",
                  segmenter=Choice("turns"), advantage=Choice("empg"))
