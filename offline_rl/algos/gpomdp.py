"""GPOMDP / REINFORCE with the baseline-free trajectory estimator, and the base of the momentum variants
N-PG-IGT and (N)-HARPG (Fatkhullin, Barakat, Kireeva, He, ICML 2023, arXiv:2302.01734).

For a trajectory τ = (s_0, a_0, r_0, …) the estimator is g(τ, θ) = ∇_θ Φ(τ, θ) with

    Φ(τ, θ) = Σ_t γ^t r_t Σ_{k≤t} log π_θ(a_k|s_k) = Σ_k log π_θ(a_k|s_k) · Σ_{t≥k} γ^t r_t

(rewards carry no gradient; t counts from the episode's start). Each iteration samples whole episodes of the
env's length (`horizon`, from its time limit) and ascends J(θ) = E Σ γ^t r_t:

    θ_{t+1} = θ_t + γ_t · g / ‖g‖  (`normalized`),   or   θ_t + γ_t · g,     γ_t = lr · (t + 1)^(−lr_power)

The policy is a Gaussian with a fixed σ (`learn_std = False` by default): with `hidden = ()` and no bias, the
linear-Gaussian a = W s + σ ξ of the LQR benchmark (K = −W). `policy()` is the iterate θ_t; the momentum variants
sample from other points (θ̃, θ̂) through `probe`, a second copy of the network.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from offline_rl.algos.base import register
from offline_rl.algos.pg_core import OnPolicyAlgorithm, Rollout, flat_params, set_flat_params
from offline_rl.data.dataset import Spec
from offline_rl.errors import ConfigError
from offline_rl.nets.policies import GaussianPolicy


@dataclass
class GPOMDPConfig:
    """Defaults for the LQR benchmark (`offline_rl/LQR-v0`); see `algos/gpomdp.toml`."""

    gamma: float = 0.8
    lr: float = 0.05
    lr_power: float = 0.5             # γ_t = lr·(t + 1)^(−lr_power)
    normalized: bool = False
    eta: float = 0.2                  # momentum η_t (the variants): constant, as the spec suggests (0.1-0.5)
    eta_power: float = 0.0            # η_t = min(1, eta·(t + 1)^(−eta_power)) for t ≥ 1; η_0 = 1
    trajectories: int = 1             # episodes per iteration (one sub-env each)
    horizon: int = 0                  # the episode length T (from the env's time limit)
    hidden: tuple[int, ...] = ()
    bias: bool = False
    log_std_init: float = math.log(0.5)
    learn_std: bool = False
    activation: str = "tanh"
    init: str = "torch"
    head_scale: float = 1.0


def gpomdp_weights(rewards: torch.Tensor, timesteps: torch.Tensor, episode_end: torch.Tensor,
                   gamma: float) -> torch.Tensor:
    """w_k = Σ_{t ≥ k, same episode} γ^{h_t} r_t, for [T, N] rollouts (h_t = the step within the episode)."""
    discounted = gamma ** timesteps.to(rewards.dtype) * rewards
    weights = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[0])
    for t in range(rewards.shape[0] - 1, -1, -1):
        running = discounted[t] + (1.0 - episode_end[t]) * running
        weights[t] = running
    return weights


class TrajectoryPG(OnPolicyAlgorithm):
    """Shared by GPOMDP, N-PG-IGT and HARPG: the policy, its probe copy, Φ and the step-size schedules."""

    Config = GPOMDPConfig

    def __init__(self, spec: Spec, config: GPOMDPConfig, device: str | torch.device = "cpu") -> None:
        super().__init__(spec, config, device)
        c = config
        if c.horizon < 1:
            raise ConfigError(f"{self.name}: needs the episode length (an env with a time limit, or --set horizon=T)")
        self.actor = GaussianPolicy(spec.obs_dim, spec.act_dim, c.hidden, c.activation, c.init, c.head_scale,
                                    c.log_std_init, c.learn_std, c.bias)
        self.probe = copy.deepcopy(self.actor)
        n = sum(p.numel() for p in self.params(self.actor))
        self.register_buffer("theta_prev", torch.zeros(n))
        self.register_buffer("direction", torch.zeros(n))
        self.register_buffer("t", torch.zeros((), dtype=torch.long))
        self._updates = 0

    @classmethod
    def env_defaults(cls, env: Any) -> dict[str, Any]:
        steps = getattr(env.spec, "max_episode_steps", None) if env.spec is not None else None
        return {"horizon": int(steps)} if steps else {}

    @property
    def num_envs(self) -> int:
        return self.config.trajectories

    @property
    def rollout_length(self) -> int:
        return self.config.horizon

    @staticmethod
    def params(module: nn.Module) -> list[nn.Parameter]:
        return [p for p in module.parameters() if p.requires_grad]

    def sampler(self, env_index: int) -> nn.Module:
        """The network that acts in sub-env `env_index` (the iterate θ_t unless a variant says otherwise)."""
        return self.actor

    def act(self, obs: torch.Tensor, timesteps: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return torch.stack([self.sampler(i).dist(obs[i:i + 1]).sample()[0] for i in range(obs.shape[0])]), {}

    def phi(self, module: nn.Module, rollout: Rollout, columns: slice) -> tuple[torch.Tensor, torch.Tensor]:
        """(Φ, log p(τ|θ) = Σ log π) for the episodes in sub-envs `columns`, averaged over those episodes."""
        weights = gpomdp_weights(rollout.rewards, rollout.timesteps, rollout.episode_end, self.config.gamma)
        obs, actions = rollout.observations[:, columns], rollout.actions[:, columns]
        log_prob = module.dist(obs).log_prob(actions)
        episodes = max(1, int((rollout.timesteps[:, columns] == 0).sum()))
        return (log_prob * weights[:, columns]).sum() / episodes, log_prob.sum() / episodes

    def gradient(self, module: nn.Module, rollout: Rollout, columns: slice) -> torch.Tensor:
        """g(τ, θ) = ∇Φ at the module's parameters."""
        phi, _ = self.phi(module, rollout, columns)
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(phi, self.params(module))])

    def step_size(self) -> float:
        c = self.config
        return c.lr * (int(self.t) + 1) ** (-c.lr_power)

    def momentum(self, t: int) -> float:
        """η_t; η_0 = 1 (the first direction is the first gradient)."""
        c = self.config
        return 1.0 if t == 0 else min(1.0, c.eta * (t + 1) ** (-c.eta_power))

    def ascend(self, direction: torch.Tensor) -> torch.Tensor:
        """θ_{t+1} = θ_t + γ_t · d (/‖d‖ when normalized); returns θ_t and advances t."""
        theta = flat_params(self.params(self.actor))
        scale = self.step_size() / (float(direction.norm()) + 1e-12 if self.config.normalized else 1.0)
        set_flat_params(self.params(self.actor), theta + scale * direction)
        self.theta_prev.copy_(theta)
        self.t += 1
        self._updates += 1
        return theta

    def update_rollout(self, rollout: Rollout, iteration: int) -> dict[str, torch.Tensor]:
        g = self.gradient(self.actor, rollout, slice(None))
        self.ascend(g)
        return {"grad_norm": g.norm().detach(), "return": self.episode_return(rollout)}

    @staticmethod
    def episode_return(rollout: Rollout) -> torch.Tensor:
        episodes = max(1, int((rollout.timesteps == 0).sum()))
        return rollout.rewards.sum() / episodes

    def policy(self) -> nn.Module:
        return self.actor


@register("gpomdp")
class GPOMDP(TrajectoryPG):
    """Vanilla GPOMDP (normalized=true: normalised policy gradient), the baseline of the LQR benchmark."""
