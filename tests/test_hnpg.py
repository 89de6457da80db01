"""HNPG and the combination lock: the env against the source's definition, one full HNPG iteration against a plain
re-implementation of the source (`trpo.py`) with its constants written out, the CLI path on a lock card, and
(slow) the spec §7.8 algorithm-level checks."""

from __future__ import annotations

import copy
import json
import math
import os

import gymnasium as gym
import numpy as np
import pytest
import scipy.linalg
import torch

from offline_rl.algos import build_config, get
from offline_rl.algos.hnpg import HNPG
from offline_rl.data.dataset import Dataset
from offline_rl.envs.lock import CombinationLock, LockPolicy, decode, observation_dim
from offline_rl.envs.registry import lock_id
from offline_rl.training.onpolicy import RolloutCollector, env_spec


def test_lock_observation_is_the_hadamard_of_latent_and_time_one_hots():
    env = CombinationLock(horizon=5, noise=0.0, combination_seed=3)
    assert env.observation_space.shape == (observation_dim(5),) == (16,)
    obs, info = env.reset(seed=0)
    expected = scipy.linalg.hadamard(16) @ np.eye(16)[info["latent"]] + scipy.linalg.hadamard(16) @ np.eye(16)[3]
    np.testing.assert_allclose(obs, expected, atol=1e-6)
    noisy = CombinationLock(horizon=5, combination_seed=3)
    obs, info = noisy.reset(seed=1)
    v = scipy.linalg.hadamard(16) @ obs.astype(np.float64) / 16  # undo the rotation
    assert np.all(v[5 + 3:] == pytest.approx(0.0, abs=1e-6))  # noise only on the first H + 3 coordinates
    assert 0.0 < np.std(v[:8] - np.eye(16)[info["latent"]][:8] - np.eye(16)[3][:8]) < 0.3
    assert observation_dim(50) == 64 and observation_dim(12) == 16 and observation_dim(13) == 32


def test_lock_combination_is_drawn_like_the_source_after_seeding_numpy():
    np.random.seed(543)  # the source: set_seed_everywhere(543), then Lock.init draws opt_a, then opt_b
    opt_a, opt_b = np.random.randint(0, 10, size=50), np.random.randint(0, 10, size=50)
    env = CombinationLock(horizon=50, combination_seed=543)
    np.testing.assert_array_equal(env.opt_a, opt_a)
    np.testing.assert_array_equal(env.opt_b, opt_b)


def test_lock_rewards_only_at_the_last_step_and_the_dead_state_absorbs():
    env = CombinationLock(horizon=4, combination_seed=0)
    one_hot = np.eye(10) * 100.0  # softmax(a / 0.1) of a huge one-hot is deterministic
    returns = []
    for ep in range(200):
        env.reset(seed=ep)
        rewards = []
        for h in range(4):
            correct = env.opt_a[h] if env.state == 0 else env.opt_b[h]
            wrong = (correct + 1) % 10
            action = one_hot[wrong if (ep % 2 and h == 1) else correct]
            _, r, term, trunc, info = env.step(action)
            rewards.append(r)
            assert term == (h == 3) and not trunc
            if ep % 2 and h >= 1:
                assert info["latent"] == 2  # wrong at h = 1: dead from then on
        assert rewards[:3] == [0.0, 0.0, 0.0]
        returns.append(rewards[3])
    good, bad = returns[0::2], returns[1::2]
    assert set(good) == {1.0}
    assert set(bad) <= {0.0, 0.1} and 0.3 < np.mean(np.array(bad) == 0.1) < 0.7  # anti-reward w.p. ½
    with pytest.raises(RuntimeError):
        env.step(one_hot[0])


def test_lock_samples_the_discrete_action_from_softmax_over_temperature():
    env = CombinationLock(horizon=1, combination_seed=0)
    a = np.zeros(10)
    a[env.opt_a[0]] = a[env.opt_b[0]] = 0.1  # logits 1 for the correct action(s), 0 elsewhere
    n, wins = 4000, 0
    for ep in range(n):
        env.reset(seed=ep)
        wins += env.step(a)[1] == 1.0
    k = 1 if env.opt_a[0] == env.opt_b[0] else 2
    p = math.e / (k * math.e + 10 - k)  # softmax(a / 0.1): the correct action of the current latent state
    assert abs(wins / n - p) < 4 * math.sqrt(p * (1 - p) / n)


