"""PMOE: SAC with a probabilistic mixture-of-experts policy (Ren, Li, Ding, Pan, Dong, "Probabilistic
Mixture-of-Experts for Efficient Deep Reinforcement Learning", arXiv:2104.09122), as in `JieRen98/rlkit-pmoe`
`PMOEsac.py` and `policies.py`.

The actor is `TanhMixtureActor`: K tanh-Gaussian experts on a shared trunk and a router α(s) = softmax(W h(s)) on
the detached trunk features. To act: i ~ Cat(α(s)), a ~ expert i. The frequency-approximate gradient replaces
SAC's actor loss (the critic and its target are SAC's, with the target's next action from an expert sampled by
α(s′)):

    a_k ~ expert k (reparameterised), Q_k = min(Q1, Q2)(s, a_k),  i* = argmax_k Q_k
    J_π     = E[ α_ent · log π_{i*}(a_{i*}|s) − Q_{i*} ]     (expert i*'s own log-density, not the mixture's)
    J_route = MSE(one_hot(i*), α(s))                         (the router learns which expert wins)
    the actor minimises J_π + J_route; the temperature step uses log π_{i*}

so only expert i* gets the SAC gradient at s, and the routing mass follows how often each expert wins.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from offline_rl.algos.base import register
from offline_rl.algos.sac import SAC, SACConfig
from offline_rl.data.dataset import Spec
from offline_rl.nets.policies import TanhMixtureActor


@dataclass
class PMOEConfig(SACConfig):
    """SAC's values (the PMOE example uses them: lr 3e-4, τ 5e-3, 256-256) and k = 4 experts."""

    k: int = 4


@register("pmoe")
class PMOE(SAC):
    Config = PMOEConfig
    graph_safe = False  # the expert draw (multinomial) is not captured

    def __init__(self, spec: Spec, config: PMOEConfig, device: str | torch.device = "cpu") -> None:
        super().__init__(spec, config, device)
        self.actor = TanhMixtureActor(spec.obs_dim, spec.act_dim, spec.action_low, spec.action_high, config.k,
                                      config.hidden)
        self.add_optimizer("actor", self.actor.parameters(), config.actor_lr)

    def actor_loss(self, obs: torch.Tensor, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
        actions, log_probs, routing = self.actor.sample_experts(obs)          # [B, K, A], [B, K], [B, K]
        b, k = log_probs.shape
        q = self.critic(obs.repeat_interleave(k, 0), actions.reshape(b * k, -1)).min(0).values.view(b, k)
        best = q.argmax(1, keepdim=True)
        log_pi = log_probs.gather(1, best).squeeze(1)
        policy_loss = (alpha * log_pi - q.gather(1, best).squeeze(1)).mean()
        routing_loss = F.mse_loss(F.one_hot(best.squeeze(1), k).to(routing.dtype), routing)
        return policy_loss + routing_loss, log_pi, {"routing_loss": routing_loss.detach(),
                                                    "routing_entropy": -(routing * routing.clamp_min(1e-8).log())
                                                    .sum(1).mean().detach()}

    @torch.no_grad()
    def temperature_log_prob(self, obs: torch.Tensor, log_pi: torch.Tensor) -> torch.Tensor:
        return log_pi.detach()  # log π_{i*} of the actor step (PMOEsac.py)
