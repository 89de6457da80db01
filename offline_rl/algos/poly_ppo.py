"""Polychromic PPO (Hamid, Orney, Xu, Finn, Sadigh, "Polychromic Objectives for Reinforcement Learning",
arXiv:2509.25424): PPO whose advantage, near chosen rollout states, rewards sets of trajectories that are both
successful and diverse. No official code is public; this follows the paper's description (spec §6).

Set objective for n trajectories started at the same state s:   f_poly(s, τ_{1:n}) = ((1/n) Σ_i R(τ_i)) · d(s, τ_{1:n})
with d ∈ [0, 1] the diversity (`diversity = "info:<key>"`: the fraction of distinct values of the env's
`info[key]` at the trajectories' ends, e.g. the grid's path; `"none"`: d ≡ 1).

Vine sampling: after a normal rollout, pick `vine_states` states per episode, restore the env there
(`get_state` / `set_state`) and run `vines` = N trajectories with the current policy. The polychromic advantage of
vine τ is its marginal set advantage over n-subsets S of the N vines:

    A_poly(τ) = E[f_poly(S) | τ ∈ S] − E[f_poly(S)]

(exact over all C(N, n) subsets, or over `subsets` sampled ones). The vines' first `window` actions get A_poly;
their later actions and every rollout action keep the GAE advantage; one PPO clipped update runs on the union.
With d ≡ 1 the exact A_poly is (N − n) / (n (N − 1)) · (R(τ) − mean R): the group-baseline advantage, rescaled.

Set size n = 4, N = 8 vines, 2 states per trajectory and window 5 are the third-party defaults the spec quotes
(UNVERIFIED against the paper).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from offline_rl.algos.base import register
from offline_rl.algos.pg_core import Rollout, gae
from offline_rl.algos.ppo import PPO, PPOConfig
from offline_rl.data.dataset import Spec
from offline_rl.errors import ConfigError


@dataclass
class PolyPPOConfig(PPOConfig):
    set_size: int = 4
    vines: int = 8
    vine_states: int = 2
    window: int = 5
    subsets: int = 0                  # 0: enumerate every n-subset of the N vines
    diversity: str = "info:path"


def set_scores(returns: np.ndarray, labels: list[Any], subsets: list[tuple[int, ...]], diversity: bool) -> np.ndarray:
    """f_poly of each subset: mean return × (distinct labels / n) (× 1 when `diversity` is off)."""
    n = len(subsets[0])
    scores = np.array([returns[list(s)].mean() for s in subsets])
    if diversity:
        scores *= np.array([len({labels[i] for i in s}) / n for s in subsets])
    return scores


def polychromic_advantages(returns: np.ndarray, labels: list[Any], set_size: int, diversity: bool = True,
                           subsets: int = 0, rng: np.random.Generator | None = None) -> np.ndarray:
    """A_poly for each of N vines (module docstring); `subsets` > 0 samples that many n-subsets uniformly."""
    N = len(returns)
    if not 1 <= set_size <= N:
        raise ConfigError(f"poly_ppo: set_size must be in 1..{N} (the number of vines), got {set_size}")
    if subsets:
        rng = rng or np.random.default_rng(0)
        chosen = [tuple(sorted(rng.choice(N, set_size, replace=False))) for _ in range(subsets)]
    else:
        chosen = list(itertools.combinations(range(N), set_size))
    scores = set_scores(np.asarray(returns, dtype=np.float64), labels, chosen, diversity)
    baseline = scores.mean()
    out = np.zeros(N)
    for i in range(N):
        member = [k for k, s in enumerate(chosen) if i in s]
        out[i] = (scores[member].mean() - baseline) if member else 0.0
    return out


@register("poly_ppo")
class PolyPPO(PPO):
    Config = PolyPPOConfig
    needs_env_states = True

    def __init__(self, spec: Spec, config: PolyPPOConfig, device: str | torch.device = "cpu") -> None:
        super().__init__(spec, config, device)
        if config.diversity != "none" and not config.diversity.startswith("info:"):
            raise ConfigError(f"poly_ppo: diversity must be 'none' or 'info:<key>', got '{config.diversity}'")
        if config.buffer_batches != 1:
            raise ConfigError("poly_ppo: buffer_batches must be 1 (vines are on-policy)")
        self.vine_envs: list[Any] = []
        self._vine_samples = 0

    def extra_samples(self) -> int:
        return self._vine_samples

    def run_vines(self, state: Any, obs: np.ndarray, step: int) -> dict[str, Any]:
        """N vines from one rollout state: padded [L, N] arrays, an alive mask and each vine's return and label."""
        c = self.config
        if not self.vine_envs:
            self.vine_envs = [self.make_env() for _ in range(c.vines)]
        limit = self.vine_envs[0].spec.max_episode_steps if self.vine_envs[0].spec else None
        length = (limit - step) if limit else 1000
        key = c.diversity.removeprefix("info:")
        for env in self.vine_envs:
            env.reset(seed=int(torch.randint(0, 2**31 - 1, ())))
            env.unwrapped.set_state(state)
        cur = np.repeat(obs[None], c.vines, 0)
        rows: dict[str, list[np.ndarray]] = {k: [] for k in ("obs", "act", "rew", "term", "trunc", "next", "alive")}
        alive = np.ones(c.vines, dtype=bool)
        returns, labels = np.zeros(c.vines), [None] * c.vines
        for t in range(length):
            with torch.no_grad():
                actions = self.actor.dist(torch.as_tensor(cur, dtype=torch.float32, device=self.device)).sample()
            nxt = cur.copy()
            rew, term = np.zeros(c.vines), np.zeros(c.vines, dtype=bool)
            for i, env in enumerate(self.vine_envs):
                if alive[i]:
                    nxt[i], rew[i], term[i], _, info = env.unwrapped.step(actions[i].cpu().numpy())
                    labels[i] = info.get(key) if key != "none" else None
            trunc = alive & ~term & (t == length - 1)
            for k, v in zip(rows, (cur, actions.cpu().numpy(), rew, term, trunc, nxt, alive.copy())):
                rows[k].append(v)
            returns += rew * alive
            alive &= ~term & ~trunc
            cur = nxt
            if not alive.any():
                break
        out = {k: np.stack(v) for k, v in rows.items()}
        out["returns"], out["labels"] = returns, labels
        return out

    def update_rollout(self, rollout: Rollout, iteration: int) -> dict[str, torch.Tensor]:
        c = self.config
        values, adv, returns = self.advantages(rollout)
        obs, actions = [rollout.flat("observations")], [rollout.flat("actions")]
        vals, advs, rets = [values.reshape(-1)], [adv.reshape(-1)], [returns.reshape(-1)]
        self._vine_samples = 0
        poly = []
        assert rollout.env_states is not None
        for t, n in self.vine_starts(rollout):
            vine = self.run_vines(rollout.env_states[t][n], rollout.observations[t, n].cpu().numpy(),
                                  int(rollout.timesteps[t, n]))
            a_poly = polychromic_advantages(vine["returns"], vine["labels"], c.set_size, c.diversity != "none",
                                            c.subsets, np.random.default_rng(int(torch.randint(0, 2**31 - 1, ()))))
            poly.append(np.abs(a_poly).mean())
            alive = torch.as_tensor(vine["alive"], device=self.device)
            self._vine_samples += int(alive.sum())
            v_obs = torch.as_tensor(vine["obs"], dtype=torch.float32, device=self.device)
            v_next = torch.as_tensor(vine["next"], dtype=torch.float32, device=self.device)
            v_rew, v_term, v_trunc = (torch.as_tensor(vine[k], dtype=torch.float32, device=self.device)
                                      for k in ("rew", "term", "trunc"))
            with torch.no_grad():
                v_val, v_next_val = self.value(v_obs), self.value(v_next)
            end = torch.maximum(torch.maximum(v_term, v_trunc), (~alive).float())
            end[-1] = 1.0
            v_adv, v_ret = gae(v_rew, v_val, v_next_val, v_term, end, c.gamma, c.gae_lambda)
            in_window = (torch.arange(v_adv.shape[0], device=self.device) < c.window)[:, None].expand_as(v_adv)
            v_adv = torch.where(in_window, torch.as_tensor(a_poly, dtype=torch.float32, device=self.device), v_adv)
            mask = alive.reshape(-1)
            obs.append(v_obs.reshape(-1, v_obs.shape[-1])[mask])
            actions.append(torch.as_tensor(vine["act"], device=self.device).reshape(-1, *rollout.actions.shape[2:])[mask])
            vals.append(v_val.reshape(-1)[mask])
            advs.append(v_adv.reshape(-1)[mask])
            rets.append(v_ret.reshape(-1)[mask])
        data = Rollout(torch.cat(obs)[:, None], torch.cat(actions)[:, None], *(torch.zeros(1) for _ in range(5)))
        metrics = self.ppo_epochs(data, torch.cat(vals)[:, None], torch.cat(advs)[:, None], torch.cat(rets)[:, None])
        metrics["vine_samples"] = torch.tensor(float(self._vine_samples))
        metrics["poly_advantage"] = torch.tensor(float(np.mean(poly)) if poly else 0.0)
        return metrics

    def vine_starts(self, rollout: Rollout) -> list[tuple[int, int]]:
        """`vine_states` distinct steps of each episode in the rollout (uniform), as (t, env) pairs."""
        starts = []
        T, N = rollout.shape
        end = rollout.episode_end
        for n in range(N):
            t0 = 0
            for t in range(T):
                if end[t, n]:
                    k = min(self.config.vine_states, t - t0 + 1)
                    picks = torch.randperm(t - t0 + 1)[:k] + t0
                    starts += [(int(p), n) for p in sorted(picks.tolist())]
                    t0 = t + 1
        return starts


def pass_at_k(successes: int, samples: int, k: int) -> float:
    """The unbiased pass@k estimate from `samples` attempts with `successes` successes: 1 − C(n−c, k) / C(n, k)."""
    if samples - successes < k:
        return 1.0
    return 1.0 - math.comb(samples - successes, k) / math.comb(samples, k)
