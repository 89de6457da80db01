"""AWM, offline (Xue et al., "Advantage Weighted Matching", arXiv 2509.25050; §9.2 of the spec: the offline,
non-negative-weight form, "FAWAC"-style advantage-weighted flow behaviour cloning), on an IQL critic.

    critic:  IQL's expectile V and twin Q (offline_rl.algos.iql), in IQL's update order
    policy:  L_π = E_D[ w·‖v_θ(a_t, t | s) − (ε − a)‖² ] (mean over action dims),  a_t = (1 − t)·a + t·ε,
             t ~ U(0, 1), ε ~ N(0, I),  w = min(exp(β·Â(s, a)), w_max),  Â = min_i Q_i,targ(s, a) − V(s)

At ratio 1 the AWM loss's gradient is exactly E[A·∇‖v_θ − (ε − x₀)‖²]; offline the weights must be non-negative
(a negative weight on a regression loss is unbounded), hence IQL's exp(β·A) clipped at 100. With β = 0 every
weight is 1 and this is plain flow-matching behaviour cloning. Actions are modelled as a/max_action; the policy
integrates the flow from zero noise in `flow_steps` Euler steps (deterministic), clipped to the action bounds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from offline_rl.algos.base import register
from offline_rl.algos.iql import IQL, IQLConfig
from offline_rl.data.dataset import Spec
from offline_rl.generative import FlowPolicy, flow_matching_loss


@dataclass
class AWMConfig(IQLConfig):
    """IQL's critic defaults (CORL) plus the flow policy: a 3×256 SiLU velocity MLP on [a_t, t, s] (t fed as it is,
    `flow_emb_dim = 0`; > 0 embeds it sinusoidally), 10 Euler steps."""

    flow_hidden: tuple[int, ...] = (256, 256, 256)
    flow_emb_dim: int = 0
    flow_steps: int = 10
    eval_noise: str = "zero"


@register("awm")
class AWM(IQL):
    Config = AWMConfig

    def __init__(self, spec: Spec, config: AWMConfig, device: str | torch.device = "cpu") -> None:
        super().__init__(spec, config, device)
        c = config
        self.actor = FlowPolicy(self.normalizer, spec.obs_dim, spec.act_dim, spec.max_action, c.flow_hidden,
                                c.flow_emb_dim, c.flow_steps, c.eval_noise)
        self.add_optimizer("actor", self.actor.net.parameters(), c.actor_lr)

    def actor_loss(self, obs: torch.Tensor, actions: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """The advantage-weighted flow-matching loss on normalised states and actions a/max_action."""
        return flow_matching_loss(self.actor.velocity_normalized, actions / self.actor.max_action, obs, weights)

    def policy(self) -> nn.Module:
        return self.actor
