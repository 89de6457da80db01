"""A discounted linear-quadratic regulator with its exact optimum (the N-PG-IGT / HARPG testbed).

    s_{t+1} = A s_t + B a_t,   r_t = −(s_tᵀ Q s_t + a_tᵀ R a_t),   s_0 ~ N(0, Σ_0),   objective E Σ_t γ^t r_t

For the linear-Gaussian policy a = −K s + σ ξ (ξ ~ N(0, I)) the expected discounted cost is exact:

    J(K) = tr(P_K Σ_0) + σ²·(tr R + γ tr(Bᵀ P_K B)) / (1 − γ),
    P_K  = Q + KᵀRK + γ (A − BK)ᵀ P_K (A − BK)                   (a discrete Lyapunov equation)

(the noise enters the cost through aᵀRa and through the next state). The optimal gain comes from the discounted
Riccati equation P = Q + γAᵀPA − γ²AᵀPB(R + γBᵀPB)⁻¹BᵀPA, K* = γ(R + γBᵀPB)⁻¹BᵀPA; σ does not change it
(certainty equivalence), and J* = J(K*) uses the same evaluator as J(K), so the gap J(K) − J* is exact.
Episodes are cut at `max_episode_steps` (a truncation of the discounted problem: γ^T is negligible at the
defaults). The default system is scalar (A = B = Q = R = 1, γ = 0.8, σ_0 = 1: K* = 0.5937, J*(σ = 0.5) = 2.3206);
`DOUBLE_INTEGRATOR` is a 2-D alternative (position and velocity, force input).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import scipy.linalg

__all__ = ["LQR", "lqr_cost", "riccati_gain"]

SCALAR = {"A": [[1.0]], "B": [[1.0]], "Q": [[1.0]], "R": [[1.0]]}
DOUBLE_INTEGRATOR = {"A": [[1.0, 0.1], [0.0, 1.0]], "B": [[0.0], [0.1]], "Q": [[1.0, 0.0], [0.0, 1.0]],
                     "R": [[0.1]]}


def _as(m: Any) -> np.ndarray:
    return np.atleast_2d(np.asarray(m, dtype=np.float64))


def lqr_cost(K: np.ndarray, A: np.ndarray, B: np.ndarray, Q: np.ndarray, R: np.ndarray, gamma: float,
             init_cov: np.ndarray, sigma: float = 0.0) -> float:
    """J(K) (see the module docstring); +inf when √γ (A − BK) is not stable."""
    K, A, B, Q, R, init_cov = map(_as, (K, A, B, Q, R, init_cov))
    closed = np.sqrt(gamma) * (A - B @ K)
    if not np.all(np.isfinite(closed)) or np.max(np.abs(np.linalg.eigvals(closed))) >= 1.0:
        return float("inf")
    P = scipy.linalg.solve_discrete_lyapunov(closed.T, Q + K.T @ R @ K)
    noise = sigma**2 * (np.trace(R) + gamma * np.trace(B.T @ P @ B)) / (1.0 - gamma)
    return float(np.trace(P @ init_cov) + noise)


def riccati_gain(A: np.ndarray, B: np.ndarray, Q: np.ndarray, R: np.ndarray, gamma: float) -> np.ndarray:
    """K* of the discounted problem, from the Riccati equation of the scaled system (√γ A, √γ B)."""
    A, B, Q, R = map(_as, (A, B, Q, R))
    P = scipy.linalg.solve_discrete_are(np.sqrt(gamma) * A, np.sqrt(gamma) * B, Q, R)
    return gamma * np.linalg.solve(R + gamma * B.T @ P @ B, B.T @ P @ A)


class LQR(gym.Env):
    """The LQR as a gymnasium env (unbounded Box spaces); `cost(K, sigma)`, `optimal_gain()` and
    `optimal_cost(sigma)` give the exact objective for linear-Gaussian policies."""

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, A: Any = None, B: Any = None, Q: Any = None, R: Any = None, gamma: float = 0.8,
                 init_std: float = 1.0) -> None:
        spec = SCALAR
        self.A, self.B = _as(spec["A"] if A is None else A), _as(spec["B"] if B is None else B)
        self.Q, self.R = _as(spec["Q"] if Q is None else Q), _as(spec["R"] if R is None else R)
        n, m = self.B.shape
        if self.A.shape != (n, n) or self.Q.shape != (n, n) or self.R.shape != (m, m):
            raise ValueError(f"LQR: inconsistent shapes A {self.A.shape}, B {self.B.shape}, Q {self.Q.shape}, "
                             f"R {self.R.shape}")
        self.gamma, self.init_std = float(gamma), float(init_std)
        self.init_cov = self.init_std**2 * np.eye(n)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (n,), np.float32)
        self.action_space = gym.spaces.Box(-np.inf, np.inf, (m,), np.float32)
        self.s = np.zeros(n)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.s = self.init_std * self.np_random.standard_normal(self.A.shape[0])
        return self.s.astype(np.float32), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        reward = -float(self.s @ self.Q @ self.s + a @ self.R @ a)
        self.s = self.A @ self.s + self.B @ a
        return self.s.astype(np.float32), reward, False, False, {}

    def cost(self, K: np.ndarray, sigma: float = 0.0) -> float:
        """The exact expected discounted cost J(K) of a = −K s + σ ξ."""
        return lqr_cost(K, self.A, self.B, self.Q, self.R, self.gamma, self.init_cov, sigma)

    def optimal_gain(self) -> np.ndarray:
        return riccati_gain(self.A, self.B, self.Q, self.R, self.gamma)

    def optimal_cost(self, sigma: float = 0.0) -> float:
        """J* = J(K*) with the same evaluator as `cost` (so the noise terms match)."""
        return self.cost(self.optimal_gain(), sigma)
