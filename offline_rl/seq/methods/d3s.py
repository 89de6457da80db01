"""D3S: Dynamic Dual-Level Down-Sampling (Wang et al., arXiv 2509.22115; code not public).

Sample level: from each group's G rollouts (or the whole batch), keep the m-subset S maximising Var_{i in S}(A_i).
Exact in O(G log G): sort A; the best subset is the top-k plus the bottom-(m - k) for some k (the PODS lemma), so
scan k = 0..m.
Token level: keep the top-rho fraction of valid tokens by |A_{i,t}| * H_{i,t}.
Both levels use global statistics: the batch-scope subset and the token fraction are over every rank's rows.
Schedule: start aggressive (small m/G and rho) and relax towards keeping everything. UNVERIFIED: the functional
form and the endpoints; `schedule(step) -> (m_frac, rho)` is linear or cosine here, with our default endpoints.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from offline_rl.seq.context import LossContext
from offline_rl.seq.methods import register_method
from offline_rl.seq.methods.base import Choice, Method
from offline_rl.seq.ops import dense_ids
from offline_rl.seq.points.token_weights import top_fraction
from offline_rl.seq.registry import SELECTIONS, TOKEN_WEIGHTS


def schedule(step: int, total_steps: int, start: float, end: float = 1.0, kind: str = "constant",
             horizon: float = 1.0) -> float:
    """A keep fraction at `step`: constant `start`, or linear / cosine from `start` to `end` over horizon*total."""
    if kind == "constant":
        return start
    x = min(step / max(horizon * total_steps, 1), 1.0)
    w = x if kind == "linear" else (1 - math.cos(math.pi * x)) / 2
    return start + (end - start) * w


def max_variance_subset(a: Tensor, m: int) -> Tensor:
    """Indices of the m-subset of `a` (1-D) with the largest (population) variance: top-k plus bottom-(m-k)."""
    n = a.numel()
    if m >= n:
        return torch.arange(n)
    a = a.detach().cpu()
    order = torch.sort(a.double(), stable=True).indices
    s = a.double()[order]
    k = torch.arange(m + 1)  # k from the top, m - k from the bottom
    prefix = torch.cat([torch.zeros(1, dtype=s.dtype), s.cumsum(0)])
    prefix_sq = torch.cat([torch.zeros(1, dtype=s.dtype), (s * s).cumsum(0)])
    total = prefix[m - k] + (prefix[n] - prefix[n - k])
    total_sq = prefix_sq[m - k] + (prefix_sq[n] - prefix_sq[n - k])
    var = total_sq / m - (total / m) ** 2
    best = int(torch.argmax(var))  # the first maximiser: deterministic
    return torch.cat([order[: m - best], order[n - best:]])


@SELECTIONS.register("d3s")
def d3s_samples(ctx: LossContext, m_frac: float = 0.5, scope: str = "group", schedule_kind: str = "linear",
                horizon: float = 1.0) -> Tensor:
    """Keep the max-variance m-subset of each group (scope "group", D3S-I) or of the batch (scope "batch").

    m = round(m_frac * n), scheduled from m_frac to 1 (UNVERIFIED schedule; `schedule_kind="constant"` fixes it).
    """
    frac = schedule(ctx.step, ctx.total_steps, m_frac, 1.0, schedule_kind, horizon)
    a = (ctx.token_advantages.mul(ctx.mask).sum(-1) / ctx.mask.sum(-1).clamp(min=1)).cpu()  # per-sequence A
    ctx.metrics["d3s_m_frac"] = torch.tensor(frac)
    if scope == "batch":  # the whole global batch is one pool: gather every rank's A, keep this rank's slice
        everything = ctx.world.all_gather_cat(a)
        offset = ctx.world.rank_offset(a.numel()) if ctx.world.size > 1 else 0
        keep_all = torch.zeros(everything.numel(), dtype=torch.bool)
        keep_all[max_variance_subset(everything, max(1, round(frac * everything.numel())))] = True
        return keep_all[offset: offset + a.numel()].to(ctx.mask.device)
    if scope != "group":
        raise ValueError(f"scope must be group or batch, not {scope!r}")
    gid = dense_ids(ctx.group_ids).cpu()  # groups never span ranks
    keep = torch.zeros(a.shape[0], dtype=torch.bool)
    for g in torch.unique(gid).tolist():  # a loop over groups, not tokens
        rows = torch.nonzero(gid == g).squeeze(1)
        m = max(1, round(frac * rows.numel()))
        keep[rows[max_variance_subset(a[rows], m)]] = True
    return keep.to(ctx.mask.device)


@TOKEN_WEIGHTS.register("d3s")
def d3s_tokens(ctx: LossContext, rho: float = 0.5, schedule_kind: str = "linear", horizon: float = 1.0) -> Tensor:
    """Keep the ceil(rho N) valid tokens with the largest |A| * H (rollout-time entropy); rho scheduled to 1."""
    assert ctx.old_entropy is not None
    r = schedule(ctx.step, ctx.total_steps, rho, 1.0, schedule_kind, horizon)
    ctx.metrics["d3s_rho"] = torch.tensor(r)
    return top_fraction(ctx.token_advantages.abs() * ctx.old_entropy, ctx.mask, r, ctx.world)


@register_method("d3s")
def d3s() -> Method:
    """UNVERIFIED endpoints: m/G from 0.5 and rho from 0.5, both linear to 1 over the run."""
    return Method("d3s", description="max-variance sample subset + top |A|*H tokens, scheduled",
                  selection=Choice("d3s"), token_weights=Choice("d3s"))
