"""Test helpers: a small real Pendulum-v1 dataset built by rolling out a noisy scripted policy, no data layer needed."""

from __future__ import annotations

import sys

import gymnasium as gym
import numpy as np
import torch

from offline_rl.data.dataset import Dataset, Spec


def pendulum_dataset(episodes: int = 10, seed: int = 0) -> Dataset:
    """Random-action Pendulum-v1 episodes (200 steps each, all time-limited, so no terminal flags)."""
    env = gym.make("Pendulum-v1")
    rng = np.random.default_rng(seed)
    obs_l, act_l, rew_l, next_l, ep_l, returns = [], [], [], [], [], []
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed + ep)
        total = 0.0
        for _ in range(200):
            a = rng.uniform(-2, 2, size=1).astype(np.float32)
            nxt, r, term, trunc, _ = env.step(a)
            obs_l.append(obs), act_l.append(a), rew_l.append(r), next_l.append(nxt), ep_l.append(ep)
            total += r
            obs = nxt
        returns.append(total)
    n = len(obs_l)
    return Dataset(
        observations=torch.tensor(np.array(obs_l), dtype=torch.float32),
        actions=torch.tensor(np.array(act_l), dtype=torch.float32),
        rewards=torch.tensor(np.array(rew_l), dtype=torch.float32),
        next_observations=torch.tensor(np.array(next_l), dtype=torch.float32),
        terminals=torch.zeros(n, dtype=torch.bool),
        timeouts=torch.zeros(n, dtype=torch.bool),
        episode_ids=torch.tensor(ep_l),
        env_id="Pendulum-v1",
        spec=Spec(3, 1, (-2.0,), (2.0,)),
        ref_min_score=-1200.0,
        ref_max_score=-150.0,
        source="test:pendulum-random",
        name="test-pendulum",
        episode_returns=np.array(returns),
    )


if __name__ == "__main__":  # used by the kill/resume test: train in a subprocess that can be SIGKILLed
    from offline_rl import algos
    from offline_rl.training import seed_everything, train

    out, steps = sys.argv[1], int(sys.argv[2])
    data = pendulum_dataset()
    seed_everything(3)
    algo = algos.make("td3_bc", data.spec, {"actor_hidden": [64, 64], "critic_hidden": [64, 64]})
    train(algo, data, steps, seed=3, eval_every=100, eval_episodes=2, out_dir=out, ckpt_every=50, log_every=50,
          resume=True, progress=False)


def reference_return_range(rewards, terminals, max_episode_steps: int) -> tuple[float, float]:
    """CORL `return_reward_range` / ODICE-Pytorch `util.return_range`, re-implemented row by row from their
    documented behaviour: accumulate rewards, close a chunk at a terminal or after `max_episode_steps` rows, drop
    the unfinished last chunk."""
    returns, ret, length = [], 0.0, 0
    for r, d in zip(list(map(float, rewards)), list(map(bool, terminals)), strict=True):
        ret += r
        length += 1
        if d or length == max_episode_steps:
            returns.append(ret)
            ret, length = 0.0, 0
    return min(returns), max(returns)


def install_plugin(tmp_path, module: str, source: str, entry: str, class_name: str) -> dict[str, str]:
    """A package outside offline_rl, registered through the `offline_rl.algos` entry-point group: writes
    `module.py` and its dist-info under `tmp_path/site`; returns the environment (PYTHONPATH) that finds it."""
    import os
    import textwrap
    from pathlib import Path

    site = Path(tmp_path) / "site"
    dist = site / f"{module}-0.1.dist-info"
    dist.mkdir(parents=True)
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module.replace('_', '-')}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[offline_rl.algos]\n{entry} = {module}:{class_name}\n")
    root = Path(__file__).resolve().parents[1]
    return {"PYTHONPATH": f"{site}{os.pathsep}{root}"}
