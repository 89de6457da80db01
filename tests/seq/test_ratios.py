"""P7 ratios, P10 segmenters, P8 surrogates and the KL, and the methods built on them (GSPO, Turn-PPO, ST-PPO,
S-PPO, MA-RLHF, GRPO-Guard), against hand values and direct re-implementations."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from seq_helpers import loss_and_grad, prepare

from offline_rl.seq.methods import get_method
from offline_rl.seq.methods.base import Choice, Method
from offline_rl.seq.points.advantages import grpo
from offline_rl.seq.points.surrogates import k3_kl
from offline_rl.seq.registry import LOSS_SCALES, RATIOS, SEGMENTERS, SURROGATES

GRPO = Method("grpo")


def gspo_reference(ctx, eps_low: float, eps_high: float) -> torch.Tensor:
    """GSPO written directly: s_i = exp(mean_t log rho), loss = mean_i max(-A s, -A clip(s))."""
    m = ctx.mask
    s = torch.exp(((ctx.logp - ctx.old_logp) * m).sum(-1) / m.sum(-1))
    a = grpo(ctx)
    return torch.maximum(-a * s, -a * s.clamp(1 - eps_low, 1 + eps_high)).mean()


def ppo_reference(ctx, eps: float, agg: str = "seq") -> torch.Tensor:
    """Token-level clipped PPO with GRPO advantages: per-sequence token mean then batch mean, or token mean."""
    m = ctx.mask
    rho = torch.exp(ctx.logp - ctx.old_logp)
    a = grpo(ctx)[:, None]
    per_tok = torch.maximum(-a * rho, -a * rho.clamp(1 - eps, 1 + eps)) * m
    return (per_tok.sum(-1) / m.sum(-1)).mean() if agg == "seq" else per_tok.sum() / m.sum()


def assert_same(m1: Method, m2: Method, ctx) -> None:
    l1, g1 = loss_and_grad(m1, ctx)
    l2, g2 = loss_and_grad(m2, ctx)
    assert torch.allclose(l1, l2, atol=1e-6) and torch.allclose(g1, g2, atol=1e-6)


# --- surrogates and the KL ---------------------------------------------------------------------------------------

def test_clip_surrogate_hand_values() -> None:
    from offline_rl.seq.context import LossContext

    rho = torch.tensor([[0.5, 0.9, 1.1, 1.5]])
    ctx = LossContext(mask=torch.ones(1, 4), group_ids=torch.zeros(1, dtype=torch.long), rewards=torch.zeros(1),
                      token_ids=torch.zeros(1, 4, dtype=torch.long), logp=torch.zeros(1, 4),
                      old_logp=torch.zeros(1, 4))
    ctx.log_ratio = rho.log()
    for a, expected in [(1.0, [-0.5, -0.9, -1.1, -1.2]), (-1.0, [0.8, 0.9, 1.1, 1.5])]:
        ctx.advantages = torch.tensor([a])
        assert torch.allclose(SURROGATES.get("clip")(ctx), torch.tensor([expected]))  # eps 0.2 both sides
    ctx.advantages = torch.tensor([1.0])
    assert torch.allclose(SURROGATES.get("clip")(ctx, eps_high=0.28), torch.tensor([[-0.5, -0.9, -1.1, -1.28]]))
    assert float(ctx.metrics["clip_frac"]) == pytest.approx(0.25)
    ctx.log_ratio = torch.tensor([[20.0, 0.0, 2.5, 0.1]]).log()
    ctx.advantages = torch.tensor([-2.0])
    dual = SURROGATES.get("clip")(ctx, clip_c=10.0)  # A < 0: min(l, -A c) = min(l, 20)
    assert torch.allclose(dual, torch.tensor([[20.0, 1.6, 5.0, 1.6]]))


def test_bnpo_default_surrogate_has_the_runs_dual_clip(make_ctx) -> None:
    ctx = make_ctx(B=2, T=1, G=2)
    ctx.mask = torch.ones(2, 1)
    ctx.advantages = torch.tensor([-1.0, 1.0])
    ctx.log_ratio = torch.tensor([[30.0], [30.0]]).log()
    loss = get_method("bnpo").fn("surrogate")(ctx)  # A < 0: min(-A rho, -A c) with c = 10; A > 0: clip 1 + 0.28
    assert torch.allclose(loss, torch.tensor([[10.0], [-1.28]]))


def test_pg_surrogate_is_minus_a_with_the_gradient_of_log_pi(make_ctx) -> None:
    ctx = make_ctx(B=4, T=3)
    ctx.advantages = torch.tensor([1.0, -2.0, 0.5, 0.0])
    loss = SURROGATES.get("pg")(ctx)
    assert torch.allclose(loss.detach(), -ctx.token_advantages)
    (g,) = torch.autograd.grad(loss.sum(), ctx.logp)
    assert torch.allclose(g, -ctx.token_advantages)


def test_k3_kl_value_and_sign(make_ctx) -> None:
    ctx = make_ctx(B=2, T=3)
    ctx.ref_logp = ctx.logp.detach() + torch.tensor([[0.5, -0.5, 0.0], [1.0, -1.0, 0.2]])
    d = torch.tensor([[0.5, -0.5, 0.0], [1.0, -1.0, 0.2]])
    assert torch.allclose(k3_kl(ctx).detach(), torch.exp(d) - d - 1)
    assert (k3_kl(ctx).detach() >= 0).all() and k3_kl(ctx)[0, 2] == 0


def test_loss_adds_beta_kl_after_the_token_weights_and_subtracts_entropy(make_ctx) -> None:
    """TRL's order: weights multiply the surrogate only; + beta * agg(KL); - c_H * agg(H) (verl)."""
    ctx = make_ctx(B=4, T=5, G=2, seed=2)
    ctx.ref_logp = ctx.old_logp + 0.1 * torch.randn(4, 5, generator=torch.Generator().manual_seed(0))
    method = Method("m", kl_coef=0.04, entropy_coef=0.01, token_weights=Choice("top_entropy", {"rho": 0.5}))
    c = prepare(method, ctx)
    from offline_rl.seq.loss import policy_loss

    got = policy_loss(method, c)
    m = c.mask
    rho = torch.exp(c.logp - c.old_logp)
    a = grpo(c)[:, None]
    sur = torch.maximum(-a * rho, -a * rho.clamp(0.8, 1.2)) * c.token_weights
    d = c.ref_logp - c.logp
    kl = torch.exp(d) - d - 1
    seq_mean = lambda x: ((x * m).sum(-1) / m.sum(-1)).mean()  # noqa: E731
    expected = seq_mean(sur) + 0.04 * seq_mean(kl) - 0.01 * seq_mean(c.entropy)
    assert torch.allclose(got, expected, atol=1e-6)
    assert c.token_weights.sum() < m.sum()  # some tokens are weighted out: the KL is not


