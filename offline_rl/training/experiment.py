"""One experiment from names: load the dataset, build the algorithm from its preset, train, write `result.json`.

`run.json` (written first) records what is needed to rebuild the policy later: the algorithm, its resolved config,
the spec and the dataset source. `load_run` rebuilds it from `run.json` and the last checkpoint.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from offline_rl.algos import Algorithm, build_config, get, make
from offline_rl.data.dataset import Spec
from offline_rl.errors import UserError
from offline_rl.training.checkpoint import load_checkpoint
from offline_rl.training.seeding import resolve_device, seed_everything
from offline_rl.training.trainer import CHECKPOINT, train
from offline_rl.utils.io import atomic_write_json, read_json

RUN = "run.json"


def run_experiment(algo: str, dataset: str, seed: int, steps: int, eval_every: int, eval_episodes: int,
                   out_dir: str | Path, device: str = "cpu", overrides: dict[str, Any] | None = None,
                   resume: bool = False, progress: bool | None = None, threads: int | None = 1,
                   obs_noise: float = 0.0) -> dict[str, Any]:
    """Train `algo` on `dataset` with `seed` and return the result record (also in `out_dir/result.json`).

    `obs_noise` > 0 adds N(0, obs_noise²) to the observations of every offline batch (policy smoothing).
    `threads` sets torch's intra-op CPU threads (None: leave torch's default). One thread is the default: the
    networks are small, and on a loaded machine OpenMP threads competing for cores can slow a step by 10x or more.
    """
    import torch

    from offline_rl.data import load_dataset

    if threads:
        torch.set_num_threads(threads)
    if get(algo).loop != "offline":  # on-policy and hybrid algorithms collect their own data (an env factory)
        from offline_rl.training.onpolicy import run_onpolicy_experiment

        if obs_noise:
            raise UserError("observation noise is an option for offline batches; on-policy runs collect their own data")
        return run_onpolicy_experiment(algo, dataset, seed, steps, eval_every, eval_episodes, out_dir, device,
                                       overrides, resume, progress)
    out = Path(out_dir)
    dev = resolve_device(device)
    data = load_dataset(dataset, device=str(dev))
    if obs_noise:
        from offline_rl.data.noise import with_observation_noise

        data = with_observation_noise(data, obs_noise)
    seed_everything(seed)
    agent = make(algo, data.spec, dict(overrides or {}), dev, dataset=data)
    atomic_write_json(out / RUN, {
        "algo": agent.name, "config": dataclasses.asdict(agent.config), "spec": data.spec.to_dict(),
        "dataset_source": dataset, "env_id": data.env_id, "ref_min_score": data.ref_min_score,
        "ref_max_score": data.ref_max_score, "seed": seed, "steps": steps, "obs_noise": obs_noise})
    result = train(agent, data, steps, seed=seed, eval_every=eval_every, eval_episodes=eval_episodes,
                   out_dir=out, resume=resume, progress=progress)
    return result.to_dict()


def load_run(run_dir: str | Path, device: str = "cpu") -> tuple[Algorithm, dict[str, Any]]:
    """The trained algorithm of a run folder (from its last checkpoint) and its `run.json` record."""
    run = Path(run_dir)
    if not (run / RUN).exists() or not (run / CHECKPOINT).exists():
        raise UserError(f"{run}: not a run folder (needs {RUN} and {CHECKPOINT})")
    info = read_json(run / RUN)
    cls = get(info["algo"])
    config = build_config(cls, info["config"], where=str(run / RUN))
    agent = cls(Spec.from_dict(info["spec"]), config, device).to(device)
    agent.configure_schedule(int(info.get("steps") or 1))
    agent.load_state_dict(load_checkpoint(run / CHECKPOINT, device)["algo"])
    return agent, info
