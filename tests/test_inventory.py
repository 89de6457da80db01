"""The inventory suite and HDPO: simulators by hand, the oracles against the published tables, base-stock at S*
against the closed form, HDPO's pathwise gradient and its Adam step, the gymnasium wrappers."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from offline_rl.algos.hdpo import HDPO, HDPOConfig, Scenarios, problem_spec, train_hdpo
from offline_rl.envs.inventory import (
    LOST_SALES_DP_TABLE,
    ZIPKIN_TABLE,
    OneStore,
    SerialSystem,
    backlogged_base_stock_level,
    backlogged_optimum,
    lost_sales_dp,
    rollout,
)
from offline_rl.errors import ConfigError
from offline_rl.nets.order_heads import BaseStockHead, EchelonStockHead

# The spec's closed-form table C*(L, p) = (p + h)σ√(L+1)φ(Φ⁻¹(p/(p+h))), h = 1, σ = 1.6, three decimals.
BACKLOGGED_TABLE = {
    1: (3.167, 3.971, 4.667, 5.290), 4: (5.008, 6.279, 7.380, 8.364), 7: (6.335, 7.942, 9.335, 10.580),
    10: (7.428, 9.313, 10.946, 12.406), 15: (8.959, 11.232, 13.201, 14.962), 20: (10.264, 12.868, 15.124, 17.141),
}


def test_one_store_step_by_hand():
    lost = OneStore(lead_time=2, p=9.0, h=1.0, lost_sales=True)
    state = torch.tensor([[3.0, 4.0], [7.0, 0.0]])  # (on hand, order arriving next)
    nxt, cost = lost.step(state, torch.tensor([[6.0], [2.5]]), torch.tensor([[5.0], [5.0]]))
    # row 0: 2 short → cost 9·2, nothing left, the 4 arrive, the 6 enter the pipeline; row 1: 2 left → cost 1·2
    assert torch.equal(nxt, torch.tensor([[4.0, 6.0], [2.0, 2.5]]))
    assert torch.equal(cost, torch.tensor([18.0, 2.0]))
    back = OneStore(lead_time=1, p=4.0, lost_sales=False, demand="normal")
    nxt, cost = back.step(torch.tensor([[3.0]]), torch.tensor([[6.0]]), torch.tensor([[5.0]]))
    assert torch.equal(nxt, torch.tensor([[4.0]])) and torch.equal(cost, torch.tensor([8.0]))  # −2 backlogged + 6


def test_serial_step_by_hand():
    # two locations (no extra echelons): warehouse (h 0.5, L 2) → store (h 1, L 1, p 4), backlogged
    sys2 = SerialSystem(store_lead_time=1, p=4.0, warehouse_lead_time=2, echelon_h=(), echelon_lead_times=())
    state = torch.tensor([[3.0, 1.0, 2.0]])  # warehouse (on hand 3, arriving 1), store (on hand 2)
    nxt, cost = sys2.step(state, torch.tensor([[10.0, 5.0]]), torch.tensor([[6.0]]))
    # the store asks 5, the warehouse ships its 3 and keeps 0; the store is 4 short (4·4) and receives the 3 at once
    assert torch.equal(nxt, torch.tensor([[0.0 + 1.0, 10.0, -4.0 + 3.0]]))
    assert torch.equal(cost, torch.tensor([16.0]))
    nxt, cost = sys2.step(nxt, torch.tensor([[0.0, 0.5]]), torch.tensor([[0.0]]))
    assert torch.equal(nxt, torch.tensor([[0.5 + 10.0, 0.0, -1.0 + 0.5]]))
    assert torch.equal(cost, torch.tensor([0.5 * 0.5 + 4.0 * 1.0]))


@pytest.mark.parametrize("lead_time", [1, 2, 3])
def test_dp_reproduces_the_lost_sales_table(lead_time):
    for p in (4.0, 9.0, 19.0, 39.0):
        result = lost_sales_dp(lead_time, p)
        assert result.upper - result.lower < 1e-6
        assert abs(result.cost - LOST_SALES_DP_TABLE[(lead_time, p)]) <= 5e-4, (lead_time, p, result.cost)
        assert abs(result.cost - ZIPKIN_TABLE[(lead_time, p)]) <= 5e-3


def test_dp_bounds_are_large_enough():
    base = lost_sales_dp(2, 39.0)
    bigger = lost_sales_dp(2, 39.0, max_inventory=base.values.shape[0] + 20, max_order=45)
    assert abs(base.cost - bigger.cost) < 1e-6


@pytest.mark.slow
def test_dp_lead_time_4_matches_the_table_constants():
    for p in (4.0, 9.0, 19.0, 39.0):
        assert abs(lost_sales_dp(4, p).cost - LOST_SALES_DP_TABLE[(4, p)]) <= 5e-4


def test_backlogged_closed_form_matches_the_table():
    for lead_time, costs in BACKLOGGED_TABLE.items():
        for p, expected in zip((4.0, 9.0, 19.0, 39.0), costs):
            assert abs(backlogged_optimum(lead_time, p) - expected) <= 5e-4
    # S* = μ(L+1) + σ√(L+1)Φ⁻¹(p/(p+h)) by hand for L = 1, p = 4: Φ⁻¹(0.8) = 0.841621
    assert abs(backlogged_base_stock_level(1, 4.0) - (10 + 1.6 * math.sqrt(2) * 0.8416212)) < 1e-5


@pytest.mark.parametrize("lead_time, p", [(1, 4.0), (4, 39.0)])
def test_base_stock_at_s_star_reproduces_the_closed_form(lead_time, p):
    env = OneStore(lead_time, p, lost_sales=False, demand="normal")
    level = backlogged_base_stock_level(lead_time, p)
    policy = BaseStockHead(level)
    gen = torch.Generator().manual_seed(0)
    n, periods, burn = 2000, 400, 50
    initial = torch.full((n, lead_time), 5.0)
    with torch.no_grad():
        costs = rollout(env, policy, initial, env.sample_demands(n, periods, gen))[:, burn:].mean(1)
    mean, se = float(costs.mean()), float(costs.std() / math.sqrt(n))
    assert abs(mean - backlogged_optimum(lead_time, p)) < 4 * se + 1e-3 * mean, (mean, se)
    assert se < 0.01 * mean


def _loss_by_hand(env: OneStore, head: torch.nn.Module, batch: Scenarios) -> torch.Tensor:
    """HDPO's Ĵ_B, plainly: the mean over scenarios and all T periods of h(I − d)⁺ + p(d − I)⁺, lost sales."""
    total = 0.0
    state = batch.initial
    for t in range(batch.demands.shape[1]):
        q = head(state)[:, 0]
        d = batch.demands[:, t, 0]
        on_hand = state[:, 0]
        total = total + (env.h * torch.relu(on_hand - d) + env.p * torch.relu(d - on_hand)).sum()
        left = torch.relu(on_hand - d)
        arriving = state[:, 1] if env.lead_time > 1 else q
        rest = [state[:, 2:], q[:, None]] if env.lead_time > 1 else []
        state = torch.cat([(left + arriving)[:, None], *rest], 1) if env.lead_time > 1 else (left + q)[:, None]
    return total / (batch.demands.shape[0] * batch.demands.shape[1])


