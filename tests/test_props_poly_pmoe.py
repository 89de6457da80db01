"""PROPS's behaviour update and sampling-error metric, the polychromic advantage (d ≡ 1 identity), vine sampling,
pass@k, and the mixture heads' routing on detached features (PMOE-SAC itself: test_pmoe.py)."""

from __future__ import annotations

import itertools

import gymnasium as gym
import numpy as np
import pytest
import torch

from offline_rl.algos import build_config, get
from offline_rl.algos.poly_ppo import pass_at_k, polychromic_advantages
from offline_rl.algos.props import feature_frozen_copy, sampling_error
from offline_rl.nets.policies import GaussianMixturePolicy
from offline_rl.training.onpolicy import RolloutCollector, env_spec, train_onpolicy

BANDIT = "offline_rl/ArmedBandit-v0"
GRID = "offline_rl/MultiPathGrid-v0"


def _algo(name: str, env_id: str, seed: int = 0, **overrides):
    env = gym.make(env_id)
    cls = get(name)
    torch.manual_seed(seed)
    return cls(env_spec(env), build_config(cls, {**cls.env_defaults(env), **overrides}))


def test_props_behaviour_update_lowers_the_over_sampled_action():
    algo = _algo("props", BANDIT)
    obs = torch.ones(400, 1)
    actions = torch.cat([torch.zeros(200, dtype=torch.long), torch.arange(200) % 10])  # action 0: 55% of D
    target = algo.actor.dist(obs[:1]).probs[0].detach()
    assert target.max() - target.min() < 0.01  # CleanRL's 0.01 head gain: a near-uniform target
    metrics = algo.adapt_behaviour(obs, actions)
    behaviour = algo.behaviour.dist(obs[:1]).probs[0].detach()
    assert behaviour[0] < target[0] - 0.005 and bool((behaviour[1:] > target[1:]).all())
    assert 0.0 < float(metrics["behaviour_kl"]) < 0.03  # stopped soon after the KL passed δ_PROPS = 0.01
    # the clipped objective: at φ = θ the loss is E[max(r, clip(r))] = 1 exactly
    algo.behaviour.load_state_dict(algo.actor.state_dict())
    with torch.no_grad():
        ratio = (algo.behaviour.dist(obs).log_prob(actions) - algo.actor.dist(obs).log_prob(actions)).exp()
    assert float(torch.max(ratio, ratio.clamp(0.7, 1.3)).mean()) == pytest.approx(1.0)


def test_ros_takes_one_unclipped_gradient_step():
    algo = _algo("props", BANDIT, sampler="ros")
    obs, actions = torch.ones(100, 1), torch.zeros(100, dtype=torch.long)
    before = [p.detach().clone() for p in algo.actor.parameters()]
    algo.adapt_behaviour(obs, actions)
    moved = [float((p.detach() - q).abs().max()) for p, q in zip(algo.behaviour.parameters(), before)]
    assert max(moved) == pytest.approx(1e-3, rel=0.01)  # one Adam step of lr 1e-3 moves a weight by ≈ lr
    assert algo.behaviour.dist(obs[:1]).probs[0, 0] < algo.actor.dist(obs[:1]).probs[0, 0]


def test_sampling_error_is_the_kl_of_the_empirical_policy():
    algo = _algo("props", BANDIT)
    mle = feature_frozen_copy(algo.actor)  # only the last layer of the empirical policy trains (ROS, PROPS)
    assert [n for n, p in mle.named_parameters() if p.requires_grad] == ["logits.4.weight", "logits.4.bias"]
    obs = torch.ones(300, 1)
    actions = torch.tensor([0] * 150 + [1] * 90 + [2] * 60)
    target = algo.actor.dist(obs[:1]).probs[0].detach().double()
    empirical = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    exact = float((empirical * (empirical / target[:3]).log()).sum())  # KL(π_D ‖ π_θ), π_D the frequencies
    se = float(sampling_error(algo.actor, obs, actions, steps=2000))
    assert se == pytest.approx(exact, rel=0.05)
    uniform = torch.arange(300) % 10
    assert float(sampling_error(algo.actor, obs, uniform, steps=300)) < 0.01 * exact


