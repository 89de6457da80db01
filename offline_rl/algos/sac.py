"""SAC with automatic entropy tuning (Haarnoja et al., "Soft Actor-Critic Algorithms and Applications", 2018).

One update, in the order of the authors' softlearning code (critic → actor → temperature → target):

    Q:  J_Q = ½ Σ_i E[(Q_i(s, a) − y)²],  y = r + γ(1 − d)·(min_i Q_i,targ(s′, a′) − α log π(a′|s′)),  a′ ~ π(·|s′)
    π:  J_π = E[α log π(ã|s) − min_i Q_i(s, ã)],  ã = tanh(μ(s) + σ(s)·ε)   (reparameterised; ε ~ N(0, I))
    α:  J(log α) = −E[log α · (log π(ã|s) + H̄)],  H̄ = −|A|,  ã a fresh sample from the updated actor
    θ_targ ← τ θ + (1 − τ) θ_targ,  τ = 0.005, every step

The actor acts in the normalised box [−1, 1]^|A| (softlearning rescales the env's actions the same way) and emits
env actions a = scale·tanh(u) + bias; log π is the density of the normalised action tanh(u), so the entropy target
−|A| does not depend on the env's action bounds. Observations are not normalised. `policy()` is the deterministic
actor (tanh of the mean). Online interaction goes through `explore` (a sampled action) and
`offline_rl.training.train_online`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from offline_rl.algos.base import Algorithm, register
from offline_rl.algos.core import frozen_copy, soft_update
from offline_rl.data.dataset import Batch, Spec
from offline_rl.nets import TanhGaussianActor, TwinQ


@dataclass
class SACConfig:
    """SAC v2 defaults (Haarnoja et al. 2018b, Table 1); sources for each value in `algos/sac.toml`."""

    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    alpha_lr: float = 3e-4
    discount: float = 0.99
    tau: float = 0.005
    batch_size: int = 256
    hidden: tuple[int, ...] = (256, 256)
    init_alpha: float = 1.0                 # log α starts at 0 (softlearning, CleanRL)
    autotune_alpha: bool = True             # False: α stays at init_alpha (SAC v1 with a fixed temperature)
    target_entropy: float | None = None     # None: −|A|
    target_update_interval: int = 1
    # online interaction (read by `train_online`)
    start_steps: int = 10_000               # uniform-random actions before the first update
    buffer_size: int = 1_000_000
    updates_per_step: int = 1               # gradient steps per env step
    fqi_actions: int = 10                   # uniform candidate actions for the max in `fitted_q_step`


@register("sac")
class SAC(Algorithm):
    Config = SACConfig
    graph_safe = True

    def __init__(self, spec: Spec, config: SACConfig, device: str | torch.device = "cpu") -> None:
        super().__init__(spec, config, device)
        c = config
        self.actor = TanhGaussianActor(spec.obs_dim, spec.act_dim, spec.action_low, spec.action_high, c.hidden)
        self.critic = TwinQ(spec.obs_dim, spec.act_dim, c.hidden)
        self.critic_target = frozen_copy(self.critic)
        self.log_alpha = nn.Parameter(torch.tensor(math.log(c.init_alpha)), requires_grad=c.autotune_alpha)
        self.target_entropy = float(-spec.act_dim if c.target_entropy is None else c.target_entropy)
        self.add_optimizer("actor", self.actor.parameters(), c.actor_lr)
        self.add_optimizer("critic", self.critic.parameters(), c.critic_lr)
        if c.autotune_alpha:
            self.add_optimizer("alpha", [self.log_alpha], c.alpha_lr)

    def update(self, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        c = self.config
        obs = batch.observations
        alpha = self.log_alpha.detach().exp()

        # Critic: soft Bellman target through the target twin critic and a fresh next action.
        with torch.no_grad():
            next_action, next_log_pi = self.actor.sample(batch.next_observations)
            next_q = self.critic_target(batch.next_observations, next_action).min(0).values
            y = batch.rewards + c.discount * (1.0 - batch.dones) * (next_q - alpha * next_log_pi)
        q = self.critic(obs, batch.actions)
        critic_loss = 0.5 * (q - y).pow(2).mean(1).sum()
        self.optimize("critic", critic_loss)

        # Actor: reparameterised KL to the soft Q (through the frozen critic: no critic weight gradients).
        actor_loss, log_pi = self.actor_loss(obs, alpha)
        self.optimize("actor", actor_loss)

        metrics = {"critic_loss": critic_loss.detach(), "actor_loss": actor_loss.detach(),
                   "q_mean": q.detach().mean(), "entropy": -log_pi.detach().mean(), "alpha": alpha}
        # Temperature: dual gradient step on log α, with log π of a fresh sample from the updated actor (softlearning).
        if c.autotune_alpha:
            with torch.no_grad():
                fresh_log_pi = self.actor.sample(obs)[1]
            alpha_loss = -self.log_alpha * (fresh_log_pi.mean() + self.target_entropy)
            self.optimize("alpha", alpha_loss)
            metrics["alpha_loss"] = alpha_loss.detach()
        if step % c.target_update_interval == 0:
            soft_update(self.critic_target, self.critic, c.tau)
        return metrics

    def actor_loss(self, obs: torch.Tensor, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(J_π, log π of the actions it used)."""
        action, log_pi = self.actor.sample(obs)
        q = self.critic(obs, action, frozen=True).min(0).values  # ∇ to the action only
        return (alpha * log_pi - q).mean(), log_pi

    @property
    def update_period(self) -> int:
        return self.config.target_update_interval

    def fitted_q_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One critic-only fitted-Q-iteration step towards Q* (the hybrid warm start of `train_online`):

            y = r + γ(1 − d)·max_k min_i Q_i,targ(s′, a′_k),   a′_1 … a′_K ~ U(action box), K = fqi_actions

        the max over actions taken over K uniform candidates; then the same regression and target update as
        `update`. The actor is untouched."""
        c = self.config
        n, k = batch.observations.shape[0], c.fqi_actions
        with torch.no_grad():
            low = torch.as_tensor(self.spec.action_low, dtype=torch.float32, device=self.device)
            high = torch.as_tensor(self.spec.action_high, dtype=torch.float32, device=self.device)
            candidates = low + (high - low) * torch.rand(n * k, self.spec.act_dim, device=self.device)
            next_obs = batch.next_observations.repeat_interleave(k, 0)
            next_q = self.critic_target(next_obs, candidates).min(0).values.view(n, k).max(1).values
            y = batch.rewards + c.discount * (1.0 - batch.dones) * next_q
        q = self.critic(batch.observations, batch.actions)
        critic_loss = 0.5 * (q - y).pow(2).mean(1).sum()
        self.optimize("critic", critic_loss)
        soft_update(self.critic_target, self.critic, c.tau)
        return {"fqi_loss": critic_loss.detach(), "fqi_q_mean": q.detach().mean()}

    @torch.no_grad()
    def reset_actor(self) -> None:
        """The rare-switching reset: the actor's weights back to a fresh initialisation and its Adam state cleared,
        in place (so a captured CUDA graph stays valid)."""
        c = self.config
        fresh = TanhGaussianActor(self.spec.obs_dim, self.spec.act_dim, self.spec.action_low, self.spec.action_high,
                                  c.hidden).to(self.device)
        for param, new in zip(self.actor.parameters(), fresh.parameters(), strict=True):
            param.copy_(new)
        for state in self.optimizers["actor"].state.values():
            for value in state.values():
                if torch.is_tensor(value):
                    value.zero_()

    @torch.no_grad()
    def explore(self, obs: torch.Tensor) -> torch.Tensor:
        """A sampled (stochastic) env action for data collection."""
        return self.actor.sample(obs)[0]

    def policy(self) -> nn.Module:
        """The deterministic actor, scale·tanh(μ(s)) + bias; its `sample` method gives the stochastic policy."""
        return self.actor
