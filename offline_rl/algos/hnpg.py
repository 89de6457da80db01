"""HNPG: Hybrid Natural Policy Gradient (Zhou, Sekhari, Song, Sun, "Offline Data Enhanced On-Policy Policy
Gradient with Provable Guarantees", ICLR 2024), following `YifeiZhou02/HNPG` `main.py` / `trpo.py`.

NPG whose critic is fitted on offline and on-policy data together (HPE, "hybrid fitted policy evaluation"):
π_h^{t+1} ∝ π_h^t · exp(η A_h^t), implemented by a TRPO step. One policy π_h and one critic Q_h per step
h = 0 … H−1 (`per_step`, the source's FINITE = True), all float64. One iteration:

1. Online data: whole episodes with the current π until `batch_size` steps (⌈batch/H⌉ episodes in parallel).
2. V_h(s) = (1/10) Σ_{k=1..10} Q_h(s, a_k), a_k ~ π_h(s); GAE with γ = 1 (hard-coded in the source) and λ = 0.97
   gives Monte-Carlo returns R and advantages Â.
3. For each h, sample |online batch| // H offline transitions (s, a, r, s′) of step h.
4. HPE critic fit, backwards over h = H−1 … 0, each from a **fresh** Adam (lr 3e-4), 30 full-batch steps of
       L_h = mean((Q_h(s, a) − R)²)  +  mean((Q_h(s_off, a_off) − y_off)²)         (the second term iff `hybrid`)
       y_off = r  at h = H−1,   else  r + Q_{h+1}(s′, a′),  a′ ~ π_{h+1}(s′)         (no target net, no mask)
   (the source's l2 term adds only the last parameter's norm, a loop bug kept here; l2_reg = 0 anyway).
5. Recompute V and Â with the new critics.
6. Offline advantages at **fresh** actions a ~ π_h(s_off): A_off = Q_h(s_off, a) − V_h(s_off).
7. For each h one TRPO step on the online (s, a, Â) ∪ offline (s_off, a, A_off):
       surrogate −mean(A · exp(log π − log π_old)), F·v = ∇²KL̄(π_old ‖ π)·v + 0.1 v, 10 CG steps on F x = −g,
       full step x / √(½ xᵀF x / 0.01), backtracking ×½ up to 10 times accepting ratio > 0.1 and a decrease > 0
       (no KL check), advantages not normalised.

`hybrid = False` is the source's HYBRID = False baseline: the same on-policy NPG/TRPO with a critic fitted on the
online returns only and no offline states in the actor step. `per_step = False` shares one policy and one critic
over all steps (for MuJoCo cards): γ and the (1 − d) mask then apply, y_off = r + γ(1 − d) Q(s′, a′) with the
critic as it was before the fit, and truncated rollouts bootstrap from V.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.linalg
import torch
from torch import nn

from offline_rl.algos.base import register
from offline_rl.algos.pg_core import (
    OnPolicyAlgorithm,
    Rollout,
    discounted_returns,
    gae,
    line_search,
    mean_kl_to,
    natural_step,
)
from offline_rl.data.dataset import Dataset, Spec
from offline_rl.errors import ConfigError, DatasetError
from offline_rl.nets.mlp import mlp
from offline_rl.nets.policies import GaussianPolicy, init_mlp


@dataclass
class HNPGConfig:
    """`utils.parse_args` defaults of the HNPG source; see `algos/hnpg.toml` for each value's origin."""

    batch_size: int = 1000
    tau: float = 0.97                 # GAE λ
    gamma: float = 1.0                # hard-coded in trpo.py (its --gamma 0.995 is unused)
    max_kl: float = 0.01
    damping: float = 0.1
    l2_reg: float = 0.0
    cg_iters: int = 10
    max_backtracks: int = 10
    accept_ratio: float = 0.1
    critic_lr: float = 3e-4
    critic_steps: int = 30
    value_samples: int = 10
    hybrid: bool = True               # False: the source's HYBRID = False (no offline data)
    per_step: bool = True             # the source's FINITE = True: a policy and a critic per step h
    horizon: int = 0                  # H; read from the env (its `horizon`) when per_step
    num_envs: int = 1                 # sub-envs when not per_step (per_step runs ⌈batch/H⌉ episodes at once)
    policy_hidden: tuple[int, ...] = (16, 16)
    critic_hidden: tuple[int, ...] = (64, 64)
    step_readout: str = "lock"        # how `policy()` reads h from an observation (per_step): the lock's code


