"""Denoising score matching (Vincent 2011; NCSN, Song & Ermon 2019) and ascent along the learned score.

    L(φ) = E_{x, σ, ε} [ λ(σ)·‖s_φ(x + σε, σ) + ε/σ‖² ],  λ(σ) = σ²      (sum over dims, mean over the batch)

s_φ(x̃, σ) ≈ ∇ log p_σ(x̃), the score of the data convolved with N(0, σ²I). The network output is divided by σ
(NCSNv2's parameterisation), so σ·s_φ = F and the loss is ‖F + ε‖², well scaled at every σ.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from offline_rl.generative.nets import DenoiserMLP


class ScoreModel(nn.Module):
    """s_φ(x, σ) = F(x, ln σ)/σ with F an unconditional `DenoiserMLP`."""

    def __init__(self, dim: int, hidden: tuple[int, ...] = (256, 256, 256), emb_dim: int = 64) -> None:
        super().__init__()
        self.net = DenoiserMLP(dim, 0, hidden, emb_dim)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).expand(x.shape[:-1])
        return self.net(x, torch.log(sigma)) / sigma.unsqueeze(-1)


def sample_ladder_sigmas(ladder: torch.Tensor, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """n noise levels drawn uniformly from a fixed ladder (NCSN)."""
    idx = torch.randint(0, len(ladder), (n,), generator=generator, device=ladder.device)
    return ladder[idx]


def dsm_loss(score: nn.Module, x: torch.Tensor, sigma: torch.Tensor,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """mean_b σ_b²·‖s(x_b + σ_b ε_b, σ_b) + ε_b/σ_b‖², for per-sample noise levels `sigma` ([B])."""
    eps = torch.randn(x.shape, generator=generator, device=x.device)
    s = sigma.unsqueeze(-1)
    return (s ** 2 * (score(x + s * eps, sigma) + eps / s) ** 2).sum(-1).mean()


@torch.no_grad()
def score_ascent(score: nn.Module, x: torch.Tensor, eta: float, sigma: float, steps: int = 1,
                 noise: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """x_{k+1} = x_k + η·s(x_k, σ) [+ noise·√(2η)·z, Langevin], `steps` times; returns x_K."""
    for _ in range(steps):
        x = x + eta * score(x, sigma)
        if noise:
            x = x + noise * math.sqrt(2.0 * eta) * torch.randn(x.shape, generator=generator, device=x.device)
    return x
