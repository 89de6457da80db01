"""Natural policy gradient (Kakade 2001; the KL-scaled form of Rajeswaran et al. 2017) and TRPO (Schulman,
Levine, Moritz, Jordan, Abbeel, 2015): the same natural step, TRPO adding a backtracking line search.

Per iteration, with GAE advantages Â (normalised, `norm_adv`) from a rollout:

    L(θ)   = −E[ Â · π_θ(a|s) / π_old(a|s) ]                       (the surrogate; ∇L at θ_old is −ĝ)
    x      ≈ (F + damping·I)⁻¹ (−∇L)    by `cg_iters` conjugate-gradient steps on Fisher-vector products
    Δ      = x · √(2 δ / xᵀ(F + damping)x),   δ = `max_kl`           (so the quadratic KL model equals δ)
    NPG:   θ ← θ_old + Δ
    TRPO:  θ ← θ_old + 0.5^i Δ for the first i < `max_backtracks` whose actual decrease of L is > 0 and
           > `accept_ratio` × its first-order prediction, and (with `check_kl`) whose mean KL(π_old ‖ π_θ) ≤ δ;
           θ_old when none is accepted

then the critic regresses the λ-returns for `vf_iters` full-batch Adam steps. The Fisher-vector product, CG, step
scaling and line search live in `offline_rl.algos.pg_core` (shared with HNPG).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from offline_rl.algos.base import register
from offline_rl.algos.pg_core import (
    ActorCritic,
    ActorCriticConfig,
    Rollout,
    flat_params,
    line_search,
    mean_kl_to,
    natural_step,
    set_flat_params,
)
from offline_rl.data.dataset import Spec


@dataclass
class NPGConfig(ActorCriticConfig):
    """Spinning Up's TRPO defaults (batch 4000, γ 0.99, λ 0.97, δ 0.01, damping 0.1, 10 CG steps, critic Adam 1e-3
    × 80); sources in `algos/npg.toml`."""

    num_envs: int = 1
    num_steps: int = 4000
    gamma: float = 0.99
    gae_lambda: float = 0.97
    max_kl: float = 0.01
    damping: float = 0.1
    cg_iters: int = 10
    norm_adv: bool = True
    vf_lr: float = 1e-3
    vf_iters: int = 80


@dataclass
class TRPOConfig(NPGConfig):
    max_backtracks: int = 10
    backtrack_coef: float = 0.5
    accept_ratio: float = 0.1
    check_kl: bool = True


@register("npg")
class NPG(ActorCritic):
    Config = NPGConfig
    line_search = False

    def __init__(self, spec: Spec, config: NPGConfig, device: str | torch.device = "cpu") -> None:
        super().__init__(spec, config, device)
        self.add_optimizer("critic", self.critic.parameters(), config.vf_lr)

    def update_rollout(self, rollout: Rollout, iteration: int) -> dict[str, torch.Tensor]:
        c = self.config
        _, adv, returns = self.advantages(rollout)
        obs, actions, adv, returns = (rollout.flat("observations"), rollout.flat("actions"), adv.reshape(-1),
                                      returns.reshape(-1))
        if c.norm_adv:
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        metrics = self.policy_step(obs, actions, adv)
        for _ in range(c.vf_iters):
            v_loss = (self.value(obs) - returns).pow(2).mean()
            self.optimize("critic", v_loss)
        return {**metrics, "value_loss": v_loss.detach()}

    def policy_step(self, obs: torch.Tensor, actions: torch.Tensor, adv: torch.Tensor) -> dict[str, torch.Tensor]:
        """One natural-gradient step on the surrogate (with TRPO's line search when `line_search`)."""
        c = self.config
        params = [p for p in self.actor.parameters() if p.requires_grad]
        with torch.no_grad():
            old_log_prob = self.actor.dist(obs).log_prob(actions)

        def surrogate() -> torch.Tensor:
            return -(adv * (self.actor.dist(obs).log_prob(actions) - old_log_prob).exp()).mean()

        kl = mean_kl_to(self.actor, obs)
        loss = surrogate()
        step = natural_step(loss, kl, params, c.max_kl, c.damping, c.cg_iters)
        if self.line_search:
            accepted, backtracks = line_search(params, surrogate, step, c.max_backtracks, c.accept_ratio,
                                               c.backtrack_coef, kl if c.check_kl else None, c.max_kl)
        else:
            set_flat_params(params, flat_params(params) + step.full_step)
            accepted, backtracks = True, 0
        self._updates += 1
        with torch.no_grad():
            kl_after = kl()
        return {"surrogate_before": loss.detach(), "kl": kl_after, "accepted": torch.tensor(float(accepted)),
                "backtracks": torch.tensor(float(backtracks))}


@register("trpo")
class TRPO(NPG):
    Config = TRPOConfig
    line_search = True