def test_lock_policy_and_step_readout_decode_latent_and_time():
    env = gym.make(lock_id(10))
    algo = _hnpg(lock_id(10), batch_size=20)
    readout = algo.policy()
    policy = LockPolicy(lock_id(10))
    for ep in range(20):
        obs, _ = env.reset(seed=ep)
        for h in range(10):
            latent, step = decode(obs, 10)
            assert latent[0] == env.unwrapped.state and step[0] == h
            assert int(readout.steps(torch.as_tensor(obs[None]))[0]) == h
            obs, r, term, _, _ = env.step(policy(obs[None])[0])
        assert term


def _hnpg(env_id: str, **overrides) -> HNPG:
    env = gym.make(env_id)
    cls = get("hnpg")
    config = build_config(cls, {**cls.env_defaults(env), **overrides})
    torch.manual_seed(0)
    return cls(env_spec(env), config)


def _lock_dataset(horizon: int, episodes: int, seed: int = 0) -> Dataset:
    """ε-greedy lock data (the source's `collect_offline_buffer`), built in memory."""
    env = gym.make(lock_id(horizon))
    policy = LockPolicy(lock_id(horizon), np.random.default_rng(seed), epsilon=1.0 / horizon)
    rows: dict[str, list] = {k: [] for k in ("obs", "act", "rew", "next", "term", "ep")}
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed + ep)
        for _ in range(horizon):
            action = policy(obs[None])[0]
            nxt, r, term, _, _ = env.step(action)
            for k, v in zip(rows, (obs, action, r, nxt, term, ep)):
                rows[k].append(v)
            obs = nxt
    n = len(rows["rew"])
    return Dataset(torch.tensor(np.array(rows["obs"])), torch.tensor(np.array(rows["act"])),
                   torch.tensor(np.array(rows["rew"]), dtype=torch.float32), torch.tensor(np.array(rows["next"])),
                   torch.tensor(rows["term"]), torch.zeros(n, dtype=torch.bool), torch.tensor(rows["ep"]),
                   lock_id(horizon), env_spec(env), source="test:lock")


