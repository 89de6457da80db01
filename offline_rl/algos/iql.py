"""IQL (Kostrikov, Nair & Levine, "Offline RL with Implicit Q-Learning", 2022), in CORL's update order.

    V:  L_V = E[ |τ − 1(u < 0)| u² ],  u = min_i Q_i,targ(s, a) − V(s)              (expectile regression)
    Q:  L_Q = ½ Σ_i MSE(Q_i(s, a), r + γ(1 − d) V(s′))                               (V(s′) from before the V step)
    π:  L_π = −E[ min(exp(β·u), 100) · log π(a | s) ]                                  (AWR; cosine-decayed LR)

States are z-scored (eps 1e-3); rewards are scaled by 1000 / (max − min episode return) (CORL `modify_reward`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from offline_rl.algos.base import Algorithm, PolicyWithNormalizer, register
from offline_rl.algos.core import StateNormalizer, awr_weights, expectile_loss, frozen_copy, soft_update
from offline_rl.data.dataset import Batch, Dataset, Spec
from offline_rl.nets import GaussianActor, TwinQ, ValueNet


@dataclass
class IQLConfig:
    """CORL `iql.py` locomotion defaults."""

    actor_lr: float = 3e-4
    qf_lr: float = 3e-4
    vf_lr: float = 3e-4
    discount: float = 0.99
    tau: float = 0.005
    expectile: float = 0.7
    beta: float = 3.0
    max_weight: float = 100.0
    batch_size: int = 256
    normalize_states: bool = True
    normalize_reward: bool = True
    reward_scale: float = 1000.0
    actor_dropout: float | None = None
    hidden: tuple[int, ...] = (256, 256)


@register("iql")
class IQL(Algorithm):
    Config = IQLConfig

    def __init__(self, spec: Spec, config: IQLConfig, device: str | torch.device = "cpu") -> None:
        super().__init__(spec, config, device)
        c = config
        self.normalizer = StateNormalizer(spec.obs_dim)
        self.actor = GaussianActor(spec.obs_dim, spec.act_dim, spec.max_action, c.hidden, c.actor_dropout)
        self.qf = TwinQ(spec.obs_dim, spec.act_dim, c.hidden)
        self.qf_target = frozen_copy(self.qf)
        self.vf = ValueNet(spec.obs_dim, c.hidden)
        self.register_buffer("reward_multiplier", torch.ones(()))
        self.add_optimizer("actor", self.actor.parameters(), c.actor_lr)
        self.add_optimizer("qf", self.qf.parameters(), c.qf_lr)
        self.add_optimizer("vf", self.vf.parameters(), c.vf_lr)

    def configure_schedule(self, total_steps: int) -> None:
        self.schedulers["actor"] = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizers["actor"], total_steps)

    def prepare(self, dataset: Dataset) -> None:
        if self.config.normalize_states:
            self.normalizer.fit(dataset)
        if self.config.normalize_reward:
            low, high = dataset.return_range()
            self.reward_multiplier.fill_(self.config.reward_scale / max(high - low, 1e-8))

    def update(self, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        c = self.config
        obs, next_obs = self.normalizer(batch.observations), self.normalizer(batch.next_observations)
        rewards = batch.rewards * self.reward_multiplier
        with torch.no_grad():
            next_v = self.vf(next_obs)
            target_q = self.qf_target(obs, batch.actions).min(0).values

        # V step: expectile regression towards the target critic.
        advantage = target_q - self.vf(obs)
        v_loss = expectile_loss(advantage, c.expectile)
        self.optimize("vf", v_loss)

        # Q step: one-step TD target through V(s′).
        q_target = rewards + c.discount * (1.0 - batch.dones) * next_v
        qs = self.qf(obs, batch.actions)
        q_loss = (qs - q_target).pow(2).mean(1).mean()
        self.optimize("qf", q_loss)
        soft_update(self.qf_target, self.qf, c.tau)

        # Policy step: advantage-weighted log-likelihood of the (normalised) dataset action.
        actor_loss = self.actor_loss(obs, batch.actions, awr_weights(advantage, c.beta, c.max_weight))
        self.optimize("actor", actor_loss)
        if "actor" in self.schedulers:
            self.schedulers["actor"].step()
        return {"v_loss": v_loss.detach(), "q_loss": q_loss.detach(), "actor_loss": actor_loss.detach(),
                "advantage_mean": advantage.detach().mean()}

    def actor_loss(self, obs: torch.Tensor, actions: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """AWR: −mean(w · log π(a | s)) over normalised states and actions (AWM swaps in a flow-matching loss)."""
        log_prob = self.actor.dist(obs).log_prob(actions / self.actor.max_action).sum(-1)
        return -(weights * log_prob).mean()

    def policy(self) -> nn.Module:
        return PolicyWithNormalizer(self.normalizer, self.actor)
