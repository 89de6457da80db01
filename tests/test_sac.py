"""SAC and the online loop: faithfulness of the update to the paper's equations, the tanh-Gaussian log-density,
terminal vs truncation handling on a real env, CPU determinism of `train_online`, and (slow) learning Pendulum."""

from __future__ import annotations

import copy
import math

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_algos import OBS, random_dataset, split_twin
from torch import nn
from torch.distributions import Normal, TanhTransform, TransformedDistribution

from offline_rl import algos
from offline_rl.data.dataset import Spec
from offline_rl.envs import make_vector_env
from offline_rl.nets import TanhGaussianActor
from offline_rl.training import ReplayBuffer, train_online
from offline_rl.training.online import snapshot_path, step_envs


def constant_actor(mean: list[float], log_std: list[float], low: float = -1.0, high: float = 1.0) -> TanhGaussianActor:
    """An actor whose head outputs the given mean and log-std for every observation."""
    act_dim = len(mean)
    actor = TanhGaussianActor(3, act_dim, (low,) * act_dim, (high,) * act_dim, (8,))
    head = actor.net[-1]
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.tensor(mean + log_std))
    return actor


def test_sac_matches_reference_equations():
    """Three SAC updates equal the paper's equations (Haarnoja et al. 2018b, eqs. 5-7, 17-18) run on plain
    nn.Linear critics and a plain nn.Sequential actor with the same initial weights and the same noise draws.
    Asymmetric action bounds check the env-action scaling; log π is that of the normalised action."""
    data = random_dataset()
    spec = Spec(OBS, 2, (-2.0, -1.0), (2.0, 3.0))
    algo = algos.make("sac", spec, {}, seed=0)
    c = algo.config
    actor = copy.deepcopy(algo.actor.net)
    q1, q2 = split_twin(algo.critic, 0), split_twin(algo.critic, 1)
    q1_t, q2_t = copy.deepcopy(q1), copy.deepcopy(q2)
    log_alpha = torch.zeros((), requires_grad=True)
    opt_a = torch.optim.Adam(actor.parameters(), lr=c.actor_lr)
    opt_q = torch.optim.Adam([*q1.parameters(), *q2.parameters()], lr=c.critic_lr)
    opt_alpha = torch.optim.Adam([log_alpha], lr=c.alpha_lr)
    scale, bias = torch.tensor([2.0, 2.0]), torch.tensor([0.0, 1.0])

    def pi(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = actor(s).chunk(2, -1)
        std = log_std.clamp(-20, 2).exp()
        u = mean + std * torch.randn_like(mean)
        log_p = Normal(mean, std).log_prob(u).sum(-1) - torch.log(1 - torch.tanh(u) ** 2).sum(-1)
        return scale * torch.tanh(u) + bias, log_p

    def q_min(qa: nn.Module, qb: nn.Module, s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        sa = torch.cat([s, a], 1)
        return torch.min(qa(sa), qb(sa)).squeeze(-1)

    for step in (1, 2, 3):
        batch = data.sample(64, torch.Generator().manual_seed(step))
        torch.manual_seed(100 + step)
        metrics = algo.update(batch, step)

        torch.manual_seed(100 + step)
        s, a, r, s2, d = batch.observations, batch.actions, batch.rewards, batch.next_observations, batch.dones
        alpha = log_alpha.exp().item()
        with torch.no_grad():
            a2, logp2 = pi(s2)
            y = r + 0.99 * (1 - d) * (q_min(q1_t, q2_t, s2, a2) - alpha * logp2)
        sa = torch.cat([s, a], 1)
        loss_q = 0.5 * F.mse_loss(q1(sa).squeeze(-1), y) + 0.5 * F.mse_loss(q2(sa).squeeze(-1), y)
        opt_q.zero_grad()
        loss_q.backward()
        opt_q.step()
        a_new, logp = pi(s)
        loss_pi = (alpha * logp - q_min(q1, q2, s, a_new)).mean()
        opt_a.zero_grad()
        loss_pi.backward()
        opt_a.step()
        with torch.no_grad():
            _, logp_fresh = pi(s)
        loss_alpha = -(log_alpha * (logp_fresh + -2.0)).mean()
        opt_alpha.zero_grad()
        loss_alpha.backward()
        opt_alpha.step()
        for t, src in ((q1_t, q1), (q2_t, q2)):
            for pt, p in zip(t.parameters(), src.parameters()):
                pt.data.mul_(0.995).add_(0.005 * p.data)
        # the losses pin what Adam's scale invariance hides: the soft target, α, and the fresh sample for J(α)
        for key, ref_loss in (("critic_loss", loss_q), ("actor_loss", loss_pi), ("alpha_loss", loss_alpha)):
            torch.testing.assert_close(metrics[key], ref_loss.detach(), rtol=1e-5, atol=1e-6)

    # atol 2e-5 (2% of three Adam steps of 3e-4): Adam turns float-rounding gradient differences on near-zero
    # gradients into up-to-lr parameter differences, and the two log-det formulas round differently
    for ours, ref in ((algo.actor.net, actor), (split_twin(algo.critic, 0), q1), (split_twin(algo.critic, 1), q2),
                      (split_twin(algo.critic_target, 0), q1_t), (split_twin(algo.critic_target, 1), q2_t)):
        for p, p_ref in zip(ours.parameters(), ref.parameters()):
            torch.testing.assert_close(p, p_ref, rtol=1e-5, atol=2e-5)
    torch.testing.assert_close(algo.log_alpha.detach(), log_alpha.detach())
    assert algo.log_alpha.item() != 0.0  # the temperature did move
    assert algo.target_entropy == -2.0


def test_deterministic_policy_is_tanh_of_mean():
    actor = constant_actor([0.3, -2.0], [0.0, 0.5], low=-2.0, high=2.0)
    out = actor(torch.zeros(4, 3))
    torch.testing.assert_close(out, 2.0 * torch.tanh(torch.tensor([[0.3, -2.0]] * 4)))
    algo = algos.make("sac", Spec(3, 1, (-2.0,), (2.0,)), {"hidden": [16, 16]}, seed=0)
    assert algo.policy() is algo.actor


def test_tanh_gaussian_log_prob_change_of_variables():
    """log π agrees with torch's TanhTransform density, and a histogram of 400k samples of the normalised action
    matches exp(log π) (Monte-Carlo check of the change of variables: counts/(N·width) ≈ mean density in the bin)."""
    actor = constant_actor([0.4, -0.3], [-0.5, 0.2], low=-3.0, high=3.0)
    g = torch.Generator().manual_seed(0)
    action, log_p = actor.sample(torch.zeros(1000, 3), generator=g)
    a_norm = action / 3.0
    ref = TransformedDistribution(Normal(torch.tensor([0.4, -0.3]), torch.tensor([-0.5, 0.2]).exp()),
                                  [TanhTransform()])
    torch.testing.assert_close(log_p, ref.log_prob(a_norm.clamp(-1 + 1e-6, 1 - 1e-6)).sum(-1), rtol=1e-3, atol=1e-3)

    actor1 = constant_actor([0.5], [-0.3])
    a1, log_p1 = actor1.sample(torch.zeros(400_000, 3), generator=g)
    a1, dens = a1.squeeze(-1), log_p1.exp()
    edges = torch.linspace(-0.9, 0.95, 38)
    width = float(edges[1] - edges[0])
    idx = torch.bucketize(a1, edges) - 1
    for b in range(len(edges) - 1):
        in_bin = idx == b
        empirical = in_bin.sum().item() / (len(a1) * width)
        assert empirical == pytest.approx(dens[in_bin].mean().item(), rel=0.05), b
    # and the density integrates to 1 over [-1, 1] (the tanh correction is what makes it so)
    assert (idx >= 0).logical_and(idx < len(edges) - 1).float().mean().item() == pytest.approx(
        sum(dens[idx == b].mean().item() * width for b in range(len(edges) - 1)), rel=0.01)


def test_replay_buffer_terminal_vs_truncation_on_hopper():
    """Hopper-v5 with random actions and a 30-step time limit gives both terminations (falls) and truncations.
    Terminated rows get done = 1; truncated rows get done = 0; both keep the true last observation as next_obs."""
    n_envs, horizon = 4, 30
    envs = make_vector_env("Hopper-v5", n_envs, seed=0, max_episode_steps=horizon)
    buffer = ReplayBuffer(2000, 11, 3)
    obs, _ = envs.reset(seed=list(range(n_envs)))
    rows: list[tuple[bool, bool, np.ndarray]] = []  # (terminated, truncated, next obs the policy saw), env-major
    for _ in range(300):
        actions = envs.action_space.sample()
        next_obs, real_next, rewards, term, trunc = step_envs(envs, actions)
        buffer.add(obs, actions, rewards, real_next, term)
        rows += [(bool(term[i]), bool(trunc[i]), next_obs[i]) for i in range(n_envs)]
        obs = next_obs
    envs.close()
    assert len(buffer) == 1200
    dones = buffer.column("dones")[:len(buffer)].numpy().astype(bool)
    term = np.array([r[0] for r in rows])
    trunc = np.array([r[1] for r in rows])
    assert term.sum() > 5 and trunc.sum() > 5
    assert np.array_equal(dones, term)

    def unhealthy(o: np.ndarray) -> bool:  # Hopper-v5's termination: z ≤ 0.7, |angle| ≥ 0.2 or |state| ≥ 100
        return not (o[0] > 0.7 and abs(o[1]) < 0.2 and np.all(np.abs(o[1:]) < 100))

    nxt = buffer.column("next_observations").numpy()
    for k, (te, tr, seen) in enumerate(rows):
        if te or tr:  # the stored next_obs is the final one, not the reset one the policy saw next
            assert not np.allclose(nxt[k], seen)
            assert unhealthy(nxt[k]) == te
        else:
            np.testing.assert_allclose(nxt[k], seen, rtol=1e-6)
            if k + n_envs < len(buffer):  # continuity: the next row of the same env starts where this one ended
                np.testing.assert_allclose(buffer.column("observations")[k + n_envs].numpy(), seen, rtol=1e-6)


def test_replay_buffer_ring_and_sampling():
    buf = ReplayBuffer(5, 2, 1)
    for t in range(7):
        buf.add(np.full((1, 2), t), np.zeros((1, 1)), np.array([t]), np.full((1, 2), t + 1), np.array([False]))
    assert len(buf) == 5 and buf.ptr == 2
    assert sorted(buf.column("rewards").tolist()) == [2, 3, 4, 5, 6]
    batch = buf.sample(64, torch.Generator().manual_seed(0))
    assert batch.observations.shape == (64, 2)
    torch.testing.assert_close(batch.next_observations, batch.observations + 1)


def _short_run(out_dir) -> tuple[dict, list]:
    algo = algos.make("sac", Spec(3, 1, (-2.0,), (2.0,)), {"hidden": [32, 32], "batch_size": 64}, seed=5)
    result = train_online(algo, "Pendulum-v1", 400, seed=5, eval_every=200, eval_episodes=2, out_dir=out_dir,
                          start_steps=100, snapshot_steps=[0, 200, 400], progress=False, log_every=100)
    return algo.state_dict(), result.curve


def test_train_online_is_deterministic_on_cpu(tmp_path):
    s1, curve1 = _short_run(tmp_path / "a")
    s2, curve2 = _short_run(tmp_path / "b")
    assert curve1 == curve2 and len(curve1) == 2
    for k, v in s1["modules"].items():
        assert torch.equal(v, s2["modules"][k]), k
    assert s1["optimizers"]["alpha"]["state"][0]["exp_avg"] == s2["optimizers"]["alpha"]["state"][0]["exp_avg"]
    for step in (0, 200, 400):
        snap = torch.load(snapshot_path(tmp_path / "a", step))
        assert all(v.dtype == torch.float32 for v in snap.values())
    final = torch.load(snapshot_path(tmp_path / "a", 400))
    torch.testing.assert_close(final["net.0.weight"], s1["modules"]["actor.net.0.weight"])
    assert (tmp_path / "a" / "checkpoint.pt").exists() and (tmp_path / "a" / "result.json").exists()
    assert any((tmp_path / "a" / "tb").iterdir())


def test_train_online_vector_envs_count_env_steps(monkeypatch):
    """With 3 sub-envs, `steps` counts transitions over all of them and there is one update per env step after
    the warm-up (updates happen in whole iterations: 3 per loop iteration)."""
    algo = algos.make("sac", Spec(3, 1, (-2.0,), (2.0,)), {"hidden": [16, 16], "batch_size": 32}, seed=0)
    calls = []
    update = algo.update
    monkeypatch.setattr(algo, "update", lambda batch, step: calls.append(step) or update(batch, step))
    result = train_online(algo, "Pendulum-v1", 150, seed=0, num_envs=3, eval_every=0, start_steps=60,
                          progress=False)
    assert result.status == "completed" and result.step == 150
    assert calls == list(range(1, 91))


def _random_return(episodes: int, seed: int) -> float:
    env = gym.make("Pendulum-v1")
    env.action_space.seed(seed)
    total = 0.0
    for ep in range(episodes):
        env.reset(seed=seed + ep)
        done = False
        while not done:
            _, r, te, tr, _ = env.step(env.action_space.sample())
            total += r
            done = te or tr
    return total / episodes


PENDULUM_STEPS = 8000


@pytest.mark.slow
def test_sac_learns_pendulum():
    """Paper hyperparameters except 128-128 networks and 1000 warm-up steps; 8k env steps, seed 0.
    Random actions score about −1200 over 10 episodes; SAC must reach better than −400."""
    algo = algos.make("sac", Spec(3, 1, (-2.0,), (2.0,)), {"hidden": [128, 128], "start_steps": 1000}, seed=0)
    result = train_online(algo, "Pendulum-v1", PENDULUM_STEPS, seed=0, eval_every=PENDULUM_STEPS, eval_episodes=10,
                          progress=False)
    random_return = _random_return(10, 100)
    assert random_return < -900
    assert result.final_return > -400, (result.final_return, random_return)
    assert math.isfinite(result.metrics["alpha"])


def test_train_online_resumes_with_its_replay_buffer(tmp_path):
    """A run stopped at 300 env steps and resumed to 600 keeps its buffer, update count and curve."""
    def run(steps: int, resume: bool):
        algo = algos.make("sac", Spec(3, 1, (-2.0,), (2.0,)), {"hidden": [16, 16], "batch_size": 32}, seed=3)
        return train_online(algo, "Pendulum-v1", steps, seed=3, eval_every=300, eval_episodes=1, out_dir=tmp_path,
                            start_steps=100, progress=False, log_every=100, resume=resume)

    first = run(300, resume=False)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    rows_300 = state["online"]["buffer"]["rows"]
    assert state["step"] == 300 and state["online"]["n_updates"] == 200 and len(rows_300) == 300
    second = run(600, resume=True)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert state["step"] == 600 and state["online"]["n_updates"] == 500
    assert torch.equal(state["online"]["buffer"]["rows"][:300], rows_300)  # the first 300 transitions kept
    assert [p[0] for p in second.curve] == [300, 600] and second.curve[0] == first.curve[0]
