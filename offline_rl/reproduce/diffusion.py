"""`reproduce gpc` and `reproduce awm`: the diffusion family's minimal benchmarks, computed live against closed forms.

- gpc (other-methods spec §8.3): two flow (and diffusion) fields of a 2-D Gaussian N(m, s²I), each biased by a
  mean shift δ_i. Their w-composition is exactly the field of N(m + w·δ₁ + (1 − w)·δ₂, s²I), so the expected NLL
  under the true density is NLL* + ½‖w·δ₁ + (1 − w)·δ₂‖²/s²: the best convex weight beats both parents (Prop. 1).
  The full version also composes two flows trained on the two biased data sets.
- awm (§9.3, offline form): a flow policy trained by advantage-weighted flow matching on a 1-D bimodal data set
  (modes ±0.5, equal shares). With A = 1 on the + mode and 0 on the − mode the weighted target is π_B·e^{βA}/Z,
  whose + share is e^β/(1 + e^β). The full version learns the advantage with AWM's IQL critic (one-step bandit,
  reward 1 on the + mode, expectile τ: V → τ, A = 1 − τ or −τ, so the + share is 1/(1 + e^{−β})).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from offline_rl.data.dataset import Dataset, Spec
from offline_rl.reproduce import Row, register_entry, row


def gaussian_denoiser(mean: float | torch.Tensor, std: float):
    """The optimal denoiser of N(mean, std²I): D(x; σ) = (std²·x + σ²·mean)/(std² + σ²)."""
    return lambda x, sigma, *cond: (std ** 2 * x + sigma ** 2 * mean) / (std ** 2 + sigma ** 2)


def gaussian_velocity(mean: torch.Tensor, std: float):
    """The flow-matching velocity E[ε − x₀ | x_t = x] of x₀ ~ N(mean, std²I), x_t = (1 − t)x₀ + tε."""

    def velocity(x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        t = t.unsqueeze(-1)
        var = (1 - t) ** 2 * std ** 2 + t ** 2
        return (t - (1 - t) * std ** 2) / var * (x - (1 - t) * mean) - mean

    return velocity


class GaussianField:
    """A policy-like object exposing both fields of N(mean, std²I) (what `compose_policies` combines)."""

    def __init__(self, mean: torch.Tensor, std: float) -> None:
        self.velocity = gaussian_velocity(mean, std)
        self.denoise = gaussian_denoiser(mean, std)


def gaussian_nll(x: torch.Tensor, mean: torch.Tensor, std: float) -> float:
    """Mean −log N(x; mean, std²I)."""
    d = x.shape[-1]
    return float((0.5 * ((x - mean) / std).pow(2).sum(-1) + d * math.log(std) + 0.5 * d * math.log(2 * math.pi)).mean())


@register_entry("gpc", "GPC: composed biased fields of a 2-D Gaussian vs the closed-form NLL and best weight")
def gpc(quick: bool) -> list[Row]:
    from offline_rl.generative import compose_policies, edm_sample, flow_sample, weight_grid

    m, s = torch.tensor([0.5, -0.5]), 0.5
    d1, d2 = torch.tensor([0.6, 0.0]), torch.tensor([0.0, 0.6])
    parents = [GaussianField(m + d1, s), GaussianField(m + d2, s)]
    n = 50_000
    noise = torch.randn(n, 2, generator=torch.Generator().manual_seed(0))
    nll_star = 1.0 + 2 * math.log(s) + math.log(2 * math.pi)
    rows, nll = [], {}
    for w1, w2 in weight_grid(2, 0.1):
        x = flow_sample(compose_policies(parents, [w1, w2]).velocity, noise, steps=100)
        bias = w1 * d1 + w2 * d2
        nll[w1] = gaussian_nll(x, m, s)
        rows.append(row(f"analytic flow w={w1:.1f}", "NLL under the true density", nll[w1],
                        nll_star + 0.5 * float(bias.pow(2).sum()) / s ** 2, 0.05))
    best = min(nll, key=nll.get)
    rows.append(row("analytic flow, grid 0..1", "best weight w1", best, 0.5, 1e-9))
    rows.append(row("analytic flow, grid 0..1", "NLL gain of best over best parent",
                    min(nll[0.0], nll[1.0]) - nll[best],
                    0.5 * (float(d2.pow(2).sum()) - float((0.5 * (d1 + d2)).pow(2).sum())) / s ** 2, 0.05))
    y = edm_sample(compose_policies(parents, [0.5, 0.5]).denoise, (n, 2), 64, euler_from="x_hat", s_noise=1.0,
                   generator=torch.Generator().manual_seed(1))
    rows.append(row("analytic EDM w=0.5", "|mean − (m + (δ1+δ2)/2)|", float((y.mean(0) - m - 0.5 * (d1 + d2)).norm()),
                    0.0, 4 * s / math.sqrt(n) * 2))
    if not quick:
        rows += _trained_gpc(m, s, d1, d2, noise)
    return rows


def _trained_gpc(m: torch.Tensor, s: float, d1: torch.Tensor, d2: torch.Tensor, noise: torch.Tensor) -> list[Row]:
    """Two small flows trained on the two biased data sets, composed on the grid."""
    from offline_rl.generative import (
        DenoiserMLP,
        compose_policies,
        flow_matching_loss,
        flow_sample,
        weight_grid,
    )

    class Trained:
        def __init__(self, shift: torch.Tensor, seed: int) -> None:
            torch.manual_seed(seed)
            self.net = DenoiserMLP(2, 0, (128, 128, 128), 32)
            data = m + shift + s * torch.randn(20_000, 2)
            opt = torch.optim.Adam(self.net.parameters(), lr=1e-3)
            gen = torch.Generator().manual_seed(seed)
            for _ in range(3000):
                loss = flow_matching_loss(lambda x, t, c: self.net(x, t), data[torch.randint(0, 20_000, (256,),
                                                                                             generator=gen)],
                                          generator=gen)
                opt.zero_grad()
                loss.backward()
                opt.step()

        def velocity(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
            return self.net(x, t)

    parents = [Trained(d1, 1), Trained(d2, 2)]
    nll = {}
    with torch.no_grad():
        for w1, w2 in weight_grid(2, 0.1):
            nll[w1] = gaussian_nll(flow_sample(compose_policies(parents, [w1, w2]).velocity, noise, 50), m, s)
    best = min(nll, key=nll.get)
    return [row("trained flows, grid 0..1", "best weight w1", best, 0.5, 0.1),
            row("trained flows, grid 0..1", "best NLL beats both parents", float(nll[best] < min(nll[0.0], nll[1.0])),
                1.0, 0.0)]


# --- AWM ---------------------------------------------------------------------------------------------------------

def bandit_dataset(n: int = 4000, seed: int = 0) -> Dataset:
    """One state, one step: actions from the modes ±0.5 (equal shares, spread 0.05), reward 1 on the + mode."""
    rng = np.random.default_rng(seed)
    a = (np.where(rng.random(n) < 0.5, 0.5, -0.5) + 0.05 * rng.normal(size=n)).astype(np.float32)[:, None]
    obs = torch.zeros(n, 1)
    return Dataset(observations=obs, actions=torch.from_numpy(a),
                   rewards=torch.from_numpy((a[:, 0] > 0).astype(np.float32)), next_observations=obs,
                   terminals=torch.ones(n, dtype=torch.bool), timeouts=torch.zeros(n, dtype=torch.bool),
                   episode_ids=torch.arange(n), env_id=None, spec=Spec(1, 1, (-1.0,), (1.0,)), source="toy:bandit",
                   episode_returns=np.zeros(n))


TOY_FLOW = {"hidden": [32, 32], "flow_hidden": [128, 128, 128], "actor_lr": 1e-3,
            "eval_noise": "sample"}
"""The toy's AWM settings: a 3×128 velocity MLP (two 64-unit layers do not separate the modes), LR 1e-3."""


