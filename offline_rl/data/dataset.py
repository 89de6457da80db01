"""The in-memory dataset every algorithm trains on: flat transition tensors on one device."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import NamedTuple

import numpy as np
import torch

from offline_rl.envs import dataset_diagnostics
from offline_rl.errors import DatasetError


@dataclass(frozen=True)
class Spec:
    """What an algorithm needs to know about the MDP to build its networks."""

    obs_dim: int
    act_dim: int
    action_low: tuple[float, ...]
    action_high: tuple[float, ...]

    @property
    def max_action(self) -> float:
        """The symmetric action bound (TD3 convention); the largest absolute bound."""
        return float(max(max(abs(x) for x in self.action_low), max(abs(x) for x in self.action_high)))

    def to_dict(self) -> dict:
        return {
            "obs_dim": self.obs_dim,
            "act_dim": self.act_dim,
            "action_low": list(self.action_low),
            "action_high": list(self.action_high),
        }

    @classmethod
    def from_dict(cls, d: dict) -> Spec:
        return cls(int(d["obs_dim"]), int(d["act_dim"]), tuple(d["action_low"]), tuple(d["action_high"]))


class Batch(NamedTuple):
    """One minibatch of transitions; `dones` is the bootstrap mask (terminals only, never timeouts)."""

    observations: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    next_observations: torch.Tensor
    dones: torch.Tensor


@dataclass
class Dataset:
    """Transitions as float32 tensors of first dimension N, plus what evaluation needs.

    `terminals` is the bootstrap mask. `timeouts` marks rows whose episode was cut by the time limit (kept only in
    keep-truncated mode). `episode_ids` numbers episodes from 0 in file order and indexes `episode_returns` (the
    full returns of the raw episodes, including rows dropped on load). `env_kwargs` are extra `gymnasium.make`
    arguments the evaluation env needs (from a Minari env spec; usually empty).
    """

    observations: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    next_observations: torch.Tensor
    terminals: torch.Tensor
    timeouts: torch.Tensor
    episode_ids: torch.Tensor
    env_id: str | None
    spec: Spec
    ref_min_score: float | None = None
    ref_max_score: float | None = None
    source: str = ""
    name: str = ""
    family: str = ""
    label: str = ""
    episode_returns: np.ndarray = field(default_factory=lambda: np.zeros(0))
    env_kwargs: dict = field(default_factory=dict)
    _dones_f: torch.Tensor | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        n = self.observations.shape[0]
        for key in ("actions", "rewards", "next_observations", "terminals", "timeouts", "episode_ids"):
            if getattr(self, key).shape[0] != n:
                raise DatasetError(f"{self.source or 'dataset'}: key '{key}' has {getattr(self, key).shape[0]} rows, "
                                   f"observations has {n}")
        self._dones_f = self.terminals.to(torch.float32)

    def __len__(self) -> int:
        return int(self.observations.shape[0])

    @property
    def device(self) -> torch.device:
        return self.observations.device

    @property
    def n_episodes(self) -> int:
        return int(len(self.episode_returns))

    def to(self, device: str | torch.device) -> Dataset:
        """A copy with every tensor on `device`."""
        tensors = {k: getattr(self, k).to(device) for k in
                   ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts", "episode_ids")}
        return replace(self, **tensors, _dones_f=None)

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> Batch:
        """Uniform minibatch; indices are drawn and gathered on the dataset's own device (no host sync)."""
        idx = torch.randint(0, len(self), (batch_size,), device=self.device, generator=generator)
        return Batch(self.observations[idx], self.actions[idx], self.rewards[idx], self.next_observations[idx],
                     self._dones_f[idx])

    def normalized_score(self, episode_return: float | np.ndarray) -> float | np.ndarray | None:
        """100·(return − ref_min)/(ref_max − ref_min), or None when the reference scores are unknown."""
        if self.ref_min_score is None or self.ref_max_score is None:
            return None
        return 100.0 * (np.asarray(episode_return) - self.ref_min_score) / (self.ref_max_score - self.ref_min_score)

    def state_stats(self, eps: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-dimension observation mean and std + eps (CORL/PRDC convention: eps added to the std)."""
        mean = self.observations.mean(0)
        std = self.observations.std(0, unbiased=False) + eps
        return mean, std

    def return_range(self) -> tuple[float, float]:
        """(min, max) episode return over the dataset's episodes (CORL `return_reward_range`)."""
        if len(self.episode_returns) == 0:
            return 0.0, 1.0
        return float(self.episode_returns.min()), float(self.episode_returns.max())

    def summary(self) -> dict:
        """The `datasets info --json` record."""
        rets = self.episode_returns
        mean = float(rets.mean()) if len(rets) else None
        norm = self.normalized_score(mean) if mean is not None else None
        return {
            "source": self.source,
            "name": self.name,
            "label": self.label,
            "env_id": self.env_id,
            "n_transitions": len(self),
            "n_episodes": self.n_episodes,
            "obs_dim": self.spec.obs_dim,
            "act_dim": self.spec.act_dim,
            "return_mean": mean,
            "return_std": float(rets.std()) if len(rets) else None,
            "ref_min_score": self.ref_min_score,
            "ref_max_score": self.ref_max_score,
            "normalized_return_mean": None if norm is None else float(norm),
            **dataset_diagnostics(self.env_id, self.observations.cpu().numpy(), self.actions.cpu().numpy(),
                                  self.env_kwargs),
        }
