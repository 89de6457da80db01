"""The on-policy core: Fisher-vector products and CG against explicit matrices, the natural step's KL (HNPG spec
§7.8), GAE and Monte-Carlo returns against a plain re-implementation, the line search, env snapshots, and a
SIGKILLed PPO run that resumes to exactly the uninterrupted result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from offline_rl.algos.pg_core import (
    NaturalStep,
    conjugate_gradient,
    discounted_returns,
    fisher_vector_product,
    flat_grad,
    flat_params,
    gae,
    line_search,
    mean_kl_to,
    natural_step,
    set_flat_params,
)
from offline_rl.envs.state import restore_vector_env, snapshot_vector_env
from offline_rl.nets.policies import CategoricalPolicy, GaussianPolicy
from offline_rl.training.checkpoint import load_checkpoint


def hnpg_policy(obs_dim: int = 8, act_dim: int = 3, seed: int = 0) -> GaussianPolicy:
    """The HNPG source's policy: 16-16 tanh, mean layer ×0.1, log-std 0, float64."""
    torch.manual_seed(seed)
    return GaussianPolicy(obs_dim, act_dim, (16, 16), "tanh", "torch", 0.1, 0.0).double()


def explicit_fisher_gaussian(policy: GaussianPolicy, obs: torch.Tensor) -> torch.Tensor:
    """F = mean_s [J_μᵀ diag(1/σ²) J_μ + 2 J_logσᵀ J_logσ], from per-sample Jacobians (the Gaussian's Fisher in
    (μ, log σ) coordinates, chained through the network)."""
    params = list(policy.parameters())
    n = sum(p.numel() for p in params)
    fisher = torch.zeros(n, n, dtype=torch.float64)
    sigma2 = policy.log_std.detach().exp() ** 2
    for s in obs:
        mean = policy.mean(s[None])[0]
        j_mu = torch.stack([flat_grad(mean[j], params, retain_graph=True) for j in range(mean.shape[0])])
        j_ls = torch.stack([flat_grad(policy.log_std[j], params, retain_graph=True) for j in range(mean.shape[0])])
        fisher += j_mu.T @ torch.diag(1.0 / sigma2) @ j_mu + 2.0 * j_ls.T @ j_ls
    return fisher / obs.shape[0]


