"""P7/P10 and the loss: segment ratios (GSPO, ST-PPO turns, MA-RLHF macros), S-PPO's scale, GRPO-Guard."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from offline_rl.seq.loss import policy_loss
from offline_rl.seq.methods import get_method
from offline_rl.seq.methods.base import Choice, Method
from offline_rl.seq.points.advantages import grpo
from offline_rl.seq.registry import RATIOS, SEGMENTERS

GRPO = Method("grpo")


def loss_and_grad(method: Method, ctx) -> tuple[torch.Tensor, torch.Tensor]:
    ctx = dataclasses.replace(ctx, metrics={})
    ctx.segment_ids = method.fn("segmenter")(ctx)
    ctx.advantages = grpo(ctx)
    ctx.token_weights = method.fn("token_weights")(ctx) if method.token_weights.name == "bucket_balance" else None
    loss = policy_loss(method, ctx)
    return loss.detach(), torch.autograd.grad(loss, ctx.logp)[0]


def gspo_reference(ctx, eps_low: float, eps_high: float) -> torch.Tensor:
    """GSPO written directly: s_i = exp(mean_t log rho), loss = mean_i max(-A s, -A clip(s))."""
    m = ctx.mask
    s = torch.exp(((ctx.logp - ctx.old_logp) * m).sum(-1) / m.sum(-1))
    a = grpo(ctx)
    return torch.maximum(-a * s, -a * s.clamp(1 - eps_low, 1 + eps_high)).mean()


def assert_same(m1: Method, m2: Method, ctx) -> None:
    l1, g1 = loss_and_grad(m1, ctx)
    l2, g2 = loss_and_grad(m2, ctx)
    assert torch.allclose(l1, l2, atol=1e-6) and torch.allclose(g1, g2, atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_macro_n1_is_token_ppo(make_ctx, seed: int) -> None:
    ma = dataclasses.replace(get_method("ma_rlhf"), segmenter=Choice("fixed", {"n": 1}))
    assert_same(ma, GRPO, make_ctx(seed=seed))


@pytest.mark.parametrize("seed", [0, 1])
def test_macro_n_ge_len_and_one_turn_are_gspo(make_ctx, seed: int) -> None:
    ctx = make_ctx(seed=seed, spread=0.02)
    clip = Choice("clip", {"eps_low": 0.01, "eps_high": 0.02})
    ma = dataclasses.replace(get_method("ma_rlhf"), segmenter=Choice("fixed", {"n": 99}), surrogate=clip)
    turn = dataclasses.replace(get_method("turn_ppo"), surrogate=clip)  # no turn marker: one turn
    gspo = dataclasses.replace(get_method("gspo"), surrogate=clip)
    assert_same(ma, gspo, ctx)
    assert_same(turn, gspo, ctx)
    ref = gspo_reference(ctx, 0.01, 0.02)
    (g_ref,) = torch.autograd.grad(ref, ctx.logp)
    loss, g = loss_and_grad(gspo, ctx)
    assert torch.allclose(loss, ref.detach(), atol=1e-6) and torch.allclose(g, g_ref, atol=1e-6)


def test_one_token_per_turn_is_token_ppo(make_ctx) -> None:
    ctx = make_ctx(seed=5)
    ctx.token_ids = torch.full_like(ctx.token_ids, 9)
    ctx.turn_marker_id = 9  # every token ends a turn
    assert_same(get_method("turn_ppo"), GRPO, ctx)


def test_turn_segments_split_after_the_marker(make_ctx) -> None:
    ctx = make_ctx(B=1, T=6)
    ctx.token_ids = torch.tensor([[4, 9, 5, 5, 9, 6]])
    assert SEGMENTERS.get("turns")(ctx, marker_id=9).tolist() == [[0, 0, 1, 1, 1, 2]]


def test_product_ratio_is_segment_sum(make_ctx) -> None:
    ctx = make_ctx(B=2, T=4)
    ctx.mask = torch.ones(2, 4)
    ctx.segment_ids = torch.tensor([[0, 0, 1, 1]] * 2)
    lr = (ctx.logp - ctx.old_logp).detach()
    out = RATIOS.get("product")(ctx).detach()
    assert torch.allclose(out[:, 0], lr[:, :2].sum(-1)) and torch.allclose(out[:, 3], lr[:, 2:].sum(-1))


@pytest.mark.parametrize("name,params", [("fixed", {"n": 3}), ("randomized", {"repeat_times": 2}), ("ppl", {}),
                                         ("turns", {"marker_id": 4}), ("token", {}), ("sequence", {})])
def test_segmentation_covers_every_token_once_monotone(make_ctx, name: str, params: dict) -> None:
    ctx = make_ctx(B=5, T=12, seed=7)
    seg = SEGMENTERS.get(name)(ctx, **params)
    assert seg.shape == ctx.mask.shape and (seg[:, 0] == 0).all()
    steps = seg[:, 1:] - seg[:, :-1]
    assert ((steps == 0) | (steps == 1)).all()  # non-decreasing, no gaps: each token in exactly one segment


def test_randomized_lengths_follow_the_list(make_ctx) -> None:
    ctx = make_ctx(B=4, T=64)
    seg = SEGMENTERS.get("randomized")(ctx, repeat_times=2)
    for row in seg:
        sizes = torch.bincount(row).tolist()
        *macros, rest = sizes
        assert sorted(macros) == sorted([1, 2, 3, 5, 10] * 2) and rest == 64 - 42


def test_ppl_boundaries_follow_rising_perplexity(make_ctx) -> None:
    ctx = make_ctx(B=1, T=5)
    ctx.mask = torch.ones(1, 5)
    ctx.old_logp = torch.log(torch.tensor([[0.5, 0.9, 0.2, 0.3, 0.1]]))  # ppl 2, 1.1, 5, 3.3, 10
    assert SEGMENTERS.get("ppl")(ctx).tolist() == [[0, 1, 1, 2, 2]]  # token i starts a macro if ppl[i+1] > ppl[i]


def test_clip_normalizer_is_one_on_policy_and_scales_clipped(make_ctx) -> None:
    ctx = make_ctx(spread=0.0)
    ctx.old_logp = ctx.logp.detach().clone()
    assert_same(get_method("s_ppo"), GRPO, ctx)
    ctx = make_ctx(spread=1.0, seed=3)
    l_s, _ = loss_and_grad(get_method("s_ppo"), ctx)
    l_g, _ = loss_and_grad(GRPO, ctx)
    assert abs(float(l_s)) >= abs(float(l_g))


def guard_ctx(make_ctx, shift: float):
    ctx = make_ctx(B=64, T=6, G=8, spread=0.0, seed=11)
    ctx.mask = torch.ones(64, 6)
    noise = 0.01 * torch.randn(64, 6, generator=torch.Generator().manual_seed(0))
    ctx.old_logp = (ctx.logp + shift - noise).detach()  # log rho = -shift + noise: left-shifted
    return ctx


def test_ratio_norm_buckets_have_mean_one_and_target_std(make_ctx) -> None:
    ctx = guard_ctx(make_ctx, 0.05)
    out = RATIOS.get("ratio_norm")(ctx, bucket="position", target_std=0.3).detach()
    assert torch.allclose(out.mean(0), torch.zeros(6), atol=1e-6)  # geometric-mean ratio 1 in every bucket
    assert torch.allclose(out.std(0, unbiased=False), torch.full((6,), 0.3), atol=1e-5)


def test_ratio_norm_leaves_on_policy_loss_unchanged(make_ctx) -> None:
    ctx = make_ctx(spread=0.0)
    ctx.old_logp = ctx.logp.detach().clone()
    guard = Method("g", ratio=Choice("ratio_norm", {"target_std": 0.2}))
    assert_same(guard, GRPO, ctx)


def test_ratio_norm_reaches_the_upper_clip(make_ctx) -> None:
    ctx = guard_ctx(make_ctx, 0.05)
    ctx.rewards = torch.arange(64).float() % 2
    ctx.advantages = grpo(ctx)
    fracs = {}
    for name, ratio in [("plain", Choice("token")), ("norm", Choice("ratio_norm", {"target_std": 0.3}))]:
        c = dataclasses.replace(ctx, metrics={})
        c.log_ratio = Method("m", ratio=ratio).fn("ratio")(c)
        rho = torch.exp(c.log_ratio.detach())
        fracs[name] = float(((c.token_advantages > 0) & (rho > 1.2)).float().mean())
    assert fracs["plain"] == 0 and fracs["norm"] > 0


def test_bucket_balance_weights(make_ctx) -> None:
    ctx = make_ctx(B=3, T=3)
    ctx.mask = torch.tensor([[1.0, 1, 1], [1, 1, 0], [1, 0, 0]])
    w = Method("g", token_weights=Choice("bucket_balance")).fn("token_weights")(ctx)
    per_bucket = (w * ctx.mask).sum(0)
    assert torch.allclose(per_bucket, torch.full((3,), 2.0)) and float((w * ctx.mask).sum()) == pytest.approx(6)
