"""Environment factories shared by dataset generation and evaluation, and the toolkit's own environments.

Thin wrappers over gymnasium so every part of the toolkit builds environments the same way. Importing this
package registers the toolkit's envs (combination lock, LQR, bandits, multi-path grid: `envs.registry`).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import gymnasium as gym
import numpy as np

from offline_rl.envs.registry import register_envs

__all__ = ["make_env", "make_vector_env", "env_spaces", "box_bounds", "is_registered", "register_envs",
           "dataset_diagnostics"]

register_envs()


def make_env(env_id: str, **kwargs: Any) -> gym.Env:
    """`gymnasium.make(env_id, **kwargs)`."""
    return gym.make(env_id, **kwargs)


def make_vector_env(env_id: str, num_envs: int, seed: int | None = None, same_step_autoreset: bool = True,
                    **kwargs: Any) -> gym.vector.VectorEnv:
    """A synchronous vector env of `num_envs` copies of `env_id`.

    With `same_step_autoreset` (the default) a finished sub-env is reset inside the same `step` call and its
    true last observation is in `info["final_obs"]`; otherwise gymnasium's next-step autoreset applies.
    `seed` seeds the action spaces; pass the seed to `reset()` as well to seed the dynamics.
    """
    mode = gym.vector.AutoresetMode.SAME_STEP if same_step_autoreset else gym.vector.AutoresetMode.NEXT_STEP
    envs = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="sync",
                        vector_kwargs={"autoreset_mode": mode}, **kwargs)
    if seed is not None:
        envs.action_space.seed(seed)
        envs.single_action_space.seed(seed)
    return envs


def is_registered(env_id: str) -> bool:
    """Whether gymnasium knows `env_id`."""
    return env_id in gym.registry


@lru_cache(maxsize=64)
def _spaces(env_id: str, kwargs_items: tuple) -> tuple[gym.Space, gym.Space]:
    env = gym.make(env_id, **dict(kwargs_items))
    try:
        return env.observation_space, env.action_space
    finally:
        env.close()


def env_spaces(env_id: str, **kwargs: Any) -> tuple[gym.Space, gym.Space]:
    """(observation_space, action_space) of `env_id`, built once per process and cached."""
    items = tuple(sorted(kwargs.items()))
    try:
        hash(items)
    except TypeError:  # unhashable kwargs (e.g. a maze map): build without the cache
        return _spaces.__wrapped__(env_id, items)
    return _spaces(env_id, items)


def box_bounds(space: gym.Space) -> tuple[np.ndarray, np.ndarray] | None:
    """(low, high) of a Box space as float64 arrays, or None for other spaces."""
    if isinstance(space, gym.spaces.Box):
        return np.asarray(space.low, dtype=np.float64).ravel(), np.asarray(space.high, dtype=np.float64).ravel()
    return None


def dataset_diagnostics(env_id: str | None, observations: np.ndarray, actions: np.ndarray,
                        env_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """What an env class with known optima says about a dataset collected on it (e.g. RiverSwim's concentrability),
    through its `dataset_diagnostics(observations, actions, env_kwargs)` classmethod; {} for other envs."""
    if env_id is None or env_id not in gym.registry:
        return {}
    entry = gym.registry[env_id].entry_point
    if not isinstance(entry, str):
        return {}
    try:
        env_cls = gym.envs.registration.load_env_creator(entry)
    except ImportError:  # an env whose package is missing has nothing to report
        return {}
    report = getattr(env_cls, "dataset_diagnostics", None)
    return report(observations, actions, dict(env_kwargs or {})) if callable(report) else {}
