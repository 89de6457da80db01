"""GPC (Cao et al., "Compose Your Policies!", arXiv 2510.01068): combine trained diffusion or flow policies at test
time by a convex combination of their scores or velocity fields, on one shared noise trajectory and sampler.

    v̂(x_t, t | s) = Σ_i w_i·v_i(x_t, t | s)     (flow policies)
    D̂(x; σ | s)   = Σ_i w_i·D_i(x; σ | s)       (diffusion: the same rule for ε̂, since ε = (x − D)/σ and Σ w_i = 1)

with w on the simplex; `search_weights` is the test-time search over the grid 0, 0.1, …, 1 (the official
`eval_policy_composed_policy.py` sweep), scored by rollouts.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import torch
from torch import nn

from offline_rl.errors import UserError


def check_weights(weights: Sequence[float], n: int) -> list[float]:
    """The weights as floats, checked to be n non-negative numbers summing to 1 (a convex combination)."""
    w = [float(x) for x in weights]
    if len(w) != n:
        raise UserError(f"--weights: {len(w)} weight(s) for {n} policies")
    if any(x < 0 for x in w) or abs(sum(w) - 1.0) > 1e-6:
        raise UserError(f"--weights must be non-negative and sum to 1 (a convex combination), got {w}")
    return w


class ComposedPolicy(nn.Module):
    """The GPC composition of `policies` with `weights`. Each parent exposes `velocity(x, t, obs)` (a flow policy,
    e.g. `FlowPolicy`) or `denoise(x, σ, obs)` / is callable as `D(x, σ[, obs])` (a diffusion denoiser).

    As a policy (`forward(obs)`), it runs the first parent's sampler (noise, steps, action scaling) on the composed
    velocity field, so every parent sees the same noise trajectory.
    """

    def __init__(self, policies: Sequence[Callable], weights: Sequence[float]) -> None:
        super().__init__()
        if len(policies) < 2:
            raise UserError(f"composition needs at least 2 policies, got {len(policies)}")
        modules = all(isinstance(p, nn.Module) for p in policies)
        self.parents = nn.ModuleList(policies) if modules else list(policies)
        self.weights = check_weights(weights, len(policies))

    def velocity(self, x: torch.Tensor, t: torch.Tensor, obs: torch.Tensor | None = None) -> torch.Tensor:
        return sum(w * p.velocity(x, t, obs) for w, p in zip(self.weights, self.parents, strict=True))

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor | float, obs: torch.Tensor | None = None) -> torch.Tensor:
        def one(p: Callable) -> torch.Tensor:
            fn = getattr(p, "denoise", p)
            return fn(x, sigma) if obs is None else fn(x, sigma, obs)

        return sum(w * one(p) for w, p in zip(self.weights, self.parents, strict=True))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.parents[0].sample(obs, field=self.velocity)


def compose_policies(policies: Sequence[Callable], weights: Sequence[float]) -> ComposedPolicy:
    """GPC: the convex combination of the policies' velocity fields (flow) or denoisers (diffusion)."""
    kinds = {"flow" if hasattr(p, "velocity") else "diffusion" for p in policies}
    if len(kinds) > 1:
        raise UserError("compose: mix of flow and diffusion policies; all must be of one kind")
    if kinds == {"flow"}:
        first = policies[0]
        for p in policies[1:]:
            if getattr(p, "act_dim", None) != getattr(first, "act_dim", None):
                raise UserError("compose: the policies have different action dimensions")
    return ComposedPolicy(policies, weights)


def weight_grid(n: int, step: float = 0.1) -> list[list[float]]:
    """Every point of the simplex in n dimensions whose coordinates are multiples of `step` (n = 2: 0, 0.1, …, 1)."""
    k = round(1.0 / step)
    if abs(k * step - 1.0) > 1e-9:
        raise UserError(f"--grid-step must divide 1, got {step}")
    points = [c for c in itertools.product(range(k + 1), repeat=n - 1) if sum(c) <= k]
    return [[round(ci / k, 10) for ci in c] + [round((k - sum(c)) / k, 10)] for c in points]


def search_weights(score: Callable[[list[float]], float], n: int,
                   step: float = 0.1) -> tuple[list[float], list[tuple[list[float], float]]]:
    """Evaluate `score(weights)` on `weight_grid(n, step)`; return the best weights (first on ties) and every
    (weights, score) pair."""
    table = [(w, float(score(w))) for w in weight_grid(n, step)]
    best = max(table, key=lambda row: row[1])[0]
    return best, table
