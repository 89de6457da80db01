"""The LQR testbed's exact cost and Riccati optimum, the GPOMDP estimator, and the N-PG-IGT / (N)-HARPG update
rules, each against a hand derivation for the scalar linear-Gaussian policy."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from scipy.optimize import minimize_scalar

from offline_rl.algos import build_config, get
from offline_rl.algos.gpomdp import gpomdp_weights
from offline_rl.algos.harpg import hessian_vector
from offline_rl.algos.pg_core import flat_params, set_flat_params
from offline_rl.envs.lqr import LQR, lqr_cost
from offline_rl.training.onpolicy import RolloutCollector, env_spec

ENV = "offline_rl/LQR-v0"


def scalar_cost(k: float, gamma: float = 0.8, sigma: float = 0.5) -> float:
    """A = B = Q = R = 1: P = (1 + k²) / (1 − γ(1 − k)²), J = P + σ²(1 + γP)/(1 − γ) (s_0 ~ N(0, 1))."""
    p = (1 + k * k) / (1 - gamma * (1 - k) ** 2)
    return p + sigma**2 * (1 + gamma * p) / (1 - gamma)


def test_lqr_cost_and_riccati_gain_match_the_scalar_closed_form():
    lqr = LQR()
    for k in (-0.05, 0.3, 0.554, 1.2, 2.0):
        assert lqr.cost(np.array([[k]]), 0.5) == pytest.approx(scalar_cost(k), rel=1e-10)
    best = minimize_scalar(scalar_cost, bounds=(0.0, 2.0), method="bounded", options={"xatol": 1e-10})
    assert float(lqr.optimal_gain()[0, 0]) == pytest.approx(best.x, abs=1e-6)  # σ does not move the optimum
    assert lqr.optimal_cost(0.5) == pytest.approx(best.fun, rel=1e-10)
    assert lqr.cost(np.array([[2.2]]), 0.5) == math.inf  # √γ (1 − K) outside the unit circle


def test_lqr_cost_matches_monte_carlo_rollouts_of_the_env():
    env = gym.make(ENV)
    rng = np.random.default_rng(0)
    k, sigma, gamma, episodes = 0.3, 0.5, 0.8, 3000
    totals = []
    for ep in range(episodes):
        s, _ = env.reset(seed=ep)
        total = 0.0
        for t in range(40):
            s, r, term, trunc, _ = env.step(-k * s + sigma * rng.standard_normal(1))
            total -= gamma**t * r
        totals.append(total)
    assert trunc and not term
    se = np.std(totals) / np.sqrt(episodes)
    assert abs(np.mean(totals) - lqr_cost([[k]], [[1]], [[1]], [[1]], [[1]], gamma, [[1]], sigma)) < 4 * se


def _algo(name: str, seed: int = 0, **overrides):
    env = gym.make(ENV)
    cls = get(name)
    torch.manual_seed(seed)
    return cls(env_spec(env), build_config(cls, {**cls.env_defaults(env), **overrides}))


def test_gpomdp_weights_and_gradient_match_the_hand_formula():
    rewards = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    steps = torch.tensor([[0], [1], [0], [1]])
    end = torch.tensor([[0.0], [1.0], [0.0], [1.0]])
    w = gpomdp_weights(rewards, steps, end, 0.5)  # two episodes: rewards (1, 2) and (3, 4)
    torch.testing.assert_close(w[:, 0], torch.tensor([1 + 0.5 * 2, 0.5 * 2, 3 + 0.5 * 4, 0.5 * 4]))

    algo = _algo("gpomdp", learn_std=False)
    set_flat_params(list(algo.actor.mean.parameters()), torch.tensor([-0.4]))
    rollout, _ = RolloutCollector(algo, ENV, 0, {}).collect(algo.rollout_length)
    assert algo.rollout_length == 40 and int((rollout.timesteps == 0).sum()) == 1
    s, a, r = rollout.observations[:, 0, 0].double(), rollout.actions[:, 0, 0].double(), rollout.rewards[:, 0].double()
    weights = torch.tensor([sum(0.8**t * r[t] for t in range(k, 40)) for k in range(40)], dtype=torch.float64)
    expected = (weights * (a - (-0.4) * s) * s / 0.25).sum()  # ∇_W log N(a; W s, σ²) = (a − W s) s / σ²
    assert float(algo.gradient(algo.actor, rollout, slice(None))[0]) == pytest.approx(float(expected), rel=1e-4)


def test_npg_igt_iteration_by_hand():
    algo = _algo("npg_igt", eta=0.25)
    collector = RolloutCollector(algo, ENV, 0, {})
    algo.update_rollout(collector.collect(40)[0], 0)         # t = 0: η_0 = 1, d_0 = g_0
    theta1, theta0, d0 = (flat_params(algo.params(algo.actor)), algo.theta_prev.clone(), algo.direction.clone())
    probe = flat_params(algo.params(algo.probe))
    torch.testing.assert_close(theta1, theta0 + 0.05 * d0 / d0.norm())
    torch.testing.assert_close(probe, theta1 + (0.75 / 0.25) * (theta1 - theta0))  # θ̃_1 = θ_1 + (1 − η)/η Δ
    rollout = collector.collect(40)[0]
    g = algo.gradient(algo.probe, rollout, slice(None))      # the gradient at θ̃_1 on a trajectory from θ̃_1
    algo.update_rollout(rollout, 1)
    d1 = 0.75 * d0 + 0.25 * g
    torch.testing.assert_close(algo.direction, d1)
    torch.testing.assert_close(flat_params(algo.params(algo.actor)), theta1 + 0.05 * 2**-0.5 * d1 / d1.norm())


def test_harpg_hessian_vector_product_by_hand():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.tensor([0.7], dtype=torch.float64))
    s, a = torch.randn(6, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    weights, sigma2 = torch.randn(6, dtype=torch.float64), 0.25
    log_prob = -(a - w * s) ** 2 / (2 * sigma2)
    phi, log_p = (weights * log_prob).sum(), log_prob.sum()
    delta = torch.tensor([0.3], dtype=torch.float64)
    v = hessian_vector(phi, log_p, [w], delta)
    grad_phi = (weights * (a - 0.7 * s) * s / sigma2).sum()
    grad_log_p = ((a - 0.7 * s) * s / sigma2).sum()
    hess_phi = -(weights * s * s / sigma2).sum()
    assert float(v) == pytest.approx(float(grad_phi * grad_log_p * 0.3 + hess_phi * 0.3), rel=1e-12)


def test_harpg_samples_at_theta_and_a_random_interpolation_and_updates_by_hand():
    algo = _algo("harpg", seed=1)
    assert algo.num_envs == 2 and algo.sampler(0) is algo.actor and algo.sampler(1) is algo.probe
    collector = RolloutCollector(algo, ENV, 0, {})
    torch.manual_seed(7)
    algo.update_rollout(collector.collect(40)[0], 0)
    theta1, theta0, d0 = flat_params(algo.params(algo.actor)), algo.theta_prev.clone(), algo.direction.clone()
    probe = flat_params(algo.params(algo.probe))
    q = float((probe - theta0)[0] / (theta1 - theta0)[0])
    assert 0.0 < q < 1.0  # θ̂_1 lies between θ_0 and θ_1
    rollout = collector.collect(40)[0]
    g = algo.gradient(algo.actor, rollout, slice(0, 1))
    phi, log_p = algo.phi(algo.probe, rollout, slice(1, 2))
    v = hessian_vector(phi, log_p, algo.params(algo.probe), theta1 - theta0)
    algo.update_rollout(rollout, 1)
    d1 = 0.8 * (d0 + v) + 0.2 * g
    torch.testing.assert_close(algo.direction, d1)
    torch.testing.assert_close(flat_params(algo.params(algo.actor)), theta1 + 0.05 * 2**-0.5 * d1 / d1.norm())
    plain = _algo("harpg", seed=1, normalized=False, lr=1e-3, lr_power=0.0)
    plain.direction.fill_(2.0)
    plain.ascend(plain.direction)
    torch.testing.assert_close(flat_params(plain.params(plain.actor)), torch.tensor([2e-3]))  # no normalisation
