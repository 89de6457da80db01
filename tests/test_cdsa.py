"""CDSA (a reconstruction; spec §5.4): identity at η = 0 and κ = 0, the learned state score against the analytic one,
a point mass pulled back to the data's density, inverse dynamics in and out of distribution, the base's score
reported beside the wrapped one, and a frozen base loaded from a run folder."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import pendulum_dataset
from torch import nn

from offline_rl import algos
from offline_rl.algos.cdsa import CDSAPolicy
from offline_rl.data.dataset import Dataset, Spec
from offline_rl.training import run_experiment, train

SMALL = {"score_hidden": [64, 64], "inverse_hidden": [64, 64], "forward_hidden": [64, 64],
         "base_config": {"actor_hidden": [32, 32], "critic_hidden": [32, 32]}}
DT = 0.1


def point_mass_dataset(n: int = 20_000, seed: int = 0) -> Dataset:
    """A 2-D point mass s′ = s + 0.1·a, with dataset states ~ N(0, I) (a known density) and uniform actions."""
    rng = np.random.default_rng(seed)
    s = rng.normal(size=(n, 2)).astype(np.float32)
    a = rng.uniform(-1, 1, size=(n, 2)).astype(np.float32)
    t = torch.from_numpy
    return Dataset(observations=t(s), actions=t(a), rewards=torch.zeros(n), next_observations=t(s + DT * a),
                   terminals=torch.zeros(n, dtype=torch.bool), timeouts=torch.zeros(n, dtype=torch.bool),
                   episode_ids=torch.arange(n), env_id=None, spec=Spec(2, 2, (-1.0, -1.0), (1.0, 1.0)),
                   source="test:point-mass", episode_returns=np.zeros(n))


class Drift(nn.Module):
    """A base policy that always pushes right: a₀ = (1, 0)."""

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.tensor([1.0, 0.0]).expand(obs.shape[0], 2)


def trained_cdsa(data: Dataset, steps: int = 800, **config) -> algos.Algorithm:
    torch.manual_seed(0)
    cdsa = algos.make("cdsa", data.spec, {**SMALL, **config}, seed=0)
    cdsa.prepare(data)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        cdsa.fit_models(data.sample(256, gen))
    return cdsa


def test_eta_zero_and_kappa_zero_return_the_base_policy_exactly():
    data = pendulum_dataset(episodes=2)
    obs = data.observations[:300]
    for config in ({"eta": 0.0}, {"kappa": 0.0}, {"eta": 0.0, "forward_model": False},
                   {"eta": 0.0, "linearize": True}, {"kappa": 0.0, "ascent_steps": 3}):
        cdsa = algos.make("cdsa", data.spec, {**SMALL, **config}, seed=1)
        cdsa.prepare(data)
        cdsa.fit_models(data.sample(64, torch.Generator().manual_seed(0)))  # the models are not the identity
        with torch.no_grad():
            assert torch.equal(cdsa.policy()(obs), cdsa.base.policy()(obs)), config
    moved = algos.make("cdsa", data.spec, {**SMALL, "eta": 0.5}, seed=1)
    moved.prepare(data)
    with torch.no_grad():
        assert not torch.equal(moved.policy()(obs), moved.base.policy()(obs))


@pytest.fixture(scope="module")
def point_mass():
    """The point-mass data and a CDSA (η = 0.05, κ = 1) whose models trained 800 steps on it."""
    data = point_mass_dataset()
    return data, trained_cdsa(data, eta=0.05, kappa=1.0)


def test_score_matches_the_analytic_density_and_the_point_mass_stays_closer_to_the_data(point_mass):
    data, cdsa = point_mass
    z = cdsa.normalizer(data.observations[:2000]) + 0.3 * torch.randn(2000, 2, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        learned = cdsa.score(z, 0.3)
    analytic = -z / (1.0 + 0.3 ** 2)  # normalised dataset states are ≈ N(0, I)
    assert nn.functional.cosine_similarity(learned, analytic, dim=1).mean() > 0.9

    def mean_log_density(policy: nn.Module) -> float:
        s = torch.randn(500, 2, generator=torch.Generator().manual_seed(2))
        total = 0.0
        for _ in range(30):
            with torch.no_grad():
                s = s + DT * policy(s).clamp(-1, 1)
            total += (-0.5 * s.pow(2).sum(-1) - math.log(2 * math.pi)).mean().item()
        return total / 30

    base, corrected = mean_log_density(Drift()), mean_log_density(CDSAPolicy(Drift(), cdsa))
    assert corrected > base + 0.3, (base, corrected)


def test_inverse_dynamics_is_accurate_in_distribution_only(point_mass):
    _, cdsa = point_mass
    gen = torch.Generator().manual_seed(3)

    def error(center: float) -> float:
        s = center + torch.randn(1000, 2, generator=gen)
        a = torch.rand(1000, 2, generator=gen) * 2 - 1
        with torch.no_grad():
            pred = cdsa.inverse(torch.cat([cdsa.normalizer(s), cdsa.normalizer(s + DT * a)], -1))
        return (pred - a).pow(2).mean().item()

    inside, outside = error(0.0), error(6.0)
    assert inside < 0.05 and outside > 4 * inside, (inside, outside)


def test_training_reports_the_base_beside_the_wrapped_policy_and_a_base_run_is_frozen(tmp_path):
    data = pendulum_dataset(episodes=2)
    cdsa = algos.make("cdsa", data.spec, {**SMALL, "eta": 0.0}, seed=0)
    result = train(cdsa, data, steps=20, seed=0, eval_every=10, eval_episodes=1, progress=False)
    base = result.companion_curves["base"]
    assert [p[0] for p in base] == [10, 20] and base == result.curve  # η = 0: the wrapped policy is the base
    moved = algos.make("cdsa", data.spec, {**SMALL, "eta": 2.0, "kappa": 3.0}, seed=0)
    result = train(moved, data, steps=10, seed=0, eval_every=10, eval_episodes=1, progress=False)
    assert result.companion_curves["base"][0][2] != result.curve[0][2]  # the base is evaluated, not the wrapper

    run = tmp_path / "base"
    run_experiment("iql", "pendulum-medium", 0, 10, 10, 1, run, progress=False, overrides={"hidden": [32, 32]})
    loaded = algos.make("cdsa", data.spec, {**SMALL, "base_run": str(run)}, seed=0)
    assert loaded.base.name == "iql" and loaded.update_period == 1
    before = [p.clone() for p in loaded.base.parameters()]
    loaded.prepare(data)
    metrics = loaded.update(data.sample(32, torch.Generator().manual_seed(0)), 1)
    assert set(metrics) == {"score_loss", "inverse_loss", "forward_loss"}  # no base update
    assert all(torch.equal(a, b) for a, b in zip(before, loaded.base.parameters(), strict=True))
