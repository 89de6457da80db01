"""Numpy transitions -> `Dataset`: the last step every reader shares."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from offline_rl.data.dataset import Dataset, Spec
from offline_rl.errors import DatasetError


@dataclass
class Transitions:
    """One row per transition, as numpy arrays, plus the per-episode returns of the raw data."""

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_observations: np.ndarray
    terminals: np.ndarray
    timeouts: np.ndarray
    episode_ids: np.ndarray
    episode_returns: np.ndarray

    def arrays(self) -> dict[str, np.ndarray]:
        """The per-transition arrays by name (what validation checks)."""
        return {"observations": self.observations, "actions": self.actions, "rewards": self.rewards,
                "next_observations": self.next_observations, "terminals": self.terminals,
                "timeouts": self.timeouts, "episode_ids": self.episode_ids}


def spec_from(obs_dim: int, actions: np.ndarray, bounds: tuple[np.ndarray, np.ndarray] | None, where: str) -> Spec:
    """The Spec from the action-space bounds when known, else from the data's per-dimension action range."""
    act_dim = int(np.prod(actions.shape[1:]))
    if bounds is None:
        if len(actions) == 0:
            raise DatasetError(f"{where}: no transitions, and no action space to take the action bounds from")
        flat = actions.reshape(len(actions), -1)
        bounds = flat.min(axis=0), flat.max(axis=0)
    low, high = bounds
    return Spec(obs_dim, act_dim, tuple(float(x) for x in low), tuple(float(x) for x in high))


def _tensor(x: np.ndarray, dtype: torch.dtype, device: str | torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x)).to(device=device, dtype=dtype)


def to_dataset(t: Transitions, spec: Spec, device: str | torch.device, **meta: Any) -> Dataset:
    """Tensors on `device` (float32 values, bool flags, int64 episode ids) with the given metadata."""
    n = len(t.observations)
    return Dataset(
        observations=_tensor(t.observations.reshape(n, -1), torch.float32, device),
        actions=_tensor(t.actions.reshape(n, -1), torch.float32, device),
        rewards=_tensor(t.rewards, torch.float32, device),
        next_observations=_tensor(t.next_observations.reshape(n, -1), torch.float32, device),
        terminals=_tensor(t.terminals, torch.bool, device),
        timeouts=_tensor(t.timeouts, torch.bool, device),
        episode_ids=_tensor(t.episode_ids, torch.int64, device),
        spec=spec,
        episode_returns=np.asarray(t.episode_returns, dtype=np.float64),
        **meta,
    )
