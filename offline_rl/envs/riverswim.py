"""RiverSwim, episodic (Strehl & Littman 2008; the 6-state chain of Osband et al. 2013), with its exact optimum.

States 0 … S−1 in a chain, actions left (0) and right (1), horizon H, start in state 0.

    left:   moves to max(s − 1, 0), surely; in state 0 it pays r = 0.005
    right:  against the current: s + 1 w.p. 0.35, stays w.p. 0.6, s − 1 w.p. 0.05 (state 0: 0.4 up, 0.6 stays;
            state S−1: stays w.p. 0.6, s − 1 w.p. 0.4); in state S−1 it pays r = 1

Swimming right pays only after a long run of lucky steps, so an agent that does not explore settles for the small
reward on the left. V* and Q* come from backward induction over h = H−1 … 0 (`optimal_q`); any policy is evaluated
exactly (`policy_value`), so regret needs no sampling.

Coverage: `concentrability(pairs)` is the empirical single-policy concentrability of a dataset,
C* = max over (s, a) of d^{π*}(s, a) / μ(s, a), with d^{π*} the optimal policy's state-action occupancy averaged
over the H steps and μ the dataset's empirical state-action distribution (∞ when an (s, a) that π* visits is
missing). `RiverSwimEnv.dataset_diagnostics` reports it for datasets collected on the gymnasium env, which
`offline-rl datasets info` prints.

Gymnasium env `offline_rl/RiverSwim-v0`: observation = one-hot state followed by h/H (so a stationary policy can
see the step), action in [−1, 1] with a ≥ 0 meaning right; an episode ends by truncation after H steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

LEFT, RIGHT = 0, 1


@dataclass(frozen=True)
class RiverSwim:
    """The tabular model: P[s, a, s′], R[s, a], horizon H, start state."""

    n_states: int = 6
    horizon: int = 20
    left_reward: float = 0.005
    right_reward: float = 1.0
    p_up: float = 0.35
    p_down: float = 0.05
    start: int = 0

    @property
    def transitions(self) -> np.ndarray:
        s_n = self.n_states
        p = np.zeros((s_n, 2, s_n))
        for s in range(s_n):
            p[s, LEFT, max(s - 1, 0)] = 1.0
            if s == 0:
                p[s, RIGHT, 1] = self.p_up + self.p_down
                p[s, RIGHT, 0] = 1.0 - self.p_up - self.p_down
            elif s == s_n - 1:
                p[s, RIGHT, s] = 1.0 - self.p_up - self.p_down
                p[s, RIGHT, s - 1] = self.p_up + self.p_down
            else:
                p[s, RIGHT, s + 1], p[s, RIGHT, s - 1] = self.p_up, self.p_down
                p[s, RIGHT, s] = 1.0 - self.p_up - self.p_down
        return p

    @property
    def rewards(self) -> np.ndarray:
        r = np.zeros((self.n_states, 2))
        r[0, LEFT], r[-1, RIGHT] = self.left_reward, self.right_reward
        return r


def backward_induction(p: np.ndarray, r: np.ndarray, horizon: int,
                       policy: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(Q [H, S, A], V [H + 1, S]) for the greedy policy (Q*, V*) or for `policy` [H, S, A] (Q^π, V^π)."""
    s_n, a_n = r.shape
    q, v = np.zeros((horizon, s_n, a_n)), np.zeros((horizon + 1, s_n))
    for h in range(horizon - 1, -1, -1):
        q[h] = r + p @ v[h + 1]
        v[h] = q[h].max(1) if policy is None else (policy[h] * q[h]).sum(1)
    return q, v


def optimal_q(mdp: RiverSwim) -> tuple[np.ndarray, np.ndarray]:
    """(Q* [H, S, A], V* [H + 1, S]) by backward induction."""
    return backward_induction(mdp.transitions, mdp.rewards, mdp.horizon)


def greedy_policy(q: np.ndarray) -> np.ndarray:
    """[H, S, A] one-hot on argmax_a q[h, s, a] (ties to the lowest action)."""
    pi = np.zeros_like(q)
    np.put_along_axis(pi, q.argmax(-1)[..., None], 1.0, axis=-1)
    return pi


def policy_value(mdp: RiverSwim, policy: np.ndarray) -> float:
    """V^π_0(start), exact, for a (possibly stochastic) policy [H, S, A]."""
    return float(backward_induction(mdp.transitions, mdp.rewards, mdp.horizon, policy)[1][0, mdp.start])


