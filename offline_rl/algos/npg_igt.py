"""N-PG-IGT: normalised policy gradient with implicit gradient transport (Fatkhullin, Barakat, Kireeva, He,
ICML 2023, Algorithm 1; IGT as in Cutkosky & Mehta 2020). One trajectory per iteration:

    θ̃_t     = θ_t + ((1 − η_t) / η_t) · (θ_t − θ_{t−1})       (the point the trajectory is sampled at)
    τ_t     ~ π_{θ̃_t}
    d_t     = (1 − η_t) · d_{t−1} + η_t · g(τ_t, θ̃_t)
    θ_{t+1} = θ_t + γ_t · d_t / ‖d_t‖

with g the GPOMDP estimator (`offline_rl.algos.gpomdp`). η_0 = 1, so d_0 = g_0 and θ̃_0 = θ_0. The paper's
decaying schedules are not reproduced (UNVERIFIED in the spec); η_t and γ_t follow the config's power laws.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from offline_rl.algos.base import register
from offline_rl.algos.gpomdp import GPOMDPConfig, TrajectoryPG
from offline_rl.algos.pg_core import Rollout, flat_params, set_flat_params


@dataclass
class NPGIGTConfig(GPOMDPConfig):
    normalized: bool = True


@register("npg_igt")
class NPGIGT(TrajectoryPG):
    Config = NPGIGTConfig

    def sampler(self, env_index: int) -> nn.Module:
        return self.probe  # θ̃_t

    def update_rollout(self, rollout: Rollout, iteration: int) -> dict[str, torch.Tensor]:
        t = int(self.t)
        eta = self.momentum(t)
        g = self.gradient(self.probe, rollout, slice(None))  # g(τ_t, θ̃_t)
        self.direction.mul_(1.0 - eta).add_(eta * g)
        theta = self.ascend(self.direction)                   # θ_{t+1}; θ_t kept in theta_prev
        new = flat_params(self.params(self.actor))
        eta_next = self.momentum(t + 1)
        set_flat_params(self.params(self.probe), new + (1.0 - eta_next) / eta_next * (new - theta))
        return {"grad_norm": g.norm().detach(), "direction_norm": self.direction.norm().clone(),
                "return": self.episode_return(rollout)}