def _reference_iteration(algo: HNPG, rollout, n_off: int) -> None:
    """One iteration of the source (`TRPO.update_params`) with its constants written out: γ = 1, λ = 0.97,
    10 value samples, fresh Adam(3e-4) × 30 per critic, damping 0.1, max_kl 0.01, 10 CG steps, 10 halvings with
    accept ratio 0.1. Random draws in the same order as the implementation (values, offline indices, targets)."""
    H = len(algo.policies)
    obs = rollout.observations.double()
    actions, rewards = rollout.actions.double(), rollout.rewards.double()
    N = obs.shape[1]

    def value(h, s):
        with torch.no_grad():
            mean, std = algo.policies[h].mean(s), algo.policies[h].log_std.exp()
            total = torch.zeros(s.shape[0], dtype=torch.float64)
            for _ in range(10):
                total += algo.critics[h](torch.cat([s, torch.normal(mean, std.expand_as(mean))], -1)).squeeze(-1)
            return total / 10

    def advantages():  # `get_advantage` over each episode with γ = 1, τ = 0.97; masks 0 at the last step
        values = torch.stack([value(h, obs[h]) for h in range(H)])
        returns, adv = torch.zeros(H, N, dtype=torch.float64), torch.zeros(H, N, dtype=torch.float64)
        for n in range(N):
            prev_return = prev_value = prev_adv = 0.0
            for t in reversed(range(H)):
                mask = 0.0 if t == H - 1 else 1.0
                returns[t, n] = rewards[t, n] + 1.0 * prev_return * mask
                delta = rewards[t, n] + 1.0 * prev_value * mask - values[t, n]
                adv[t, n] = delta + 1.0 * 0.97 * prev_adv * mask
                prev_return, prev_value, prev_adv = returns[t, n], values[t, n], adv[t, n]
        return returns, adv

    returns, _ = advantages()
    off = []
    for h in range(H):
        buf = algo.offline[h]
        idx = torch.randint(0, buf["rewards"].shape[0], (n_off,))
        off.append({k: v[idx] for k, v in buf.items()})
    for h in reversed(range(H)):
        with torch.no_grad():
            if h == H - 1:
                target = off[h]["rewards"]
            else:
                mean = algo.policies[h + 1].mean(off[h]["next_observations"])
                nxt = torch.normal(mean, algo.policies[h + 1].log_std.exp().expand_as(mean))
                target = off[h]["rewards"] + algo.critics[h + 1](
                    torch.cat([off[h]["next_observations"], nxt], -1)).squeeze(-1)
        opt = torch.optim.Adam(algo.critics[h].parameters(), lr=3e-4)
        for _ in range(30):
            on = (algo.critics[h](torch.cat([obs[h], actions[h]], -1)).squeeze(-1) - returns[h]).pow(2).mean()
            offl = (algo.critics[h](torch.cat([off[h]["observations"], off[h]["actions"]], -1)).squeeze(-1)
                    - target).pow(2).mean()
            opt.zero_grad()
            (on + offl).backward()
            opt.step()
    _, adv = advantages()
    for h in range(H):
        policy = algo.policies[h]
        with torch.no_grad():
            mean = policy.mean(off[h]["observations"])
            a_off = torch.normal(mean, policy.log_std.exp().expand_as(mean))
            q_off = algo.critics[h](torch.cat([off[h]["observations"], a_off], -1)).squeeze(-1)
            adv_off = q_off - value(h, off[h]["observations"])
        s = torch.cat([obs[h], off[h]["observations"]])
        a = torch.cat([actions[h], a_off])
        A = torch.cat([adv[h], adv_off])
        _reference_trpo_step(policy, s, a, A)


def _reference_trpo_step(policy, s, a, A) -> None:
    """`update_policy` + `trpo_step` + `linesearch` of the source, on one step's policy."""
    params = list(policy.parameters())

    def log_prob(mean, log_std):
        return (-(a - mean).pow(2) / (2 * log_std.exp().pow(2)) - 0.5 * math.log(2 * math.pi) - log_std).sum(1)

    with torch.no_grad():
        fixed = log_prob(policy.mean(s), policy.log_std.expand(s.shape[0], -1))
        mean0, log_std0 = policy.mean(s).clone(), policy.log_std.detach().clone().expand(s.shape[0], -1)

    def loss_fn():
        return -(A * torch.exp(log_prob(policy.mean(s), policy.log_std.expand(s.shape[0], -1)) - fixed)).mean()

    def fvp(v):
        mean1, log_std1 = policy.mean(s), policy.log_std.expand(s.shape[0], -1)
        kl = (log_std1 - log_std0 + (log_std0.exp().pow(2) + (mean0 - mean1).pow(2))
              / (2.0 * log_std1.exp().pow(2)) - 0.5).sum(1).mean()
        g = torch.cat([x.reshape(-1) for x in torch.autograd.grad(kl, params, create_graph=True)])
        return torch.cat([x.reshape(-1) for x in torch.autograd.grad((g * v).sum(), params)]) + 0.1 * v

    loss = loss_fn()
    grad = torch.cat([x.reshape(-1) for x in torch.autograd.grad(loss, params)])
    x, r, p = torch.zeros_like(grad), -grad.clone(), -grad.clone()
    rdotr = r @ r
    for _ in range(10):
        avp = fvp(p)
        alpha = rdotr / (p @ avp)
        x += alpha * p
        r -= alpha * avp
        new = r @ r
        p = r + new / rdotr * p
        rdotr = new
        if rdotr < 1e-10:
            break
    lm = torch.sqrt(0.5 * (x @ fvp(x)) / 0.01)
    full, expected = x / lm, (-grad @ x) / lm
    old = torch.cat([q.detach().reshape(-1) for q in params])
    with torch.no_grad():
        before = loss_fn()
        chosen = old
        for frac in 0.5 ** np.arange(10):
            _set(params, old + frac * full)
            actual = before - loss_fn()
            if actual / (expected * frac) > 0.1 and actual > 0:
                chosen = old + frac * full
                break
        _set(params, chosen)


