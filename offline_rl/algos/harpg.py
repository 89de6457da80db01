"""(N)-HARPG: Hessian-aided recursive policy gradient (Fatkhullin, Barakat, Kireeva, He, ICML 2023,
Algorithm 2). Two trajectories per iteration, sub-env 0 at θ_t and sub-env 1 at a random point of the last step:

    q_t ~ U[0, 1];   θ̂_t = q_t θ_t + (1 − q_t) θ_{t−1}
    τ_t ~ π_{θ_t};   τ̂_t ~ π_{θ̂_t}
    v_t = B(τ̂_t, θ̂_t)(θ_t − θ_{t−1}),   B(τ, θ) = ∇Φ(τ, θ) ∇log p(τ|θ)ᵀ + ∇²Φ(τ, θ)
    d_t = (1 − η_t)(d_{t−1} + v_t) + η_t g(τ_t, θ_t)
    θ_{t+1} = θ_t + γ_t d_t / ‖d_t‖      (N-HARPG, `normalized = true`, the default)
    θ_{t+1} = θ_t + γ_t d_t              (HARPG)

v_t is a Hessian-vector product by two autograd passes: ∇Φ·(∇log p · Δ) + ∇(∇Φ · Δ), Δ = θ_t − θ_{t−1}
(log p(τ|θ) = Σ_k log π_θ(a_k|s_k): the dynamics do not depend on θ). η_0 = 1, so d_0 = g_0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from offline_rl.algos.base import register
from offline_rl.algos.gpomdp import GPOMDPConfig, TrajectoryPG
from offline_rl.algos.pg_core import Rollout, flat_params, set_flat_params
from offline_rl.errors import ConfigError


@dataclass
class HARPGConfig(GPOMDPConfig):
    normalized: bool = True
    trajectories: int = 2


def hessian_vector(phi: torch.Tensor, log_p: torch.Tensor, params: list[nn.Parameter],
                   delta: torch.Tensor) -> torch.Tensor:
    """B(τ, θ)·Δ = ∇Φ (∇log p · Δ) + ∇²Φ Δ."""
    grad_phi = torch.cat([g.reshape(-1) for g in torch.autograd.grad(phi, params, create_graph=True)])
    grad_log_p = torch.cat([g.reshape(-1) for g in torch.autograd.grad(log_p, params, retain_graph=True)])
    hess_delta = torch.cat([g.reshape(-1) for g in torch.autograd.grad(grad_phi @ delta, params)])
    return grad_phi.detach() * (grad_log_p @ delta) + hess_delta


@register("harpg")
class HARPG(TrajectoryPG):
    Config = HARPGConfig

    def __init__(self, spec, config: HARPGConfig, device="cpu") -> None:
        super().__init__(spec, config, device)
        if config.trajectories != 2:
            raise ConfigError(f"harpg samples two trajectories per iteration (trajectories=2), got {config.trajectories}")

    def sampler(self, env_index: int) -> nn.Module:
        return self.actor if env_index == 0 else self.probe  # θ_t and θ̂_t

    def update_rollout(self, rollout: Rollout, iteration: int) -> dict[str, torch.Tensor]:
        t = int(self.t)
        eta = self.momentum(t)
        g = self.gradient(self.actor, rollout, slice(0, 1))                 # g(τ_t, θ_t)
        metrics = {"grad_norm": g.norm().detach(), "return": self.episode_return(rollout)}
        if t == 0:
            self.direction.copy_(g)
        else:
            theta = flat_params(self.params(self.actor))
            phi, log_p = self.phi(self.probe, rollout, slice(1, 2))          # at θ̂_t, on τ̂_t
            v = hessian_vector(phi, log_p, self.params(self.probe), theta - self.theta_prev)
            self.direction.add_(v).mul_(1.0 - eta).add_(eta * g)
            metrics["correction_norm"] = v.norm().detach()
        theta = self.ascend(self.direction)
        q = float(torch.rand(()))                                            # θ̂_{t+1} for the next iteration
        set_flat_params(self.params(self.probe), q * flat_params(self.params(self.actor)) + (1.0 - q) * theta)
        return metrics
