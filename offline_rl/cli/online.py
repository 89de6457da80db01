"""`offline-rl train-online`: the online loop (`offline_rl.training.train_online`) from the command line, with the
hybrid options of Tan, Fan & Wei (offline data in the update batches, a fitted-Q warm start of the critic, the
rare-switching actor reset)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from offline_rl.errors import UserError


def train_online_command(
    env: Annotated[str, typer.Option(help="Gymnasium env id, e.g. Pendulum-v1 or offline_rl/RiverSwim-v0.")],
    algo: Annotated[str, typer.Option(help="An online algorithm (with explore()), e.g. sac.")] = "sac",
    steps: Annotated[int, typer.Option(help="Env steps.")] = 100_000,
    seed: Annotated[int, typer.Option(help="Seed for python, numpy, torch and the envs.")] = 0,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda[:N].")] = "auto",
    num_envs: Annotated[int, typer.Option(help="Sub-envs of the vector env.")] = 1,
    eval_every: Annotated[int, typer.Option(help="Evaluate every N env steps (0: only at the end).")] = 5000,
    eval_episodes: Annotated[int, typer.Option(help="Episodes per evaluation.")] = 10,
    out: Annotated[Path | None, typer.Option(help="Run folder (default: runs/online/<algo>/<env>/seed<S>).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the run folder's checkpoint.")] = False,
    offline_data: Annotated[str | None, typer.Option(help="Offline dataset (card, d4rl:, .hdf5, minari:) "
                                                     "collected on the same env.")] = None,
    offline_ratio: Annotated[float, typer.Option(help="Share of each update batch drawn from the offline data "
                                                 "(0.5: symmetric sampling).")] = 0.0,
    warmstart_critic: Annotated[int, typer.Option(help="Fitted-Q-iteration critic steps on the offline data "
                                                  "before online training.")] = 0,
    actor_reset: Annotated[int, typer.Option(help="Rare switching: reset the actor at N, 2N, 4N, ... env steps "
                                             "(0: never).")] = 0,
    threads: Annotated[int, typer.Option(help="torch CPU threads (0: torch's default).")] = 1,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Hyperparameter override key=value (repeat).")]
    = None,
) -> None:
    """Train an algorithm online on an env, optionally with offline data (hybrid RL); writes result.json."""
    import torch

    from offline_rl.algos import make, parse_overrides
    from offline_rl.data import load_dataset
    from offline_rl.data.dataset import Spec
    from offline_rl.envs import box_bounds, env_spaces, is_registered
    from offline_rl.training import resolve_device, train_online

    for name, value, zero_ok in (("steps", steps, False), ("num-envs", num_envs, False),
                                 ("eval-every", eval_every, True), ("eval-episodes", eval_episodes, False),
                                 ("warmstart-critic", warmstart_critic, True), ("actor-reset", actor_reset, True),
                                 ("threads", threads, True)):
        if value < 0 or (value == 0 and not zero_ok):
            raise UserError(f"--{name} must be {'≥ 0' if zero_ok else '> 0'}, got {value}")
    if not is_registered(env):
        raise UserError(f"--env: '{env}' is not a registered gymnasium env id")
    if threads:
        torch.set_num_threads(threads)
    obs_space, act_space = env_spaces(env)
    bounds = box_bounds(act_space)
    if bounds is None or len(obs_space.shape or ()) != 1:
        raise UserError(f"--env: {env} needs flat Box observations and a Box action space")
    spec = Spec(int(obs_space.shape[0]), len(bounds[0]), tuple(map(float, bounds[0])), tuple(map(float, bounds[1])))
    dev = resolve_device(device)
    offline = load_dataset(offline_data, device=str(dev)) if offline_data else None
    if offline is not None and offline.env_id not in (None, env):
        raise UserError(f"--offline-data '{offline_data}' was collected on {offline.env_id}, not on {env}")
    agent = make(algo, spec, parse_overrides(set_), dev, seed=seed)
    if not callable(getattr(agent, "explore", None)):
        raise UserError(f"--algo: '{agent.name}' is not an online algorithm (it has no explore())")
    out = out or Path("runs") / "online" / agent.name / env.replace("/", "_") / f"seed{seed}"
    result = train_online(agent, env, steps, seed=seed, num_envs=num_envs, eval_every=eval_every or steps,
                          eval_episodes=eval_episodes, out_dir=out, resume=resume, offline=offline,
                          offline_ratio=offline_ratio, warmstart_critic=warmstart_critic, actor_reset=actor_reset)
    last = "n/a" if result.final_return is None else f"{result.final_return:.3f}"
    typer.echo(f"{result.status}: last return {last}, {result.updates_per_s:.0f} updates/s -> {out / 'result.json'}")
    if result.status == "diverged":
        raise typer.Exit(1)
