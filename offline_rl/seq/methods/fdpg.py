"""f-DPG: f-divergence Distributional Policy Gradients (Go, Korbak, Kruszewski, Rozen, Ryu, Dymetman, ICML 2023,
arXiv 2302.08215; code naver/disco `disco/tuners/losses/f_divergence.py`, `tuner.py`).

Target: an energy-based model P(y | x); here the pointwise constraint P = pi_ref(y) b(y) with b = the task reward in
[0, 1] (disco's a(y) b(y), a = the initial model), or P = pi_ref(y) exp(r(y) / beta) (`target="exp"`). p = P / Z.
    Z(x) ~ mean_{y ~ q} P(y) / q(y)             a cumulative moving average per prompt (disco's `MovingAverage`)
    log t = log pi_theta(y) - log p(y)           (detached; +inf where P(y) = 0)
    R_theta(y) = -f'(t)                          the pseudo-reward; f' for each divergence:
        kl (forward, the original DPG): -1/t    reverse_kl: log t + 1    js: log 2 - softplus(-log t)
        tv: sign(log t) / 2
    b = the windowed moving average of R_theta (window 1024), taken before this batch updates it
    L = mean_y [ sg(pi_theta(y) / q(y)) (-(R_theta(y) - b)) log pi_theta(y) ]
with sequence log-probabilities and the proposal q = pi_old (the rollout policy). Its gradient estimates
grad D_f(pi_theta || p) (the baseline term has zero mean). disco's default divergence is JS. The reverse KL (and
any f' that is infinite at t = inf) needs a target with full support: `--set advantage.target=exp`. The target and
Z live in the `fdpg_partition` advantage (P4, once per rollout batch, full batch); the loss is the P8 surrogate.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from offline_rl.errors import UserError
from offline_rl.seq.context import LossContext
from offline_rl.seq.methods import register_method
from offline_rl.seq.methods.base import Choice, Method
from offline_rl.seq.points.advantages import scalar_rewards
from offline_rl.seq.registry import ADVANTAGES, SURROGATES

F_PRIME = {
    "kl": lambda log_t: -torch.exp(-log_t),
    "reverse_kl": lambda log_t: log_t + 1,
    "js": lambda log_t: math.log(2.0) - F.softplus(-log_t),
    "tv": lambda log_t: torch.sign(log_t) / 2,
}


def target_log_scores(ctx: LossContext, target: str, beta: float) -> Tensor:
    """log P(y) per sequence (-inf where the constraint target is 0)."""
    ref = (ctx.ref_logp * ctx.mask).sum(-1).double()
    r = scalar_rewards(ctx).double()
    if target == "constraint":
        return ref + torch.log(r.clamp(min=0, max=1))
    if target == "exp":
        return ref + r / beta
    raise ValueError(f"target must be constraint or exp, not {target!r}")


def update_z(z: dict[str, list[float]], keys: list[str], log_w: Tensor) -> None:
    """Cumulative moving average of the importance weights P/q per prompt key (value, weight), in place."""
    w = torch.exp(log_w).tolist()
    per_key: dict[str, list[float]] = {}
    for k, v in zip(keys, w):
        per_key.setdefault(k, []).append(v)
    for k, vs in per_key.items():
        value, weight = z.get(k, (0.0, 0))
        z[k] = [(value * weight + sum(vs)) / (weight + len(vs)), weight + len(vs)]


def window_update(buffer: list[float], values: list[float], window: int) -> None:
    buffer.extend(values)
    del buffer[: max(len(buffer) - window, 0)]


@ADVANTAGES.register("fdpg_partition")
def fdpg_partition(ctx: LossContext, target: str = "constraint", beta: float = 1.0) -> Tensor:
    """Once per rollout batch: update each prompt's Z estimate with its group; put log P(y) and log Z(x) of every
    row in ctx.flags["log_target"], ctx.flags["log_z"] (the loss reads them). Returns zeros (no advantage)."""
    assert ctx.ref_logp is not None and ctx.prompt_keys is not None, "f-DPG needs a reference model"
    st = ctx.state.setdefault("fdpg", {"z": {}, "baseline": []})
    log_q = (ctx.old_logp * ctx.mask).sum(-1).double()
    ctx.flags["log_target"] = target_log_scores(ctx, target, beta)
    update_z(st["z"], ctx.prompt_keys, ctx.flags["log_target"] - log_q)
    ctx.flags["log_z"] = torch.log(torch.tensor([max(st["z"][k][0], 1e-300) for k in ctx.prompt_keys],
                                                dtype=torch.double, device=ctx.mask.device))
    return torch.zeros(ctx.mask.shape[0], dtype=ctx.mask.dtype, device=ctx.mask.device)


@SURROGATES.register("fdpg")
def fdpg(ctx: LossContext, divergence: str = "js", window: int = 1024) -> Tensor:
    """Per-sequence f-DPG loss (B,) (see the module doc); log P and log Z come from `fdpg_partition`."""
    assert ctx.ref_logp is not None and "log_z" in ctx.flags, "f-DPG needs a reference and fdpg_partition"
    if divergence not in F_PRIME:
        raise UserError(f"f-DPG divergence must be one of {', '.join(F_PRIME)}, not {divergence!r}")
    st = ctx.state.setdefault("fdpg", {"z": {}, "baseline": []})
    mask = ctx.mask
    log_pi = (ctx.logp * mask).sum(-1)
    log_q = (ctx.old_logp * mask).sum(-1).double()
    log_p_unnorm = ctx.flags["log_target"].double()
    log_z = ctx.flags["log_z"].double()
    supported = torch.isfinite(log_p_unnorm)
    if divergence == "reverse_kl" and not bool(supported.all()):
        raise UserError("f-DPG with the reverse KL needs a target with full support: use advantage.target=exp")
    log_t = torch.where(supported, log_pi.detach().double() - (log_p_unnorm - log_z), torch.full_like(log_q, math.inf))
    pseudo = -F_PRIME[divergence](log_t)
    base = sum(st["baseline"]) / len(st["baseline"]) if st["baseline"] else None
    advantage = pseudo - base if base is not None else pseudo
    rows = mask.sum(-1) > 0
    window_update(st["baseline"], pseudo[rows].tolist(), window)
    ratio = torch.exp(log_pi.detach().double() - log_q)
    ctx.metrics["fdpg_pseudo_reward"] = pseudo[rows].mean() if bool(rows.any()) else pseudo.new_zeros(())
    return (ratio * -advantage).to(log_pi.dtype) * log_pi


@register_method("fdpg")
def fdpg_method() -> Method:
    return Method("fdpg", description="f-divergence DPG towards pi_ref * b (JS by default), IS-weighted",
                  advantage=Choice("fdpg_partition"), surrogate=Choice("fdpg"), needs_reference=True)
