"""Algorithms: registry and configs, and faithfulness of TD3+BC and IQL updates against textbook re-implementations
written here from the papers' equations with plain `nn.Linear` critics."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from offline_rl import algos
from offline_rl.algos.core import expectile_loss, soft_update, td3bc_lambda
from offline_rl.data.dataset import Dataset, Spec
from offline_rl.errors import ConfigError
from offline_rl.nets import EnsembleLinear, TwinQ

OBS, ACT = 5, 2


def random_dataset(n: int = 512, seed: int = 0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    return Dataset(
        observations=torch.randn(n, OBS, generator=g) * 3 + 1,
        actions=torch.rand(n, ACT, generator=g) * 2 - 1,
        rewards=torch.randn(n, generator=g),
        next_observations=torch.randn(n, OBS, generator=g) * 3 + 1,
        terminals=torch.rand(n, generator=g) < 0.1,
        timeouts=torch.zeros(n, dtype=torch.bool),
        episode_ids=torch.zeros(n, dtype=torch.long),
        env_id=None,
        spec=Spec(OBS, ACT, (-1.0,) * ACT, (1.0,) * ACT),
        episode_returns=np.array([-50.0, 10.0, 150.0]),
    )


def split_twin(twin: TwinQ, i: int) -> nn.Sequential:
    """Member i of a batched critic as a plain nn.Sequential of nn.Linear layers (same weights)."""
    layers = []
    for layer in twin.qs.net:
        if isinstance(layer, EnsembleLinear):
            lin = nn.Linear(layer.weight.shape[1], layer.weight.shape[2])
            lin.weight.data.copy_(layer.weight.data[i].T)
            lin.bias.data.copy_(layer.bias.data[i, 0])
            layers.append(lin)
        else:
            layers.append(copy.deepcopy(layer))
    return nn.Sequential(*layers)


def test_registry_lists_builtins_and_rejects_unknown():
    assert {"bc", "td3_bc", "iql"} <= set(algos.available())
    with pytest.raises(ConfigError, match="unknown algorithm 'nope'"):
        algos.get("nope")


def test_config_overrides_are_typed_and_checked():
    cls = algos.get("td3_bc")
    cfg = algos.build_config(cls, algos.parse_overrides(["alpha=5", "actor_hidden=[64,64]", "normalize_states=false"]))
    assert cfg.alpha == 5.0 and isinstance(cfg.alpha, float)
    assert cfg.actor_hidden == (64, 64) and cfg.normalize_states is False
    with pytest.raises(ConfigError, match="'alhpa' is not a hyperparameter of td3_bc"):
        algos.build_config(cls, {"alhpa": 1})
    with pytest.raises(ConfigError, match="expects int"):
        algos.build_config(cls, {"policy_freq": "two"})
    with pytest.raises(ConfigError, match="key=value"):
        algos.parse_overrides(["alpha"])


def iql_config(dataset: str, family: str):
    return algos.build_config(algos.get("iql"), algos.load_preset("iql", dataset, family))


@pytest.mark.parametrize("name", ["hopper-medium-v2", "hopper-medium", "hopper-medium@20000"])
def test_iql_presets_are_corls_per_dataset_configs(name):
    """CORL configs/offline/iql/hopper/medium_v2.yaml: normalize_reward, iql_deterministic, tau 0.001; the D4RL
    name, the card and a card at another size all get it."""
    c = iql_config(name, "hopper")
    assert (c.normalize_reward, c.deterministic_actor, c.tau, c.expectile, c.beta) == (True, True, 0.001, 0.7, 3.0)


def test_iql_presets_elsewhere():
    defaults = algos.get("iql").Config()
    assert (defaults.normalize_reward, defaults.deterministic_actor, defaults.reward_shift) == (False, False, 0.0)
    for name, family in (("halfcheetah-medium-v2", "halfcheetah"), ("walker2d-medium-replay-v2", "walker2d"),
                         ("hopper-random-v2", "hopper")):
        assert iql_config(name, family) == defaults, name
    quick = iql_config("pendulum-medium", "pendulum")  # a quick family: our labelled choices, not CORL's
    assert (quick.hidden, quick.normalize_reward, quick.max_episode_steps) == ((64, 64), True, 200)
    mr = iql_config("hopper-medium-replay-v2", "hopper")
    assert (mr.normalize_reward, mr.deterministic_actor, mr.tau) == (True, True, 0.001)
    me = iql_config("hopper-medium-expert-v2", "hopper")
    assert (me.beta, me.expectile, me.normalize_reward) == (6.0, 0.5, False)
    ant = iql_config("antmaze-umaze-v2", "antmaze")
    assert (ant.expectile, ant.beta, ant.reward_shift, ant.normalize_reward) == (0.9, 10.0, -1.0, False)
    pen = iql_config("pen-human-v1", "pen")
    assert (pen.actor_dropout, pen.expectile, pen.normalize_reward) == (0.1, 0.8, False)
    assert algos.load_protocol("iql", "antmaze-umaze-v2", "antmaze") == {"eval_episodes": 100}
    assert algos.load_protocol("iql", "maze2d-large-v1", "maze2d-large") == {"eval_episodes": 100}
    assert algos.load_protocol("iql", "hopper-medium-v2", "hopper") == {}
    assert "eval_episodes" not in algos.load_preset("iql", "antmaze-umaze-v2", "antmaze")


def test_td3_bc_and_odice_reward_presets():
    td3 = algos.build_config(algos.get("td3_bc"), algos.load_preset("td3_bc", "antmaze-medium-play-v2", "antmaze"))
    assert (td3.reward_scale, td3.reward_shift) == (1.0, -1.0)
    assert algos.load_protocol("td3_bc", "antmaze-medium-play-v2", "antmaze") == {"eval_episodes": 100}
    assert algos.load_preset("td3_bc", "hopper-medium-v2", "hopper") == {}
    odice = algos.get("odice")
    assert odice.Config().reward_norm == "none"
    for family in ("hopper", "halfcheetah", "walker2d"):
        assert algos.load_preset("odice", f"{family}-medium-v2", family)["reward_norm"] == "return_range"
    for name, family in (("pen-human-v1", "pen"), ("kitchen-mixed-v0", "kitchen"), ("maze2d-umaze-v1", "maze2d-umaze")):
        assert "reward_norm" not in algos.load_preset("odice", name, family)
    ant = algos.load_preset("odice", "antmaze-large-play-v2", "antmaze")
    assert (ant["reward_norm"], ant["layer_norm"], ant["use_twin_v"]) == ("antmaze", False, False)
    assert algos.load_preset("odice", "antmaze-umaze-v2", "antmaze").get("use_twin_v", True) is True
    assert algos.load_protocol("odice", "antmaze-umaze-v2", "antmaze") == {"eval_episodes": 50, "eval_every": 20000}


def test_td3_bc_matches_reference_equations():
    """Three updates (critic, critic+actor, critic) of our batched TD3+BC equal the paper's equations run on
    separate nn.Linear critics with the same initial weights and the same target-noise draws."""
    data = random_dataset()
    torch.manual_seed(0)
    algo = algos.make("td3_bc", data.spec, {})
    algo.prepare(data)
    cfg = algo.config
    actor, q1, q2 = copy.deepcopy(algo.actor), split_twin(algo.critic, 0), split_twin(algo.critic, 1)
    actor_t, q1_t, q2_t = copy.deepcopy(actor), copy.deepcopy(q1), copy.deepcopy(q2)
    opt_a = torch.optim.Adam(actor.parameters(), lr=cfg.actor_lr)
    opt_c = torch.optim.Adam([*q1.parameters(), *q2.parameters()], lr=cfg.critic_lr)
    mean, std = data.observations.mean(0), data.observations.std(0, unbiased=False) + 1e-3

    batches = [data.sample(64, torch.Generator().manual_seed(k)) for k in range(3)]
    for step, batch in enumerate(batches, start=1):
        torch.manual_seed(100 + step)
        algo.update(batch, step)

        torch.manual_seed(100 + step)
        s, s2 = (batch.observations - mean) / std, (batch.next_observations - mean) / std
        a, r, d = batch.actions, batch.rewards, batch.dones
        with torch.no_grad():
            noise = (torch.randn_like(a) * 0.2).clamp(-0.5, 0.5)
            a2 = (actor_t(s2) + noise).clamp(-1, 1)
            sa2 = torch.cat([s2, a2], 1)
            y = r + 0.99 * (1 - d) * torch.min(q1_t(sa2), q2_t(sa2)).squeeze(-1)
        sa = torch.cat([s, a], 1)
        loss_c = F.mse_loss(q1(sa).squeeze(-1), y) + F.mse_loss(q2(sa).squeeze(-1), y)
        opt_c.zero_grad()
        loss_c.backward()
        opt_c.step()
        if step % 2 == 0:
            pi = actor(s)
            q = q1(torch.cat([s, pi], 1))
            lmbda = 2.5 / q.abs().mean().detach()
            loss_a = -lmbda * q.mean() + F.mse_loss(pi, a)
            opt_a.zero_grad()
            loss_a.backward()
            opt_a.step()
            for t, src in ((q1_t, q1), (q2_t, q2), (actor_t, actor)):
                for pt, p in zip(t.parameters(), src.parameters()):
                    pt.data.mul_(0.995).add_(0.005 * p.data)

    for ours, ref in ((algo.actor, actor), (split_twin(algo.critic, 0), q1), (split_twin(algo.critic, 1), q2),
                      (split_twin(algo.critic_target, 1), q2_t), (algo.actor_target, actor_t)):
        for p, p_ref in zip(ours.parameters(), ref.parameters()):
            torch.testing.assert_close(p, p_ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("deterministic", [False, True])
def test_iql_matches_reference_equations(deterministic):
    """Two IQL updates equal CORL's order (V from target Q, Q through V(s′) taken before the V step, AWR actor),
    with modify_reward's scale T/(max − min) over chunks of T rows (T = 20 here) and CORL's two actor heads."""
    from helpers import reference_return_range

    data = random_dataset()
    torch.manual_seed(0)
    algo = algos.make("iql", data.spec, {"normalize_reward": True, "max_episode_steps": 20,
                                         "deterministic_actor": deterministic})
    algo.configure_schedule(10)
    algo.prepare(data)
    c = algo.config
    low, high = reference_return_range(data.rewards, data.terminals, 20)
    scale = 20.0 / (high - low)
    assert float(algo.reward_multiplier) == pytest.approx(scale, rel=1e-6)
    q1, q2 = split_twin(algo.qf, 0), split_twin(algo.qf, 1)
    q1_t, q2_t = copy.deepcopy(q1), copy.deepcopy(q2)
    vf, actor = copy.deepcopy(algo.vf), copy.deepcopy(algo.actor)
    opt_v = torch.optim.Adam(vf.parameters(), lr=c.vf_lr)
    opt_q = torch.optim.Adam([*q1.parameters(), *q2.parameters()], lr=c.qf_lr)
    opt_a = torch.optim.Adam(actor.parameters(), lr=c.actor_lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt_a, 10)
    mean, std = data.observations.mean(0), data.observations.std(0, unbiased=False) + 1e-3

    for step in (1, 2):
        batch = data.sample(64, torch.Generator().manual_seed(step))
        algo.update(batch, step)
        s, s2 = (batch.observations - mean) / std, (batch.next_observations - mean) / std
        a, r, d = batch.actions, batch.rewards * scale, batch.dones
        sa = torch.cat([s, a], 1)
        with torch.no_grad():
            next_v = vf(s2).squeeze(-1)
            tq = torch.min(q1_t(sa), q2_t(sa)).squeeze(-1)
        adv = tq - vf(s).squeeze(-1)
        w = torch.abs(0.7 - (adv < 0).float())
        loss_v = (w * adv**2).mean()
        opt_v.zero_grad()
        loss_v.backward()
        opt_v.step()
        target = r + 0.99 * (1 - d) * next_v
        loss_q = (F.mse_loss(q1(sa).squeeze(-1), target) + F.mse_loss(q2(sa).squeeze(-1), target)) / 2
        opt_q.zero_grad()
        loss_q.backward()
        opt_q.step()
        for t, src in ((q1_t, q1), (q2_t, q2)):
            for pt, p in zip(t.parameters(), src.parameters()):
                pt.data.mul_(0.995).add_(0.005 * p.data)
        exp_adv = torch.exp(3.0 * adv.detach()).clamp(max=100.0)
        if deterministic:  # CORL DeterministicPolicy: tanh MLP, bc loss Σ (π(s) − a)²
            bc = torch.sum((actor.net(s) - a) ** 2, dim=1)
        else:
            bc = -torch.distributions.Normal(actor.net(s), actor.log_std.clamp(-20, 2).exp()).log_prob(a).sum(-1)
        loss_a = torch.mean(exp_adv * bc)
        opt_a.zero_grad()
        loss_a.backward()
        opt_a.step()
        sched.step()

    for ours, ref in ((algo.vf, vf), (algo.actor, actor), (split_twin(algo.qf, 0), q1),
                      (split_twin(algo.qf_target, 1), q2_t)):
        for p, p_ref in zip(ours.parameters(), ref.parameters()):
            torch.testing.assert_close(p, p_ref, rtol=1e-5, atol=1e-6)
    assert algo.optimizers["actor"].param_groups[0]["lr"] == pytest.approx(opt_a.param_groups[0]["lr"])


def test_shared_pieces():
    diff = torch.tensor([-2.0, 1.0])
    assert expectile_loss(diff, 0.7).item() == pytest.approx((0.3 * 4 + 0.7 * 1) / 2)
    q = torch.tensor([-2.0, 4.0], requires_grad=True)
    lmbda = td3bc_lambda(q, 2.5)
    assert lmbda.item() == pytest.approx(2.5 / 3.0) and not lmbda.requires_grad
    a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    expected = [0.9 * pa + 0.1 * pb for pa, pb in zip(a.parameters(), b.parameters())]
    soft_update(a, b, 0.1)
    for p, e in zip(a.parameters(), expected):
        torch.testing.assert_close(p, e)


def test_twin_q1_equals_first_member():
    twin = TwinQ(OBS, ACT, (32, 32))
    s, a = torch.randn(7, OBS), torch.randn(7, ACT)
    torch.testing.assert_close(twin.q1(s, a), twin(s, a)[0])


@pytest.mark.parametrize("layer_norm", [False, True])
def test_frozen_critic_passes_gradient_to_the_action_only(layer_norm):
    """`frozen=True` (actor losses) gives the same values and action gradients and leaves the critic's weight
    gradients uncomputed; the actor losses of TD3+BC and SAC use it, so their backward leaves the critic alone."""
    twin = TwinQ(OBS, ACT, (32, 32), layer_norm=layer_norm)
    with torch.no_grad():  # non-trivial LayerNorm affine parameters
        for p in twin.parameters():
            p.add_(0.1 * torch.randn_like(p))
    s = torch.randn(7, OBS)
    for call in (lambda a, f: twin(s, a, frozen=f).min(0).values, lambda a, f: twin.q1(s, a, frozen=f)):
        grads, values = [], []
        for frozen in (False, True):
            twin.zero_grad(set_to_none=True)
            a = torch.randn(7, ACT, generator=torch.Generator().manual_seed(0)).requires_grad_()
            q = call(a, frozen)
            q.sum().backward()
            values.append(q.detach())
            grads.append(a.grad)
            assert all((p.grad is None) == frozen for p in twin.parameters())
        torch.testing.assert_close(values[1], values[0], rtol=0, atol=0)
        torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=0)
    data = random_dataset()
    batch = data.sample(16, torch.Generator().manual_seed(0))
    td3_bc = algos.make("td3_bc", data.spec, {"actor_hidden": (32, 32), "critic_hidden": (32, 32)})
    sac = algos.make("sac", data.spec, {"hidden": (32, 32)})
    for algo, actor_loss in ((td3_bc, lambda: td3_bc.actor_phase({"batch": batch}).loss),
                             (sac, lambda: sac.actor_loss(batch.observations, torch.tensor(0.2))[0])):
        actor_loss().backward()
        assert all(p.grad is not None for p in algo.actor.parameters()), algo.name
        assert all(p.grad is None for p in algo.critic.parameters()), algo.name


@pytest.mark.parametrize("name", ["bc", "td3_bc", "iql"])
def test_state_dict_round_trip_includes_optimisers(name):
    data = random_dataset()
    algo = algos.make(name, data.spec, {}, seed=1)
    algo.configure_schedule(100)
    algo.prepare(data)
    for step in range(1, 4):
        algo.update(data.sample(32), step)
    state = copy.deepcopy(algo.state_dict())
    clone = algos.make(name, data.spec, {}, seed=2)
    clone.configure_schedule(100)
    clone.load_state_dict(state)
    obs = torch.randn(4, OBS)
    torch.testing.assert_close(clone.policy()(obs), algo.policy()(obs))
    assert clone.optimizers["actor"].state_dict()["state"].keys() == algo.optimizers["actor"].state_dict()[
        "state"].keys()
