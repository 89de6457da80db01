"""The in-memory dataset every algorithm trains on: flat transition tensors on one device."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import numpy as np
import torch

from offline_rl.envs import dataset_diagnostics
from offline_rl.errors import DatasetError

ACTION_TOLERANCE = 1e-3
"""Allowed overshoot of the action bounds, as a fraction of the bound range (at least 1e-3 absolute)."""


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
    _hash: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._validate()
        self._dones_f = self.terminals.to(torch.float32)

    def _validate(self) -> None:
        """Shapes, dtypes, finiteness and action bounds: a Dataset built from arrays is checked like a file."""
        where = self.source or self.name or "dataset"
        values = {"observations": self.spec.obs_dim, "next_observations": self.spec.obs_dim,
                  "actions": self.spec.act_dim, "rewards": None}
        flags = ("terminals", "timeouts", "episode_ids")
        tensors = {k: getattr(self, k) for k in (*values, *flags)}
        for key, value in tensors.items():
            if not isinstance(value, torch.Tensor):
                raise DatasetError(f"{where}: '{key}' must be a torch.Tensor, got {type(value).__name__}")
        n = self.observations.shape[0] if self.observations.dim() else 0
        if n == 0:
            raise DatasetError(f"{where}: the dataset has no transitions")
        for key, dim in values.items():
            value = tensors[key]
            expected = (n,) if dim is None else (n, dim)
            if tuple(value.shape) != expected:
                raise DatasetError(f"{where}: '{key}' has shape {tuple(value.shape)}, expected {expected}")
            if not value.is_floating_point():
                raise DatasetError(f"{where}: '{key}' has dtype {value.dtype}, expected a floating-point tensor")
            bad = ~torch.isfinite(value.reshape(n, -1)).all(dim=1)
            if bool(bad.any()):
                raise DatasetError(f"{where}: '{key}' contains NaN or inf at row {int(bad.nonzero()[0, 0])}")
        for key in flags:
            value = tensors[key]
            if tuple(value.shape) != (n,):
                raise DatasetError(f"{where}: '{key}' has shape {tuple(value.shape)}, expected ({n},)")
        if self.terminals.dtype != torch.bool or self.timeouts.dtype != torch.bool:
            raise DatasetError(f"{where}: 'terminals' and 'timeouts' must be bool tensors")
        low = torch.as_tensor(self.spec.action_low, dtype=self.actions.dtype, device=self.actions.device)
        high = torch.as_tensor(self.spec.action_high, dtype=self.actions.dtype, device=self.actions.device)
        tol = ACTION_TOLERANCE * torch.clamp(torch.nan_to_num(high - low, posinf=0.0), min=1.0)
        outside = (self.actions < low - tol) | (self.actions > high + tol)
        if bool(outside.any()):
            row, dim = (int(i) for i in outside.nonzero()[0])
            raise DatasetError(f"{where}: 'actions' has {float(self.actions[row, dim]):.6g} at row {row} (dimension "
                               f"{dim}), outside the action bounds [{float(low[dim]):.6g}, {float(high[dim]):.6g}]")

    @classmethod
    def from_arrays(cls, observations: np.ndarray, actions: np.ndarray, rewards: np.ndarray,
                    next_observations: np.ndarray, terminals: np.ndarray, timeouts: np.ndarray | None = None, *,
                    env_id: str | None = None, action_bounds: tuple[Any, Any] | None = None,
                    ref_min_score: float | None = None, ref_max_score: float | None = None, name: str = "arrays",
                    device: str | torch.device = "cpu") -> Dataset:
        """A validated Dataset from transition arrays in episode order (one row per transition).

        An episode ends at a row with `terminals` or `timeouts` set (the last one may be open). The action bounds
        come from `env_id`'s action space (also the evaluation env) or from `action_bounds` (low, high: scalars or
        one value per dimension); one of the two is required, so that out-of-range actions are caught.
        """
        obs, act, nxt = (np.asarray(x) for x in (observations, actions, next_observations))
        rew = np.asarray(rewards)
        term = np.asarray(terminals)
        trunc = np.zeros(len(term), dtype=bool) if timeouts is None else np.asarray(timeouts)
        for key, value in (("observations", obs), ("actions", act), ("next_observations", nxt), ("rewards", rew),
                           ("terminals", term), ("timeouts", trunc)):
            if value.dtype.kind not in "biuf":
                raise DatasetError(f"{name}: '{key}' has dtype {value.dtype}, expected numbers")
        if act.ndim != 2 or obs.ndim != 2:
            raise DatasetError(f"{name}: 'observations' and 'actions' must be 2-D arrays (N, dim), got shapes "
                               f"{obs.shape} and {act.shape}")
        if env_id is not None:
            from offline_rl.envs import box_bounds, env_spaces

            bounds = box_bounds(env_spaces(env_id)[1])
        elif action_bounds is not None:
            bounds = tuple(np.broadcast_to(np.asarray(b, dtype=np.float64), (act.shape[1],)) for b in action_bounds)
        else:
            raise DatasetError(f"{name}: give env_id or action_bounds, so that the actions can be checked")
        if bounds is None:
            raise DatasetError(f"{name}: env {env_id} has no Box action space")
        ends = term.astype(bool) | trunc.astype(bool)
        episode = np.concatenate([[0], np.cumsum(ends[:-1])]).astype(np.int64) if len(ends) else ends.astype(np.int64)
        returns = np.bincount(episode, weights=rew.astype(np.float64).reshape(-1),
                              minlength=int(episode[-1]) + 1 if len(episode) else 0)

        def tensor(x: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
            return torch.as_tensor(np.ascontiguousarray(x), device=device).to(dtype)

        spec = Spec(int(obs.shape[1]), int(act.shape[1]), tuple(float(x) for x in bounds[0]),
                    tuple(float(x) for x in bounds[1]))
        return cls(tensor(obs, torch.float32), tensor(act, torch.float32), tensor(rew.reshape(-1), torch.float32),
                   tensor(nxt, torch.float32), tensor(term, torch.bool), tensor(trunc, torch.bool),
                   tensor(episode, torch.int64), env_id, spec, ref_min_score, ref_max_score, source=name, name=name,
                   label="arrays", episode_returns=returns)

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
        return replace(self, **tensors, _dones_f=None, _hash=self._hash)

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

    def content_hash(self) -> str:
        """blake2b of every transition array (values, flags and episode ids, in row order), cached: two datasets
        with the same hash train the same way."""
        if self._hash is None:
            digest = hashlib.blake2b(digest_size=16)
            for key in ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts",
                        "episode_ids"):
                value = getattr(self, key).detach().cpu().contiguous()
                digest.update(f"{key}{tuple(value.shape)}{value.dtype}".encode())
                digest.update(value.numpy().tobytes())
            self._hash = digest.hexdigest()
        return self._hash

    def chunked_return_range(self, max_episode_steps: int = 1000) -> tuple[float, float]:
        """(min, max) return of the chunks of the transition rows, in order, cut at each terminal and every
        `max_episode_steps` rows, the last unfinished chunk dropped.

        This is the reward-scaling range of the references (CORL `return_reward_range`, ODICE-Pytorch
        `util.return_range`), computed on the transitions the algorithm trains on: for a D4RL file the
        `qlearning_dataset` rows, whose timeout rows are gone, so a chunk can run across an episode boundary, as it
        does there.
        """
        rewards = self.rewards.detach().double().cpu().numpy()
        terminals = self.terminals.detach().cpu().numpy().astype(bool)
        n = len(rewards)
        rows = np.arange(n)
        segment_start = np.maximum.accumulate(np.where(np.concatenate([[True], terminals[:-1]]), rows, 0))
        closes = terminals | ((rows - segment_start + 1) % max_episode_steps == 0)
        ends = np.flatnonzero(closes)
        if len(ends) == 0:
            raise DatasetError(f"{self.source or self.name}: no terminal and fewer than {max_episode_steps} rows, so "
                               "the return range that scales the rewards is undefined")
        starts = np.concatenate([[0], ends[:-1] + 1])
        returns = np.add.reduceat(rewards[:ends[-1] + 1], starts)  # chunk k sums rows starts[k] .. ends[k]
        return float(returns.min()), float(returns.max())

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
