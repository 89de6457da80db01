"""P9: aggregation modes and their invariance to data parallelism (two simulated ranks, global counts)."""

from __future__ import annotations

import pytest
import torch

from offline_rl.seq.context import Counts, World, global_counts
from offline_rl.seq.registry import AGGREGATIONS

MODES = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]


class TwoRanks(World):
    """A fake world whose all_sum adds the other rank's (precomputed) counts."""

    size = 2

    def __init__(self, other: torch.Tensor) -> None:
        self.other = other

    def all_sum(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.other


def local_counts(mask: torch.Tensor) -> torch.Tensor:
    return torch.stack([mask.sum(), (mask.sum(-1) > 0).sum().float()]).double()


def test_formulas(make_ctx) -> None:
    ctx = make_ctx(B=4, T=3)
    loss = torch.rand(4, 3)
    m = ctx.mask
    assert torch.allclose(AGGREGATIONS.get("token-mean")(ctx, loss), (loss * m).sum() / m.sum())
    per_seq = (loss * m).sum(-1) / m.sum(-1)
    assert torch.allclose(AGGREGATIONS.get("seq-mean-token-mean")(ctx, loss), per_seq.mean())
    assert torch.allclose(AGGREGATIONS.get("seq-mean-token-sum")(ctx, loss), (loss * m).sum(-1).mean())
    assert torch.allclose(AGGREGATIONS.get("seq-mean-token-sum-norm")(ctx, loss), (loss * m).sum() / (4 * 3))


@pytest.mark.parametrize("mode", MODES)
def test_two_ranks_match_one(mode: str, make_ctx) -> None:
    """Each rank normalises by global counts / world; the DDP average of losses and gradients is the global one."""
    ctx = make_ctx(B=8, T=6, G=4, seed=3)
    loss = ctx.logp * torch.randn(8, 6)
    agg = AGGREGATIONS.get(mode)
    full = agg(ctx, loss)
    (g_full,) = torch.autograd.grad(full, ctx.logp, retain_graph=True)
    halves = [torch.arange(0, 3), torch.arange(3, 8)]  # unequal shards
    losses, grads = [], torch.zeros_like(ctx.logp)
    for r, rows in enumerate(halves):
        other = halves[1 - r]
        sub = ctx.rows(rows)
        world = TwoRanks(local_counts(ctx.mask[other]))
        sub.counts = global_counts(sub.mask, world, max_len=6)
        assert sub.counts.tokens == float(ctx.mask.sum())
        shard_loss = agg(sub, loss[rows])
        losses.append(shard_loss)
        (g,) = torch.autograd.grad(shard_loss, ctx.logp, retain_graph=True)
        grads += g / 2  # DDP averages gradients over ranks
    assert torch.allclose(sum(losses) / 2, full, atol=1e-6)
    assert torch.allclose(grads, g_full, atol=1e-6)


def test_counts_ignore_empty_sequences() -> None:
    mask = torch.tensor([[1.0, 1.0], [0.0, 0.0], [1.0, 0.0]])
    assert global_counts(mask) == Counts(tokens=3.0, seqs=2.0, world=1, max_len=2)