def occupancy(mdp: RiverSwim, policy: np.ndarray) -> np.ndarray:
    """d^π(s, a) = (1/H) Σ_h P^π(s_h = s, a_h = a) from the start state, [S, A]."""
    p = mdp.transitions
    state = np.zeros(mdp.n_states)
    state[mdp.start] = 1.0
    total = np.zeros((mdp.n_states, 2))
    for h in range(mdp.horizon):
        sa = state[:, None] * policy[h]
        total += sa
        state = np.einsum("sa,sat->t", sa, p)
    return total / mdp.horizon


def concentrability(mdp: RiverSwim, pairs: np.ndarray) -> float:
    """max_{(s, a)} d^{π*}(s, a) / μ(s, a) for the dataset's (state, action) index pairs [N, 2]; ∞ if π* visits a
    pair the data never has."""
    d_star = occupancy(mdp, greedy_policy(optimal_q(mdp)[0]))
    counts = np.zeros((mdp.n_states, 2))
    np.add.at(counts, (pairs[:, 0], pairs[:, 1]), 1.0)
    mu = counts / max(len(pairs), 1)
    visited = d_star > 1e-12
    if np.any(visited & (mu == 0)):
        return float("inf")
    return float((d_star[visited] / mu[visited]).max())


def sample_episodes(mdp: RiverSwim, policy: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n episodes under `policy` [H, S, A]: rows (h, s, a, r, s′) as an [n·H, 5] float array."""
    p, r = mdp.transitions, mdp.rewards
    rows = np.zeros((n, mdp.horizon, 5))
    s = np.full(n, mdp.start)
    for h in range(mdp.horizon):
        a = (rng.random(n) < policy[h, s, RIGHT]).astype(int)
        cum = p[s, a].cumsum(1)
        s_next = np.minimum((rng.random(n)[:, None] > cum).sum(1), mdp.n_states - 1)
        rows[:, h] = np.stack([np.full(n, h), s, a, r[s, a], s_next], 1)
        s = s_next
    return rows.reshape(-1, 5)


def swim_behaviour(mdp: RiverSwim, right_prob: float, max_state: int | None = None) -> np.ndarray:
    """A behaviour policy [H, S, A]: right w.p. `right_prob` below `max_state`, always left from it on (so the data
    never reaches past it: the coverage ablation)."""
    pi = np.zeros((mdp.horizon, mdp.n_states, 2))
    pi[:, :, RIGHT] = right_prob
    if max_state is not None:
        pi[:, max_state:, RIGHT] = 0.0
    pi[:, :, LEFT] = 1.0 - pi[:, :, RIGHT]
    return pi


class RiverSwimEnv(gym.Env):
    """`offline_rl/RiverSwim-v0` (module docstring); kwargs are RiverSwim's fields."""

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, **kwargs: Any) -> None:
        self.mdp = RiverSwim(**kwargs)
        self._p = self.mdp.transitions
        self._r = self.mdp.rewards
        n = self.mdp.n_states
        self.observation_space = gym.spaces.Box(0.0, 1.0, (n + 1,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.state, self.h = self.mdp.start, 0

    def _obs(self) -> np.ndarray:
        obs = np.zeros(self.mdp.n_states + 1, dtype=np.float32)
        obs[self.state] = 1.0
        obs[-1] = self.h / self.mdp.horizon
        return obs

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.state, self.h = self.mdp.start, 0
        return self._obs(), {}

    def step(self, action: np.ndarray):
        a = action_index(np.asarray(action))
        reward = float(self._r[self.state, a])
        self.state = int(self.np_random.choice(self.mdp.n_states, p=self._p[self.state, a]))
        self.h += 1
        return self._obs(), reward, False, self.h >= self.mdp.horizon, {}

    @classmethod
    def dataset_diagnostics(cls, observations: np.ndarray, actions: np.ndarray,
                            env_kwargs: dict[str, Any]) -> dict[str, float]:
        """`{"concentrability": C*}` of a dataset collected on this env (observations [N, S + 1], actions [N, 1])."""
        mdp = RiverSwim(**env_kwargs)
        pairs = np.stack([observations[:, : mdp.n_states].argmax(1), action_index(actions)], 1)
        return {"concentrability": concentrability(mdp, pairs)}


def action_index(action: np.ndarray) -> np.ndarray | int:
    """right (1) where the continuous action is ≥ 0, else left (0); one index per row of an [N, 1] array."""
    idx = (np.asarray(action, dtype=np.float64).reshape(-1) >= 0).astype(int)
    return idx if np.ndim(action) > 1 else int(idx[0])


class SwimRight:
    """A behaviour controller for RiverSwim datasets: always right (+1); with a card's `random_prob` it becomes a
    noisy swimmer."""

    def __init__(self, env_id: str = "offline_rl/RiverSwim-v0") -> None:
        self.env_id = env_id

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        return np.ones((len(obs), 1), dtype=np.float32)