# --- ratios -----------------------------------------------------------------------------------------------------

def test_token_segment_and_product_ratios(make_ctx) -> None:
    ctx = make_ctx(B=2, T=4)
    ctx.mask = torch.tensor([[1.0, 1, 1, 1], [1, 1, 1, 0]])
    ctx.segment_ids = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 1]])
    lr = (ctx.logp - ctx.old_logp).detach()
    assert torch.allclose(RATIOS.get("token")(ctx).detach(), lr)
    seg = RATIOS.get("segment")(ctx).detach()
    assert torch.allclose(seg[0, 1], lr[0, :2].mean()) and torch.allclose(seg[0, 3], lr[0, 2:].mean())
    assert torch.allclose(seg[1, 2], lr[1, 1:3].mean())  # the padded token is not in the mean
    prod = RATIOS.get("product")(ctx).detach()
    assert torch.allclose(prod[0, 0], lr[0, :2].sum()) and torch.allclose(prod[1, 1], lr[1, 1:3].sum())
    (g,) = torch.autograd.grad(RATIOS.get("segment")(ctx).sum(), ctx.logp)
    assert torch.equal(g, torch.ones_like(g))  # GSPO-token form: each token's own d log pi


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_token_level_is_ppo_and_one_segment_is_gspo(make_ctx, seed: int) -> None:
    ctx = make_ctx(seed=seed, spread=0.3)
    loss, _ = loss_and_grad(GRPO, ctx)
    assert torch.allclose(loss, ppo_reference(ctx, 0.2), atol=1e-6)
    clip = Choice("clip", {"eps_low": 0.01, "eps_high": 0.02})
    gspo = dataclasses.replace(get_method("gspo"), surrogate=clip)
    ref = gspo_reference(ctx, 0.01, 0.02)
    (g_ref,) = torch.autograd.grad(ref, ctx.logp)
    loss, g = loss_and_grad(gspo, ctx)
    assert torch.allclose(loss, ref.detach(), atol=1e-6) and torch.allclose(g, g_ref, atol=1e-6)
    gspo_default = loss_and_grad(get_method("gspo"), ctx)[0]  # eps 3e-4 / 4e-4: almost every ratio clipped
    assert torch.allclose(gspo_default, gspo_reference(ctx, 3e-4, 4e-4).detach(), atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_macro_n1_is_token_ppo_and_n_ge_len_is_gspo_with_segment_ratios(make_ctx, seed: int) -> None:
    ctx = make_ctx(seed=seed, spread=0.02)
    seg_ratio = dict(ratio=Choice("segment"), advantage=Choice("grpo"), aggregation=Choice("seq-mean-token-mean"))
    ma1 = dataclasses.replace(get_method("ma_rlhf"), segmenter=Choice("fixed", {"n": 1}), **seg_ratio)
    assert_same(ma1, GRPO, ctx)
    clip = Choice("clip", {"eps_low": 0.01, "eps_high": 0.02})
    ma_all = dataclasses.replace(get_method("ma_rlhf"), segmenter=Choice("fixed", {"n": 99, "last_alone": False}),
                                 surrogate=clip, **seg_ratio)
    gspo = dataclasses.replace(get_method("gspo"), surrogate=clip)
    assert_same(ma_all, gspo, ctx)
    turn = dataclasses.replace(get_method("turn_ppo"), surrogate=clip)  # no turn marker: one turn
    assert_same(turn, gspo, ctx)


def test_ma_rlhf_default_is_the_official_token_loss(make_ctx) -> None:
    """Per-token ratios, clip 0.2, token mean over the batch, with the macro advantages."""
    ctx = make_ctx(B=6, T=7, G=3, seed=3, spread=0.3)
    ctx.ref_logp = ctx.old_logp + 0.2
    method = get_method("ma_rlhf")
    c = prepare(method, ctx)
    from offline_rl.seq.loss import policy_loss

    got = policy_loss(method, c)
    m = c.mask
    rho = torch.exp(c.logp - c.old_logp)
    a = c.advantages
    expected = (torch.maximum(-a * rho, -a * rho.clamp(0.8, 1.2)) * m).sum() / m.sum()
    assert torch.allclose(got, expected, atol=1e-6)
    assert c.advantages.shape == (6, 7) and not torch.allclose(c.advantages, grpo(c)[:, None] * m)
    assert c.segment_ids.tolist()[0][:7] == SEGMENTERS.get("fixed")(c, n=5).tolist()[0]


def test_one_token_per_turn_is_token_ppo(make_ctx) -> None:
    ctx = make_ctx(seed=5)
    ctx.token_ids = torch.full_like(ctx.token_ids, 9)
    ctx.turn_marker_id = 9  # every token ends a turn
    assert_same(get_method("turn_ppo"), GRPO, ctx)


# --- segmenters -------------------------------------------------------------------------------------------------

def test_turn_segments_split_after_the_marker(make_ctx) -> None:
    ctx = make_ctx(B=1, T=6)
    ctx.token_ids = torch.tensor([[4, 9, 5, 5, 9, 6]])
    assert SEGMENTERS.get("turns")(ctx, marker_id=9).tolist() == [[0, 0, 1, 1, 1, 2]]


def test_fixed_ngrams_with_the_last_token_alone(make_ctx) -> None:
    ctx = make_ctx(B=3, T=7)
    ctx.mask = torch.tensor([[1.0] * 7, [1.0] * 5 + [0.0] * 2, [1.0] * 6 + [0.0]])
    seg = SEGMENTERS.get("fixed")(ctx, n=3)
    assert seg.tolist() == [[0, 0, 0, 1, 1, 1, 2], [0, 0, 0, 1, 2, 2, 2], [0, 0, 0, 1, 1, 2, 2]]
    assert SEGMENTERS.get("fixed")(ctx, n=3, last_alone=False).tolist()[0] == [0, 0, 0, 1, 1, 1, 2]
    assert SEGMENTERS.get("fixed")(ctx).tolist()[0] == [0, 0, 0, 0, 0, 1, 2]  # default n = 5


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
    ctx.mask = torch.ones(4, 64)
    seg = SEGMENTERS.get("randomized")(ctx, repeat_times=2)
    for row in seg:
        *macros, rest, last = torch.bincount(row).tolist()
        assert sorted(macros) == sorted([1, 2, 3, 5, 10] * 2) and rest == 64 - 42 - 1 and last == 1
    assert not torch.equal(seg[0], seg[1])  # shuffled per row


def test_ppl_boundaries_follow_rising_perplexity(make_ctx) -> None:
    ctx = make_ctx(B=1, T=6)
    ctx.mask = torch.ones(1, 6)
    ctx.old_logp = torch.log(torch.tensor([[0.5, 0.9, 0.2, 0.3, 0.1, 0.4]]))  # ppl 2, 1.1, 5, 3.3, 10, 2.5
    # token i starts a macro if ppl[i+1] > ppl[i] (i = 1, 3), and the last token is a macro of its own
    assert SEGMENTERS.get("ppl")(ctx).tolist() == [[0, 1, 1, 2, 2, 3]]
    ctx.ref_logp = torch.log(torch.tensor([[0.9, 0.5, 0.5, 0.5, 0.5, 0.5]]))  # the reference wins when present
    assert SEGMENTERS.get("ppl")(ctx, last_alone=False).tolist() == [[0, 0, 0, 0, 0, 0]]  # ppl 1.1, 2, 2, ...


# --- S-PPO's clipping-bias scale --------------------------------------------------------------------------------

def test_clip_normalizer_down_weights_clipped_batches(make_ctx) -> None:
    ctx = make_ctx(B=4, T=3, G=2)
    ctx.mask = torch.ones(4, 3)
    ctx.advantages = torch.tensor([1.0, -1.0, 1.0, -1.0])
    ctx.log_ratio = torch.tensor([[0.0, 0.5, 0.1], [0.0, -0.5, 0.0], [0.0, 0.0, 0.0], [0.3, 0.0, -0.1]])
    # clipped (no gradient): A > 0 and rho > 1.2 (0.5 -> 1.65); A < 0 and rho < 0.8 (-0.5 -> 0.61): 2 of 12
    assert float(LOSS_SCALES.get("clip_normalizer")(ctx)) == pytest.approx(10 / 12)
    assert float(LOSS_SCALES.get("clip_normalizer")(ctx, power=2.0)) == pytest.approx((10 / 12) ** 2)
    ctx.log_ratio = torch.zeros(4, 3)
    assert float(LOSS_SCALES.get("clip_normalizer")(ctx)) == 1.0


def test_s_ppo_scales_the_policy_gradient_term(make_ctx) -> None:
    ctx = make_ctx(spread=1.0, seed=3)
    l_s, _ = loss_and_grad(get_method("s_ppo"), ctx)
    c = prepare(get_method("s_ppo"), ctx)
    c.log_ratio = c.logp - c.old_logp
    scale = float(LOSS_SCALES.get("clip_normalizer")(c))
    assert 0 < scale < 1 and torch.allclose(l_s, scale * loss_and_grad(GRPO, ctx)[0], atol=1e-6)


# --- GRPO-Guard -------------------------------------------------------------------------------------------------

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
    default = RATIOS.get("ratio_norm")(ctx).detach()  # target: the pooled std of log rho over the batch
    pooled = (ctx.logp - ctx.old_logp).detach().std(unbiased=False)
    assert torch.allclose(default.std(0, unbiased=False), pooled.expand(6), atol=1e-5)


def test_ratio_norm_leaves_on_policy_loss_unchanged(make_ctx) -> None:
    ctx = make_ctx(spread=0.0)
    ctx.old_logp = ctx.logp.detach().clone()
    assert_same(Method("g", ratio=Choice("ratio_norm", {"target_std": 0.2})), GRPO, ctx)


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
    # N = 6 tokens, 3 buckets (positions) of 3, 2, 1 tokens: w = 6 / (3 n_b)
    assert torch.allclose(w, torch.tensor([[2 / 3, 1.0, 2.0], [2 / 3, 1.0, 0.0], [2 / 3, 0.0, 0.0]]))
    assert math.isclose(float(w.sum()), 6.0, rel_tol=1e-6)
