"""The hybrid options of the online loop on real SAC and RiverSwim: offline rows per batch, the fitted-Q warm
start, the rare-switching actor reset, and `offline-rl train-online`."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from offline_rl.algos import make
from offline_rl.algos.sac import SAC
from offline_rl.data import load_dataset
from offline_rl.data.dataset import Batch
from offline_rl.errors import ConfigError
from offline_rl.nets import TanhGaussianActor
from offline_rl.training import train_online
from offline_rl.training.online import _doubling_crossed

ENV = "offline_rl/RiverSwim-v0"
SMALL = {"hidden": [32, 32], "batch_size": 20, "start_steps": 30}


class RecordingSAC(SAC):
    """SAC that keeps the rewards of each update batch and counts actor resets (the updates are SAC's own)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.batch_rewards: list[torch.Tensor] = []
        self.resets = 0

    def update(self, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        self.batch_rewards.append(batch.rewards.clone())
        return super().update(batch, step)

    def reset_actor(self) -> None:
        self.resets += 1
        super().reset_actor()


def _sac(cls=SAC, **overrides):
    data = load_dataset("riverswim-medium")
    algo = make("sac", data.spec, {**SMALL, **overrides}, seed=0)
    return cls(data.spec, algo.config), data


def test_offline_ratio_puts_that_share_of_offline_rows_in_each_batch():
    algo, data = _sac(RecordingSAC)
    marked = replace(data, rewards=torch.full_like(data.rewards, 7.0), _dones_f=None)  # RiverSwim pays ≤ 1
    train_online(algo, ENV, steps=60, seed=0, eval_every=0, eval_episodes=1, offline=marked, offline_ratio=0.25)
    assert len(algo.batch_rewards) == 30  # one update per env step after the 30 warm-up steps
    for rewards in algo.batch_rewards:
        assert int((rewards == 7.0).sum()) == 5 and rewards.shape == (20,)  # round(0.25 · 20) rows first
        assert (rewards[:5] == 7.0).all()


def test_fitted_q_step_regresses_on_the_max_over_uniform_actions():
    algo, data = _sac()
    batch = data.sample(20, torch.Generator().manual_seed(0))
    actor_before = [p.clone() for p in algo.actor.parameters()]
    torch.manual_seed(3)
    low, high = torch.tensor(data.spec.action_low), torch.tensor(data.spec.action_high)
    candidates = low + (high - low) * torch.rand(20 * 10, 1)
    with torch.no_grad():
        target_q = algo.critic_target(batch.next_observations.repeat_interleave(10, 0), candidates)
        best = target_q.min(0).values.view(20, 10).max(1).values
        y = batch.rewards + 0.99 * (1 - batch.dones) * best
        expected = 0.5 * ((algo.critic(batch.observations, batch.actions) - y) ** 2).mean(1).sum()
    torch.manual_seed(3)
    metrics = algo.fitted_q_step(batch)
    assert torch.allclose(metrics["fqi_loss"], expected, rtol=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(actor_before, algo.actor.parameters()))


def test_warm_start_runs_its_critic_steps_before_any_update():
    algo, data = _sac(start_steps=1000)
    train_online(algo, ENV, steps=40, seed=0, eval_every=0, eval_episodes=1, offline=data, warmstart_critic=25)
    critic_steps = [int(s["step"]) for s in algo.optimizers["critic"].state.values()]
    assert critic_steps and set(critic_steps) == {25}  # 25 fitted-Q steps, no SAC update (still in warm-up)
    assert not algo.optimizers["actor"].state


def test_reset_actor_is_a_fresh_initialisation_and_clears_adam():
    algo, data = _sac()
    for _ in range(3):
        algo.update(data.sample(20, torch.Generator().manual_seed(1)), 1)
    torch.manual_seed(11)
    algo.reset_actor()
    torch.manual_seed(11)
    fresh = TanhGaussianActor(data.spec.obs_dim, 1, data.spec.action_low, data.spec.action_high, (32, 32))
    assert all(torch.equal(a, b) for a, b in zip(algo.actor.parameters(), fresh.parameters()))
    for state in algo.optimizers["actor"].state.values():
        assert all(float(v.abs().sum()) == 0.0 for v in state.values() if torch.is_tensor(v))


def test_actor_resets_when_the_online_data_doubles():
    assert [s for s in range(1, 100) if _doubling_crossed(s - 1, s, 10)] == [10, 20, 40, 80]
    assert _doubling_crossed(15, 41, 10) and not _doubling_crossed(41, 79, 10)
    algo, _ = _sac(RecordingSAC)
    train_online(algo, ENV, steps=90, seed=0, eval_every=0, eval_episodes=1, actor_reset=20)
    assert algo.resets == 3  # at 20, 40 and 80 env steps


def test_hybrid_options_are_checked():
    algo, data = _sac()
    with pytest.raises(ConfigError, match="need offline data"):
        train_online(algo, ENV, steps=5, offline_ratio=0.5)
    with pytest.raises(ConfigError, match=r"in \[0, 1\]"):
        train_online(algo, ENV, steps=5, offline=data, offline_ratio=1.5)
    with pytest.raises(ConfigError, match="obs/action sizes"):
        from helpers import pendulum_dataset

        train_online(algo, ENV, steps=5, offline=pendulum_dataset(episodes=1), offline_ratio=0.5)


def test_train_online_cli(tmp_path):
    from test_cli import assert_user_error, cli

    out = tmp_path / "run"
    proc = cli("train-online", "--env", ENV, "--steps", "40", "--offline-data", "riverswim-medium",
               "--offline-ratio", "0.5", "--warmstart-critic", "5", "--actor-reset", "20", "--eval-every", "0",
               "--eval-episodes", "2", "--out", str(out), *sum((["--set", f"{k}={v}"] for k, v in SMALL.items()), []))
    assert proc.returncode == 0, proc.stderr
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "completed" and result["step"] == 40
    assert result["config"]["hybrid"] == {"offline_data": "riverswim-medium", "offline_ratio": 0.5,
                                          "warmstart_critic": 5, "actor_reset": 20}
    assert_user_error(cli("train-online", "--env", "Pendulum-v1", "--steps", "5", "--offline-data",
                          "riverswim-medium"), "collected on offline_rl/RiverSwim-v0")