class StepwisePolicy(nn.Module):
    """The deterministic per-step policy obs → μ_h(obs), with h read from the observation by a linear readout
    (h = argmax obs·M). For the lock, M = (Hadamard / n)[:, 3:3+H]: the time one-hot under the rotation."""

    def __init__(self, policies: nn.ModuleList, readout: torch.Tensor) -> None:
        super().__init__()
        self.policies = policies
        self.register_buffer("readout", readout)

    def steps(self, obs: torch.Tensor) -> torch.Tensor:
        return (obs.to(self.readout.dtype) @ self.readout).argmax(-1)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        h = self.steps(obs)
        x = obs.to(self.readout.dtype)
        out = torch.zeros(obs.shape[0], self.policies[0].log_std.shape[0], dtype=x.dtype, device=x.device)
        for g in h.unique().tolist():
            rows = h == g
            out[rows] = self.policies[g](x[rows])
        return out.to(obs.dtype)


class Float64Policy(nn.Module):
    """The stationary deterministic policy μ(s) of `per_step = false`: computed in float64 like the networks."""

    def __init__(self, policy: nn.Module) -> None:
        super().__init__()
        self.policy = policy

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.policy(obs.to(torch.float64)).to(obs.dtype)


def lock_readout(obs_dim: int, horizon: int) -> torch.Tensor:
    """M with argmax(obs·M) = h for combination-lock observations (undo the Hadamard, take the time coordinates)."""
    if obs_dim < horizon + 3 or obs_dim & (obs_dim - 1):
        raise ConfigError(f"hnpg: step_readout 'lock' needs lock observations (a power of two ≥ H + 3), got "
                          f"obs_dim {obs_dim} for H = {horizon}")
    return torch.as_tensor(scipy.linalg.hadamard(obs_dim)[:, 3:3 + horizon] / obs_dim, dtype=torch.float64)


