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


def test_sequence_surrogates_average_over_global_sequences(make_ctx) -> None:
    """A (B,) surrogate is summed over non-empty rows (times their weights) / (global sequences / world)."""
    from offline_rl.seq.loss import policy_gradient_term
    from offline_rl.seq.methods.base import Method

    ctx = make_ctx(B=4, T=3)
    ctx.mask[2] = 0  # an empty row leaves the mean
    ctx.counts = global_counts(ctx.mask)
    per_seq = torch.tensor([1.0, 2.0, 100.0, 4.0])
    assert torch.allclose(policy_gradient_term(Method("m"), ctx, per_seq), torch.tensor(7.0 / 3))
    ctx.sample_weights = torch.tensor([1.0, 0.5, 1.0, 0.0])
    assert torch.allclose(policy_gradient_term(Method("m"), ctx, per_seq), torch.tensor(2.0 / 3))
    ctx.counts = Counts(tokens=10.0, seqs=6.0, world=2)  # two ranks, 6 sequences in all
    assert torch.allclose(policy_gradient_term(Method("m"), ctx, per_seq), torch.tensor(2.0 / 3))


def test_token_and_sample_weights_multiply_the_surrogate(make_ctx) -> None:
    from offline_rl.seq.loss import policy_gradient_term
    from offline_rl.seq.methods.base import Method

    ctx = make_ctx(B=2, T=2)
    ctx.mask = torch.ones(2, 2)
    ctx.counts = global_counts(ctx.mask)
    ctx.token_weights = torch.tensor([[1.0, 0.0], [2.0, 1.0]])
    ctx.sample_weights = torch.tensor([3.0, 1.0])
    loss = torch.tensor([[1.0, 5.0], [1.0, 1.0]])
    # seq-mean-token-mean of w * v * l: ((3 * 1 + 0) / 2 + (2 + 1) / 2) / 2
    assert torch.allclose(policy_gradient_term(Method("m"), ctx, loss), torch.tensor(1.5))


def test_loss_terms_are_added_with_their_coefficient(make_ctx) -> None:
    from offline_rl.seq.loss import policy_loss
    from offline_rl.seq.methods.base import Choice, Method
    from offline_rl.seq.registry import LOSS_TERMS

    @LOSS_TERMS.register("test_sum_logp")
    def sum_logp(ctx, coef: float = 1.0):
        return coef * (ctx.logp * ctx.mask).sum()

    ctx = make_ctx(B=4, T=3)
    ctx.advantages = torch.zeros(4)
    base = policy_loss(Method("m"), ctx)
    with_term = policy_loss(Method("m", terms=(Choice("test_sum_logp", {"coef": 0.5}),)), ctx)
    assert torch.allclose(with_term - base, 0.5 * (ctx.logp * ctx.mask).sum())
    overridden = Method("m", terms=(Choice("test_sum_logp", {"coef": 0.5}),)).override({"terms.test_sum_logp.coef": 2})
    assert overridden.terms[0].params["coef"] == 2


def test_dr_grpo_constant_is_the_length_budget(make_ctx) -> None:
    ctx = make_ctx(B=4, T=3)
    ctx.counts = global_counts(ctx.mask, max_len=8)  # max_new_tokens = 8, batch only 3 wide
    loss = torch.rand(4, 3)
    got = AGGREGATIONS.get("seq-mean-token-sum-norm")(ctx, loss)
    assert torch.allclose(got, (loss * ctx.mask).sum() / (4 * 8))
