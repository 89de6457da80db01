"""Batch statistics over data-parallel ranks, in process (two thread ranks): each point's result on a rank equals
its slice of the single-process result over the whole batch."""

from __future__ import annotations

import torch
from seq_helpers import random_ctx, run_ranks

from offline_rl.seq.methods import get_method
from offline_rl.seq.registry import ADVANTAGES, LOSS_SCALES, RATIOS, SELECTIONS, TOKEN_WEIGHTS

HALVES = [torch.arange(0, 6), torch.arange(6, 12)]  # whole groups of 3 on each rank


def split(fn, seed: int = 0, prep=None):
    """(fn on the whole batch, fn on each rank's half with a two-rank world, concatenated)."""
    full = random_ctx(B=12, T=5, G=3, seed=seed)
    if prep:
        prep(full)
    whole = fn(full)

    def on_rank(world, rank):
        sub = full.rows(HALVES[rank]).with_(world=world)
        return fn(sub)

    return whole, torch.cat(run_ranks(on_rank))


def with_advantages(ctx) -> None:
    ctx.advantages = ADVANTAGES.get("grpo")(ctx)


def test_top_entropy_fraction_is_global() -> None:
    whole, parts = split(lambda c: TOKEN_WEIGHTS.get("top_entropy")(c, rho=0.3))
    assert torch.equal(whole, parts) and whole.sum() > 0


def test_d3s_batch_subset_and_token_fraction_are_global() -> None:
    whole, parts = split(lambda c: SELECTIONS.get("d3s")(c, m_frac=0.4, scope="batch", schedule_kind="constant"),
                         prep=with_advantages)
    assert torch.equal(whole, parts) and 0 < int(whole.sum()) < 12
    whole, parts = split(lambda c: TOKEN_WEIGHTS.get("d3s")(c, rho=0.3, schedule_kind="constant"),
                         prep=with_advantages)
    assert torch.equal(whole, parts)


def test_grpo_guard_buckets_are_global() -> None:
    for bucket in ("position", "sequence"):
        whole, parts = split(lambda c, b=bucket: RATIOS.get("ratio_norm")(c, bucket=b).detach())
        assert torch.allclose(whole, parts, atol=1e-6), bucket
    whole, parts = split(lambda c: TOKEN_WEIGHTS.get("bucket_balance")(c))
    assert torch.allclose(whole, parts, atol=1e-6)


def test_s_ppo_clip_scale_is_global() -> None:
    def scale(c):
        c.log_ratio = (c.logp - c.old_logp).detach()
        return LOSS_SCALES.get("clip_normalizer")(c).reshape(1)

    whole, parts = split(scale, seed=3, prep=with_advantages)
    assert torch.allclose(parts, whole.expand(2)) and whole < 1


def test_bnpo_fit_and_empg_normalisation_are_global() -> None:
    whole, parts = split(lambda c: ADVANTAGES.get("bnpo")(c), seed=4)
    assert torch.allclose(whole, parts, atol=1e-6)

    def empg(c):
        c.segment_ids = torch.zeros_like(c.mask, dtype=torch.long)
        return ADVANTAGES.get("empg")(c)

    whole, parts = split(empg, seed=5)
    assert torch.allclose(whole, parts, atol=1e-6)


def test_capo_joint_update_and_drops_are_global() -> None:
    def prep(c):
        g = torch.Generator().manual_seed(0)
        c.hidden = torch.randn(12, 5, 4, generator=g, dtype=torch.double)
        c.head_weight = torch.randn(7, 4, generator=g, dtype=torch.double)
        with_advantages(c)

    whole, parts = split(lambda c: SELECTIONS.get("capo")(c, delta=2e-4), prep=prep)
    assert torch.equal(whole, parts) and 0 < int(whole.sum()) < 12
    assert get_method("capo").needs_hidden