def test_hdpo_loss_gradient_and_adam_step():
    torch.manual_seed(0)
    config = HDPOConfig(lead_time=3, p=19.0, hidden=(8, 8), periods=12)
    algo = HDPO(problem_spec(config), config).double()
    gen = torch.Generator().manual_seed(1)
    batch = Scenarios(algo.env.initial_state(64, gen).double(), algo.env.sample_demands(64, 12, gen).double())
    loss, _ = algo.loss(batch)
    assert torch.allclose(loss, _loss_by_hand(algo.env, algo.head, batch), rtol=1e-12)
    params = list(algo.head.parameters())
    grads = torch.autograd.grad(loss, params)
    # pathwise gradient = the directional finite difference of the rollout cost (piecewise smooth, float64)
    direction = [torch.randn_like(p) for p in params]
    eps = 1e-6
    with torch.no_grad():
        for p, d in zip(params, direction):
            p.add_(eps * d)
        up = algo.loss(batch)[0]
        for p, d in zip(params, direction):
            p.sub_(2 * eps * d)
        down = algo.loss(batch)[0]
        for p, d in zip(params, direction):
            p.add_(eps * d)
    analytic = sum((g * d).sum() for g, d in zip(grads, direction))
    assert abs(float(analytic) - float(up - down) / (2 * eps)) < 1e-5 * max(1.0, abs(float(analytic)))
    # one Adam step from fresh moments moves each weight by lr·g/(|g| + ε) against its gradient
    before = [p.detach().clone() for p in params]
    algo.update(batch, 1)
    for b, p, g in zip(before, params, grads):
        expected = b - config.lr * g / (g.abs() + 1e-8)
        assert torch.allclose(p.detach(), expected, atol=1e-9)


