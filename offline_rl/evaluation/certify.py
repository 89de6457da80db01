"""Policy smoothing: a certified lower bound on the expected total reward under ℓ2-bounded observation attacks
(Kumar, Levine, Feizi, "Policy Smoothing for Provably Robust Reinforcement Learning", ICLR 2022).

The smoothed policy acts on o + δ, δ ~ N(0, σ²I) drawn independently at every step. Against an adaptive adversary
whose perturbations have total ℓ2 norm √(Σ_t ‖ε_t‖²) ≤ B, for every threshold ν (the adaptive Neyman–Pearson
lemma of the paper)

    P_adv(F ≥ ν) ≥ Φ(Φ⁻¹(P_clean(F ≥ ν)) − B/σ),

so with thresholds ν_1 < … < ν_k (the distinct observed returns) and ν_0 = a (the lowest possible return: the
env's when it declares one, else the smallest observed)

    E_adv[F] ≥ a + Σ_{i=1..k} (ν_i − ν_{i−1}) · Φ(Φ⁻¹(p̲_i) − B/σ),

where p̲_i is the one-sided Clopper–Pearson lower confidence bound at level α/k (Bonferroni over the thresholds)
on P_clean(F ≥ ν_i), estimated from N smoothed clean episodes; a term with p̲_i = 0 is 0 (Φ⁻¹(0) = −∞). The
bound holds with probability ≥ 1 − α. (The reference script, `mrh996/ReCePS` `cartpole_multiframe_plot_certs.py`,
does this for CartPole's integer returns with α = 0.05/200.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import gymnasium as gym
import numpy as np
import torch
from scipy.stats import beta, norm
from torch import nn

import offline_rl.envs  # noqa: F401  (registers the toolkit's envs)

MAX_ENVS = 100


def clopper_pearson_lower(successes: int, trials: int, level: float) -> float:
    """The one-sided (1 − level) lower confidence bound on a binomial proportion: Beta⁻¹(level; x, n − x + 1)."""
    if successes <= 0:
        return 0.0
    return float(beta.ppf(level, successes, trials - successes + 1))


@dataclass
class Certificate:
    sigma: float
    alpha: float
    low: float
    returns: list[float]
    mean: float
    certified: list[dict[str, float]]
    episodes: int
    env_id: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def certified_bound(returns: Sequence[float], sigma: float, budget: float, alpha: float = 0.05,
                    low: float | None = None) -> float:
    """The lower bound on E_adv[F] at ℓ2 budget `budget` (module docstring) from smoothed clean returns."""
    returns = np.asarray(returns, dtype=np.float64)
    thresholds = np.unique(returns)  # ν_1 < … < ν_k: every distinct observed return (k of them)
    a = float(thresholds[0]) if low is None else min(float(low), float(thresholds[0]))
    k = len(thresholds)
    bound, previous = a, a
    for nu in thresholds:
        p_low = clopper_pearson_lower(int((returns >= nu).sum()), len(returns), alpha / k)
        if p_low > 0.0:
            bound += (nu - previous) * float(norm.cdf(norm.ppf(p_low) - budget / sigma))
        previous = nu
    return bound


@torch.no_grad()
def smoothed_returns(policy: nn.Module, env_id: str, sigma: float, episodes: int, seed: int = 0,
                     shift: np.ndarray | None = None, env_kwargs: dict | None = None) -> np.ndarray:
    """Returns of `episodes` episodes of the smoothed policy π(o + δ), δ ~ N(0, σ²I) fresh at every step (numpy
    RNG seeded from `seed`; episode k's env seeded seed + k, one episode per sub-env per round). `shift` is added
    to every observation before the noise (a fixed perturbation, e.g. the tightness case's worst-case attack)."""
    device = next(iter(policy.parameters()), torch.zeros(())).device
    rng = np.random.default_rng([seed, 0x5E0])
    returns: list[float] = []
    was_training = policy.training
    policy.eval()
    envs = None
    try:
        while len(returns) < episodes:
            n = min(MAX_ENVS, episodes - len(returns))
            if envs is None or envs.num_envs != n:
                if envs is not None:
                    envs.close()
                envs = gym.make_vec(env_id, num_envs=n, vectorization_mode="sync", **(env_kwargs or {}))
            space = envs.single_action_space
            obs, _ = envs.reset(seed=[seed + len(returns) + i for i in range(n)])
            totals, running = np.zeros(n), np.ones(n, dtype=bool)
            while running.any():
                noisy = obs + (0.0 if shift is None else shift) + sigma * rng.standard_normal(obs.shape)
                action = policy(torch.as_tensor(noisy, dtype=torch.float32, device=device)).cpu().numpy()
                if isinstance(space, gym.spaces.Box):
                    action = np.clip(action, space.low, space.high)
                obs, reward, terminated, truncated, _ = envs.step(action)
                totals += reward * running
                running &= ~(terminated | truncated)
            returns += totals.tolist()
    finally:
        if envs is not None:
            envs.close()
        policy.train(was_training)
    return np.asarray(returns)


def env_min_return(env_id: str, env_kwargs: dict | None = None) -> float | None:
    """The env's lowest possible return when it declares one (`min_return` on the toolkit's envs), else None."""
    env = gym.make(env_id, **(env_kwargs or {}))
    try:
        low = getattr(env.unwrapped, "min_return", None)
        return None if low is None else float(low)
    finally:
        env.close()


def certify(policy: nn.Module, env_id: str, sigma: float, budgets: Sequence[float], episodes: int,
            alpha: float = 0.05, seed: int = 0, low: float | None = None, env_kwargs: dict | None = None) -> Certificate:
    """Run the smoothed policy for `episodes` episodes and certify each budget; `low` defaults to the env's
    lowest possible return when known, otherwise the smallest observed return."""
    returns = smoothed_returns(policy, env_id, sigma, episodes, seed, env_kwargs=env_kwargs)
    if low is None:
        low = env_min_return(env_id, env_kwargs)
    a = float(returns.min()) if low is None else min(float(low), float(returns.min()))
    certified = [{"budget": float(b), "lower_bound": certified_bound(returns, sigma, float(b), alpha, a)}
                 for b in budgets]
    return Certificate(float(sigma), float(alpha), a, returns.tolist(), float(returns.mean()), certified, episodes,
                       env_id)
