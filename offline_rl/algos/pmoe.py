"""PMOE: SAC with a probabilistic mixture-of-experts policy (Ren, Li, Ding, Pan, Dong, "Probabilistic
Mixture-of-Experts for Efficient Deep Reinforcement Learning", arXiv:2104.09122), as in `JieRen98/rlkit-pmoe`
`PMOEsac.py` and `policies.py`.

The actor is `TanhMixtureActor`: K tanh-Gaussian experts on a shared trunk and a router α(s) = softmax(W h(s)) on
the detached trunk features. To act: i ~ Cat(α(s)), a ~ expert i. The frequency-approximate gradient replaces
SAC's actor loss. One update, in the source's order:

    a_k ~ expert k (reparameterised), Q_k = min(Q1, Q2)(s, a_k),  i* = argmax_k Q_k
    α_ent:  J(log α_ent) = −E[log α_ent · (log π_{i*}(a_{i*}|s) + H̄)]   (first; the rest uses the updated α_ent)
    J_π     = E[ α_ent · log π_{i*}(a_{i*}|s) − Q_{i*} ]     (expert i*'s own log-density, not the mixture's)
    J_route = MSE(one_hot(i*), α(s))                         (the router learns which expert wins)
    y = c_r·r + γ(1 − d)·(min_j Q_j,targ(s′, a′) − α_ent log π_i(a′|s′)),  i ~ Cat(α(s′)), a′ ~ expert i
    the actor minimises J_π + J_route; each critic ½-free MSE to y; θ_targ ← τ θ + (1 − τ) θ_targ

so only expert i* gets the SAC gradient at s, and the routing mass follows how often each expert wins. J_π is
the loss on the critic before this step's critic update and y uses the actor before its step (the source builds
both first, then steps the critics and the actor). With the temperature fixed (`autotune_alpha=False`) α_ent
stays at `init_alpha`, whose default 1 is the source's fixed value. c_r is rlkit's `reward_scale`. The critics
and the actor are initialised as rlkit's (`rlkit_init_`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from offline_rl.algos.base import register
from offline_rl.algos.core import soft_update
from offline_rl.algos.sac import SAC, SACConfig
from offline_rl.data.dataset import Batch, Spec
from offline_rl.nets.mlp import rlkit_init_
from offline_rl.nets.policies import TanhMixtureActor


@dataclass
class PMOEConfig(SACConfig):
    """SAC's values (the PMOE example uses them: lr 3e-4, τ 5e-3, 256-256, batch 256, automatic temperature),
    k = 4 experts, rlkit's reward scale and the policy's head initialisation."""

    k: int = 4
    start_steps: int = 1000     # the example's min_num_steps_before_training (policy actions there, uniform here)
    reward_scale: float = 1.0   # rlkit's reward_scale (the example's 1)
    head_init_w: float = 1e-3   # the experts' μ and log σ layers start U(±head_init_w) (TanhPMOEGaussianPolicy init_w)


@register("pmoe")
class PMOE(SAC):
    Config = PMOEConfig
    graph_safe = False  # the expert draw (multinomial) is not captured

    def __init__(self, spec: Spec, config: PMOEConfig, device: str | torch.device = "cpu") -> None:
        super().__init__(spec, config, device)
        self.actor = TanhMixtureActor(spec.obs_dim, spec.act_dim, spec.action_low, spec.action_high, config.k,
                                      config.hidden, config.head_init_w)
        self.add_optimizer("actor", self.actor.parameters(), config.actor_lr)
        rlkit_init_(self.critic, last_init_w=3e-3)  # rlkit's Mlp (FlattenPMOEMlp critics): init_w 3e-3
        self.critic_target.load_state_dict(self.critic.state_dict())

    def expert_terms(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(log π_{i*}(a_{i*}|s) [B], Q_{i*} [B], J_route, α(s) [B, K]) with the graph to the actor."""
        actions, log_probs, routing = self.actor.sample_experts(obs)          # [B, K, A], [B, K], [B, K]
        b, k = log_probs.shape
        q = self.critic(obs.repeat_interleave(k, 0), actions.reshape(b * k, -1), frozen=True).min(0).values.view(b, k)
        q_best, best = q.max(1)
        routing_loss = F.mse_loss(F.one_hot(best, k).to(routing.dtype), routing)
        return log_probs.gather(1, best[:, None]).squeeze(1), q_best, routing_loss, routing

    def update(self, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        c = self.config
        obs = batch.observations
        log_pi, q_best, routing_loss, routing = self.expert_terms(obs)
        metrics: dict[str, torch.Tensor] = {}
        if c.autotune_alpha:  # the temperature steps first; the actor loss and the target use its new value
            alpha_loss = -self.log_alpha * (log_pi.detach() + self.target_entropy).mean()
            self.optimize("alpha", alpha_loss)
            metrics["alpha_loss"] = alpha_loss.detach()
        alpha = self.log_alpha.detach().exp()
        policy_loss = (alpha * log_pi - q_best).mean()
        with torch.no_grad():  # the target from the actor before its step: i ~ Cat(α(s′)), that expert's a′
            next_action, next_log_pi = self.actor.sample(batch.next_observations)
            next_q = self.critic_target(batch.next_observations, next_action).min(0).values
            y = c.reward_scale * batch.rewards + c.discount * (1.0 - batch.dones) * (next_q - alpha * next_log_pi)
        # J_π reads the critic before its update below; stepping the actor first is the same update.
        self.optimize("actor", policy_loss + routing_loss)
        q = self.critic(obs, batch.actions)
        critic_loss = (q - y).pow(2).mean(1).sum()  # Σ over the twins of each one's MSE (nn.MSELoss)
        self.optimize("critic", critic_loss)
        if step % c.target_update_interval == 0:
            soft_update(self.critic_target, self.critic, c.tau)
        return {**metrics, "critic_loss": critic_loss.detach(), "actor_loss": policy_loss.detach(),
                "routing_loss": routing_loss.detach(), "q_mean": q.detach().mean(), "entropy": -log_pi.detach().mean(),
                "alpha": alpha, "routing_entropy": -(routing * routing.clamp_min(1e-8).log()).sum(1).mean().detach()}
