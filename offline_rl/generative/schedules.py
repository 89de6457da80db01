"""Noise levels and their embeddings: the EDM (Karras) sampling schedule with its churn, the log-normal training
distribution, the NCSN geometric ladder, and the sinusoidal embedding of a noise level or flow time.
"""

from __future__ import annotations

import math

import torch


def karras_sigmas(steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> torch.Tensor:
    """σ_i = (σ_max^{1/ρ} + i/(N − 1)·(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ for i = 0 … N − 1, then σ_N = 0 (N + 1 values).

    EDM eq. 5, as the PGD reference builds it (`diffusion/edm.py`, `_get_noise_schedule`)."""
    if steps < 2:
        raise ValueError(f"the Karras schedule needs at least 2 steps, got {steps}")
    i = torch.arange(steps + 1, dtype=torch.float64)
    inv_rho = 1.0 / rho
    sigmas = (sigma_max ** inv_rho + i / (steps - 1) * (sigma_min ** inv_rho - sigma_max ** inv_rho)) ** rho
    sigmas[-1] = 0.0
    return sigmas.float()


def churn_gammas(sigmas: torch.Tensor, s_churn: float = 80.0, s_tmin: float = 0.05,
                 s_tmax: float = 50.0) -> torch.Tensor:
    """γ_i = min(S_churn/N, √2 − 1) where σ_i ∈ [S_tmin, S_tmax], else 0 (EDM Algorithm 2); N = len(sigmas) − 1."""
    steps = len(sigmas) - 1
    gamma = min(s_churn / steps, math.sqrt(2.0) - 1.0)
    inside = (sigmas >= s_tmin) & (sigmas <= s_tmax)
    return torch.where(inside, torch.full_like(sigmas, gamma), torch.zeros_like(sigmas))


def lognormal_sigmas(n: int, p_mean: float = -1.2, p_std: float = 1.2, generator: torch.Generator | None = None,
                     device: str | torch.device = "cpu") -> torch.Tensor:
    """Training noise levels σ = exp(P_mean + P_std·n), n ~ N(0, 1) (EDM's log-normal p(σ))."""
    return torch.exp(p_mean + p_std * torch.randn(n, generator=generator, device=device))


def geometric_sigmas(sigma_min: float, sigma_max: float, levels: int) -> torch.Tensor:
    """The NCSN ladder: `levels` noise levels spaced geometrically from σ_max down to σ_min."""
    if levels == 1:
        return torch.tensor([float(sigma_min)])
    return torch.exp(torch.linspace(math.log(sigma_max), math.log(sigma_min), levels))


def sinusoidal_embedding(level: torch.Tensor, dim: int) -> torch.Tensor:
    """[sin(level·f_k), cos(level·f_k)], f_k = 10000^{−k/(dim/2 − 1)}, k < dim/2: the transformer positional
    encoding of a scalar per sample, as in the PGD reference's `TimeEmbedding`. Shape [..., dim]."""
    half = dim // 2
    if half < 2:
        raise ValueError(f"the sinusoidal embedding needs dim ≥ 4, got {dim}")
    freqs = torch.exp(torch.arange(half, device=level.device, dtype=torch.float32) * -(math.log(10000.0) / (half - 1)))
    angles = level.float().unsqueeze(-1) * freqs
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
