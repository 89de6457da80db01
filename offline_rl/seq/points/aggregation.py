"""P9 aggregation: `aggregation(ctx, loss) -> scalar`, invariant to data parallelism.

Every normaliser is a global count (ctx.counts, summed over ranks) divided by the number of ranks, so that the
average over ranks that DDP applies to the gradients gives the loss of the whole global batch.
"""

from __future__ import annotations

from torch import Tensor

from offline_rl.seq.context import LossContext
from offline_rl.seq.registry import AGGREGATIONS


def _per_rank(n: float, ctx: LossContext) -> float:
    assert ctx.counts is not None, "global counts are set before the loss"
    return n / ctx.counts.world


@AGGREGATIONS.register("token-mean")
def token_mean(ctx: LossContext, loss: Tensor) -> Tensor:
    """sum_{i,t} l m / (global tokens): each token weighs the same (TRL `dapo`, verl `token-mean`)."""
    return (loss * ctx.mask).sum() / _per_rank(ctx.counts.tokens, ctx)


@AGGREGATIONS.register("seq-mean-token-mean")
def seq_mean_token_mean(ctx: LossContext, loss: Tensor) -> Tensor:
    """Mean over tokens within each sequence, then over non-empty sequences (the original GRPO; length-biased)."""
    m = ctx.mask
    per_seq = (loss * m).sum(-1) / m.sum(-1).clamp(min=1)
    return per_seq.sum() / _per_rank(ctx.counts.seqs, ctx)


@AGGREGATIONS.register("seq-mean-token-sum")
def seq_mean_token_sum(ctx: LossContext, loss: Tensor) -> Tensor:
    """Sum over tokens within each sequence, mean over sequences (the BNPO runs)."""
    return (loss * ctx.mask).sum() / _per_rank(ctx.counts.seqs, ctx)


@AGGREGATIONS.register("seq-mean-token-sum-norm")
def seq_mean_token_sum_norm(ctx: LossContext, loss: Tensor, max_len: int | None = None) -> Tensor:
    """The Dr.GRPO constant: sum l m / (sequences x L_max); no length bias. L_max defaults to max_new_tokens."""
    length = max_len or ctx.counts.max_len
    return (loss * ctx.mask).sum() / _per_rank(ctx.counts.seqs * length, ctx)