def plus_share(awm, n: int = 4000) -> float:
    """The share of the policy's sampled actions on the + mode."""
    with torch.no_grad():
        actions = awm.policy().sample(torch.zeros(n, 1), generator=torch.Generator().manual_seed(1))
    return float((actions > 0).float().mean())


def weighted_flow_share(data: Dataset, beta: float, steps: int, seed: int = 0) -> float:
    """Train AWM's flow policy alone with the fixed advantage A = 1[+ mode] (weights e^{βA}); its + share."""
    from offline_rl import algos

    plus = (data.actions[:, 0] > 0).float()
    awm = algos.make("awm", data.spec, TOY_FLOW, seed=seed)
    opt = awm.optimizers["actor"]
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(plus), (256,), generator=gen)
        loss = awm.actor_loss(data.observations[idx], data.actions[idx], torch.exp(beta * plus[idx]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return plus_share(awm)


@register_entry("awm", "AWM: advantage-weighted flow matching on a bimodal toy vs the exp-weighted mode share")
def awm(quick: bool) -> list[Row]:
    from offline_rl import algos
    from offline_rl.training import train

    data = bandit_dataset()
    rows = []
    for beta in ((0.0, 1.5) if quick else (0.0, 0.75, 1.5, 3.0)):
        share = weighted_flow_share(data, beta, 1000 if quick else 2000)
        rows.append(row(f"fixed advantage, beta={beta:g}", "+ mode share", share,
                        math.exp(beta) / (1 + math.exp(beta)), 0.06))
    beta, tau = 1.0, 0.7
    agent = algos.make("awm", data.spec, {**TOY_FLOW, "beta": beta, "expectile": tau, "normalize_reward": False},
                       seed=0)
    train(agent, data, steps=1500 if quick else 4000, seed=0, eval_every=0, progress=False)
    rows.append(row(f"IQL critic (expectile {tau}), beta={beta:g}", "+ mode share", plus_share(agent),
                    1 / (1 + math.exp(-beta)), 0.06))
    return rows
