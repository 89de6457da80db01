"""Measure a numpy policy's episode returns in a vector env (reference scores of the generated datasets).

Same protocol as the evaluation harness: rounds of up to `max_envs` sub-envs, each playing exactly one episode
seeded `seed + k` (k = the episode's index), one batched policy call per step. Counting auto-reset episodes as
they finish would over-represent short episodes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from offline_rl.envs import make_vector_env


def run_episodes(env_id: str, policy: Callable[[np.ndarray], np.ndarray], episodes: int, seed: int,
                 max_envs: int = 25, **env_kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
    """(returns, lengths) of `episodes` episodes, deterministic given `seed` and the policy's own RNG."""
    returns: list[float] = []
    lengths: list[int] = []
    while len(returns) < episodes:
        n = min(max_envs, episodes - len(returns))
        envs = make_vector_env(env_id, n, seed=seed + len(returns), **env_kwargs)
        try:
            obs, _ = envs.reset(seed=[seed + len(returns) + i for i in range(n)])
            totals, steps = np.zeros(n), np.zeros(n, dtype=np.int64)
            running = np.ones(n, dtype=bool)
            while running.any():
                obs, reward, terminated, truncated, _ = envs.step(policy(obs))
                totals += np.where(running, reward, 0.0)
                steps += running
                running &= ~(terminated | truncated)
        finally:
            envs.close()
        returns += totals.tolist()
        lengths += steps.tolist()
    return np.asarray(returns), np.asarray(lengths)