def _set(params, flat):
    offset = 0
    for q in params:
        q.copy_(flat[offset:offset + q.numel()].view_as(q))
        offset += q.numel()


def test_one_hnpg_iteration_matches_a_plain_reimplementation_of_the_source():
    H = 3
    algo = _hnpg(lock_id(H), batch_size=24)  # 8 episodes of 3 steps
    algo.prepare(_lock_dataset(H, 40))
    collector = RolloutCollector(algo, lock_id(H), seed=0, env_kwargs={})
    torch.manual_seed(11)
    rollout, _ = collector.collect(algo.rollout_length)
    assert rollout.rewards.shape == (H, 8) and bool(rollout.terminated[-1].all())
    ref = copy.deepcopy(algo)
    torch.manual_seed(5)
    metrics = algo.update_rollout(rollout, 0)
    torch.manual_seed(5)
    _reference_iteration(ref, rollout, n_off=24 // H)
    for (name, mine), theirs in zip(algo.named_parameters(), ref.parameters()):
        torch.testing.assert_close(mine, theirs, rtol=1e-9, atol=1e-11, msg=name)
    moved = sum(float((p - q).detach().abs().sum()) for p, q in zip(algo.policies.parameters(),
                                                           _hnpg(lock_id(H), batch_size=24).policies.parameters()))
    assert moved > 1e-3 and metrics["accepted"] > 0  # the iteration did change the policies


def test_hnpg_trains_through_the_cli_on_a_lock_card(tmp_path, capsys):
    from offline_rl.cli import main

    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--algo", "hnpg", "--dataset", "lock-h5-egreedy", "--steps", "400", "--eval-every", "200",
              "--eval-episodes", "3", "--out", str(out), "--device", "cpu", "--set", "batch_size=200"])
    assert exit_info.value.code in (0, None), capsys.readouterr().err
    result = json.loads((out / "result.json").read_text())
    run = json.loads((out / "run.json").read_text())
    assert run["loop"] == "onpolicy" and run["env_id"] == lock_id(5) and run["config"]["horizon"] == 5
    assert result["steps"] == 400 and [p[0] for p in result["curve"]] == [200, 400]
    assert result["metrics"]["iteration"] == 2.0 and result["metrics"]["updates"] == 10.0  # 5 policies × 2
    assert 0.0 <= result["metrics"]["success_rate"] <= 1.0 and "critic_offline_loss" in result["metrics"]


def test_stationary_hnpg_runs_on_a_mujoco_env_with_discounted_targets():
    """per_step=false (MuJoCo cards): one policy and critic; y_off = r + γ(1 − d) Q(s′, a′) before the fit."""
    env = gym.make("InvertedDoublePendulum-v5")
    rng = np.random.default_rng(0)
    rows: dict[str, list] = {k: [] for k in ("obs", "act", "rew", "next", "term", "ep")}
    for ep in range(6):
        obs, _ = env.reset(seed=ep)
        for _ in range(200):
            a = rng.uniform(-1, 1, 1).astype(np.float32)
            nxt, r, term, trunc, _ = env.step(a)
            for k, v in zip(rows, (obs, a, r, nxt, term, ep)):
                rows[k].append(v)
            obs = nxt
            if term or trunc:
                break
    n = len(rows["rew"])
    data = Dataset(torch.tensor(np.array(rows["obs"])), torch.tensor(np.array(rows["act"])),
                   torch.tensor(np.array(rows["rew"]), dtype=torch.float32), torch.tensor(np.array(rows["next"])),
                   torch.tensor(rows["term"]), torch.zeros(n, dtype=torch.bool), torch.tensor(rows["ep"]),
                   "InvertedDoublePendulum-v5", env_spec(env), source="test:idp")
    algo = _hnpg("InvertedDoublePendulum-v5", per_step=False, gamma=0.9, batch_size=64, num_envs=2)
    assert len(algo.policies) == 1 and algo.rollout_length == 32 and algo.num_envs == 2
    algo.prepare(data)
    off = algo.sample_offline(0, 50)
    torch.manual_seed(3)
    target = algo.offline_target(0, off)
    torch.manual_seed(3)
    mean = algo.policies[0].mean(off["next_observations"])
    nxt = torch.normal(mean, algo.policies[0].log_std.exp().expand_as(mean))
    q = algo.critics[0](torch.cat([off["next_observations"], nxt], -1)).squeeze(-1)
    torch.testing.assert_close(target, off["rewards"] + 0.9 * (1.0 - off["dones"]) * q.detach())
    assert off["dones"].sum() > 0  # some sampled rows are terminal, so the mask is exercised
    collector = RolloutCollector(algo, "InvertedDoublePendulum-v5", seed=0, env_kwargs={})
    rollout, _ = collector.collect(algo.rollout_length)
    before = copy.deepcopy(algo.policies[0].state_dict())
    metrics = algo.update_rollout(rollout, 0)
    assert all(math.isfinite(float(v)) for v in metrics.values())
    assert any(not torch.equal(before[k], v) for k, v in algo.policies[0].state_dict().items())
    action = algo.policy()(rollout.observations[0])  # float32 observations in, float32 actions out (evaluation)
    assert action.dtype == torch.float32 and action.shape == (2, 1)


