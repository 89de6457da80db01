"""AWM (offline, advantage-weighted flow matching on an IQL critic): equal weights give plain flow-matching BC, the
loss scales with the weights, and on a 1-D bimodal toy the weighting moves the policy's mass to the better mode."""

from __future__ import annotations

import copy
import math

import torch
from helpers import pendulum_dataset

from offline_rl import algos
from offline_rl.reproduce.diffusion import bandit_dataset, weighted_flow_share

SMALL = {"hidden": [32, 32], "flow_hidden": [32, 32]}


def test_beta_zero_is_plain_flow_matching_bc():
    """With β = 0 every weight exp(β·A) is 1: AWM's policy follows the same parameters as flow-matching BC written
    out here (same initial weights, batches and noise)."""
    data = pendulum_dataset(episodes=2)
    awm = algos.make("awm", data.spec, {**SMALL, "beta": 0.0}, seed=0)
    awm.configure_schedule(10)
    awm.prepare(data)
    net = copy.deepcopy(awm.actor.net)
    opt = torch.optim.Adam(net.parameters(), lr=3e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 10)
    batches = [data.sample(64, torch.Generator().manual_seed(k)) for k in range(10)]
    torch.manual_seed(5)
    for step, batch in enumerate(batches, 1):
        awm.update(batch, step)
    torch.manual_seed(5)
    for batch in batches:
        obs, a = awm.normalizer(batch.observations), batch.actions / 2.0
        t, eps = torch.rand(len(a)), torch.randn(a.shape)
        x_t = (1 - t[:, None]) * a + t[:, None] * eps
        loss = (net(x_t, t, obs) - (eps - a)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    for p, q in zip(awm.actor.net.parameters(), net.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6)


def test_the_loss_is_weighted_per_sample():
    data = pendulum_dataset(episodes=1)
    awm = algos.make("awm", data.spec, SMALL, seed=0)
    obs, actions = data.observations[:50], data.actions[:50]
    w = torch.rand(50)
    torch.manual_seed(1)
    weighted = awm.actor_loss(obs, actions, w)
    torch.manual_seed(1)
    plain = awm.actor_loss(obs, actions, torch.ones(50))
    torch.manual_seed(1)
    t, eps = torch.rand(50), torch.randn(50, 1)
    a = actions / 2.0
    per_sample = (awm.actor.velocity_normalized((1 - t[:, None]) * a + t[:, None] * eps, t, obs) - (eps - a)).pow(2).mean(-1)
    assert torch.allclose(weighted, (w * per_sample).mean()) and torch.allclose(plain, per_sample.mean())


def test_bimodal_toy_weighting_moves_mass_to_the_better_mode():
    """With the advantage fixed at A = 1 on the + mode and 0 on the − mode, the weighted flow should put
    e^β/(1 + e^β) of its mass on the + mode (the exp-weighted target π_B·e^{βA}/Z); β = 0 keeps the data's 1/2."""
    data = bandit_dataset()
    assert abs(weighted_flow_share(data, 0.0, 1000) - 0.5) < 0.06
    assert abs(weighted_flow_share(data, 1.5, 1000) - math.exp(1.5) / (1 + math.exp(1.5))) < 0.06  # 0.818
