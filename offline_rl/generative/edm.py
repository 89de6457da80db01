"""EDM (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models"): preconditioning,
the loss weighting, the log-normal noise distribution and the Heun sampler with stochastic churn and a guidance hook.

    D(x; σ) = c_skip(σ)·x + c_out(σ)·F(c_in(σ)·x, c_noise(σ))
    c_skip = σ_d²/(σ² + σ_d²),  c_out = σ·σ_d/√(σ² + σ_d²),  c_in = 1/√(σ² + σ_d²),  c_noise = ¼·ln σ
    L = E_{x, σ = exp(P_mean + P_std·n), ε} [ λ(σ)·‖D(x + σε; σ) − x‖² ],  λ(σ) = (σ² + σ_d²)/(σ·σ_d)²

The sampler follows the PGD reference (`diffusion/edm.py`, `sample_trajectory`), whose Euler predictor starts from
x_i instead of EDM Algorithm 2's x̂_i (`euler_from="x"`, the default; `"x_hat"` is Algorithm 2).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
from torch import nn

from offline_rl.generative.schedules import churn_gammas, karras_sigmas, lognormal_sigmas

Guidance = Callable[[torch.Tensor, int, float], torch.Tensor]
"""guidance(x_i, i, σ_i) -> a term added to the sample x_i at sampler step i, before the churn and the denoising step
(PGD's placement: the policy-guidance gradient on the action block)."""


def _per_sample(sigma: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """σ as a tensor broadcastable against x: [B] -> [B, 1, ..., 1]; a scalar stays a scalar tensor."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    return sigma.reshape(-1, *([1] * (x.dim() - 1))) if sigma.dim() else sigma


class EDMDenoiser(nn.Module):
    """D(x; σ | cond) with EDM preconditioning around a raw network `net(x_in, c_noise[, cond])`."""

    def __init__(self, net: nn.Module, sigma_data: float = 1.0) -> None:
        super().__init__()
        self.net = net
        self.sigma_data = sigma_data

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, cond: torch.Tensor | None = None) -> torch.Tensor:
        s = _per_sample(sigma, x)
        sd2 = self.sigma_data ** 2
        c_skip = sd2 / (s ** 2 + sd2)
        c_out = s * self.sigma_data / torch.sqrt(s ** 2 + sd2)
        c_in = 1.0 / torch.sqrt(s ** 2 + sd2)
        c_noise = 0.25 * torch.log(s).reshape(-1).expand(x.shape[0])
        raw = self.net(c_in * x, c_noise) if cond is None else self.net(c_in * x, c_noise, cond)
        return c_skip * x + c_out * raw


def edm_loss(denoiser: EDMDenoiser, x: torch.Tensor, p_mean: float = -1.2, p_std: float = 1.2,
             cond: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """mean over batch and all data dims of λ(σ)·(D(x + σε; σ) − x)², one σ per sample from the log-normal."""
    sigma = lognormal_sigmas(x.shape[0], p_mean, p_std, generator, x.device)
    noise = torch.randn(x.shape, generator=generator, device=x.device)
    s = _per_sample(sigma, x)
    sd2 = denoiser.sigma_data ** 2
    weight = (s ** 2 + sd2) / (s * denoiser.sigma_data) ** 2
    return (weight * (denoiser(x + s * noise, sigma, cond) - x) ** 2).mean()


@torch.no_grad()
def edm_sample(denoiser: Callable[..., torch.Tensor], shape: tuple[int, ...], steps: int = 256,
               sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0, s_churn: float = 80.0,
               s_tmin: float = 0.05, s_tmax: float = 50.0, s_noise: float = 1.003, heun: bool = True,
               euler_from: str = "x", guidance: Guidance | None = None, cond: torch.Tensor | None = None,
               generator: torch.Generator | None = None, device: str | torch.device = "cpu") -> torch.Tensor:
    """Draw `shape` samples with EDM's stochastic Heun sampler on the Karras schedule.

    At step i (σ̂ = σ_i(1 + γ_i)):  x_i += guidance(x_i, i, σ_i);  x̂ = x_i + √(σ̂² − σ_i²)·S_noise·ε (γ_i > 0);
    d = (x̂ − D(x̂; σ̂))/σ̂;  x′ = x_i + (σ_{i+1} − σ̂)·d (from x̂ with `euler_from="x_hat"`);
    if σ_{i+1} ≠ 0 and `heun`:  x_{i+1} = x̂ + ½(σ_{i+1} − σ̂)(d + (x′ − D(x′; σ_{i+1}))/σ_{i+1}),  else x_{i+1} = x′.
    """
    if euler_from not in ("x", "x_hat"):
        raise ValueError(f"euler_from must be 'x' (the PGD reference) or 'x_hat' (EDM Algorithm 2), got {euler_from!r}")

    def denoise(x: torch.Tensor, sigma: float) -> torch.Tensor:
        return denoiser(x, sigma) if cond is None else denoiser(x, sigma, cond)

    sigmas = karras_sigmas(steps, sigma_min, sigma_max, rho).tolist()
    gammas = churn_gammas(torch.tensor(sigmas), s_churn, s_tmin, s_tmax).tolist()
    x = torch.randn(shape, generator=generator, device=device) * sigmas[0]
    for i in range(steps):
        sigma, sigma_next, gamma = sigmas[i], sigmas[i + 1], gammas[i]
        if guidance is not None:
            with torch.enable_grad():
                x = x + guidance(x, i, sigma)
        sigma_hat = sigma * (1.0 + gamma)
        x_hat = x
        if gamma > 0:
            eps = torch.randn(shape, generator=generator, device=device)
            x_hat = x + math.sqrt(sigma_hat ** 2 - sigma ** 2) * s_noise * eps
        d = (x_hat - denoise(x_hat, sigma_hat)) / sigma_hat
        x_next = (x if euler_from == "x" else x_hat) + (sigma_next - sigma_hat) * d
        if heun and sigma_next != 0:
            d_next = (x_next - denoise(x_next, sigma_next)) / sigma_next
            x_next = x_hat + 0.5 * (sigma_next - sigma_hat) * (d + d_next)
        x = x_next
    return x


def warmup_cosine(step: int, total: int, warmup: int, init_ratio: float = 0.1) -> float:
    """optax's `warmup_cosine_decay_schedule` as a factor of the peak LR: linear from `init_ratio` to 1 over `warmup`
    steps, then a cosine decay to 0 at `total`."""
    if step < warmup:
        return init_ratio + (1.0 - init_ratio) * step / max(warmup, 1)
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


class EMA:
    """An exponential moving average of a model's parameters, θ_ema ← d·θ_ema + (1 − d)·θ, applied after every
    `every`-th optimiser step (the PGD reference: d = 0.995 every 10 steps). Buffers are copied."""

    def __init__(self, model: nn.Module, decay: float = 0.995, every: int = 10) -> None:
        self.model = copy.deepcopy(model).requires_grad_(False)
        self.decay, self.every = decay, every

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """`step` counts the optimiser steps taken so far (1 after the first)."""
        if step % self.every:
            return
        torch._foreach_lerp_(list(self.model.parameters()), list(model.parameters()), 1.0 - self.decay)
        for b_ema, b in zip(self.model.buffers(), model.buffers(), strict=True):
            b_ema.copy_(b)


def fit_edm(denoiser: EDMDenoiser, data: torch.Tensor, steps: int, batch_size: int = 32, lr: float = 2e-3,
            warmup_frac: float = 0.1, ema_decay: float = 0.995, ema_every: int = 10, p_mean: float = -1.2,
            p_std: float = 1.2, generator: torch.Generator | None = None,
            log: Callable[[int, float], None] | None = None, log_every: int = 500) -> tuple[nn.Module, list[float]]:
    """Train `denoiser` on `data` ([N, ...]) with `edm_loss` for `steps` Adam steps; return the EMA model and the
    mean loss of every `log_every` steps.

    The PGD reference's loop (`train_diffusion.py`): each epoch shuffles the data, drops the first N mod B rows and
    walks the rest in batches of B; the LR warms up from 0.1·lr to lr over `warmup_frac` of the steps, then decays
    to 0 on a cosine; the EMA is updated after every `ema_every`-th step.
    """
    n = data.shape[0]
    if n < batch_size:
        raise ValueError(f"{n} training samples are fewer than the batch size {batch_size}")
    opt = torch.optim.Adam(denoiser.parameters(), lr=lr)
    warmup = int(steps * warmup_frac)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: warmup_cosine(k, steps, warmup))
    ema = EMA(denoiser, ema_decay, ema_every)
    per_epoch = n // batch_size
    losses: list[float] = []
    running = torch.zeros((), device=data.device)
    step = 0
    while step < steps:
        order = torch.randperm(n, generator=generator, device=data.device)[n % batch_size:]
        for k in range(min(per_epoch, steps - step)):
            batch = data[order[k * batch_size:(k + 1) * batch_size]]
            loss = edm_loss(denoiser, batch, p_mean, p_std, generator=generator)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            ema.update(denoiser, step)
            running += loss.detach()
            if step % log_every == 0 or step == steps:
                losses.append(float(running) / (log_every if step % log_every == 0 else step % log_every))
                running.zero_()
                if log is not None:
                    log(step, losses[-1])
    return ema.model, losses
