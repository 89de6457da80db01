"""P4 estimators: GRPO, Dr.GRPO, RLOO, BNPO, Stratified GRPO and EMPG limit cases (spec "cheap tests")."""

from __future__ import annotations

import math

import pytest
import torch

from offline_rl.seq.methods.bnpo import beta_moment_fit, beta_pdf
from offline_rl.seq.methods.empg import modulated_advantage
from offline_rl.seq.registry import ADVANTAGES


def grpo(ctx, **kw):
    return ADVANTAGES.get("grpo")(ctx, **kw)


def test_grpo_group_normalisation(make_ctx) -> None:
    ctx = make_ctx(B=6, G=3)
    ctx.rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 0.5])
    a = grpo(ctx)
    first = torch.tensor([1.0, 0.0, 0.0])
    expected = (first - first.mean()) / (first.std() + 1e-4)
    assert torch.allclose(a[:3], expected, atol=1e-6)
    assert torch.allclose(ADVANTAGES.get("dr_grpo")(ctx)[:3], first - first.mean())


def test_grpo_singleton_group_has_mean_zero_std_one(make_ctx) -> None:
    ctx = make_ctx(B=3, G=1)
    ctx.rewards = torch.tensor([0.7, 0.0, 1.0])
    assert torch.allclose(grpo(ctx), ctx.rewards / (1 + 1e-4))


def test_rloo_leave_one_out(make_ctx) -> None:
    ctx = make_ctx(B=3, G=3)
    ctx.rewards = torch.tensor([1.0, 0.0, 2.0])
    assert torch.allclose(ADVANTAGES.get("rloo")(ctx), torch.tensor([0.0, -1.5, 1.5]))


def test_beta_pdf_three_halves_identity() -> None:
    p = torch.linspace(0.01, 0.99, 50, dtype=torch.double)
    assert torch.allclose(beta_pdf(p, 1.5, 1.5), (8 / math.pi) * torch.sqrt(p * (1 - p)))


