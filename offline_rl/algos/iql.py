"""IQL (Kostrikov, Nair & Levine, "Offline RL with Implicit Q-Learning", 2022), in CORL's update order.

    V:  L_V = E[ |τ − 1(u < 0)| u² ],  u = min_i Q_i,targ(s, a) − V(s)              (expectile regression)
    Q:  L_Q = ½ Σ_i MSE(Q_i(s, a), r + γ(1 − d) V(s′))                               (V(s′) from before the V step)
    π:  L_π = −E[ min(exp(β·u), 100) · log π(a | s) ]                                  (AWR; cosine-decayed LR)

States are z-scored (eps 1e-3). Rewards as CORL's `modify_reward` (only where the dataset's preset turns it on):
r ← r·T/(max − min) with the return range of `Dataset.chunked_return_range(T)`, T = `max_episode_steps`
(`normalize_reward`), then r ← r + `reward_shift` (AntMaze: −1). With `deterministic_actor` (CORL
`iql_deterministic`), π is a tanh MLP and the AWR term is exp(β·u)·‖π(s) − a‖² instead of −exp(β·u)·log π(a|s).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from offline_rl.algos.base import Algorithm, Phase, PhaseResult, PolicyWithNormalizer, register
from offline_rl.algos.core import (
    StateNormalizer,
    awr_weights,
    expectile_loss,
    frozen_copy,
    return_range_multiplier,
    soft_update,
)
from offline_rl.data.dataset import Dataset, Spec
from offline_rl.nets import DeterministicActor, GaussianActor, TwinQ, ValueNet


@dataclass
class IQLConfig:
    """CORL `iql.py` `TrainConfig` defaults; per-dataset values are in `algos/iql.toml`."""

    actor_lr: float = 3e-4
    qf_lr: float = 3e-4
    vf_lr: float = 3e-4
    discount: float = 0.99
    tau: float = 0.005
    expectile: float = 0.7  # CORL iql_tau
    beta: float = 3.0
    max_weight: float = 100.0  # EXP_ADV_MAX
    batch_size: int = 256
    normalize_states: bool = True  # CORL normalize
    normalize_reward: bool = False  # CORL normalize_reward on a locomotion dataset: the return-range scaling
    max_episode_steps: int = 1000  # T of modify_reward (scale and chunk length)
    reward_shift: float = 0.0  # added after scaling; CORL normalize_reward on AntMaze is r − 1
    deterministic_actor: bool = False  # CORL iql_deterministic
    actor_dropout: float | None = None
    hidden: tuple[int, ...] = (256, 256)


@register("iql")
class IQL(Algorithm):
    Config = IQLConfig

    def __init__(self, spec: Spec, config: IQLConfig, device: str | torch.device = "cpu") -> None:
        super().__init__(spec, config, device)
        c = config
        self.normalizer = StateNormalizer(spec.obs_dim)
        actor = DeterministicActor if c.deterministic_actor else GaussianActor
        self.actor = actor(spec.obs_dim, spec.act_dim, spec.max_action, c.hidden, c.actor_dropout)
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
            self.reward_multiplier.fill_(return_range_multiplier(dataset, self.config.max_episode_steps))

    @property
    def vmap_randomness(self) -> str:
        """Dropout draws inside the phases: with many seeds at once they come from torch's generator, so a seed is
        then not bit-equal to its single-seed run (CORL uses dropout on Adroit only)."""
        return "different" if self.config.actor_dropout else "error"

    def phases(self, step: int) -> Iterator[Phase]:
        yield Phase(self.value_phase, "vf", name="value")
        yield Phase(self.q_phase, "qf", after=lambda: soft_update(self.qf_target, self.qf, self.config.tau), name="q")
        yield Phase(self.policy_phase, "actor", after=self.step_schedule, name="policy")

    def value_phase(self, ctx: dict[str, Any]) -> PhaseResult:
        """V: expectile regression towards the target critic; V(s′) for the Q step is taken before it."""
        batch = ctx["batch"]
        obs, next_obs = self.normalizer(batch.observations), self.normalizer(batch.next_observations)
        with torch.no_grad():
            next_v = self.vf(next_obs)
            target_q = self.qf_target(obs, batch.actions).min(0).values
        advantage = target_q - self.vf(obs)
        v_loss = expectile_loss(advantage, self.config.expectile)
        return PhaseResult(v_loss, {"v_loss": v_loss.detach(), "advantage_mean": advantage.detach().mean()},
                           {"obs": obs, "next_v": next_v, "advantage": advantage.detach()})

    def q_phase(self, ctx: dict[str, Any]) -> PhaseResult:
        """Q: the one-step TD target through V(s′)."""
        c, batch = self.config, ctx["batch"]
        rewards = batch.rewards * self.reward_multiplier + c.reward_shift
        q_target = rewards + c.discount * (1.0 - batch.dones) * ctx["next_v"]
        qs = self.qf(ctx["obs"], batch.actions)
        q_loss = (qs - q_target).pow(2).mean(1).mean()
        return PhaseResult(q_loss, {"q_loss": q_loss.detach()})

    def policy_phase(self, ctx: dict[str, Any]) -> PhaseResult:
        """π: advantage-weighted regression on the dataset action (`actor_loss`)."""
        weights = awr_weights(ctx["advantage"], self.config.beta, self.config.max_weight)
        actor_loss = self.actor_loss(ctx["obs"], ctx["batch"].actions, weights)
        return PhaseResult(actor_loss, {"actor_loss": actor_loss.detach()})

    def step_schedule(self) -> None:
        if "actor" in self.schedulers:
            self.schedulers["actor"].step()

    def actor_loss(self, obs: torch.Tensor, actions: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """AWR on normalised actions: mean(w · −log π(a | s)), or with `deterministic_actor` mean(w · ‖π(s) − a‖²)
        (AWM swaps in a flow-matching loss)."""
        actions = actions / self.actor.max_action
        if self.config.deterministic_actor:
            bc_loss = (self.actor(obs) / self.actor.max_action - actions).pow(2).sum(-1)
        else:
            bc_loss = -self.actor.dist(obs).log_prob(actions).sum(-1)
        return (weights * bc_loss).mean()

    def policy(self) -> nn.Module:
        return PolicyWithNormalizer(self.normalizer, self.actor)