def test_fisher_vector_product_equals_the_explicit_gaussian_fisher():
    policy = hnpg_policy()
    obs = torch.randn(12, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        policy.log_std.copy_(torch.tensor([0.3, -0.5, 0.1]))
    fisher = explicit_fisher_gaussian(policy, obs)
    fvp = fisher_vector_product(mean_kl_to(policy, obs), list(policy.parameters()), damping=0.0)
    v = torch.randn(fisher.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(fvp(v), fisher @ v, rtol=1e-9, atol=1e-12)
    damped = fisher_vector_product(mean_kl_to(policy, obs), list(policy.parameters()), damping=0.1)
    torch.testing.assert_close(damped(v), fisher @ v + 0.1 * v, rtol=1e-9, atol=1e-12)


def test_fisher_vector_product_equals_the_explicit_categorical_fisher():
    torch.manual_seed(0)
    policy = CategoricalPolicy(5, 4, (8,), "tanh", "orthogonal", 1.0).double()
    params = list(policy.parameters())
    obs = torch.randn(10, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    n = sum(p.numel() for p in params)
    fisher = torch.zeros(n, n, dtype=torch.float64)
    for s in obs:  # F = mean_s Jᵀ (diag p − p pᵀ) J, J = ∂logits/∂θ
        logits = policy.logits(s[None])[0]
        jac = torch.stack([flat_grad(logits[j], params, retain_graph=True) for j in range(4)])
        p = torch.softmax(logits.detach(), -1)
        fisher += jac.T @ (torch.diag(p) - torch.outer(p, p)) @ jac
    fisher /= obs.shape[0]
    v = torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    fvp = fisher_vector_product(mean_kl_to(policy, obs), params)
    torch.testing.assert_close(fvp(v), fisher @ v, rtol=1e-9, atol=1e-12)


def test_conjugate_gradient_solves_a_spd_system_exactly_in_n_steps():
    g = torch.Generator().manual_seed(5)
    m = torch.randn(6, 6, dtype=torch.float64, generator=g)
    a = m @ m.T + 0.5 * torch.eye(6, dtype=torch.float64)
    b = torch.randn(6, dtype=torch.float64, generator=g)
    x = conjugate_gradient(lambda v: a @ v, b, iters=6, residual_tol=0.0)
    torch.testing.assert_close(x, torch.linalg.solve(a, b), rtol=1e-8, atol=1e-10)
    x2 = conjugate_gradient(lambda v: a @ v, b, iters=2, residual_tol=0.0)
    assert torch.linalg.norm(a @ x2 - b) > 1e-3  # two steps are not enough: the iteration count matters


def _random_problem(seed: int = 0):
    policy = hnpg_policy(seed=seed)
    g = torch.Generator().manual_seed(seed + 10)
    obs = torch.randn(256, 8, dtype=torch.float64, generator=g)
    actions = torch.randn(256, 3, dtype=torch.float64, generator=g)
    adv = torch.randn(256, dtype=torch.float64, generator=g)
    with torch.no_grad():
        old = policy.dist(obs).log_prob(actions)

    def surrogate():
        return -(adv * (policy.dist(obs).log_prob(actions) - old).exp()).mean()

    return policy, obs, surrogate


def test_natural_step_cg_residual_and_kl_within_max_kl_with_damping():
    """Spec §7.8: CG residual ‖F x + g‖/‖g‖ after 10 steps (reference 1.5e-4) and KL ≤ max_kl (0.0073)."""
    policy, obs, surrogate = _random_problem()
    params = list(policy.parameters())
    old_dist_kl = mean_kl_to(policy, obs)
    loss = surrogate()
    g = flat_grad(loss, params, retain_graph=True)
    step = natural_step(loss, old_dist_kl, params, max_kl=0.01, damping=0.1, cg_iters=10)
    fvp = fisher_vector_product(old_dist_kl, params, 0.1)
    residual = torch.linalg.norm(fvp(step.direction) + g) / torch.linalg.norm(g)
    assert residual < 1e-3
    # the full step's quadratic model of the KL is exactly max_kl
    torch.testing.assert_close(0.5 * step.full_step @ fvp(step.full_step), torch.tensor(0.01, dtype=torch.float64))
    torch.testing.assert_close(step.expected_improve, -(g @ step.full_step))
    set_flat_params(params, flat_params(params) + step.full_step)
    with torch.no_grad():
        kl = old_dist_kl()
    assert 0.004 < kl <= 0.01


def test_without_damping_the_measured_kl_approaches_max_kl():
    """Spec §7.8: the step is exact to second order, so KL/max_kl → 1 (reference 1.029, 1.01, 1.0)."""
    ratios = []
    for max_kl in (1e-2, 1e-3, 1e-4):
        policy, obs, surrogate = _random_problem()
        params = list(policy.parameters())
        kl_fn = mean_kl_to(policy, obs)
        step = natural_step(surrogate(), kl_fn, params, max_kl=max_kl, damping=0.0, cg_iters=10)
        set_flat_params(params, flat_params(params) + step.full_step)
        with torch.no_grad():
            ratios.append(float(kl_fn()) / max_kl)
    errors = [abs(r - 1.0) for r in ratios]  # measured 0.153, 0.029, 0.007: the third-order term ∝ √max_kl
    assert errors[2] < 0.015 and errors[1] < 0.05 and errors[0] < 0.25
    assert errors[0] > errors[1] > errors[2]


def test_line_search_backtracks_and_checks_the_kl_only_when_asked():
    param = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))

    def loss():  # minimum at 1; the "full step" of 4 overshoots to a higher loss
        return (param - 1.0).pow(2).sum()

    step = NaturalStep(torch.ones(1), torch.full((1,), 4.0, dtype=torch.float64), torch.tensor(2.0 * 4.0))
    accepted, backtracks = line_search([param], loss, step, max_backtracks=10, accept_ratio=0.1)
    # f = 1: loss 9 (worse); f = 0.5: loss 1 (no decrease, rejected); f = 0.25: loss 0, decrease 1 > 0.1·2 → accepted
    assert accepted and backtracks == 2 and param.item() == pytest.approx(1.0)
    param.data.zero_()
    accepted, backtracks = line_search([param], loss, step, 10, 0.1, kl_fn=lambda: param.pow(2).sum(), max_kl=0.5)
    # with a KL check ‖θ‖² ≤ 0.5, f = 0.25 (θ = 1) is refused; f = 0.125 (θ = 0.5, decrease 0.75 > 0.1·1) passes
    assert accepted and backtracks == 3 and param.item() == pytest.approx(0.5)
    param.data.zero_()
    never = NaturalStep(torch.ones(1), torch.full((1,), -1.0, dtype=torch.float64), torch.tensor(1.0))
    accepted, backtracks = line_search([param], loss, never, max_backtracks=4)
    assert not accepted and backtracks == 4 and param.item() == 0.0  # back to θ_old


def _gae_reference(rewards, values, next_values, terminated, ends, gamma, lam):
    """Per env, walk backwards; an episode end resets the running sum, a termination drops the bootstrap."""
    T, N = rewards.shape
    adv = np.zeros((T, N))
    for i in range(N):
        running = 0.0
        for t in reversed(range(T)):
            nonterminal = 1.0 - terminated[t, i]
            delta = rewards[t, i] + gamma * nonterminal * next_values[t, i] - values[t, i]
            running = delta + gamma * lam * (0.0 if (ends[t, i] or t == T - 1) else 1.0) * running
            adv[t, i] = running
    return adv


def test_gae_and_monte_carlo_returns_match_a_plain_reimplementation():
    rng = np.random.default_rng(0)
    T, N = 7, 3
    rewards, values, next_values = rng.normal(size=(T, N)), rng.normal(size=(T, N)), rng.normal(size=(T, N))
    terminated = np.zeros((T, N))
    truncated = np.zeros((T, N))
    terminated[2, 0] = 1.0
    truncated[4, 1] = 1.0
    terminated[1, 2] = 1.0
    truncated[5, 2] = 1.0
    ends = np.maximum(terminated, truncated)
    ends_t = torch.tensor(ends)
    ends_t[-1] = 1.0
    t = {k: torch.tensor(v) for k, v in
         dict(rewards=rewards, values=values, next_values=next_values, terminated=terminated).items()}
    adv, ret = gae(t["rewards"], t["values"], t["next_values"], t["terminated"], ends_t, 0.9, 0.8)
    expected = _gae_reference(rewards, values, next_values, terminated, ends, 0.9, 0.8)
    np.testing.assert_allclose(adv.numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(ret.numpy(), expected + values, rtol=1e-12)

    mc = discounted_returns(t["rewards"], t["terminated"], ends_t, 0.9, t["next_values"]).numpy()
    for i in range(N):  # G_t summed by hand: rewards to the episode end, plus γ^k V(s′) where it was cut
        for s in range(T):
            g, disc, k = 0.0, 1.0, s
            while True:
                g += disc * rewards[k, i]
                if terminated[k, i]:
                    break
                if ends[k, i] or k == T - 1:
                    g += disc * 0.9 * next_values[k, i]
                    break
                disc *= 0.9
                k += 1
            assert mc[s, i] == pytest.approx(g, rel=1e-12)


@pytest.mark.parametrize("env_id", ["CartPole-v1", "InvertedDoublePendulum-v5"])
def test_vector_env_snapshot_continues_bit_identically(env_id):
    def make():
        return gym.make_vec(env_id, num_envs=2, vectorization_mode="sync",
                            vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP})

    envs, copy = make(), make()
    envs.reset(seed=[0, 1])
    copy.reset(seed=[7, 8])  # a different state, overwritten by the snapshot
    rng = np.random.default_rng(0)

    def action():
        if isinstance(envs.single_action_space, gym.spaces.Discrete):
            return rng.integers(0, 2, size=2)
        return rng.uniform(-1, 1, size=(2, *envs.single_action_space.shape)).astype(np.float32)

    for _ in range(15):
        envs.step(action())
    restore_vector_env(copy, snapshot_vector_env(envs))
    for _ in range(300):  # crosses episode ends (same-step autoreset draws from the restored RNGs)
        a = action()
        first, second = envs.step(a), copy.step(a)
        for x, y in zip(first[:4], second[:4]):
            np.testing.assert_array_equal(x, y)


def _train_cmd(out: Path, steps: int) -> list[str]:
    return [sys.executable, "-m", "offline_rl.cli", "train", "--algo", "ppo", "--dataset", "CartPole-v1",
            "--steps", str(steps), "--eval-every", "1024", "--eval-episodes", "2", "--seed", "4", "--out", str(out),
            "--device", "cpu", "--set", "num_steps=64", "--resume"]


def test_sigkilled_ppo_run_resumes_to_the_uninterrupted_result(tmp_path):
    """A real `offline-rl train` subprocess killed with SIGKILL after its first checkpoint, then resumed, ends with
    the same parameters, optimiser state and curve as a run never interrupted (env states included)."""
    steps = 6144
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    proc = subprocess.Popen(_train_cmd(killed, steps), env=env, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (killed / "checkpoint.pt").exists() and proc.poll() is None:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    at = load_checkpoint(killed / "checkpoint.pt")["step"]
    assert 0 < at < steps, "the kill must land mid-run"
    subprocess.run(_train_cmd(killed, steps), env=env, check=True, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    subprocess.run(_train_cmd(clean, steps), env=env, check=True, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    a, b = load_checkpoint(killed / "checkpoint.pt"), load_checkpoint(clean / "checkpoint.pt")
    assert a["step"] == b["step"] >= steps
    for key, value in b["algo"]["modules"].items():
        assert torch.equal(a["algo"]["modules"][key], value), key
    state_a = a["algo"]["optimizers"]["ppo"]["state"]
    for k, v in b["algo"]["optimizers"]["ppo"]["state"].items():
        assert torch.equal(state_a[k]["exp_avg"], v["exp_avg"])
    result_a, result_b = (json.loads((d / "result.json").read_text()) for d in (killed, clean))
    assert result_a["curve"] == result_b["curve"] and len(result_b["curve"]) >= 3
    assert result_a["metrics"] == result_b["metrics"]


def test_kl_of_detached_distribution_is_zero_and_its_gradient_vanishes():
    """The "old" policy of the FVP must be a clone: KL(π_old ‖ π_θ) = 0 with zero gradient at θ_old."""
    policy, obs, _ = _random_problem()
    kl_fn = mean_kl_to(policy, obs)
    kl = kl_fn()
    assert kl.item() == 0.0
    assert torch.linalg.norm(flat_grad(kl, list(policy.parameters()))) < 1e-12
    with torch.no_grad():
        policy.log_std.add_(0.1)  # the old distribution must not move with the live parameter
    expected = 0.1 + 0.5 * np.exp(-0.2) - 0.5  # KL(N(μ, 1) ‖ N(μ, e^0.2)) = log σ + 1/(2σ²) − ½, per action dim
    assert kl_fn().item() == pytest.approx(3 * expected, rel=1e-9)