def binary_groups(n_groups: int = 5, G: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    rates = torch.rand(n_groups, 1, generator=g)
    rewards = (torch.rand(n_groups, G, generator=g) < rates).float().reshape(-1)
    return rewards, torch.arange(n_groups * G) // G


def test_bnpo_reduces_to_grpo_at_three_halves(make_ctx) -> None:
    """alpha = beta = 3/2: A = (pi/8)(R - p)/sqrt(p(1-p)) = (pi/8) x GRPO with the population std (eps 0)."""
    ctx = make_ctx(B=40, G=8)
    ctx.rewards, ctx.group_ids = binary_groups()
    bnpo = ADVANTAGES.get("bnpo")(ctx, alpha=1.5, beta=1.5)
    ref = grpo(ctx, eps=0.0, unbiased=False).nan_to_num(0.0)
    assert torch.allclose(bnpo, (math.pi / 8) * ref, atol=1e-5)


def test_bnpo_alpha_beta_one_is_reinforce_with_baseline(make_ctx) -> None:
    ctx = make_ctx(B=40, G=8)
    ctx.rewards, ctx.group_ids = binary_groups(seed=1)
    assert torch.allclose(ADVANTAGES.get("bnpo")(ctx, alpha=1.0, beta=1.0), ADVANTAGES.get("dr_grpo")(ctx))


def test_bnpo_moment_fit_recovers_beta() -> None:
    p = torch.distributions.Beta(2.0, 5.0).sample((10_000,)).double()
    a, b = beta_moment_fit(p)
    assert a == pytest.approx(2.0, rel=0.05) and b == pytest.approx(5.0, rel=0.05)


def test_bnpo_degenerate_groups_give_zero_not_nan(make_ctx) -> None:
    ctx = make_ctx(B=12, G=4)
    ctx.rewards = torch.tensor([1.0] * 4 + [0.0] * 4 + [1.0, 0.0, 0.0, 1.0])
    a = ADVANTAGES.get("bnpo")(ctx)
    assert torch.isfinite(a).all() and (a[:8] == 0).all() and (a[8:] != 0).all()
    assert ctx.metrics["bnpo_alpha"] >= 1 and ctx.metrics["bnpo_beta"] >= 1


def test_bnpo_decomposition_averages_components(make_ctx) -> None:
    ctx = make_ctx(B=16, G=4)
    r1, _ = binary_groups(4, 4, seed=2)
    r2, _ = binary_groups(4, 4, seed=3)
    ctx.rewards = torch.stack([r1, r2], dim=1)
    both = ADVANTAGES.get("bnpo")(ctx, alpha=1.2, beta=2.0)
    singles = []
    for r in (r1, r2):
        ctx.rewards = r
        singles.append(ADVANTAGES.get("bnpo")(ctx, alpha=1.2, beta=2.0))
    assert torch.allclose(both, (singles[0] + singles[1]) / 2)


def test_stratified_one_stratum_or_alpha_zero_is_grpo(make_ctx) -> None:
    ctx = make_ctx(B=12, G=6, seed=4)
    one = ADVANTAGES.get("stratified")(ctx, stratum=lambda c: torch.zeros(12, dtype=torch.long), alpha=0.7)
    assert torch.allclose(one, grpo(ctx), atol=1e-6)
    strata = lambda c: torch.arange(12) % 2  # noqa: E731
    assert torch.allclose(ADVANTAGES.get("stratified")(ctx, stratum=strata, alpha=0.0), grpo(ctx), atol=1e-6)


def test_stratified_san_is_standardised_within_each_stratum(make_ctx) -> None:
    ctx = make_ctx(B=12, G=12)
    ctx.rewards = torch.tensor([0.0, 1.0, 2.0, 0.5, 3.0, 1.0, 0.2, 0.9, 0.0, 1.0, 2.0, 4.0])
    key = torch.arange(12) % 3
    a = ADVANTAGES.get("stratified")(ctx, stratum=lambda c: key, alpha=1.0, eps=0.0)
    for k in range(3):
        s = a[key == k]
        assert s.mean().abs() < 1e-6 and s.var() == pytest.approx(1.0, abs=1e-5)


def test_stratified_singleton_falls_back(make_ctx) -> None:
    ctx = make_ctx(B=4, G=4)
    ctx.rewards = torch.tensor([0.0, 1.0, 1.0, 0.0])
    key = torch.tensor([0, 1, 1, 1])
    a_global = ADVANTAGES.get("stratified")(ctx, stratum=lambda c: key, alpha=1.0)
    a_zero = ADVANTAGES.get("stratified")(ctx, stratum=lambda c: key, alpha=1.0, singleton="zero")
    assert a_global[0] == pytest.approx(float(grpo(ctx)[0])) and a_zero[0] == 0


def test_empg_calibration_and_limits(make_ctx) -> None:
    ctx = make_ctx(B=6, T=5)
    a = torch.tensor([1.0, -1.0, 0.5, -0.5, 2.0, 0.0])
    h = torch.rand(6, 5)
    exists = torch.ones(6, 5, dtype=torch.bool)
    exists[0, 3:] = False
    modulated_advantage(a, h, exists, ctx, k=1.0, k_f=1.0, zeta=0.1)
    assert float(ctx.metrics["empg_g_mean"]) == pytest.approx(1.0, abs=1e-6)  # mean g = 1
    flat = modulated_advantage(a, torch.full((6, 5), 0.7), exists, ctx, 1.0, 1.0, zeta=0.0)
    per_step = a[:, None].expand(6, 5)[exists]
    assert torch.allclose(flat[exists], per_step - per_step.mean(), atol=1e-6)  # equal entropies: centred A
    two = modulated_advantage(torch.tensor([1.0, 1.0]), torch.tensor([[0.1], [0.9]]),
                              torch.ones(2, 1, dtype=torch.bool), ctx, 1.0, 1.0, zeta=0.0)
    assert two[0, 0] > two[1, 0]  # the lower-entropy step gets the larger modulated advantage


def test_empg_estimator_on_turns(make_ctx) -> None:
    ctx = make_ctx(B=6, T=5)
    ctx.segment_ids = torch.tensor([[0, 0, 1, 1, 2]] * 6)
    a = ADVANTAGES.get("empg")(ctx)
    assert a.shape == (6, 5) and torch.isfinite(a).all() and (a[ctx.mask == 0] == 0).all()