@register("hnpg")
class HNPG(OnPolicyAlgorithm):
    Config = HNPGConfig

    def __init__(self, spec: Spec, config: HNPGConfig, device: str | torch.device = "cpu") -> None:
        super().__init__(spec, config, device)
        c = config
        if c.per_step and c.horizon < 1:
            raise ConfigError("hnpg: per-step networks need the horizon H (a finite-horizon env with `horizon`, or "
                              "--set horizon=H); set per_step=false for a stationary policy")
        groups = c.horizon if c.per_step else 1
        self.policies = nn.ModuleList(
            GaussianPolicy(spec.obs_dim, spec.act_dim, c.policy_hidden, "tanh", "torch", 0.1, 0.0)
            for _ in range(groups)).double()
        self.critics = nn.ModuleList(
            init_mlp(mlp(spec.obs_dim + spec.act_dim, 1, c.critic_hidden, nn.Tanh), "torch", 0.1)
            for _ in range(groups)).double()
        self.groups = groups
        self.offline: list[dict[str, torch.Tensor]] = []
        self.readout = lock_readout(spec.obs_dim, c.horizon) if c.per_step and c.step_readout == "lock" else None
        if c.per_step and c.step_readout != "lock":
            raise ConfigError(f"hnpg: unknown step_readout '{c.step_readout}' (lock)")
        self._updates = 0

    @classmethod
    def env_defaults(cls, env: Any) -> dict[str, Any]:
        horizon = getattr(env.unwrapped, "horizon", None)
        return {"horizon": int(horizon)} if horizon else {}

    @property
    def num_envs(self) -> int:
        c = self.config
        return -(-c.batch_size // c.horizon) if c.per_step else c.num_envs

    @property
    def rollout_length(self) -> int:
        c = self.config
        return c.horizon if c.per_step else -(-c.batch_size // c.num_envs)

    def group(self, h: torch.Tensor) -> torch.Tensor:
        """The network index of step h: h itself (per_step) or 0."""
        return h.clamp(max=self.groups - 1) if self.config.per_step else torch.zeros_like(h)

    # ---- data ----------------------------------------------------------------------------------------------

    def prepare(self, dataset: Dataset) -> None:
        """Split the offline data into per-step buffers: h = the row's position within its episode."""
        if not self.config.hybrid:
            return
        ids = dataset.episode_ids.cpu().numpy()
        first = np.zeros(len(ids), dtype=np.int64)
        starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
        first[starts] = starts
        h = np.arange(len(ids)) - np.maximum.accumulate(first)
        if self.config.per_step and h.max() >= self.config.horizon:
            raise DatasetError(f"{dataset.source}: episodes of up to {h.max() + 1} steps, but hnpg's horizon is "
                               f"{self.config.horizon}")
        groups = np.minimum(h, self.groups - 1) if self.config.per_step else np.zeros_like(h)
        as64 = {k: getattr(dataset, k).to(self.device, torch.float64) for k in
                ("observations", "actions", "rewards", "next_observations")}
        dones = dataset.terminals.to(self.device, torch.float64)
        self.offline = []
        for g in range(self.groups):
            rows = torch.as_tensor(np.flatnonzero(groups == g), device=self.device)
            if len(rows) == 0:
                raise DatasetError(f"{dataset.source}: no offline transitions at step {g}")
            self.offline.append({**{k: v[rows] for k, v in as64.items()}, "dones": dones[rows]})

    def sample_offline(self, g: int, n: int) -> dict[str, torch.Tensor]:
        """n uniform draws (with replacement) from step g's buffer (`ReplayBuffer.sample` in the source)."""
        buf = self.offline[g]
        idx = torch.randint(0, buf["rewards"].shape[0], (n,), device=self.device)
        return {k: v[idx] for k, v in buf.items()}

    # ---- networks ------------------------------------------------------------------------------------------

    def q(self, g: int, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return self.critics[g](torch.cat([obs, actions], -1)).squeeze(-1)

    @torch.no_grad()
    def v(self, g: int, obs: torch.Tensor) -> torch.Tensor:
        """V_g(s) = mean of Q_g(s, a_k) over `value_samples` actions a_k ~ π_g(s) (`QValue.get_value`)."""
        dist = self.policies[g].dist(obs)
        return torch.stack([self.q(g, obs, dist.sample()) for _ in range(self.config.value_samples)]).mean(0)

    def act(self, obs: torch.Tensor, timesteps: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x = obs.double()
        groups = self.group(timesteps)
        actions = torch.zeros(obs.shape[0], self.spec.act_dim, dtype=torch.float64, device=obs.device)
        for g in groups.unique().tolist():
            rows = groups == g
            actions[rows] = self.policies[g].dist(x[rows]).sample()
        return actions.float(), {}

    def values(self, obs: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(groups.shape, dtype=torch.float64, device=obs.device)
        for g in groups.unique().tolist():
            rows = groups == g
            out[rows] = self.v(g, obs[rows])
        return out

    def returns_and_advantages(self, r: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(Monte-Carlo returns R, GAE advantages Â) [T, N] under the current critics (steps 2 and 5)."""
        c = self.config
        values = self.values(r["obs"], r["groups"])
        # V(s′_t) is V(s_{t+1}) inside an episode (the same samples, as in the source); where an episode is cut
        # without terminating (time limit, rollout end) it is V of the true last observation. At terminations
        # it is masked by GAE and the returns.
        next_values = torch.zeros_like(values)
        next_values[:-1] = values[1:]
        cut = (r["end"] * (1.0 - r["term"])).bool()
        if cut.any():
            next_values[cut] = self.values(r["next_obs"][cut], self.group(r["steps"][cut] + 1))
        adv, _ = gae(r["rewards"], values, next_values, r["term"], r["end"], c.gamma, c.tau)
        returns = discounted_returns(r["rewards"], r["term"], r["end"], c.gamma, next_values)
        return returns, adv

    # ---- the iteration -------------------------------------------------------------------------------------

    def update_rollout(self, rollout: Rollout, iteration: int) -> dict[str, torch.Tensor]:
        c = self.config
        r = {"obs": rollout.observations.double(), "actions": rollout.actions.double(),
             "rewards": rollout.rewards.double(), "term": rollout.terminated.double(),
             "end": rollout.episode_end.double(), "next_obs": rollout.next_observations.double(),
             "steps": rollout.timesteps, "groups": self.group(rollout.timesteps)}
        if c.hybrid and not self.offline:
            raise ConfigError("hnpg: hybrid=true needs the offline dataset (train on a dataset card, or set "
                              "hybrid=false)")
        returns, _ = self.returns_and_advantages(r)
        n_off = rollout.rewards.numel() // self.groups
        offline = [self.sample_offline(g, n_off) for g in range(self.groups)] if c.hybrid else []

        on_losses, off_losses = [], []
        for g in reversed(range(self.groups)):  # HPE, backwards over h
            rows = r["groups"] == g
            off = offline[g] if c.hybrid else None
            target = self.offline_target(g, off) if off is not None else None
            on_loss, off_loss = self.fit_critic(g, r["obs"][rows], r["actions"][rows], returns[rows], off, target)
            on_losses.append(on_loss)
            off_losses.append(off_loss)

        _, adv = self.returns_and_advantages(r)
        metrics: dict[str, list[torch.Tensor]] = {"surrogate_before": [], "surrogate_after": [], "accepted": []}
        for g in range(self.groups):
            rows = r["groups"] == g
            obs, actions, a = r["obs"][rows], r["actions"][rows], adv[rows]
            if c.hybrid:
                off_obs = offline[g]["observations"]
                with torch.no_grad():
                    off_actions = self.policies[g].dist(off_obs).sample()  # fresh on-policy actions at offline s
                    off_adv = self.q(g, off_obs, off_actions) - self.v(g, off_obs)
                obs, actions, a = torch.cat([obs, off_obs]), torch.cat([actions, off_actions]), torch.cat([a, off_adv])
            before, after, accepted = self.trpo_step(g, obs, actions, a)
            metrics["surrogate_before"].append(before)
            metrics["surrogate_after"].append(after)
            metrics["accepted"].append(accepted)
        out = {k: torch.stack(v).mean().float() for k, v in metrics.items()}
        out["critic_online_loss"] = torch.stack(on_losses).mean().float()
        if c.hybrid:
            out["critic_offline_loss"] = torch.stack(off_losses).mean().float()
        return out

    @torch.no_grad()
    def offline_target(self, g: int, off: dict[str, torch.Tensor]) -> torch.Tensor:
        """y_off for step g's offline batch (step 4 of the module docstring)."""
        c = self.config
        if c.per_step:
            if g == self.groups - 1:
                return off["rewards"]
            next_actions = self.policies[g + 1].dist(off["next_observations"]).sample()
            return off["rewards"] + self.q(g + 1, off["next_observations"], next_actions)
        next_actions = self.policies[0].dist(off["next_observations"]).sample()
        return off["rewards"] + c.gamma * (1.0 - off["dones"]) * self.q(0, off["next_observations"], next_actions)

    def fit_critic(self, g: int, obs: torch.Tensor, actions: torch.Tensor, returns: torch.Tensor,
                   off: dict[str, torch.Tensor] | None, target: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """`critic_steps` full-batch Adam steps from a fresh optimiser on the HPE loss (`TRPO.update_q`)."""
        c = self.config
        critic = self.critics[g]
        opt = torch.optim.Adam(critic.parameters(), lr=c.critic_lr)
        last_param = list(critic.parameters())[-1]
        inputs, n_on = torch.cat([obs, actions], -1), obs.shape[0]
        if off is not None and target is not None:  # one forward pass over the online and offline rows
            inputs = torch.cat([inputs, torch.cat([off["observations"], off["actions"]], -1)])
        off_loss = torch.zeros((), dtype=torch.float64, device=obs.device)
        for _ in range(c.critic_steps):
            q = critic(inputs).squeeze(-1)
            on_loss = (q[:n_on] - returns).pow(2).mean()
            loss = on_loss + last_param.pow(2).sum() * c.l2_reg  # the source's loop adds only the last parameter
            if target is not None:
                off_loss = (q[n_on:] - target).pow(2).mean()
                loss = loss + off_loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return on_loss.detach(), off_loss.detach()

    def trpo_step(self, g: int, obs: torch.Tensor, actions: torch.Tensor,
                  adv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One natural-gradient step with the source's line search for π_g (`update_policy`, `trpo_step`)."""
        c = self.config
        policy = self.policies[g]
        params = list(policy.parameters())
        with torch.no_grad():
            old_log_prob = policy.dist(obs).log_prob(actions)

        def surrogate() -> torch.Tensor:
            return -(adv * (policy.dist(obs).log_prob(actions) - old_log_prob).exp()).mean()

        loss = surrogate()
        step = natural_step(loss, mean_kl_to(policy, obs), params, c.max_kl, c.damping, c.cg_iters)
        accepted, _ = line_search(params, surrogate, step, c.max_backtracks, c.accept_ratio)
        self._updates += 1
        with torch.no_grad():
            after = surrogate()
        return loss.detach(), after, torch.tensor(float(accepted), dtype=torch.float64)

    def policy(self) -> nn.Module:
        """The deterministic policy μ_h(s); per step, h is read from the observation (`StepwisePolicy`)."""
        if self.readout is None:
            return Float64Policy(self.policies[0])
        return StepwisePolicy(self.policies, self.readout.to(self.device))
