"""One-step environments with exact answers: a bimodal continuous bandit (PMOE's mode-coverage test), a k-armed
bandit (PROPS's fixed-target sampling-error test) and the one-step threshold task of the policy-smoothing
certificate's tightness case. Each episode is one step and ends by termination."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

__all__ = ["BimodalBandit", "ArmedBandit", "ThresholdStep"]


class BimodalBandit(gym.Env):
    """a ∈ [−1, 1]; r(a) = max_i exp(−(a − c_i)² / (2 w²)) with bumps at c = ±`center` (PMOE spec §3.3). The
    observation is the constant [0]. Both modes give the optimal reward 1."""

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, center: float = 0.6, width: float = 0.1) -> None:
        self.centers = np.array([-center, center])
        self.width = float(width)
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.optimal_return, self.min_return = 1.0, 0.0

    def reward(self, a: np.ndarray) -> np.ndarray:
        a = np.asarray(a, dtype=np.float64)[..., None]
        return np.exp(-((a - self.centers) ** 2) / (2 * self.width**2)).max(-1)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        return np.zeros(1, np.float32), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        a = float(np.clip(np.asarray(action).reshape(-1)[0], -1.0, 1.0))
        return np.zeros(1, np.float32), float(self.reward(a)), True, False, {}


class ArmedBandit(gym.Env):
    """k arms; arm i pays N(μ_i, s_i²) with μ_i ~ U(0, 0.5), s_i ~ U(0, 1) drawn from `means_seed`, and the last arm
    μ = 1, s = 0.1 (the PROPS repository's `BanditEnv`). The observation is the constant [1]."""

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, arms: int = 10, means_seed: int = 0) -> None:
        rng = np.random.default_rng(means_seed)
        self.means = rng.uniform(0.0, 0.5, arms)
        self.stds = rng.uniform(0.0, 1.0, arms)
        self.means[-1], self.stds[-1] = 1.0, 0.1
        self.observation_space = gym.spaces.Box(0.0, 1.0, (1,), np.float32)
        self.action_space = gym.spaces.Discrete(arms)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        return np.ones(1, np.float32), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        a = int(np.asarray(action).reshape(-1)[0])
        return np.ones(1, np.float32), float(self.np_random.normal(self.means[a], self.stds[a])), True, False, {}


class ThresholdStep(gym.Env):
    """One step: the observation is o = 0 (1-D); action 1 earns reward 1, action 0 earns 0 (Discrete(2)). With the
    base policy "act 1 if o > −c" and observation noise N(0, σ²), P(reward 1) = Φ(c/σ); an adversary who shifts o
    by −B makes it Φ((c − B)/σ) = Φ(Φ⁻¹(p) − B/σ), the policy-smoothing certificate's tight case (spec §4.3)."""

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self) -> None:
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.optimal_return, self.min_return = 1.0, 0.0

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        return np.zeros(1, np.float32), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        return np.zeros(1, np.float32), float(int(np.asarray(action).reshape(-1)[0]) == 1), True, False, {}
