"""The online loop: act in gymnasium vector envs, store transitions in a device-resident replay buffer, update.

Works with any algorithm that has `explore(obs) -> action` (a sampled env action, no grad) besides the usual
`update` and `policy`; SAC is the built-in one. Each loop iteration steps all `num_envs` sub-envs once, adds their
transitions, then runs `updates_per_step · num_envs` gradient steps, so there is one update per env step by
default. The first `start_steps` env steps take uniform-random actions and run no updates (CleanRL's
`learning_starts`).

Terminal vs truncation: the bootstrap mask is `terminated` only. A time-limit truncation is stored with
done = 0 and, like a termination, with the sub-env's true last observation (`info["final_obs"]`, same-step
autoreset) as next_obs, never the reset observation.

Hybrid (offline + online) options, after Tan, Fan & Wei 2025 (`offline_rl.algos.hybrid_ac` has the tabular
version): `offline` data kept beside the replay buffer, with each update batch drawing a fraction `offline_ratio` of
its rows from it (0.5: symmetric sampling); `warmstart_critic` critic-only fitted-Q-iteration steps on the offline
data before the first env step (the algorithm's `fitted_q_step(batch)`); and the rare-switching actor reset,
`actor_reset = n₀`: the actor goes back to a fresh initialisation (the algorithm's `reset_actor()`) when the online
data reaches n₀, 2n₀, 4n₀, … env steps, i.e. each time it has doubled.

Seeding (python, numpy, torch, env resets, action-space sampling, replay sampling) makes a run on CPU
reproducible. Checkpoints are atomic and hold the algorithm with its optimisers, the RNG states, the step, the
curve and the replay buffer, so an interrupted run resumes (`resume=True`) with fresh env episodes. Actor snapshots
(`policy().state_dict()`, float32 on CPU) can be written at chosen env steps for the behaviour-policy zoo.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from offline_rl.algos.base import Algorithm
from offline_rl.data.dataset import Batch, Dataset
from offline_rl.envs import make_vector_env
from offline_rl.errors import ConfigError
from offline_rl.training.checkpoint import save_checkpoint
from offline_rl.training.graphs import GraphedCall, UpdateStep
from offline_rl.training.progress import ProgressReporter
from offline_rl.training.run_folder import CHECKPOINT, locked
from offline_rl.training.seeding import seed_everything
from offline_rl.training.trainer import (
    RunResult,
    _config_dict,
    _TensorBoard,
    recording,
    restore_checkpoint,
    sync_point,
)

SNAPSHOTS = "snapshots"
RESUME_SEED_STRIDE = 1_000_003
"""A run resumed at env step t resets sub-env i with seed + RESUME_SEED_STRIDE·t + i."""


def snapshot_path(out_dir: str | Path, step: int) -> Path:
    """Where `train_online` writes the actor snapshot taken at env step `step`."""
    return Path(out_dir) / SNAPSHOTS / f"step_{step:08d}.pt"


class ReplayBuffer:
    """A ring buffer in one preallocated [capacity, row] tensor on `device` (one host→device copy per `add`);
    sampling draws and gathers indices there (no host sync). The fill level also lives on the device, so a
    sample can be captured in a CUDA graph while the buffer grows."""

    def __init__(self, capacity: int, obs_dim: int, act_dim: int, device: str | torch.device = "cpu") -> None:
        self.capacity, self.device = int(capacity), torch.device(device)
        widths = {"observations": obs_dim, "actions": act_dim, "rewards": 1, "next_observations": obs_dim, "dones": 1}
        self.storage = torch.zeros(self.capacity, sum(widths.values()), device=self.device)
        self.columns: dict[str, slice] = {}
        start = 0
        for name, width in widths.items():
            self.columns[name] = slice(start, start + width)
            start += width
        self.size_t = torch.zeros((), device=self.device)
        self.ptr = self.size = 0

    def __len__(self) -> int:
        return self.size

    def column(self, name: str) -> torch.Tensor:
        """The stored rows' `name` column (a Batch field name), as a view."""
        return self._view(self.storage[: self.size], name)

    def _view(self, rows: torch.Tensor, name: str) -> torch.Tensor:
        col = rows[:, self.columns[name]]
        return col.squeeze(1) if name in ("rewards", "dones") else col

    def add(self, obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray, next_obs: np.ndarray,
            terminated: np.ndarray) -> None:
        """Add a batch of n transitions (first dimension n); `terminated` is the bootstrap mask."""
        n = len(obs)
        rows = np.concatenate([np.asarray(obs, np.float32).reshape(n, -1), np.asarray(actions, np.float32).reshape(n, -1),
                               np.asarray(rewards, np.float32).reshape(n, 1), np.asarray(next_obs, np.float32).reshape(n, -1),
                               np.asarray(terminated, np.float32).reshape(n, 1)], axis=1)
        rows_t = torch.from_numpy(rows).to(self.device)
        first = min(n, self.capacity - self.ptr)  # rows up to the end of the ring, then the rest from its start
        self.storage[self.ptr:self.ptr + first] = rows_t[:first]
        if first < n:
            self.storage[: n - first] = rows_t[first:]
        self.ptr = (self.ptr + n) % self.capacity
        self.size = min(self.size + n, self.capacity)
        self.size_t.fill_(self.size)

    def state_dict(self) -> dict[str, Any]:
        """The filled rows, oldest first, on the CPU (for a resumable checkpoint)."""
        rows = self.storage[: self.size]
        if self.size == self.capacity and self.ptr:
            rows = torch.cat([rows[self.ptr:], rows[: self.ptr]])
        return {"rows": rows.cpu()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Refill from `state_dict` rows (the newest `capacity` of them if this buffer is smaller)."""
        rows = state["rows"][-self.capacity:]
        self.size = len(rows)
        self.ptr = self.size % self.capacity
        self.storage[: self.size] = rows.to(self.device)
        self.size_t.fill_(self.size)

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> Batch:
        """Uniform over the filled rows: floor(U·size) with U ~ U[0, 1), size read on the device."""
        u = torch.rand(batch_size, device=self.device, generator=generator)
        idx = torch.minimum((u * self.size_t).long(), (self.size_t - 1).long())
        rows = self.storage[idx]
        return Batch(*(self._view(rows, name) for name in self.columns))


def _explorer(algo: Algorithm, num_envs: int, graphed: bool) -> Callable[[np.ndarray], np.ndarray]:
    """obs batch (numpy) → sampled env actions (numpy); on CUDA with graphs, one replay per call."""
    device = algo.device
    if not graphed:
        return lambda obs: algo.explore(torch.as_tensor(obs, dtype=torch.float32, device=device)).cpu().numpy()
    static_obs = torch.zeros(num_envs, algo.spec.obs_dim, device=device)
    call = GraphedCall(lambda: algo.explore(static_obs), name=f"{algo.name} explore")

    def explore(obs: np.ndarray) -> np.ndarray:
        static_obs.copy_(torch.as_tensor(obs, dtype=torch.float32))
        return call().cpu().numpy()

    return explore


def step_envs(envs, actions: np.ndarray) -> tuple[np.ndarray, ...]:
    """Step a same-step-autoreset vector env: (next_obs, true next_obs, rewards, terminated, truncated).

    `next_obs` is what the policy sees next (a reset observation where an episode ended); the true next_obs
    replaces those rows with the episode's real last observation from `info["final_obs"]`.
    """
    next_obs, rewards, terminated, truncated, info = envs.step(actions)
    real_next = next_obs
    if "_final_obs" in info and info["_final_obs"].any():
        real_next = next_obs.copy()
        for i in np.flatnonzero(info["_final_obs"]):
            real_next[i] = info["final_obs"][i]
    return next_obs, real_next, rewards, terminated, truncated


def train_online(algo: Algorithm, env_id: str, steps: int, seed: int = 0, num_envs: int = 1,
                 eval_every: int = 5000, eval_episodes: int = 10, out_dir: str | Path | None = None,
                 start_steps: int | None = None, updates_per_step: int | None = None, batch_size: int | None = None,
                 buffer_size: int | None = None, snapshot_steps: Iterable[int] = (), ckpt_every: int | None = None,
                 log_every: int = 1000, progress: bool | None = None, ref_min_score: float | None = None,
                 ref_max_score: float | None = None, cuda_graphs: bool = True,
                 time_limit_s: float | None = None, resume: bool = False, offline: Dataset | None = None,
                 offline_ratio: float = 0.0, warmstart_critic: int = 0, actor_reset: int = 0) -> RunResult:
    """Train `algo` online on `env_id` for `steps` env steps (summed over the sub-envs) and return the run record.

    `start_steps`, `updates_per_step`, `batch_size` and `buffer_size` default to the algorithm's config values.
    `snapshot_steps`: env steps at which to save the policy's state_dict under `out_dir/snapshots/` (0 = before any
    update; with several sub-envs, after the loop iteration that reaches the step). Evaluation (deterministic
    policy, seeds seed + 100 + i) runs every `eval_every` env steps and at the end. On CUDA the update and the
    exploration forward replay from CUDA graphs (`cuda_graphs`, offline_rl.training.graphs). `time_limit_s` stops
    training at the first loop iteration past that many seconds (status `time_limit`), with a final snapshot,
    evaluation and checkpoint at the step reached (the limit counts the whole run, resumed parts included).
    `resume=True` continues from `out_dir/checkpoint.pt`: the algorithm, optimisers, RNG states, curve and the
    replay buffer come back; the envs start fresh episodes (seeded from the step), so a resumed run is a valid
    continuation but not bit-identical to an uninterrupted one.

    Hybrid options (module docstring): `offline` (a Dataset on the env), `offline_ratio` in [0, 1],
    `warmstart_critic` fitted-Q steps before training (not repeated on resume), `actor_reset` n₀ (0: off).
    """
    options = dict(locals())  # the arguments, passed on whole
    with locked(Path(out_dir)) if out_dir is not None else contextlib.nullcontext():
        return _train_online(**options)


def _train_online(algo: Algorithm, env_id: str, steps: int, seed: int, num_envs: int, eval_every: int,
                  eval_episodes: int, out_dir: str | Path | None, start_steps: int | None,
                  updates_per_step: int | None, batch_size: int | None, buffer_size: int | None,
                  snapshot_steps: Iterable[int], ckpt_every: int | None, log_every: int, progress: bool | None,
                  ref_min_score: float | None, ref_max_score: float | None, cuda_graphs: bool,
                  time_limit_s: float | None, resume: bool, offline: Dataset | None, offline_ratio: float,
                  warmstart_critic: int, actor_reset: int) -> RunResult:
    cfg = algo.config
    start_steps = getattr(cfg, "start_steps", 0) if start_steps is None else start_steps
    updates_per_step = updates_per_step or getattr(cfg, "updates_per_step", 1)
    batch_size = batch_size or getattr(cfg, "batch_size", 256)
    capacity = min(buffer_size or getattr(cfg, "buffer_size", steps), steps)
    out = Path(out_dir) if out_dir is not None else None
    snapshot_at = {int(s) for s in snapshot_steps}
    ckpt_every = ckpt_every or eval_every or steps
    device = algo.device

    hybrid = _check_hybrid(algo, offline, offline_ratio, warmstart_critic, actor_reset)
    offline = offline.to(device) if offline is not None else None
    n_offline = round(batch_size * offline_ratio)

    seed_everything(seed)
    envs = make_vector_env(env_id, num_envs, seed=seed)
    buffer = ReplayBuffer(capacity, algo.spec.obs_dim, algo.spec.act_dim, device)
    generator = torch.Generator(device=device).manual_seed(seed)

    def sample(gen: torch.Generator | None) -> Batch:
        """`batch_size` rows: the first `n_offline` from the offline data, the rest from the replay buffer."""
        online = buffer.sample(batch_size - n_offline, gen)
        if not n_offline:
            return online
        rows = offline.sample(n_offline, gen)
        return Batch(*(torch.cat([a, b]) for a, b in zip(rows, online, strict=True)))

    update = UpdateStep(algo, sample, generator, cuda_graphs)
    explore = _explorer(algo, num_envs, update.graphed)
    result = RunResult(algo=algo.name, dataset=env_id, dataset_source=f"online:{env_id}", dataset_label="online",
                       behavior_score=None, seed=seed, steps=steps, eval_every=eval_every,
                       eval_episodes=eval_episodes, config=_config_dict(cfg) | hybrid, device=str(device))
    metrics: dict[str, torch.Tensor] = {}
    episode_returns: list[float] = []
    running_return = np.zeros(num_envs)
    train_time, n_updates, step, elapsed = 0.0, 0, 0, 0.0
    if resume and out is not None and (out / CHECKPOINT).exists():
        state = restore_checkpoint(out / CHECKPOINT, algo, generator, result)
        buffer.load_state_dict(state["online"]["buffer"])
        step, n_updates, episode_returns = state["step"], state["online"]["n_updates"], state["online"]["returns"]
        elapsed, train_time = state["elapsed"], state["train_time"]
    logger = _TensorBoard(out, purge_step=step + 1 if step else None)
    reporter = ProgressReporter(steps, step, enabled=progress, label=f"online {env_id}")
    t0 = time.perf_counter() - elapsed
    timing = [train_time]

    def online_state() -> dict[str, Any]:
        return {"online": {"buffer": buffer.state_dict(), "n_updates": n_updates, "returns": episode_returns[-100:]}}

    def snapshot(at: int) -> None:
        if out is not None and at in snapshot_at:
            state = {k: v.detach().to("cpu", torch.float32).clone() for k, v in algo.policy().state_dict().items()}
            save_checkpoint(snapshot_path(out, at), state)

    with recording(result, out, t0, reporter, logger, lambda: timing[0]), contextlib.closing(envs):
        first = seed if step == 0 else seed + RESUME_SEED_STRIDE * step  # a resumed run starts fresh episodes
        obs, _ = envs.reset(seed=[first + i for i in range(num_envs)])
        if step == 0:
            for _ in range(warmstart_critic):  # fitted Q iteration on the offline data, before any env step
                metrics = algo.fitted_q_step(offline.sample(batch_size, generator))
            snapshot(0)
        t_train = time.perf_counter()
        while step < steps:
            if step < start_steps:
                actions = envs.action_space.sample()
            else:
                actions = explore(obs)
            next_obs, real_next, rewards, terminated, truncated = step_envs(envs, actions)
            buffer.add(obs, actions, rewards, real_next, terminated)
            running_return += rewards
            for i in np.flatnonzero(terminated | truncated):
                episode_returns.append(float(running_return[i]))
                running_return[i] = 0.0
            obs = next_obs
            prev, step = step, step + num_envs
            if actor_reset and _doubling_crossed(prev, step, actor_reset):
                algo.reset_actor()  # rare switching: the online data has doubled since the last reset

            if step > start_steps:
                for _ in range(updates_per_step * (step - max(prev, start_steps))):
                    n_updates += 1
                    metrics = update(n_updates)
            out_of_time = time_limit_s is not None and time.perf_counter() - t0 > time_limit_s
            if out_of_time:
                result.status, steps = "time_limit", step
                snapshot_at.add(step)
            for s in range(prev + 1, step + 1):
                snapshot(s)

            is_eval = bool(eval_every) and (step // eval_every > prev // eval_every or step >= steps)
            is_ckpt = step // ckpt_every > prev // ckpt_every or step >= steps
            if step // log_every == prev // log_every and not is_eval and not is_ckpt:
                continue
            timing[0] += time.perf_counter() - t_train
            extra = {"episode_return": float(np.mean(episode_returns[-10:]))} if episode_returns else {}
            if not sync_point(result, algo, metrics, step, n_updates, timing[0], env_id, is_eval, is_ckpt,
                              eval_episodes, seed, ref_min_score, ref_max_score, logger, reporter, out,
                              generator, t0, extra, online_state):
                break
            t_train = time.perf_counter()
    return result


def _check_hybrid(algo: Algorithm, offline: Dataset | None, offline_ratio: float, warmstart_critic: int,
                  actor_reset: int) -> dict[str, Any]:
    """Validate the hybrid options; returns them for the run record ({} when none is used)."""
    if not 0.0 <= offline_ratio <= 1.0:
        raise ConfigError(f"offline_ratio must be in [0, 1], got {offline_ratio}")
    if warmstart_critic < 0 or actor_reset < 0:
        raise ConfigError(f"warmstart_critic and actor_reset must be ≥ 0, got {warmstart_critic}, {actor_reset}")
    if (offline_ratio > 0 or warmstart_critic) and offline is None:
        raise ConfigError("offline_ratio and warmstart_critic need offline data (--offline-data)")
    if offline is not None and (offline.spec.obs_dim, offline.spec.act_dim) != (algo.spec.obs_dim, algo.spec.act_dim):
        raise ConfigError(f"offline data '{offline.name or offline.source}' has obs/action sizes "
                          f"{offline.spec.obs_dim}/{offline.spec.act_dim}, the env {algo.spec.obs_dim}/{algo.spec.act_dim}")
    for needed, hook in ((warmstart_critic, "fitted_q_step"), (actor_reset, "reset_actor")):
        if needed and not callable(getattr(algo, hook, None)):
            raise ConfigError(f"algorithm '{algo.name}' has no {hook}(), which "
                              f"{'warmstart_critic' if hook == 'fitted_q_step' else 'actor_reset'} needs")
    if offline is None and not actor_reset:
        return {}
    return {"hybrid": {"offline_data": None if offline is None else (offline.name or offline.source),
                       "offline_ratio": offline_ratio, "warmstart_critic": warmstart_critic,
                       "actor_reset": actor_reset}}


def _doubling_crossed(prev: int, step: int, first: int) -> bool:
    """Whether (prev, step] holds a switch point first·2^k (k ≥ 0)."""
    if step < first:
        return False
    point = first
    while point * 2 <= step:
        point *= 2
    return point > prev
