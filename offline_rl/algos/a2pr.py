"""A2PR (Liu et al., "Adaptive Advantage-guided Policy Regularization for Offline RL", ICML 2024).

TD3+BC whose behaviour-cloning target is whichever of the dataset action and a VAE reconstruction of π(s) has the
larger advantage, in the order of `ltlhuuu/A2PR` `A2PR.train` (critic, value, VAE, then the delayed actor):

    V:    L_V = MSE(V(s), min(r + γ(1 − d)·min_i Q_i(s′, ã′), y))          (fresh critics; y, ã′ from the critic step)
    VAE:  L = mean(w_vae · 1[Q₁(s, a) > V(s)] · (â − a)²) + ½·KL,   â = VAE(s, a)      (only good actions)
    π:    ã = VAE(s, π(s)) if A(s, ã) ≥ A(s, a) else a,   A = Q₁ − V(s)
          L_π = −λ·mean Q₁(s, π(s)) + mean(mask · (1[Q₁(s, ã_π) ≥ V] ∨ 1[Q₁(s, a) > V]) · (π(s) − ã)²)

V(s) in the VAE indicator and the actor's advantages is the value computed before the V step, as in the reference.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn import functional as F

from offline_rl.algos.base import Phase, PhaseResult, register
from offline_rl.algos.core import TD3BCBase, TD3BCConfig, td3_backup
from offline_rl.data.dataset import Spec
from offline_rl.nets import ValueNet
from offline_rl.nets.mlp import ConditionalVAE


@dataclass
class A2PRConfig(TD3BCConfig):
    """`ltlhuuu/A2PR` defaults (`utils/config.py`, `A2PR.py`, `core/network/*`)."""

    actor_hidden: tuple[int, ...] = (256, 256, 256)  # A2PR_Actor: 3 hidden layers, not TD3's 2
    critic_hidden: tuple[int, ...] = (256, 256, 256, 256)  # Critic: 4 hidden layers per twin
    value_hidden: tuple[int, ...] = (256, 256, 256, 256)  # Value: 4 hidden layers
    value_lr: float = 3e-4
    vae_lr: float = 1e-3  # the VAE's Adam is built without lr, i.e. torch's default 1e-3
    vae_hidden: tuple[int, ...] = (750, 750)  # BCQ-style VAE, latent dim 2·act_dim
    vae_weight: float = 1.0
    kl_weight: float = 0.5
    mask: float = 0.5


@register("a2pr")
class A2PR(TD3BCBase):
    Config = A2PRConfig

    def __init__(self, spec: Spec, config: A2PRConfig, device: str | torch.device = "cpu") -> None:
        super().__init__(spec, config, device)
        c = config
        self.value = ValueNet(spec.obs_dim, c.value_hidden)
        self.vae = ConditionalVAE(spec.obs_dim, spec.act_dim, 2 * spec.act_dim, self.max_action, c.vae_hidden)
        self.add_optimizer("value", self.value.parameters(), c.value_lr)
        self.add_optimizer("vae", self.vae.parameters(), c.vae_lr)

    def extra_phases(self, step: int) -> Iterator[Phase]:
        # The official order (`A2PR.train`): critic (base class), V, VAE, then the delayed actor.
        yield Phase(self.value_phase, "value", name="value")
        yield Phase(self.vae_phase, "vae", name="vae")

    def noise_shapes(self, batch_size: int, step: int) -> dict[str, tuple[int, ...]]:
        latent = (batch_size, self.vae.latent_dim)
        shapes = {**super().noise_shapes(batch_size, step), "vae_fit": latent}
        if step % self.config.policy_freq == 0:
            shapes["vae_pi"] = latent
        return shapes

    def value_phase(self, ctx: dict[str, Any]) -> PhaseResult:
        """V regresses on the smaller of the fresh-critic backup and TD3's target y (A2PR.py L136-146)."""
        c, batch = self.config, ctx["batch"]
        next_action, y = ctx["backup"]
        t_q = torch.min(td3_backup(self.critic, batch, next_action, c.discount, batch.rewards), y)
        v = self.value(batch.observations)
        value_loss = F.mse_loss(v, t_q)
        # The VAE and the actor use this pre-step V tensor (the reference reuses `value`).
        return PhaseResult(value_loss, {"value_loss": value_loss.detach(), "v_mean": v.detach().mean()},
                           {"v_before": v.detach()})

    def vae_phase(self, ctx: dict[str, Any]) -> PhaseResult:
        """Advantage-filtered VAE ("EPBL"): reconstruct only the dataset actions with Q₁(s, a) > V(s) (L148-163)."""
        c, batch = self.config, ctx["batch"]
        s, a = batch.observations, batch.actions
        with torch.no_grad():
            q_data = self.critic.q1(s, a)
        good = q_data > ctx["v_before"]
        eps = self.noise(ctx, "vae_fit", torch.empty(len(s), self.vae.latent_dim, device=s.device))
        vae_loss = filtered_vae_loss(self.vae, s, a, good, c.vae_weight, c.kl_weight, eps)
        return PhaseResult(vae_loss, {"vae_loss": vae_loss.detach(), "good_fraction": good.float().mean()},
                           {"q_data": q_data})

    def bc_target(self, ctx: dict[str, Any], pi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor,
                                                                        dict[str, torch.Tensor]]:
        """ã = argmax over {a, VAE(s, π(s))} of A(s, ·); weight mask·(1[A(s, ã_π) ≥ 0] ∨ 1[A(s, a) > 0])."""
        s = ctx["batch"].observations
        eps = self.noise(ctx, "vae_pi", torch.empty(len(s), self.vae.latent_dim, device=s.device))
        recon_pi, _, _ = self.vae(s, pi, eps)  # a full encode-sample-decode of π(s), not decode(s) (`self.vae(state, pi)`)
        with torch.no_grad():
            q_pi = self.critic.q1(s, recon_pi)
        target, weight = advantage_guided_target(recon_pi, ctx["batch"].actions, q_pi, ctx["q_data"],
                                                 ctx["v_before"], self.config.mask)
        return target, weight, {"bc_weight_mean": weight.mean()}


