"""PMOE-SAC against `JieRen98/rlkit-pmoe`: the frequency-approximate gradient, one update re-implemented in the
source's order (temperature first, the actor's loss on the pre-update critic, the target from the pre-step actor,
reward scale), rlkit's initialisation, and mode coverage on the bimodal bandit."""

from __future__ import annotations

import copy
import math

import gymnasium as gym
import pytest
import torch
from torch.nn import functional as F

from offline_rl.algos import build_config, get
from offline_rl.data.dataset import Batch, Spec
from offline_rl.nets.policies import TanhMixtureActor
from offline_rl.training.onpolicy import env_spec

SPEC = Spec(3, 2, (-1.0, -1.0), (1.0, 1.0))


def _pmoe(seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return get("pmoe")(SPEC, build_config(get("pmoe"), {"hidden": [32, 16], "k": 3, **overrides}))


def _batch(seed: int, n: int = 8) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch(torch.randn(n, 3, generator=g), torch.rand(n, 2, generator=g) * 2 - 1,
                 torch.randn(n, generator=g), torch.randn(n, 3, generator=g), (torch.rand(n, generator=g) < 0.3).float())


def _log_prob(mean: torch.Tensor, log_std: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """log density of tanh(u), u = μ + σε (rlkit's TanhNormal.log_prob, without its 1e-6), summed over A."""
    u = mean + log_std.exp() * eps
    normal = torch.distributions.Normal(mean, log_std.exp()).log_prob(u)
    return (normal - torch.log(1 - torch.tanh(u).pow(2))).sum(-1), torch.tanh(u)


def test_frequency_approximate_gradient_trains_only_the_winning_expert():
    torch.manual_seed(1)
    env = gym.make("offline_rl/BimodalBandit-v0")
    algo = get("pmoe")(env_spec(env), build_config(get("pmoe"), {"hidden": [16, 16], "k": 3}))
    assert isinstance(algo.actor, TanhMixtureActor)
    obs = torch.zeros(1, 1)
    torch.manual_seed(2)
    log_pi, q_best, routing_loss, _ = algo.expert_terms(obs)
    torch.manual_seed(2)
    actions, log_probs, routing = algo.actor.sample_experts(obs)
    q = algo.critic(obs.repeat(3, 1), actions[0]).min(0).values
    best = int(q.argmax())
    assert float(q_best.detach()) == pytest.approx(float(q[best].detach()))
    assert float(log_pi.detach()) == pytest.approx(float(log_probs[0, best].detach()))
    expected_route = F.mse_loss(F.one_hot(torch.tensor([best]), 3).float(), routing)
    assert float(routing_loss.detach()) == pytest.approx(float(expected_route.detach()), rel=1e-6)
    algo.actor.zero_grad()
    (0.1 * log_pi - q_best).sum().backward()
    grad = algo.actor.heads.weight.grad.view(3, 2, -1)  # rows [μ_k, log σ_k] of expert k
    for k in range(3):
        assert (float(grad[k].abs().sum()) > 0) == (k == best)


def _reference_update(algo, batch: Batch, lr: float = 3e-4, gamma: float = 0.99, tau: float = 0.005,
                      reward_scale: float = 1.0, k: int = 3) -> dict[str, float]:
    """PMOEsac.py's `train_from_torch`, written out on copies of `algo`'s networks with plain Adam, drawing the
    random numbers in the same order (every expert's ε at s, then ε and the expert index at s′)."""
    actor, critic, target = algo.actor, algo.critic, algo.critic_target
    log_alpha = algo.log_alpha
    opts = {"actor": algo.ref_opts["actor"], "critic": algo.ref_opts["critic"], "alpha": algo.ref_opts["alpha"]}
    obs, b = batch.observations, batch.observations.shape[0]
    routing, mean, log_std = actor.parts(obs)
    log_probs, acts = _log_prob(mean, log_std, torch.randn_like(mean))
    q_all = torch.min(*critic(obs.repeat_interleave(k, 0), acts.reshape(b * k, -1))).view(b, k)
    q_new, best = q_all.max(1)
    log_pi = log_probs.gather(1, best[:, None]).squeeze(1)
    alpha_loss = -(log_alpha * (log_pi + (-2.0)).detach()).mean()
    opts["alpha"].zero_grad()
    alpha_loss.backward()
    opts["alpha"].step()
    alpha = log_alpha.detach().exp()
    route = F.mse_loss(F.one_hot(best, k).float(), routing)
    policy_loss = (alpha * log_pi - q_new).mean()
    with torch.no_grad():
        n_routing, n_mean, n_log_std = actor.parts(batch.next_observations)
        n_log_probs, n_acts = _log_prob(n_mean, n_log_std, torch.randn_like(n_mean))
        i = torch.multinomial(n_routing, 1)
        n_act = n_acts.gather(1, i[..., None].expand(-1, 1, 2)).squeeze(1)
        n_log_pi = n_log_probs.gather(1, i).squeeze(1)
        y = reward_scale * batch.rewards + (1 - batch.dones) * gamma * (torch.min(*target(batch.next_observations,
                                                                                      n_act)) - alpha * n_log_pi)
    opts["actor"].zero_grad()
    (policy_loss + route).backward()
    opts["actor"].step()
    q1, q2 = critic(obs, batch.actions)
    critic_loss = F.mse_loss(q1, y) + F.mse_loss(q2, y)
    opts["critic"].zero_grad()
    critic_loss.backward()
    opts["critic"].step()
    with torch.no_grad():
        for p_t, p in zip(target.parameters(), critic.parameters(), strict=True):
            p_t.copy_(p_t * (1 - tau) + p * tau)
    return {"alpha": float(alpha), "actor_loss": float(policy_loss.detach()),
            "critic_loss": float(critic_loss.detach()), "routing_loss": float(route.detach())}


@pytest.mark.parametrize("reward_scale", [1.0, 5.0])
def test_update_matches_the_source_order(reward_scale: float):
    algo = _pmoe(reward_scale=reward_scale)
    ref = copy.deepcopy(algo)
    ref.ref_opts = {"actor": torch.optim.Adam(ref.actor.parameters(), lr=3e-4),
                    "critic": torch.optim.Adam(ref.critic.parameters(), lr=3e-4),
                    "alpha": torch.optim.Adam([ref.log_alpha], lr=3e-4)}
    for step in range(1, 4):
        batch = _batch(step)
        torch.manual_seed(10 + step)
        got = algo.update(batch, step)
        torch.manual_seed(10 + step)
        want = _reference_update(ref, batch, reward_scale=reward_scale)
        for key, value in want.items():
            assert float(got[key]) == pytest.approx(value, rel=1e-5, abs=1e-6), (step, key)
    for mine, theirs in ((algo.actor, ref.actor), (algo.critic, ref.critic), (algo.critic_target, ref.critic_target)):
        for p, q in zip(mine.parameters(), theirs.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert float(algo.log_alpha.detach()) == pytest.approx(float(ref.log_alpha.detach()), abs=1e-7)
    assert float(algo.log_alpha.detach()) < 0.0  # entropy above the target −|A| on a fresh actor: α falls


def test_fixed_temperature_is_one_by_default():
    algo = _pmoe(autotune_alpha=False)
    metrics = algo.update(_batch(0), 1)
    assert float(metrics["alpha"]) == 1.0 and "alpha" not in algo.optimizers


@torch.no_grad()
def test_rlkit_initialisation():
    algo = _pmoe(hidden=[64, 32])
    trunk = [m for m in algo.actor.trunk.modules() if isinstance(m, torch.nn.Linear)]
    # fanin_init: U(±1/√(output width)); the first layer's is 1/8 here (nn.Linear's default would be 1/√3)
    for layer, width in zip(trunk, (64, 32), strict=True):
        w = layer.weight.abs().max()
        assert 0.9 / math.sqrt(width) < w <= 1 / math.sqrt(width)
        assert bool((layer.bias == 0.1).all())
    assert float(algo.actor.heads.weight.abs().max()) <= 1e-3 and float(algo.actor.heads.bias.abs().max()) <= 1e-3
    layers = list(algo.critic.qs.net[::2])
    for layer, width in zip(layers[:-1], (64, 32), strict=True):
        assert 0.9 / math.sqrt(width) < float(layer.weight.abs().max()) <= 1 / math.sqrt(width)
        assert bool((layer.bias == 0.1).all())
    assert 2e-3 < float(layers[-1].weight.abs().max()) <= 3e-3 and float(layers[-1].bias.abs().max()) <= 3e-3
    for p, q in zip(algo.critic.parameters(), algo.critic_target.parameters(), strict=True):
        assert torch.equal(p, q)


def test_mode_coverage_reads_routing_mass_and_sampled_actions():
    from offline_rl.reproduce.onpolicy import mode_coverage

    torch.manual_seed(0)
    actor = TanhMixtureActor(1, 1, (-1.0,), (1.0,), k=3, hidden=(8,))
    with torch.no_grad():  # experts at tanh μ = +0.6, −0.6, 0 with σ = e^−6, routed 0.3 / 0.5 / 0.2
        actor.heads.weight.zero_()
        actor.heads.bias.copy_(torch.tensor([math.atanh(0.6), -6.0, -math.atanh(0.6), -6.0, 0.0, -6.0]))
        actor.router.weight.zero_()
        actor.router.bias.copy_(torch.tensor([0.3, 0.5, 0.2]).log())
    cov = mode_coverage(actor, n=20_000)
    assert cov["mass_plus"] == pytest.approx(0.3, abs=1e-6) and cov["mass_minus"] == pytest.approx(0.5, abs=1e-6)
    assert cov["near_plus"] == pytest.approx(0.3, abs=0.015) and cov["near_minus"] == pytest.approx(0.5, abs=0.015)
    assert cov["expert_means"] == [0.6, -0.6, 0.0]


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=AssertionError, reason="PMOE-SAC as in rlkit-pmoe does not cover both modes of the bandit: its "
                   "experts start identical and move together (benchmarks/results/pmoe-bandit.md)")
def test_pmoe_covers_both_modes_of_the_bimodal_bandit():
    """The spec's §3.3.1 criterion (both routing masses > 0.2) with the PMOE example's settings, two seeds."""
    from offline_rl.reproduce.onpolicy import PMOE_BANDIT, bimodal_coverage

    covs = [bimodal_coverage("pmoe", seed, 5000, k=4, **PMOE_BANDIT) for seed in range(2)]
    assert all(min(c["mass_plus"], c["mass_minus"]) > 0.2 for c in covs), covs
