"""LPG-lite and the LevelSampler: grid levels by hand, PLR priorities by hand, the reverse GRU's episode resets, the
agent update against its gradient by hand, the meta-gradient through unrolled updates against finite differences,
and the A2C antagonist."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.func import grad

from offline_rl.envs.gridlevels import MAX_SIZE, GridLevel, LevelBatch, evaluate, random_level, start_values
from offline_rl.envs.level_sampler import LevelSampler
from offline_rl.meta.lpg import (
    LPGConfig,
    LPGNet,
    Workers,
    _gru_cell,
    agent_loss,
    agent_step,
    collect,
    exact_advantage,
    meta_train,
    policy_gradient_loss,
    regularised_loss,
    train_a2c,
)

# A 5 × 5 corridor: the agent starts at (0, 0), a wall at (0, 2), the goal (+1) at (0, 3), a trap (−0.5) at (1, 0).
CORRIDOR = GridLevel(5, walls=(2,), start=0, objects=((3, 1.0), (MAX_SIZE, -0.5)))
UP, DOWN, LEFT, RIGHT = range(4)


def test_grid_steps_by_hand():
    batch = LevelBatch.from_levels([CORRIDOR])
    cells = torch.tensor([[0, 0, 0, 1, 4]])
    nxt, reward, term = batch.step(cells, torch.tensor([[UP, LEFT, DOWN, RIGHT, RIGHT]]))
    assert nxt.tolist() == [[0, 0, MAX_SIZE, 1, 4]]  # off-grid and into-the-wall moves stay put; (0, 4) is the edge
    assert reward.tolist() == [[0.0, 0.0, -0.5, 0.0, 0.0]] and term.tolist() == [[False, False, True, False, False]]
    nxt, reward, term = batch.step(torch.tensor([[4]]), torch.tensor([[LEFT]]))
    assert nxt.item() == 3 and reward.item() == 1.0 and term.item()


def test_exact_values_by_hand():
    batch = LevelBatch.from_levels([CORRIDOR])
    # around the wall: (0,0) → (0,1) → (1,1) → (1,2) → (1,3) → (0,3): the goal on the 5th step, γ⁴·1
    assert start_values(batch, None, 20, 0.9).item() == pytest.approx(0.9**4)
    assert start_values(batch, None, 4, 0.9).item() == pytest.approx(0.0)  # too short to reach it
    uniform = torch.full((1, MAX_SIZE**2, 4), 0.25)
    q, v = evaluate(batch, uniform, 3, 0.9)
    # one step to go from (0, 0): only DOWN pays (−0.5), so V = 0.25·(−0.5)
    assert v[2, 0, 0].item() == pytest.approx(-0.125) and q[2, 0, 0, DOWN].item() == pytest.approx(-0.5)
    assert v[1, 0, 0].item() == pytest.approx(0.25 * -0.5 + 0.9 * 0.25 * (2 * v[2, 0, 0] + v[2, 0, 1]).item())


def test_random_levels_are_valid():
    rng = np.random.default_rng(0)
    for _ in range(50):
        level = random_level(rng)
        cells = {level.start, *(c for c, _ in level.objects)}
        assert len(cells) == 3 and not cells & set(level.walls) and level.objects[0][1] > 0
        assert all(divmod(c, MAX_SIZE)[0] < level.size and divmod(c, MAX_SIZE)[1] < level.size for c in cells)


def test_rank_and_proportional_priorities_by_hand():
    sampler = LevelSampler(lambda rng: 0, buffer_size=3, transform="rank", temperature=0.5, staleness=0.0)
    for _ in range(3):
        sampler.sample()
    for i, score in enumerate((3.0, 1.0, 2.0)):
        sampler.update(i, score)
    p = np.array([1.0, (1 / 3) ** 2, (1 / 2) ** 2])
    assert np.allclose(sampler.priorities(), p / p.sum())
    sampler.transform = "proportional"
    z = np.exp(np.array([3.0, 1.0, 2.0]) / 0.5)
    assert np.allclose(sampler.priorities(), z / z.sum())
    sampler.staleness = 0.2  # last sampled at counts 1, 2, 3; now count 3 → staleness 2, 1, 0
    assert np.allclose(sampler.priorities(), 0.8 * z / z.sum() + 0.2 * np.array([2, 1, 0]) / 3)


def test_sampler_replaces_the_lowest_scoring_free_level_and_replays_by_score():
    counter = iter(range(1000))
    sampler = LevelSampler(lambda rng: next(counter), buffer_size=2, p_replay=0.0, staleness=0.0, seed=0)
    (a, _), (b, lb) = sampler.sample(), sampler.sample()
    sampler.update(a, 5.0)
    idx, level = sampler.sample()  # buffer full; level b is in use, so a (the only free one) is replaced
    assert (idx, level) == (a, 2) and sampler.levels == [2, lb]
    sampler.update(b, 1.0)
    sampler.update(a, 7.0)
    idx, _ = sampler.sample()
    assert idx == b  # the lowest score (1.0) goes
    sampler.update(idx, 0.5)
    sampler.p_replay, sampler.min_replay = 1.0, 1
    picks = [sampler.sample()[0] for _ in range(200)]
    assert picks.count(a) > 150  # rank 1 of 2 at temperature 0.3: P ∝ 1 vs 2^(−1/0.3) ≈ 0.1
    random_sampler = LevelSampler(lambda rng: next(counter), score="random", p_replay=1.0, min_replay=1)
    first = random_sampler.sample()
    random_sampler.update(first[0], 9.0)
    assert random_sampler.sample()[1] != first[1]  # domain randomisation never replays


def test_gru_cell_and_reverse_scan_reset_at_episode_ends():
    torch.manual_seed(0)
    c = LPGConfig(gru_width=8)
    net = LPGNet(c)
    x, h = torch.randn(3, 5), torch.randn(3, 8)
    assert torch.allclose(_gru_cell(x, h, net.gru), net.gru(x, h), atol=1e-6)
    r, pi = torch.randn(2, 6), torch.rand(2, 6)
    d = torch.zeros(2, 6)
    d[0, 2] = 1.0  # sequence 0's episode ends at t = 2
    y, y_next = torch.softmax(torch.randn(2, 6, 8), -1), torch.softmax(torch.randn(2, 6, 8), -1)
    out = net(r, d, pi, y, y_next)[0]
    r2 = r.clone()
    r2[:, 4] += 5.0  # change a reward after the episode end
    out2 = net(r2, d, pi, y, y_next)[0]
    assert torch.allclose(out[0, :3], out2[0, :3]) and not torch.allclose(out[0, 3:5], out2[0, 3:5])
    assert not torch.allclose(out[1, :3], out2[1, :3])  # no episode end in sequence 1: the reverse scan carries it
    y_next2 = y_next.clone()
    y_next2[0, 2] = torch.softmax(torch.randn(8), -1)  # φ(y_{t+1}) is zeroed where d_t = 1
    assert torch.allclose(net(r, d, pi, y, y_next2)[0], out)


def _rollout(c: LPGConfig, seed: int = 0):
    batch = LevelBatch.from_levels([CORRIDOR, random_level(np.random.default_rng(seed))])
    workers = Workers.reset(batch, c.workers)
    logits = torch.randn(2, MAX_SIZE**2, 4, generator=torch.Generator().manual_seed(seed))
    return batch, collect(batch, logits, workers, c.rollout_len, c.horizon, torch.Generator().manual_seed(seed))


def test_agent_update_is_the_lpg_loss_gradient_by_hand():
    torch.manual_seed(0)
    c = LPGConfig(gru_width=8, workers=3, rollout_len=6, max_grad_norm=0.01)  # small enough that clipping acts
    net = LPGNet(c)
    eta = {k: v.detach() for k, v in net.named_parameters()}
    _, roll = _rollout(c)
    theta = torch.randn(2, MAX_SIZE**2, 4)
    psi = torch.randn(2, MAX_SIZE**2, c.target_width)
    # by hand: ∂/∂θ[s, b] of mean_t π̂_t log π(a_t|s_t) is mean_t π̂_t (1[b = a_t] − π(b|s_t)) 1[s_t = s]
    probs = torch.softmax(theta, -1)
    agent = torch.arange(2)[:, None, None].expand_as(roll.cell)
    pi_a = probs[agent, roll.cell, roll.action] + 1e-8
    y_t = torch.softmax(psi, -1)[agent, roll.cell]
    y_next = torch.softmax(psi, -1)[agent, roll.next_cell]
    pi_hat, y_hat = net(roll.reward.flatten(0, 1), roll.done.flatten(0, 1), pi_a.flatten(0, 1),
                        y_t.flatten(0, 1), y_next.flatten(0, 1))
    pi_hat, y_hat = pi_hat.view_as(pi_a), y_hat.view_as(y_t)
    n = roll.cell[0].numel()
    expected = torch.zeros_like(theta)
    for i in range(2):
        for w in range(c.workers):
            for t in range(c.rollout_len):
                s, a = roll.cell[i, w, t], roll.action[i, w, t]
                onehot = torch.nn.functional.one_hot(a, 4).float()
                # d log(π(a|s) + ε)/dθ = π(a|s)/(π(a|s) + ε)·(1[b = a] − π(b|s))
                scale = probs[i, s, a] / (probs[i, s, a] + 1e-8)
                expected[i, s] += pi_hat[i, w, t].detach() * scale * (onehot - probs[i, s]) / n
    (g_theta, g_psi), _ = grad(agent_loss, has_aux=True)((theta, psi), eta, net, roll, c)
    assert torch.allclose(g_theta, expected, atol=1e-6)
    # ∂/∂ψ[s] of α·mean_t KL(y(s_t) ‖ ŷ_t), ŷ held fixed: α/n Σ_{t: s_t = s} y ⊙ (log y − log ŷ_t − KL_t)
    expected_psi = torch.zeros_like(psi)
    y_all = torch.softmax(psi, -1)
    for i in range(2):
        for w in range(c.workers):
            for t in range(c.rollout_len):
                s = roll.cell[i, w, t]
                y, q = y_all[i, s], y_hat[i, w, t].detach()
                log_ratio = y.log() - q.log()
                expected_psi[i, s] += c.agent_target_coeff * y * (log_ratio - (y * log_ratio).sum()) / n
    assert torch.allclose(g_psi, expected_psi, atol=1e-5)
    new_theta, new_psi, _ = agent_step(theta, psi, eta, net, roll, c)
    norms = g_theta.flatten(1).norm(dim=1)
    clipped = g_theta * (c.max_grad_norm / norms).clamp(max=1.0)[:, None, None]
    assert torch.allclose(new_theta, theta - c.actor_lr * clipped, atol=1e-5)
    assert torch.allclose(new_psi, psi - c.target_lr * g_psi * (c.max_grad_norm / g_psi.flatten(1).norm(dim=1))
                          .clamp(max=1.0)[:, None, None], atol=1e-5)


def test_meta_gradient_through_unrolled_updates_matches_finite_differences():
    torch.manual_seed(0)
    c = LPGConfig(gru_width=6, embedding_width=4, workers=2, rollout_len=5, actor_lr=2.0, target_lr=1.0,
                  max_grad_norm=1e6)
    net = LPGNet(c).double()
    batch, roll1 = _rollout(c, seed=1)
    _, roll2 = _rollout(c, seed=2)
    _, eval_roll = _rollout(c, seed=3)
    for roll in (roll1, roll2, eval_roll):
        roll.reward, roll.done = roll.reward.double(), roll.done.double()
    theta0 = torch.randn(2, MAX_SIZE**2, 4, dtype=torch.float64)
    psi0 = torch.randn(2, MAX_SIZE**2, c.target_width, dtype=torch.float64)
    batch.reward = batch.reward.double()
    adv = exact_advantage(batch, torch.softmax(theta0, -1), eval_roll, c)

    def objective(eta, rolls):
        theta, psi = theta0, psi0
        for roll in rolls:  # K unrolled updates on fixed rollouts
            theta, psi, _ = agent_step(theta, psi, eta, net, roll, c)
        agent = torch.arange(2)[:, None, None].expand_as(eval_roll.cell)
        log_pi = torch.log_softmax(theta, -1)[agent, eval_roll.cell, eval_roll.action]
        return -(log_pi * adv).mean()

    eta = {k: v.detach().clone() for k, v in net.named_parameters()}
    direction = {k: torch.randn_like(v) for k, v in eta.items()}
    eps = 1e-6
    for rolls, rel in (((roll1,), 1e-6), ((roll1, roll2), 1e-2)):
        g = grad(objective)(eta, rolls)
        up = objective({k: v + eps * direction[k] for k, v in eta.items()}, rolls)
        down = objective({k: v - eps * direction[k] for k, v in eta.items()}, rolls)
        analytic = sum((g[k] * direction[k]).sum() for k in eta)
        assert abs(float(analytic)) > 1e-4  # the update rule does move the objective
        # K = 1: exact. K = 2: LPG's inputs π(a|s) and y at the second update depend on η through θ₁, but enter
        # stop-gradient (as in GROOVE), so the meta-gradient leaves out that path: close, not equal.
        assert float(analytic) == pytest.approx(float(up - down) / (2 * eps), rel=rel)


def test_a2c_antagonist_solves_the_corridor():
    c = LPGConfig()
    batch = LevelBatch.from_levels([CORRIDOR] * 4)
    policy = train_a2c(batch, 50, c, torch.Generator().manual_seed(0))
    ours = start_values(batch, policy, c.horizon, c.discount)
    best = start_values(batch, None, c.horizon, c.discount)
    assert (ours > 0.8 * best).all(), (ours, best)


def test_meta_training_scores_levels_with_the_sampler():
    c = LPGConfig(num_agents=4, lifetime=10, num_agent_updates=5, workers=4)
    run = meta_train(2, score="regret", config=c, seed=0)
    assert len(run.initial) == len(dict(run.net.named_parameters()))
    moved = [not torch.equal(run.initial[k], v) for k, v in run.net.named_parameters()]
    assert all(moved)  # every parameter of η received a meta-gradient


def test_meta_objective_is_minus_log_pi_times_the_exact_normalised_advantage():
    c = LPGConfig(workers=3, rollout_len=8)
    batch, roll = _rollout(c, seed=4)
    theta = torch.randn(2, MAX_SIZE**2, 4, generator=torch.Generator().manual_seed(5))
    q, v = evaluate(batch, torch.softmax(theta, -1), c.horizon, c.discount)
    loss = policy_gradient_loss(theta, batch, roll, c)
    for i in range(2):
        cells, acts, ts = roll.cell[i].flatten(), roll.action[i].flatten(), roll.t[i].flatten()
        adv = q[ts, i, cells, acts] - v[ts, i, cells]
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        log_pi = torch.log(torch.softmax(theta[i, cells], -1)[torch.arange(len(cells)), acts] + 1e-8)
        assert loss[i].item() == pytest.approx(-(log_pi * adv).mean().item(), rel=1e-5)
    c = LPGConfig(policy_entropy_coeff=0.1, policy_l2_coeff=0.2, target_entropy_coeff=0.3, target_l2_coeff=0.4)
    one = torch.ones(1)
    assert regularised_loss(one, 2 * one, 3 * one, 4 * one, 5 * one, c).item() == pytest.approx(
        1 - 0.1 * 2 + 0.2 * 3 - 0.3 * 4 + 0.4 * 5)