def filtered_vae_loss(vae: ConditionalVAE, obs: torch.Tensor, act: torch.Tensor, good: torch.Tensor,
                      vae_weight: float, kl_weight: float, eps: torch.Tensor | None = None) -> torch.Tensor:
    """EPBL: mean(vae_weight · 1[good] · (â − a)²) + kl_weight · KL(N(μ, σ²) ‖ N(0, I)), means over all elements."""
    recon, mean, std = vae(obs, act, eps)
    recon_loss = (vae_weight * good.unsqueeze(-1) * (recon - act).pow(2)).mean()
    kl = -0.5 * (1 + std.pow(2).log() - mean.pow(2) - std.pow(2)).mean()
    return recon_loss + kl_weight * kl


def advantage_guided_target(recon_pi: torch.Tensor, act: torch.Tensor, q_pi: torch.Tensor, q_data: torch.Tensor,
                            v: torch.Tensor, mask: float) -> tuple[torch.Tensor, torch.Tensor]:
    """ã = recon_π where A(s, recon_π) ≥ A(s, a), else a; weight mask·(1[Q(recon_π) ≥ V] ∨ 1[Q(a) > V]), [B, 1]."""
    use_pi = (q_pi - v >= q_data - v).unsqueeze(-1)  # ties go to the VAE action (`>=`; the reference uses `>` for a)
    target = torch.where(use_pi, recon_pi, act)  # not detached, as the reference: L_BC also reaches π via the VAE
    # Logical OR: the reference adds two torch bool tensors, which is an OR; the weight lies in {0, mask}.
    positive = (q_pi >= v) | (q_data > v)
    return target, mask * positive.unsqueeze(-1).to(recon_pi.dtype)
