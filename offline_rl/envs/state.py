"""Exact snapshots of a vector env's sub-environments, for resumable on-policy runs.

A sub-env is pickled whole (wrappers included: the time limit's step count survives). Two things pickling
misses are saved beside it: the base env's `np_random` generator (EzPickle envs such as MuJoCo's rebuild
themselves from their constructor arguments, with a fresh RNG), and for MuJoCo envs the full integration state
(`mj_getState`). Restoring both makes the continued rollout bit-identical to one that was never interrupted.
"""

from __future__ import annotations

import pickle
from typing import Any

import gymnasium as gym
import numpy as np


def snapshot_env(env: gym.Env) -> bytes:
    """One sub-env as bytes (see the module docstring)."""
    base = env.unwrapped
    extra: dict[str, Any] = {"np_random": base._np_random, "np_random_seed": base._np_random_seed}
    mujoco_state = _mujoco_state(base)
    if mujoco_state is not None:
        extra["mujoco"] = mujoco_state
    return pickle.dumps((env, extra))


def restore_env(blob: bytes) -> gym.Env:
    env, extra = pickle.loads(blob)
    base = env.unwrapped
    base._np_random, base._np_random_seed = extra["np_random"], extra["np_random_seed"]
    if "mujoco" in extra:
        import mujoco

        mujoco.mj_setState(base.model, base.data, extra["mujoco"], mujoco.mjtState.mjSTATE_INTEGRATION)
        mujoco.mj_forward(base.model, base.data)
    return env


def snapshot_vector_env(envs: gym.vector.SyncVectorEnv) -> list[bytes]:
    """Every sub-env of a synchronous vector env (same-step autoreset keeps no pending-reset state)."""
    return [snapshot_env(e) for e in envs.envs]


def restore_vector_env(envs: gym.vector.SyncVectorEnv, blobs: list[bytes]) -> None:
    """Put the snapshotted sub-envs back into `envs` (built with the same id and size)."""
    if len(blobs) != envs.num_envs:
        raise ValueError(f"snapshot has {len(blobs)} sub-envs, the vector env {envs.num_envs}")
    for env in envs.envs:
        env.close()
    envs.envs = [restore_env(b) for b in blobs]


def _mujoco_state(base: gym.Env) -> np.ndarray | None:
    if not (hasattr(base, "model") and hasattr(base, "data") and type(base).__module__.startswith("gymnasium.envs.mujoco")):
        return None
    import mujoco

    kind = mujoco.mjtState.mjSTATE_INTEGRATION
    state = np.empty(mujoco.mj_stateSize(base.model, kind))
    mujoco.mj_getState(base.model, base.data, state, kind)
    return state
