"""Run `episodes` full episodes of a deterministic policy in a vector env, one batched policy call per step.

Each sub-environment plays exactly one episode per round (seeded `seed + i`), so short episodes are not
over-represented, as they would be if auto-reset episodes were counted as they finish.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import gymnasium as gym
import numpy as np
import torch
from torch import nn

MAX_ENVS = 25


def normalized_score(episode_return: float, ref_min: float | None, ref_max: float | None) -> float | None:
    """100·(return − ref_min)/(ref_max − ref_min); None when the reference scores are unknown."""
    if ref_min is None or ref_max is None:
        return None
    return float(100.0 * (episode_return - ref_min) / (ref_max - ref_min))


@dataclass
class EvalResult:
    """Mean and spread of the episode returns, and the normalised score of the mean return."""

    mean_return: float
    std_return: float
    normalized_score: float | None
    returns: list[float]
    lengths: list[int]
    env_id: str
    seed: int

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def evaluate(policy: nn.Module, env_id: str, episodes: int = 10, seed: int = 0,
             ref_min_score: float | None = None, ref_max_score: float | None = None,
             device: str | torch.device | None = None) -> EvalResult:
    """Roll out `policy` (obs batch -> action batch) for `episodes` episodes; deterministic given `seed`."""
    if device is None:
        device = next(iter(policy.parameters()), torch.zeros(())).device
    was_training = policy.training
    policy.eval()
    returns: list[float] = []
    lengths: list[int] = []
    while len(returns) < episodes:
        n = min(MAX_ENVS, episodes - len(returns))
        r, ln = _run_round(policy, env_id, n, seed + len(returns), device)
        returns += r
        lengths += ln
    policy.train(was_training)
    mean = float(np.mean(returns))
    return EvalResult(mean, float(np.std(returns)), normalized_score(mean, ref_min_score, ref_max_score),
                      returns, lengths, env_id, seed)


def _run_round(policy: nn.Module, env_id: str, n: int, seed: int, device) -> tuple[list[float], list[int]]:
    envs = gym.make_vec(env_id, num_envs=n, vectorization_mode="sync")
    try:
        space = envs.single_action_space
        bounds = (space.low, space.high) if isinstance(space, gym.spaces.Box) else None  # Discrete: no clipping
        obs, _ = envs.reset(seed=[seed + i for i in range(n)])
        totals = np.zeros(n)
        steps = np.zeros(n, dtype=np.int64)
        running = np.ones(n, dtype=bool)
        while running.any():
            obs_t = torch.as_tensor(obs, dtype=torch.float32, device=device)
            action = policy(obs_t).cpu().numpy()
            if bounds is not None:
                action = np.clip(action, *bounds)
            obs, reward, terminated, truncated, _ = envs.step(action)
            totals += reward * running
            steps += running
            running &= ~(terminated | truncated)
        return totals.tolist(), steps.tolist()
    finally:
        envs.close()