def test_props_collects_with_the_behaviour_policy_every_16_steps():
    algo = _algo("props", BANDIT, num_steps=64, buffer_batches=2, update_epochs=0)
    calls = []
    original = algo.adapt_behaviour
    algo.adapt_behaviour = lambda o, a: calls.append(len(o)) or original(o, a)
    collector = RolloutCollector(algo, BANDIT, 0, {})
    for it in range(2):
        algo.update_rollout(collector.collect(64)[0], it)
    # D = the previous batch (once there is one) + the current one so far, every 16 steps
    assert calls == [16, 32, 48, 64, 80, 96, 112, 128]


def test_polychromic_advantage_with_unit_diversity_is_the_scaled_group_advantage():
    rng = np.random.default_rng(0)
    returns = rng.normal(size=8)
    adv = polychromic_advantages(returns, [None] * 8, set_size=4, diversity=False)
    np.testing.assert_allclose(adv, (8 - 4) / (4 * (8 - 1)) * (returns - returns.mean()), rtol=1e-12, atol=1e-14)
    sampled = polychromic_advantages(returns, [None] * 8, 4, diversity=False, subsets=4000,
                                     rng=np.random.default_rng(1))
    np.testing.assert_allclose(sampled, adv, atol=0.03)


def test_polychromic_advantage_with_diversity_by_hand():
    returns, labels = np.array([1.0, 1.0, 0.5]), ["a", "a", "b"]
    # pairs: (0,1) mean 1, one label of 2 → 1·½;  (0,2) mean ¾, two labels → ¾·1;  (1,2) the same → ¾
    f = {(0, 1): 0.5, (0, 2): 0.75, (1, 2): 0.75}
    adv = polychromic_advantages(returns, labels, 2)
    expected = [np.mean([v for k, v in f.items() if i in k]) - np.mean(list(f.values())) for i in range(3)]
    np.testing.assert_allclose(adv, expected, atol=1e-12)
    assert adv[2] > 0 > adv[0]  # the lower-return but rare-path trajectory is worth more in a set


def test_pass_at_k_estimator_matches_enumeration():
    n, c = 8, 3
    for k in (1, 2, 4, 6):
        subsets = list(itertools.combinations(range(n), k))
        brute = np.mean([any(i < c for i in s) for s in subsets])
        assert pass_at_k(c, n, k) == pytest.approx(brute, rel=1e-12)
    assert pass_at_k(0, 10, 4) == 0.0 and pass_at_k(7, 10, 4) == 1.0


def test_grid_state_restores_exactly_and_vines_count_as_env_samples():
    env = gym.make(GRID, random_block=True).unwrapped
    env.reset(seed=3)
    for a in (0, 0, 1):
        env.step(a)
    state = env.get_state()
    other = gym.make(GRID, random_block=True).unwrapped
    other.reset(seed=4)
    other.set_state(state)
    for a in (1, 1, 2, 2, 1, 1):
        assert [np.array_equal(x, y) if isinstance(x, np.ndarray) else x == y
                for x, y in zip(env.step(a), other.step(a))] == [True] * 5

    algo = _algo("poly_ppo", GRID, num_envs=2, num_steps=12, num_minibatches=2, update_epochs=1)
    result = train_onpolicy(algo, GRID, 24, seed=0, eval_every=0, progress=False)
    vines = result.metrics["vine_samples"]
    assert vines > 0 and result.step == 24 + vines  # one iteration: 24 rollout samples + the vines'
    assert algo.n_updates() == 2


def test_mixture_heads_route_on_detached_features_and_have_the_mixture_density():
    torch.manual_seed(0)
    head = GaussianMixturePolicy(3, 2, k=3, hidden=(8, 8))
    obs, act = torch.randn(5, 3), torch.randn(5, 2)
    alpha, means = head.parts(obs)
    std = head.log_std.exp()
    dens = torch.stack([torch.distributions.Normal(means[:, j], std[j]).log_prob(act).sum(-1) for j in range(3)], 1)
    torch.testing.assert_close(head.dist(obs).log_prob(act), torch.logsumexp(alpha.log() + dens, 1))
    alpha.sum().backward()  # the router's loss must not reach the trunk
    assert all(p.grad is None or float(p.grad.abs().max()) == 0.0 for p in head.trunk.parameters())
    assert head.router.weight.grad is not None