def test_base_stock_gradient_by_hand():
    """L = 1, lost sales, two periods from on hand 3, level S = 8: the period-0 order S − 3 is on hand in period 1,
    so period 1's cost moves with S at −p when the store is short there and +h when it holds stock; period 0's
    cost does not depend on S. The gradient of the mean over 2 scenarios × 2 periods is the sum of these / 4."""
    env = OneStore(lead_time=1, p=9.0, h=1.0)
    head = BaseStockHead(8.0)
    initial = torch.tensor([[3.0], [3.0]])
    demands = torch.tensor([[[5.0], [9.0]], [[5.0], [6.0]]])  # period 1: on hand (3−5)⁺ + (8 − 3) = 5
    cost = rollout(env, head, initial, demands).mean()
    (grad,) = torch.autograd.grad(cost, [head.level])
    # scenario 0: 5 < 9 short → −p; scenario 1: 5 < 6 short → −p; mean over 2 scenarios × 2 periods
    assert float(grad) == pytest.approx((-9.0 - 9.0) / 4)
    demands[1, 1, 0] = 2.0  # now scenario 1 holds 3 → +h
    cost = rollout(env, head, initial, demands).mean()
    (grad,) = torch.autograd.grad(cost, [head.level])
    assert float(grad) == pytest.approx((-9.0 + 1.0) / 4)


def test_echelon_head_levels_and_orders():
    head = EchelonStockHead((1, 1, 1))
    with torch.no_grad():
        head.raw.copy_(torch.tensor([0.0, -10.0, -9.0]))  # increments softplus(10), softplus(0), softplus(1)
    u = torch.nn.functional.softplus(torch.tensor([10.0, 0.0, 1.0]))
    levels = head.levels()
    assert torch.allclose(levels, torch.stack([u.sum(), u[1] + u[2], u[2]]))
    state = torch.tensor([[20.0, 0.2, 0.1]])  # one slot per location: on hand only
    orders = head(state)
    wanted = (levels - torch.tensor([20.3, 0.3, 0.1])).clamp(min=0)
    assert torch.allclose(orders, torch.minimum(wanted, torch.tensor([math.inf, 20.0, 0.2])))


def test_hdpo_refuses_a_dataset_and_a_wrong_spec(tmp_path):
    from helpers import pendulum_dataset

    config = HDPOConfig()
    algo = HDPO(problem_spec(config), config)
    with pytest.raises(ConfigError, match="demand scenarios"):
        algo.prepare(pendulum_dataset(episodes=1))
    with pytest.raises(ConfigError, match="state size"):
        HDPO(problem_spec(HDPOConfig(lead_time=3)), config)
    with pytest.raises(ConfigError, match="unknown inventory problem"):
        train_hdpo({"problem": "two_stores"}, steps=1)


def test_gym_wrapper_steps_the_simulator():
    env = gym.make("offline_rl/InventoryLostSales-v0", lead_time=2, p=9.0)
    obs, _ = env.reset(seed=3)
    assert obs.shape == (2,) and env.unwrapped.optimal_cost == pytest.approx(6.094, abs=5e-4)
    total = 0.0
    for _ in range(50):
        before = obs.astype(np.float64)
        obs, reward, terminated, truncated, info = env.step(np.array([4.6], dtype=np.float32))
        d = info["demand"]
        assert reward == pytest.approx(-(max(before[0] - d, 0) + 9.0 * max(d - before[0], 0)), rel=1e-6)
        assert obs[1] == 5.0  # the order was rounded to an integer
        total += reward
        assert not terminated
    assert truncated  # 50 periods, a time limit
    env.close()


@pytest.mark.slow
@pytest.mark.parametrize("lead_time, p", [(1, 4.0), (2, 9.0)])
def test_hdpo_reaches_two_percent_gap(lead_time, p):
    run = train_hdpo({"lead_time": lead_time, "p": p, "n_scenarios": 8192, "test_scenarios": 2048,
                      "test_periods": 1500, "test_ignore_periods": 500}, steps=500, seed=0)
    assert run.gap_percent < 2.0, run.to_dict()


def test_vanilla_head_is_softplus_of_the_elu_mlp_plus_one():
    from offline_rl.nets.order_heads import VanillaOrderHead

    torch.manual_seed(0)
    head = VanillaOrderHead(3, 1, (32, 32, 32))
    x = 5 * torch.rand(16, 3)
    linears = [m for m in head.net if isinstance(m, torch.nn.Linear)]
    assert [lin.out_features for lin in linears] == [32, 32, 32, 1]
    h = x
    for lin in linears[:-1]:
        h = torch.nn.functional.elu(lin(h))
    expected = torch.log1p(torch.exp(linears[-1](h) + 1.0))
    assert torch.allclose(head(x), expected, atol=1e-6)
