"""RiverSwim's exact optimum, the coverage diagnostic, the tabular hybrid actor-critic and its regret comparison."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest

from offline_rl.algos.hybrid_ac import HybridACConfig, TabularActorCritic, regret_curve
from offline_rl.envs.riverswim import (
    RiverSwim,
    concentrability,
    greedy_policy,
    optimal_q,
    policy_value,
    sample_episodes,
    swim_behaviour,
)

MDP = RiverSwim()


def _value_iteration_by_loops(mdp: RiverSwim) -> tuple[np.ndarray, list[list[int]]]:
    """V*_0 and the greedy actions, with plain loops over h, s, a, s′ (independent of backward_induction)."""
    p, r = mdp.transitions, mdp.rewards
    v = [0.0] * mdp.n_states
    actions = []
    for _ in range(mdp.horizon):
        q = [[r[s, a] + sum(p[s, a, t] * v[t] for t in range(mdp.n_states)) for a in range(2)]
             for s in range(mdp.n_states)]
        actions.insert(0, [int(q[s][1] > q[s][0]) for s in range(mdp.n_states)])
        v = [max(q[s]) for s in range(mdp.n_states)]
    return np.array(v), actions


def test_transitions_and_rewards_are_riverswims():
    p, r = MDP.transitions, MDP.rewards
    assert np.allclose(p.sum(-1), 1.0)
    assert p[2, 1, 3] == 0.35 and p[2, 1, 2] == 0.6 and p[2, 1, 1] == 0.05 and p[2, 0, 1] == 1.0
    assert p[0, 1, 1] == pytest.approx(0.4) and p[5, 1, 5] == pytest.approx(0.6) and p[0, 0, 0] == 1.0
    assert r[0, 0] == 0.005 and r[5, 1] == 1.0 and r.sum() == pytest.approx(1.005)


def test_v_star_by_dp_matches_plain_loops_and_monte_carlo():
    q, v = optimal_q(MDP)
    v_loops, actions = _value_iteration_by_loops(MDP)
    assert np.allclose(v[0], v_loops, atol=1e-12)
    assert (q.argmax(-1) == np.array(actions)).all()
    rows = sample_episodes(MDP, greedy_policy(q), 4000, np.random.default_rng(0))
    returns = rows[:, 3].reshape(4000, MDP.horizon).sum(1)
    assert abs(returns.mean() - v[0, 0]) < 4 * returns.std() / math.sqrt(4000)
    assert policy_value(MDP, greedy_policy(q)) == pytest.approx(v[0, 0], abs=1e-12)


def test_gym_env_follows_the_model():
    env = gym.make("offline_rl/RiverSwim-v0")
    obs, _ = env.reset(seed=0)
    assert obs.tolist() == [1, 0, 0, 0, 0, 0, 0]
    counts = np.zeros(MDP.n_states)
    for k in range(3000):
        env.reset(seed=k)
        env.unwrapped.state = 2
        obs, reward, terminated, truncated, _ = env.step(np.array([0.3], dtype=np.float32))  # ≥ 0: right
        counts[int(obs[:MDP.n_states].argmax())] += 1
        assert obs[-1] == pytest.approx(1 / MDP.horizon) and reward == 0.0 and not terminated
    assert np.allclose(counts[1:4] / 3000, [0.05, 0.6, 0.35], atol=0.03)
    env.reset(seed=0)
    for h in range(MDP.horizon):
        _, reward, _, truncated, _ = env.step(np.array([-1.0], dtype=np.float32))
        assert reward == 0.005 and truncated == (h == MDP.horizon - 1)


def _occupancy_by_sampling(policy: np.ndarray, n: int) -> np.ndarray:
    rows = sample_episodes(MDP, policy, n, np.random.default_rng(1))
    d = np.zeros((MDP.n_states, 2))
    np.add.at(d, (rows[:, 1].astype(int), rows[:, 2].astype(int)), 1.0)
    return d / len(rows)


def test_concentrability_of_a_uniform_dataset_and_of_a_gap():
    d_star = _occupancy_by_sampling(greedy_policy(optimal_q(MDP)[0]), 20000)
    every_pair = np.array([(s, a) for s in range(MDP.n_states) for a in range(2)] * 3)
    # μ = 1/(2S) on every pair, so C* = 2S·max d^{π*}(s, a)
    assert concentrability(MDP, every_pair) == pytest.approx(2 * MDP.n_states * d_star.max(), rel=0.03)
    missing = every_pair[~((every_pair[:, 0] == MDP.n_states - 1) & (every_pair[:, 1] == 1))]
    assert concentrability(MDP, missing) == math.inf
    rare = np.unravel_index(np.where(d_star > 0, d_star, np.inf).argmin(), d_star.shape)  # least-visited pair of π*
    assert d_star[rare] < 0.01
    without_rare = every_pair[~((every_pair[:, 0] == rare[0]) & (every_pair[:, 1] == rare[1]))]
    assert concentrability(MDP, without_rare) == math.inf


def test_datasets_info_reports_concentrability_for_riverswim_only():
    from offline_rl.data import load_dataset

    data = load_dataset("riverswim-medium")
    info = data.summary()
    pairs = np.stack([data.observations[:, :MDP.n_states].argmax(1).numpy(),
                      (data.actions[:, 0] >= 0).long().numpy()], 1)
    mu = np.zeros((MDP.n_states, 2))
    np.add.at(mu, (pairs[:, 0], pairs[:, 1]), 1.0 / len(pairs))
    d_star = _occupancy_by_sampling(greedy_policy(optimal_q(MDP)[0]), 20000)
    assert info["concentrability"] == pytest.approx((d_star / mu).max(), rel=0.05)
    from helpers import pendulum_dataset

    assert "concentrability" not in pendulum_dataset(episodes=1).summary()


def _exact_rows(mdp: RiverSwim, per_pair: int = 100) -> np.ndarray:
    """Transitions whose empirical model is the true one: per (s, a), next states in exact proportions."""
    p, r = mdp.transitions, mdp.rewards
    rows = []
    for s in range(mdp.n_states):
        for a in range(2):
            for t in range(mdp.n_states):
                rows += [(0, s, a, r[s, a], t)] * round(per_pair * p[s, a, t])
    return np.array(rows, dtype=float)


def test_critics_with_the_true_model():
    rows = _exact_rows(MDP)
    q_star = optimal_q(MDP)[0]
    hybrid = TabularActorCritic(MDP.n_states, 2, MDP.horizon, HybridACConfig("hybrid"), rows)
    assert np.allclose(hybrid.critic, q_star, atol=1e-12)
    c = 0.3
    opt = TabularActorCritic(MDP.n_states, 2, MDP.horizon, HybridACConfig("optimistic", bonus=c), rows)
    pess = TabularActorCritic(MDP.n_states, 2, MDP.horizon, HybridACConfig("pessimistic", bonus=c), rows)
    last = MDP.horizon - 1  # one step to go: f = clip(r ± c/√N, 0, 1), N = 100
    assert np.allclose(opt.critic[last], np.clip(MDP.rewards + c / 10, 0, 1))
    assert np.allclose(pess.critic[last], np.clip(MDP.rewards - c / 10, 0, 1))
    last_opt = np.clip(MDP.rewards + c / 10, 0, 1)  # two steps to go: the bonus is c·2/√N, the cap 2
    assert np.allclose(opt.critic[last - 1], np.clip(MDP.rewards + MDP.transitions @ last_opt.max(1) + 2 * c / 10, 0, 2))
    assert (opt.critic >= q_star - 1e-12).all() and (pess.critic <= q_star + 1e-12).all()
    empty = TabularActorCritic(MDP.n_states, 2, MDP.horizon, HybridACConfig("optimistic"))
    assert np.allclose(empty.critic[0], MDP.horizon) and np.allclose(empty.critic[last], 1.0)


def test_actor_is_mirror_descent_and_resets_at_a_doubling():
    rows = _exact_rows(MDP, per_pair=20)
    cfg = HybridACConfig("hybrid", eta=0.7)
    agent = TabularActorCritic(MDP.n_states, 2, MDP.horizon, cfg, rows)
    f = agent.critic.copy()
    quiet = np.array([(0, 3, 0, 0.0, 2)] * 5, dtype=float)  # (3, left): 20 → 25, not doubled
    agent.end_episode(quiet)
    agent.end_episode(quiet)
    softmax = np.exp(2 * 0.7 * f) / np.exp(2 * 0.7 * f).sum(-1, keepdims=True)
    assert np.allclose(agent.policy, softmax) and agent.switches == 1
    agent.end_episode(np.array([(0, 3, 0, 0.0, 2)] * 10, dtype=float))  # 30 → 40 ≥ 2·20: a switch
    assert agent.switches == 2
    f_new = agent.fit_critic()
    assert np.allclose(agent.policy, np.exp(0.7 * f_new) / np.exp(0.7 * f_new).sum(-1, keepdims=True))


def _regret(mode: str, behaviour: np.ndarray | None, n_off: int, episodes: int, seeds: int = 3) -> float:
    total = 0.0
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        offline = sample_episodes(MDP, behaviour, n_off, rng) if behaviour is not None else None
        agent = TabularActorCritic(MDP.n_states, 2, MDP.horizon, HybridACConfig(mode), offline)
        total += regret_curve(MDP, agent, episodes, rng, learn=mode != "pessimistic")[-1]
    return total / seeds


def test_hybrid_beats_online_with_coverage_and_fails_gracefully_without():
    good, gap = swim_behaviour(MDP, 0.7), swim_behaviour(MDP, 0.7, max_state=MDP.n_states - 2)
    online = _regret("optimistic", None, 0, 200)
    hybrid = _regret("hybrid", good, 100, 200)
    assert hybrid <= online, (hybrid, online)
    # coverage ablation: the data never reaches the last state, so C* = ∞ and the non-optimistic hybrid cannot learn
    # the optimal path; it still does no worse than the offline-only pessimistic policy on the same data
    pairs = sample_episodes(MDP, gap, 100, np.random.default_rng(0))[:, 1:3].astype(int)
    assert concentrability(MDP, pairs) == math.inf
    hybrid_gap, offline_gap = _regret("hybrid", gap, 100, 200), _regret("pessimistic", gap, 100, 200)
    assert hybrid_gap <= offline_gap and hybrid_gap > online, (hybrid_gap, offline_gap, online)
