"""The on-policy loop: batched rollouts in a gymnasium vector env → one `update_rollout` per iteration.

Beside the offline trainer and the online SAC loop, and sharing their pieces: `RunResult` / `result.json`,
`sync_point` (metrics, divergence stop, TensorBoard, evaluation, progress, atomic checkpoint) and
`restore_checkpoint`. Any `OnPolicyAlgorithm` (`offline_rl.algos.pg_core`) runs here; hybrid ones (HNPG) also
get the offline dataset through `prepare`.

One iteration steps `algo.num_envs` sub-envs `algo.rollout_length` times (same-step autoreset: an episode that
ends is reset inside the step, its true last observation kept as next_obs), then calls `algo.update_rollout`.
The step count is in env samples (`steps`, `eval_every`, the curve's x), with the update count beside it.

Success metric: for envs with a known optimal return (`success_return`, default the env's `optimal_return`
attribute, e.g. the combination lock's 1), each iteration records the fraction of the episodes that ended in it
with that return, and `samples_to_success` is the number of env samples when the moving average of that
fraction over the last `success_window` iterations (50, the HNPG source's `deque(maxlen=50)`) first exceeds 0.5:
the HNPG paper's metric.

Exact resume: a checkpoint holds the algorithm and its optimisers, every RNG state, the loop counters and the
sub-environments themselves (`offline_rl.envs.state`: pickled with their RNGs, MuJoCo's integration state), so a
run killed with SIGKILL and resumed (`resume=True`) ends bit-identical to an uninterrupted one on CPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from offline_rl.algos.pg_core import OnPolicyAlgorithm, Rollout, is_discrete
from offline_rl.data.dataset import Dataset, Spec
from offline_rl.envs import make_env, make_vector_env
from offline_rl.envs.state import restore_vector_env, snapshot_vector_env
from offline_rl.errors import ConfigError
from offline_rl.training.online import step_envs
from offline_rl.training.progress import ProgressReporter
from offline_rl.training.run_folder import CHECKPOINT
from offline_rl.training.seeding import seed_everything
from offline_rl.training.trainer import (
    RunResult,
    _config_dict,
    _TensorBoard,
    recording,
    restore_checkpoint,
    sync_point,
)
from offline_rl.utils.io import atomic_write_json

SUCCESS_WINDOW = 50


def env_spec(env: gym.Env) -> Spec:
    """The `Spec` of an env: Box actions give their bounds; Discrete(n) gives act_dim n and empty bounds."""
    obs_dim = int(gym.spaces.flatdim(env.observation_space))
    space = env.action_space
    if isinstance(space, gym.spaces.Discrete):
        return Spec(obs_dim, int(space.n), (), ())
    if isinstance(space, gym.spaces.Box):
        return Spec(obs_dim, int(np.prod(space.shape)), tuple(float(x) for x in np.ravel(space.low)),
                    tuple(float(x) for x in np.ravel(space.high)))
    raise ConfigError(f"action space {space} is not supported (Box or Discrete)")


class RolloutCollector:
    """The vector env and everything a rollout continues from (observations, episode counters)."""

    def __init__(self, algo: OnPolicyAlgorithm, env_id: str, seed: int, env_kwargs: dict[str, Any]) -> None:
        self.algo, self.n = algo, algo.num_envs
        self.envs = make_vector_env(env_id, self.n, seed=seed, **env_kwargs)
        self.obs, _ = self.envs.reset(seed=[seed + i for i in range(self.n)])
        self.running_return = np.zeros(self.n)
        self.timestep = np.zeros(self.n, dtype=np.int64)
        self.discrete = is_discrete(algo.spec)

    def state(self) -> dict[str, Any]:
        return {"envs": snapshot_vector_env(self.envs), "obs": self.obs.copy(),
                "running_return": self.running_return.copy(), "timestep": self.timestep.copy()}

    def load(self, state: dict[str, Any]) -> None:
        restore_vector_env(self.envs, state["envs"])
        self.obs, self.running_return, self.timestep = state["obs"], state["running_return"], state["timestep"]

    def collect(self, length: int) -> tuple[Rollout, list[float]]:
        """`length` vector steps with `algo.act`; returns the rollout and the returns of the episodes that ended.

        `algo.on_step(rollout, t)` sees observations, actions and extras filled up to step t; the other fields
        are filled when the rollout is complete."""
        algo, device, n = self.algo, self.algo.device, self.n
        obs_dim = self.obs.shape[1]
        obs_buf = torch.zeros(length, n, obs_dim, device=device)
        next_np = np.zeros((length, n, obs_dim), dtype=np.float32)
        rew_np, term_np, trunc_np = (np.zeros((length, n), dtype=np.float32) for _ in range(3))
        steps_np = np.zeros((length, n), dtype=np.int64)
        actions_buf: torch.Tensor | None = None
        extras: dict[str, torch.Tensor] = {}
        states: list[list[Any]] | None = [] if algo.needs_env_states else None
        rollout: Rollout | None = None
        finished: list[float] = []
        for t in range(length):
            obs_t = torch.as_tensor(self.obs, dtype=torch.float32, device=device)
            if states is not None:
                states.append([e.unwrapped.get_state() for e in self.envs.envs])
            with torch.no_grad():
                actions, step_extras = algo.act(obs_t, torch.as_tensor(self.timestep, device=device))
                env_actions = algo.env_action(actions)
            if actions_buf is None:
                actions_buf = torch.zeros(length, *actions.shape, dtype=actions.dtype, device=device)
                extras = {k: torch.zeros(length, *v.shape, dtype=v.dtype, device=device) for k, v in step_extras.items()}
                zeros = torch.zeros(length, n, device=device)
                rollout = Rollout(obs_buf, actions_buf, zeros, zeros, zeros, obs_buf, zeros.long(), extras, states)
            next_obs, real_next, rewards, terminated, truncated = step_envs(self.envs, env_actions.cpu().numpy())
            obs_buf[t] = obs_t
            actions_buf[t] = actions
            for k, v in step_extras.items():
                extras[k][t] = v
            rew_np[t], term_np[t], trunc_np[t], next_np[t], steps_np[t] = (rewards, terminated, truncated,
                                                                          real_next, self.timestep)
            self.running_return += rewards
            done = terminated | truncated
            for i in np.flatnonzero(done):
                finished.append(float(self.running_return[i]))
            self.running_return[done] = 0.0
            self.timestep = np.where(done, 0, self.timestep + 1)
            self.obs = next_obs
            algo.on_step(rollout, t)
        assert rollout is not None
        rollout.rewards, rollout.terminated, rollout.truncated = (torch.as_tensor(x, device=device)
                                                                  for x in (rew_np, term_np, trunc_np))
        rollout.next_observations = torch.as_tensor(next_np, device=device)
        rollout.timesteps = torch.as_tensor(steps_np, device=device)
        return rollout, finished

    def close(self) -> None:
        self.envs.close()


def train_onpolicy(algo: OnPolicyAlgorithm, env_id: str, steps: int, seed: int = 0, dataset: Dataset | None = None,
                   eval_every: int = 10_000, eval_episodes: int = 10, out_dir: str | Path | None = None,
                   resume: bool = False, ckpt_every: int | None = None, progress: bool | None = None,
                   ref_min_score: float | None = None, ref_max_score: float | None = None,
                   success_return: float | None = None, success_window: int = SUCCESS_WINDOW,
                   env_kwargs: dict[str, Any] | None = None, dataset_source: str | None = None,
                   fingerprint: str | None = None) -> RunResult:
    """Train `algo` on `env_id` for at least `steps` env samples and return the run record (see the module
    docstring). `dataset` (hybrid methods) goes to `algo.prepare`. Evaluation (the deterministic `policy()`,
    seeds seed + 100 + i) and checkpoints happen at the first iteration past each multiple of `eval_every`
    (`ckpt_every`, default `eval_every`) samples and at the end."""
    env_kwargs = dict(env_kwargs or {})
    out = Path(out_dir) if out_dir is not None else None
    ckpt_every = ckpt_every or eval_every or steps
    if success_return is None:
        probe = make_env(env_id, **env_kwargs)
        success_return = getattr(probe.unwrapped, "optimal_return", None)
        probe.close()
    source = dataset_source or (dataset.source if dataset is not None else f"env:{env_id}")
    result = RunResult(algo=algo.name, dataset=dataset.name if dataset is not None else env_id, dataset_source=source,
                       dataset_label=dataset.label if dataset is not None else "online (on-policy)",
                       behavior_score=dataset.summary()["normalized_return_mean"] if dataset is not None else None,
                       seed=seed, steps=steps, eval_every=eval_every, eval_episodes=eval_episodes,
                       config=_config_dict(algo.config), device=str(algo.device), fingerprint=fingerprint)

    seed_everything(seed)
    algo.configure_schedule(steps)
    algo.attach_env(lambda: make_env(env_id, **env_kwargs))
    if dataset is not None:
        algo.prepare(dataset.to(algo.device))
    collector = RolloutCollector(algo, env_id, seed, env_kwargs)
    generator = torch.Generator(device=algo.device).manual_seed(seed)  # sync_point's sampler RNG slot (unused)
    loop: dict[str, Any] = {"samples": 0, "iteration": 0, "returns": [], "success": [], "samples_to_success": None}
    elapsed = train_time = 0.0
    if resume and out is not None and (out / CHECKPOINT).exists():
        state = restore_checkpoint(out / CHECKPOINT, algo, generator, result)
        loop = state["onpolicy"]["loop"]
        collector.load(state["onpolicy"]["collector"])
        elapsed, train_time = state["elapsed"], state["train_time"]
    logger = _TensorBoard(out, purge_step=loop["samples"] + 1 if loop["samples"] else None)
    reporter = ProgressReporter(steps, loop["samples"], enabled=progress, label=f"{algo.name} {env_id}")
    t0 = time.perf_counter() - elapsed
    timing = [train_time]

    def extra_state() -> dict[str, Any]:
        return {"onpolicy": {"loop": loop, "collector": collector.state()}}

    with recording(result, out, t0, reporter, logger, lambda: timing[0]), contextlib.closing(collector):
        while loop["samples"] < steps:
            t_train = time.perf_counter()
            rollout, finished = collector.collect(algo.rollout_length)
            metrics = algo.update_rollout(rollout, loop["iteration"])
            prev = loop["samples"]
            loop["samples"] += rollout.rewards.numel() + algo.extra_samples()
            loop["iteration"] += 1
            loop["returns"] = (loop["returns"] + finished)[-100:]
            extra = {"iteration": float(loop["iteration"]), "updates": float(algo.n_updates())}
            if loop["returns"]:
                extra["episode_return"] = float(np.mean(loop["returns"][-10:]))
            if success_return is not None:
                _track_success(loop, finished, success_return, success_window)
                extra["success_rate"] = float(np.mean(loop["success"][-success_window:])) if loop["success"] else 0.0
                if loop["samples_to_success"] is not None:
                    extra["samples_to_success"] = float(loop["samples_to_success"])
            timing[0] += time.perf_counter() - t_train
            samples = loop["samples"]
            is_eval = bool(eval_every) and (samples // eval_every > prev // eval_every or samples >= steps)
            is_ckpt = samples // ckpt_every > prev // ckpt_every or samples >= steps
            if not sync_point(result, algo, metrics, samples, algo.n_updates(), timing[0], env_id, is_eval,
                              is_ckpt, eval_episodes, seed, ref_min_score, ref_max_score, logger, reporter, out,
                              generator, t0, extra, extra_state):
                break
    return result


def _track_success(loop: dict[str, Any], finished: list[float], success_return: float, window: int) -> None:
    if not finished:
        return
    loop["success"].append(float(np.mean([r >= success_return - 1e-9 for r in finished])))
    if loop["samples_to_success"] is None and np.mean(loop["success"][-window:]) > 0.5:
        loop["samples_to_success"] = loop["samples"]


def run_onpolicy_experiment(algo: str, source: str, seed: int, steps: int, eval_every: int, eval_episodes: int,
                            out_dir: str | Path, device: str = "cpu", overrides: dict[str, Any] | None = None,
                            resume: bool = False, progress: bool | None = None,
                            overwrite: bool = False) -> dict[str, Any]:
    """`run_experiment` for on-policy and hybrid algorithms. `source` is a dataset card or path (hybrid: the
    offline data, and its env) or a gymnasium env id (no offline data). Hyperparameters: the env's defaults
    (`env_defaults`) ← the preset for the dataset's family or the env's name ← `overrides`."""
    from offline_rl.algos import build_config, get, load_preset
    from offline_rl.data import load_dataset
    from offline_rl.envs import is_registered
    from offline_rl.training.run_folder import RESULT, RUN, fingerprint, locked, plan, read_record, run_fields
    from offline_rl.training.seeding import resolve_device
    from offline_rl.training.trainer import EVAL_SEED_OFFSET

    cls = get(algo)
    out = Path(out_dir)
    dev = resolve_device(device)
    data: Dataset | None = None
    from offline_rl.data.cards import get_card

    if get_card(source) is None and is_registered(source):
        env_id, family, name = source, env_family(source), source
    else:
        data = load_dataset(source, device=str(dev))
        if data.env_id is None:
            raise ConfigError(f"{source}: the dataset names no env, which {cls.name} needs to collect online data")
        env_id, family, name = data.env_id, data.family, data.name
    env_kwargs = dict(data.env_kwargs) if data is not None else {}
    probe = make_env(env_id, **env_kwargs)
    spec, defaults = env_spec(probe), cls.env_defaults(probe)
    probe.close()
    values = {**defaults, **load_preset(cls.name, name, family), **(overrides or {})}
    config = build_config(cls, values)
    seed_everything(seed)
    agent = cls(spec, config, dev).to(dev)
    ref_min = data.ref_min_score if data is not None else None
    ref_max = data.ref_max_score if data is not None else None
    fields = run_fields(agent.name, dataclasses.asdict(config), source, data.content_hash() if data is not None else "",
                        steps, eval_every, eval_episodes, seed + EVAL_SEED_OFFSET, seed)
    with locked(out):  # the run-folder contract of offline runs: one writer, the same run only, a true record
        action = plan(out, fields, resume, overwrite)
        if action == "done":
            return read_record(out / RESULT)
        atomic_write_json(out / RUN, {
            "algo": agent.name, "config": dataclasses.asdict(config), "spec": spec.to_dict(), "dataset_source": source,
            "env_id": env_id, "ref_min_score": ref_min, "ref_max_score": ref_max, "seed": seed, "steps": steps,
            "eval_every": eval_every, "eval_episodes": eval_episodes, "eval_seed": seed + EVAL_SEED_OFFSET,
            "loop": cls.loop, "fingerprint": fingerprint(fields), "fingerprint_fields": fields})
        result = train_onpolicy(agent, env_id, steps, seed=seed, dataset=data, eval_every=eval_every,
                                eval_episodes=eval_episodes, out_dir=out, resume=action == "resume", progress=progress,
                                ref_min_score=ref_min, ref_max_score=ref_max, env_kwargs=env_kwargs,
                                dataset_source=source, fingerprint=fingerprint(fields))
    return result.to_dict()


def env_family(env_id: str) -> str:
    """The preset table for an env-only run: the env's name without namespace or version, lower case
    (`CartPole-v1` → `cartpole`, `offline_rl/LQR-v0` → `lqr`)."""
    name = env_id.rsplit("/", 1)[-1].split("-v")[0]
    return name.lower()
