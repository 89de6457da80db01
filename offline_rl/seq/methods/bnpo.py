"""BNPO: Beta Normalization Policy Optimization (Xiao, Zhang, Cao, arXiv 2506.02864; code changyi7231/BNPO).

    p(q) = group mean of R (R rescaled to [0, 1]);  mu, v = mean and variance of p over the batch's prompts
    a = (mu(1 - mu)/v - 1) mu,  b = (mu(1 - mu)/v - 1)(1 - mu)        (Beta moment fit)
    alpha = max(1 + a/3, 1),  beta = max(1 + b/3, 1)
    A(q, o) = (R - p(q)) * clamp(1 / f_Beta(p(q); alpha, beta), 0, 1e6)

R must lie in [0, 1] after the affine map of `reward_range` (the official code asserts it); other rewards are
refused. Several reward components are summed (the official `use_advantage_decomposition=False`); with
`decompose=True` A is computed per component, each normalised separately, and averaged.
At alpha = beta = 3/2, f = (8/pi) sqrt(p(1 - p)) and A = (pi/8) (R - p)/sqrt(p(1 - p)): GRPO with the
population std, up to the constant pi/8.
Run configuration (recipe/bnpo/run.sh): clip 0.2 / 0.28 with dual clip c = 10, sequence mean of token sums,
no KL, one PPO epoch over one mini-batch.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from offline_rl.errors import UserError
from offline_rl.seq.context import LossContext
from offline_rl.seq.methods import register_method
from offline_rl.seq.methods.base import Choice, Method
from offline_rl.seq.ops import dense_ids, group_stats
from offline_rl.seq.registry import ADVANTAGES


def beta_moment_fit(p: Tensor) -> tuple[float, float]:
    """(a, b) of the Beta distribution with the sample mean and (unbiased) variance of p."""
    mu, v = p.mean(), p.var()
    common = mu * (1 - mu) / v - 1
    return float(common * mu), float(common * (1 - mu))


def beta_pdf(p: Tensor, alpha: float, beta: float) -> Tensor:
    log_b = math.lgamma(alpha) + math.lgamma(beta) - math.lgamma(alpha + beta)
    a1, b1 = torch.tensor(alpha - 1.0, dtype=p.dtype), torch.tensor(beta - 1.0, dtype=p.dtype)
    return torch.exp(torch.xlogy(a1, p) + torch.special.xlog1py(b1, -p) - log_b)  # 0 * log 0 = 0


def bnpo_component(r: Tensor, ctx: LossContext, alpha: float | None, beta: float | None,
                   reward_range: tuple[float, float]) -> Tensor:
    lo, hi = reward_range
    r = (r.double() - lo) / (hi - lo)
    if r.numel() and (r.min() < 0 or r.max() > 1):
        raise UserError(f"BNPO needs rewards in [{lo}, {hi}] (got {float(r.min() * (hi - lo) + lo):g} .. "
                        f"{float(r.max() * (hi - lo) + lo):g}); set advantage.reward_range=[low, high]")
    p, _, n = group_stats(r, ctx.group_ids)
    p = torch.where(n > 1, p, torch.zeros_like(p))  # a single completion has no baseline (as the official code)
    if alpha is None or beta is None:
        gid = dense_ids(ctx.group_ids)
        per_prompt = torch.zeros(int(gid.max()) + 1, dtype=p.dtype).index_copy_(0, gid, p)
        prompts = ctx.world.all_gather_cat(per_prompt)
        fitted = prompts.numel() > 1 and float(prompts.var()) > 1e-12
        # Our guard: with no spread (v = 0, or one prompt) the moment fit is undefined; use alpha = beta = 1.
        a, b = beta_moment_fit(prompts) if fitted else (0.0, 0.0)
        alpha = max(1 + a / 3, 1.0) if alpha is None else alpha
        beta = max(1 + b / 3, 1.0) if beta is None else beta
    inv_f = torch.clamp(1 / beta_pdf(p, alpha, beta), 0, 1e6)  # p in {0, 1}: 1/0 -> 1e6, times R - p = 0
    ctx.metrics["bnpo_alpha"], ctx.metrics["bnpo_beta"] = torch.tensor(alpha), torch.tensor(beta)
    return ((r - p) * inv_f).float()


@ADVANTAGES.register("bnpo")
def bnpo_advantage(ctx: LossContext, alpha: float | None = None, beta: float | None = None,
                   reward_range: tuple[float, float] = (0.0, 1.0), decompose: bool = False) -> Tensor:
    """BNPO advantage; alpha/beta fixed when given, else fitted by moments each batch (global over ranks)."""
    if ctx.rewards.dim() == 1 or not decompose:
        r = ctx.rewards if ctx.rewards.dim() == 1 else ctx.rewards.sum(-1)
        return bnpo_component(r, ctx, alpha, beta, reward_range)
    return torch.stack([bnpo_component(ctx.rewards[:, k], ctx, alpha, beta, reward_range)
                        for k in range(ctx.rewards.shape[1])]).mean(0)


@register_method("bnpo")
def bnpo() -> Method:
    """The paper's run configuration: clip 0.2 / 0.28 with dual clip 10, sequence mean of token sums, no KL."""
    return Method("bnpo", description="Beta-normalised advantages (moment-fitted alpha, beta)",
                  advantage=Choice("bnpo"),
                  surrogate=Choice("clip", {"eps_low": 0.2, "eps_high": 0.28, "clip_c": 10.0}),
                  aggregation=Choice("seq-mean-token-sum"))
