"""One experiment from names: load the dataset, build the algorithm from its preset, train, write `result.json`.

`resolve_run` does everything up to training (names, dataset, preset, overrides, device, evaluation protocol)
and is what the benchmark runner calls to check a whole suite before any run starts. `run.json` (written by
`train`) records what is needed to rebuild the policy later; `load_run` rebuilds it from `run.json` and the last
checkpoint.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from offline_rl.algos import Algorithm, build_config, get, load_preset, load_protocol, make
from offline_rl.data.dataset import Dataset, Spec
from offline_rl.errors import UserError
from offline_rl.training.checkpoint import load_checkpoint
from offline_rl.training.run_folder import CHECKPOINT, RUN, fingerprint, read_record, run_fields
from offline_rl.training.seeding import resolve_device, seed_everything
from offline_rl.training.trainer import EVAL_SEED_OFFSET, check_budget, train

DEFAULT_EVAL_EVERY = 5000
DEFAULT_EVAL_EPISODES = 10


@dataclass
class ResolvedRun:
    """A run with every name resolved and every default filled in: ready to train, or to compare with a folder."""

    algo: str
    config: Any
    dataset: Dataset
    seed: int
    steps: int
    eval_every: int
    eval_episodes: int
    device: str

    def fields(self) -> dict[str, Any]:
        """What makes this run this run (`offline_rl.training.run_folder.run_fields`)."""
        return run_fields(self.algo, dataclasses.asdict(self.config), self.dataset.source,
                          self.dataset.content_hash(), self.steps, self.eval_every, self.eval_episodes, self.seed + EVAL_SEED_OFFSET, self.seed)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.fields())


def resolve_run(algo: str, dataset: str | Dataset, seed: int, steps: int, eval_every: int | None = None,
                eval_episodes: int | None = None, device: str = "cpu",
                overrides: dict[str, Any] | None = None) -> ResolvedRun:
    """Resolve a run without training it. Raises UserError (ConfigError, DatasetError) for anything wrong:
    an unknown algorithm or dataset, a bad override key or type, a device this machine lacks, a bad budget.

    `eval_every` / `eval_episodes` of None take the preset's protocol for this dataset (e.g. 100 episodes on
    AntMaze), else 5000 updates and 10 episodes; `eval_every` 0 means only at the end.
    """
    from offline_rl.data import load_dataset

    cls = get(algo)
    dev = resolve_device(device)
    data = load_dataset(dataset, device="cpu") if isinstance(dataset, str) else dataset
    values = load_preset(cls.name, data.name, data.family)
    values.update(overrides or {})
    config = build_config(cls, values)
    protocol = load_protocol(cls.name, data.name, data.family)
    eval_every = protocol.get("eval_every", DEFAULT_EVAL_EVERY) if eval_every is None else eval_every
    eval_episodes = protocol.get("eval_episodes", DEFAULT_EVAL_EPISODES) if eval_episodes is None else eval_episodes
    check_budget(steps, seed, eval_every, eval_episodes)
    return ResolvedRun(cls.name, config, data, seed, steps, eval_every or steps, eval_episodes, str(dev))


def run_experiment(algo: str, dataset: str, seed: int, steps: int, eval_every: int | None, eval_episodes: int | None,
                   out_dir: str | Path, device: str = "cpu", overrides: dict[str, Any] | None = None,
                   resume: bool = False, progress: bool | None = None, threads: int | None = 1,
                   overwrite: bool = False, seeds: list[int] | None = None,
                   obs_noise: float = 0.0) -> dict[str, Any] | list[dict[str, Any]]:
    """Train `algo` on `dataset` with `seed` and return the result record (also in `out_dir/result.json`).

    With `seeds`, train them all at once in this process (`offline_rl.training.seeds`) into `out_dir/seed<S>/`
    and return their records (`seed` is then ignored). `obs_noise` > 0 adds N(0, obs_noise²) to the observations
    of every offline batch (policy smoothing). On-policy and hybrid algorithms (`Algorithm.loop`) go to their own
    loop (`offline_rl.training.onpolicy`).

    `threads` sets torch's intra-op CPU threads (None: leave torch's default). One thread is the default: the
    networks are small, and on a loaded machine OpenMP threads competing for cores can slow a step by 10x or more.
    """
    import torch

    if threads:
        torch.set_num_threads(threads)
    if get(algo).loop == "simulator":
        raise UserError(f"{get(algo).name} trains through its own simulator, not on a dataset; see "
                        f"offline_rl.algos.{get(algo).name} (or `offline-rl reproduce {get(algo).name}`)")
    if get(algo).loop != "offline":  # on-policy and hybrid algorithms collect their own data (an env factory)
        from offline_rl.training.onpolicy import run_onpolicy_experiment

        if obs_noise or seeds is not None:
            raise UserError("--obs-noise and --seeds are options of offline training; on-policy runs collect their "
                            "own data, one seed at a time")
        every = (DEFAULT_EVAL_EVERY if eval_every is None else eval_every) or steps
        episodes = DEFAULT_EVAL_EPISODES if eval_episodes is None else eval_episodes
        return run_onpolicy_experiment(algo, dataset, seed, steps, every, episodes, out_dir, device, overrides,
                                       resume, progress, overwrite)
    run = resolve_run(algo, dataset, (seeds or [seed])[0], steps, eval_every, eval_episodes, device, overrides)
    data = run.dataset.to(run.device)
    if obs_noise:
        from offline_rl.data.noise import with_observation_noise

        data = with_observation_noise(data, obs_noise)
    if seeds is not None:
        from offline_rl.training.seeds import train_seeds

        cls = get(run.algo)
        results = train_seeds(lambda: cls(data.spec, run.config, run.device).to(run.device), data, steps, list(seeds),
                              run.eval_every, run.eval_episodes, out_dir, resume, overwrite, progress=progress)
        return [r.to_dict() for r in results]
    seed_everything(seed)
    agent = make(run.algo, data.spec, run.config, run.device)
    result = train(agent, data, steps, seed=seed, eval_every=run.eval_every, eval_episodes=run.eval_episodes,
                   out_dir=out_dir, resume=resume, progress=progress, overwrite=overwrite)
    return result.to_dict()


def load_run(run_dir: str | Path, device: str = "cpu") -> tuple[Algorithm, dict[str, Any]]:
    """The trained algorithm of a run folder (from its last checkpoint) and its `run.json` record."""
    run = Path(run_dir)
    if not (run / RUN).exists() or not (run / CHECKPOINT).exists():
        raise UserError(f"{run}: not a run folder (needs {RUN} and {CHECKPOINT})")
    info = read_record(run / RUN)
    try:
        cls = get(info["algo"])
        config = build_config(cls, info["config"], where=str(run / RUN))
        spec = Spec.from_dict(info["spec"])
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{run / RUN}: not a run record of offline-rl (missing or bad {e})") from e
    agent = cls(spec, config, device).to(device)
    agent.configure_schedule(int(info.get("steps") or 1))
    state = load_checkpoint(run / CHECKPOINT, device)
    try:
        agent.load_state_dict(state["algo"])
    except (KeyError, RuntimeError) as e:
        raise UserError(f"{run / CHECKPOINT}: does not match {run / RUN} ({type(e).__name__}: "
                        f"{str(e).splitlines()[0]})") from e
    return agent, info
