"""P7 ratio transforms: `ratio(ctx) -> log rho~ (B, T)`, the log importance ratio each token's surrogate uses.

The segment form generalises GSPO: for a segment tau, log rho_tau = mean_{t in tau} log rho_t, applied to each
token of tau in the GSPO-token form  log rho~_t = sg[log rho_tau] + log pi_t - sg[log pi_t]  (value rho_tau, the
gradient of each token's own log pi_t).
"""

from __future__ import annotations

from torch import Tensor

from offline_rl.seq.context import LossContext
from offline_rl.seq.ops import segment_mean, segment_sum
from offline_rl.seq.registry import RATIOS


def token_log_ratio(ctx: LossContext) -> Tensor:
    return ctx.logp - ctx.old_logp


def attach_token_grad(segment_value: Tensor, logp: Tensor) -> Tensor:
    """sg[value] + log pi - sg[log pi]: the value of `segment_value` with each token's own gradient."""
    return segment_value.detach() + logp - logp.detach()


@RATIOS.register("token")
def token(ctx: LossContext) -> Tensor:
    """log rho_t = log pi_t - log pi_old,t (PPO / GRPO)."""
    return token_log_ratio(ctx)


@RATIOS.register("segment")
def segment(ctx: LossContext) -> Tensor:
    """Geometric-mean ratio per segment (GSPO with one segment per sequence, ST-PPO per turn, MA-RLHF per macro)."""
    assert ctx.segment_ids is not None, "the segment ratio needs a segmenter"
    return attach_token_grad(segment_mean(token_log_ratio(ctx), ctx.segment_ids, ctx.mask), ctx.logp)


@RATIOS.register("product")
def product(ctx: LossContext) -> Tensor:
    """The MA-RLHF paper's macro ratio prod_{t in tau} rho_t (log: the segment sum), in the GSPO-token form."""
    assert ctx.segment_ids is not None
    return attach_token_grad(segment_sum(token_log_ratio(ctx), ctx.segment_ids, ctx.mask), ctx.logp)
