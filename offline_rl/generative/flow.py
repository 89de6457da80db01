"""Flow matching (Lipman et al. 2023; rectified flow) with an Euler ODE sampler, and the flow policy it trains.

Convention (the AWM code's): t = 0 is data and t = 1 is noise,
    x_t = (1 − t)·x₀ + t·ε,   target velocity u = ε − x₀,   ℓ(x₀) = mean_dims ‖v(x_t, t | c) − u‖²,
and sampling integrates dx/dt = v from t = 1 (x = ε) down to t = 0 with Euler steps x ← x − Δt·v(x, t | c).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from offline_rl.generative.nets import DenoiserMLP

VelocityField = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]
"""v(x_t, t, cond) -> velocity, t of shape [B]."""


def flow_matching_loss(velocity: VelocityField, x0: torch.Tensor, cond: torch.Tensor | None = None,
                       weights: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """mean_b w_b·ℓ_b with ℓ_b = mean_dims (v(x_t, t | c) − (ε − x₀))², t ~ U(0, 1), ε ~ N(0, I); w = 1 by default."""
    t = torch.rand(x0.shape[0], generator=generator, device=x0.device)
    eps = torch.randn(x0.shape, generator=generator, device=x0.device)
    tt = t.unsqueeze(-1)
    x_t = (1.0 - tt) * x0 + tt * eps
    per_sample = (velocity(x_t, t, cond) - (eps - x0)).pow(2).mean(-1)
    return per_sample.mean() if weights is None else (weights * per_sample).mean()


def flow_sample(velocity: VelocityField, noise: torch.Tensor, steps: int = 10,
                cond: torch.Tensor | None = None) -> torch.Tensor:
    """Integrate from t = 1 (x = `noise`) to t = 0 with `steps` Euler steps of size 1/steps."""
    x = noise
    dt = 1.0 / steps
    for k in range(steps):
        t = torch.full((x.shape[0],), 1.0 - k * dt, device=x.device, dtype=x.dtype)
        x = x - dt * velocity(x, t, cond)
    return x


class FlowPolicy(nn.Module):
    """π(s): the action a flow over normalised actions a/max_action produces, conditioned on the normalised state.

    `velocity(x, t, obs)` takes raw observations (so policies with their own normalisers compose); `forward(obs)`
    integrates from fixed zero noise (deterministic: evaluation and export) or, with `noise="sample"`, from fresh
    Gaussian noise; actions are clipped to [−1, 1] and scaled by max_action.
    """

    def __init__(self, normalizer: nn.Module, obs_dim: int, act_dim: int, max_action: float,
                 hidden: tuple[int, ...] = (256, 256, 256), emb_dim: int = 0, steps: int = 10,
                 noise: str = "zero") -> None:
        super().__init__()
        if noise not in ("zero", "sample"):
            raise ValueError(f"noise must be 'zero' or 'sample', got {noise!r}")
        self.normalizer = normalizer
        self.net = DenoiserMLP(act_dim, obs_dim, hidden, emb_dim)
        self.act_dim, self.max_action, self.steps, self.noise = act_dim, max_action, steps, noise

    def velocity(self, x: torch.Tensor, t: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        """v(x_t, t | s) for raw observations."""
        return self.net(x, t, self.normalizer(obs))

    def velocity_normalized(self, x: torch.Tensor, t: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        """v(x_t, t | s) for observations already normalised (training, inside the algorithm)."""
        return self.net(x, t, obs)

    def sample(self, obs: torch.Tensor, field: VelocityField | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """The action for `obs` from the ODE of `field` (default: this policy's own velocity)."""
        shape = (obs.shape[0], self.act_dim)
        if self.noise == "zero":
            noise = torch.zeros(shape, device=obs.device)
        else:
            noise = torch.randn(shape, generator=generator, device=obs.device)
        x0 = flow_sample(field or self.velocity, noise, self.steps, obs)
        return self.max_action * x0.clamp(-1.0, 1.0)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.sample(obs)