@pytest.mark.slow
def test_hnpg_with_offline_data_opens_the_lock_that_pure_npg_does_not():
    """Spec §7.8, algorithm level, on the H = 5 lock: HNPG reaches optimal-reward probability 0.5 (per iteration,
    on the training episodes) within 40k online samples; the source's HYBRID = False baseline does not."""
    from offline_rl.training.onpolicy import run_onpolicy_experiment

    rates = {}
    for hybrid in (True, False):
        result = run_onpolicy_experiment("hnpg", "lock-h5-egreedy", 0, 40_000, 40_000, 10,
                                         f"/tmp/hnpg-slow-{hybrid}-{os.getpid()}", overrides={"hybrid": hybrid},
                                         progress=False)
        rates[hybrid] = result["final_return"]
    assert rates[True] > 0.5 and rates[False] < 0.2


@pytest.mark.slow
def test_with_a_perfect_offline_dataset_the_critic_values_the_optimal_action_near_one():
    """Spec §7.8: with the lock's expert data, Q_h(s, optimal action) rises towards 1 in the good latent states as
    the policy improves (measured: mean 0.43 after 6,000 online samples, 0.76 after 15,000, on H = 3), and stays
    above the value of a wrong action."""
    from offline_rl.training.onpolicy import train_onpolicy

    H = 3
    algo = _hnpg(lock_id(H), batch_size=300)
    data = _lock_dataset(H, 300)
    data.actions[:] = torch.as_tensor(LockPolicy(lock_id(H))(data.observations.numpy()))  # perfect: no ε
    env = CombinationLock(horizon=H, combination_seed=0)

    def q_values() -> tuple[np.ndarray, np.ndarray]:
        best, wrong = [], []
        for h in range(H):
            for latent, opt in ((0, env.opt_a[h]), (1, env.opt_b[h])):
                env.state, env.h = latent, h
                s = torch.as_tensor(env._obs(), dtype=torch.float64)[None]
                actions = torch.zeros(2, 10, dtype=torch.float64)
                actions[0, opt] = actions[1, (opt + 1) % 10] = 1.0
                with torch.no_grad():
                    q = algo.q(h, s.expand(2, -1), actions)
                best.append(float(q[0]))
                wrong.append(float(q[1]))
        return np.array(best), np.array(wrong)

    train_onpolicy(algo, lock_id(H), 6000, seed=0, dataset=data, eval_every=6000, eval_episodes=5, progress=False)
    early, _ = q_values()
    train_onpolicy(algo, lock_id(H), 9000, seed=1, dataset=data, eval_every=9000, eval_episodes=5, progress=False)
    late, wrong = q_values()
    assert late.mean() > early.mean() + 0.2 and late.mean() > 0.7 and late.min() > 0.5
    assert bool((late > wrong).all())
