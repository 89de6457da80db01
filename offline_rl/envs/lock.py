"""The continuous combination lock of HNPG (Zhou, Sekhari, Song, Sun, ICLR 2024; `YifeiZhou02/HNPG`
`lock_continuous.Lock`), the toolkit's D4RL-free hybrid-RL testbed with a known optimum.

Latent states A, B and a dead state C; H steps. At step h the correct action is opt_a[h] in A and opt_b[h] in B;
a correct action moves to A or B with probability ½ each (`p_switch`), a wrong one to C, and C is absorbing.
The only reward comes at the last step: 1 for a correct action in A or B, otherwise 0.1 with probability ½
(`anti_r`, `p_anti_r`), also in C. Intermediate steps return reward 0 (the source computes "anti-rewards" there
but never returns them).

Observation: Hadamard · (one-hot(latent) + one-hot(3 + h) + noise), dimension 2^⌈log₂(H + 4)⌉, noise N(0, 0.1²) on
the first H + 3 coordinates only. Action: any vector in R¹⁰ (the source declares Box(0, 1)¹⁰ but never clips, and
its Gaussian policies act outside it, so the space here is unbounded); the env **samples** the discrete action
from softmax(a / 0.1).

The combination (opt_a, then opt_b, each `randint(0, 10, H)`) is drawn once at construction from
`numpy.random.RandomState(combination_seed)`: the source seeds numpy's global RNG and then constructs the env, so
`combination_seed = 543` (its default `--seed`) gives its combination. Everything else (start state, switches,
observation noise, the softmax draw) uses the env's `np_random`, seeded through `reset(seed=...)`.
"""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np
import scipy.linalg

__all__ = ["CombinationLock", "LockPolicy", "lock_eps_greedy", "observation_dim", "decode"]

STATE_DIM = 3  # latent states A = 0, B = 1, C (dead) = 2


def observation_dim(horizon: int) -> int:
    """2^⌈log₂(H + 4)⌉: room for 3 latent coordinates and H + 1 time coordinates, rounded up for the Hadamard."""
    return 2 ** int(math.ceil(math.log2(horizon + 4)))


class CombinationLock(gym.Env):
    """`lock_continuous.Lock` with the source's defaults (see the module docstring)."""

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, horizon: int = 5, action_dim: int = 10, p_switch: float = 0.5, p_anti_r: float = 0.5,
                 anti_r: float = 0.1, noise: float = 0.1, temperature: float = 0.1,
                 combination_seed: int = 0) -> None:
        if horizon < 1 or action_dim < 2:
            raise ValueError(f"CombinationLock needs horizon ≥ 1 and action_dim ≥ 2, got {horizon}, {action_dim}")
        self.horizon, self.action_dim = int(horizon), int(action_dim)
        self.p_switch, self.p_anti_r, self.anti_r = p_switch, p_anti_r, anti_r
        self.noise, self.temperature = noise, temperature
        dim = observation_dim(self.horizon)
        self.rotation = scipy.linalg.hadamard(dim).astype(np.float64)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (dim,), np.float32)
        self.action_space = gym.spaces.Box(-np.inf, np.inf, (self.action_dim,), np.float32)
        rng = np.random.RandomState(combination_seed)
        self.opt_a = rng.randint(low=0, high=self.action_dim, size=self.horizon)
        self.opt_b = rng.randint(low=0, high=self.action_dim, size=self.horizon)
        self.optimal_return = 1.0  # reward 1 at the last step, the exact optimum
        self.min_return = 0.0
        self.state, self.h = 0, 0

    def _obs(self) -> np.ndarray:
        v = np.zeros(self.observation_space.shape[0])
        v[: self.horizon + STATE_DIM] = self.np_random.normal(0.0, self.noise, self.horizon + STATE_DIM)
        v[self.state] += 1.0
        v[STATE_DIM + self.h] += 1.0
        return (self.rotation @ v).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.h = 0
        self.state = 0 if self.np_random.binomial(1, self.p_switch) else 1
        return self._obs(), {"latent": self.state, "h": self.h}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        if self.h >= self.horizon:
            raise RuntimeError("CombinationLock: step() after the last step; call reset()")
        switch = self.np_random.binomial(1, self.p_switch)
        anti = self.np_random.binomial(1, self.p_anti_r)
        logits = np.asarray(action, dtype=np.float64).reshape(-1) / self.temperature
        probs = np.exp(logits - logits.max())
        discrete = int(self.np_random.choice(self.action_dim, p=probs / probs.sum()))
        correct = ((self.state == 0 and discrete == self.opt_a[self.h])
                   or (self.state == 1 and discrete == self.opt_b[self.h]))
        last = self.h == self.horizon - 1
        reward = 0.0
        if last:
            reward = 1.0 if correct else (self.anti_r if anti else 0.0)
            self.state = self.state if correct else 2
        elif self.state != 2:
            self.state = (1 if switch else 0) if correct else 2
        self.h += 1
        return self._obs(), reward, last, False, {"latent": self.state, "h": self.h, "action": discrete}

    def get_state(self) -> tuple[int, int]:
        """(latent state, step): with the env's RNG, all that the future depends on."""
        return self.state, self.h

    def set_state(self, state: tuple[int, int]) -> None:
        self.state, self.h = int(state[0]), int(state[1])


def decode(obs: np.ndarray, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """(latent state, step) of a batch of lock observations: undo the Hadamard (HᵀH = nI) and take the arg-max
    of the latent and time coordinates (the N(0, 0.1²) noise is far below the one-hot's 1)."""
    obs = np.atleast_2d(np.asarray(obs, dtype=np.float64))
    n = obs.shape[1]
    v = obs @ scipy.linalg.hadamard(n) / n  # Hadamard matrices are symmetric
    return v[:, :STATE_DIM].argmax(1), v[:, STATE_DIM:STATE_DIM + horizon + 1].argmax(1)


class LockPolicy:
    """The lock's data-collection policy as a batched numpy behaviour (`collect_offline.eps_greedy_actions`): the
    one-hot of the correct action at the decoded (latent, step), opt_b in the dead state as in the source; with
    probability `epsilon` a random action U(0, 1)¹⁰ instead (drawn from `rng`). ε = 0 is the optimal policy."""

    def __init__(self, env_id: str, rng: np.random.Generator | None = None, epsilon: float = 0.0) -> None:
        env = gym.make(env_id)
        try:
            lock = env.unwrapped
            if not isinstance(lock, CombinationLock):
                raise ValueError(f"{env_id} is not a CombinationLock")
            self.horizon, self.action_dim = lock.horizon, lock.action_dim
            self.opt_a, self.opt_b = lock.opt_a.copy(), lock.opt_b.copy()
        finally:
            env.close()
        self.rng = rng if rng is not None else np.random.default_rng(0)
        self.epsilon = float(epsilon)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        latent, h = decode(obs, self.horizon)
        h = np.minimum(h, self.horizon - 1)
        correct = np.where(latent == 0, self.opt_a[h], self.opt_b[h])
        action = np.zeros((len(latent), self.action_dim), dtype=np.float32)
        action[np.arange(len(latent)), correct] = 1.0
        explore = self.rng.random(len(latent)) < self.epsilon
        random = self.rng.random((len(latent), self.action_dim)).astype(np.float32)
        return np.where(explore[:, None], random, action)


def lock_eps_greedy(env_id: str, rng: np.random.Generator | None = None) -> LockPolicy:
    """The HNPG offline-data policy: ε-greedy optimal with ε = 1/H (`collect_offline.py`)."""
    policy = LockPolicy(env_id, rng)
    policy.epsilon = 1.0 / policy.horizon
    return policy
