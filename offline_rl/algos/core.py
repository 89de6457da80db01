"""Pieces that several algorithms share, written once: target updates, the TD3 twin-critic step, the TD3+BC actor
loss with its λ normalisation, the expectile and AWR losses, and state normalisation.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn

from offline_rl.algos.base import Algorithm, Phase, PhaseResult, PolicyWithNormalizer
from offline_rl.data.dataset import Batch, Dataset, Spec
from offline_rl.errors import DatasetError
from offline_rl.nets import DeterministicActor, TwinQ


class StateNormalizer(nn.Module):
    """z-score of observations, (s − μ)/σ with σ = std + eps (CORL/PRDC: eps = 1e-3). Identity until fitted."""

    def __init__(self, obs_dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(obs_dim))
        self.register_buffer("std", torch.ones(obs_dim))

    def fit(self, dataset: Dataset, eps: float = 1e-3) -> None:
        mean, std = dataset.state_stats(eps)
        self.mean.copy_(mean)
        self.std.copy_(std)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return (obs - self.mean) / self.std


def return_range_multiplier(dataset: Dataset, max_episode_steps: int) -> float:
    """T/(max − min) over `dataset.chunked_return_range(T)`: the reward scale of CORL's `modify_reward` and
    O-DICE's `get_env_and_dataset` on the locomotion datasets."""
    low, high = dataset.chunked_return_range(max_episode_steps)
    if not high > low:
        raise DatasetError(f"{dataset.source or dataset.name}: every chunk of {max_episode_steps} rows returns {high}, "
                           "so the return-range reward scaling is undefined; turn it off for this dataset")
    return max_episode_steps / (high - low)


@torch.no_grad()
def soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """Polyak averaging θ_targ ← τ·θ + (1 − τ)·θ_targ, as one fused op over all parameters."""
    torch._foreach_lerp_(list(target.parameters()), list(source.parameters()), tau)


def frozen_copy(module: nn.Module) -> nn.Module:
    """A target network: a deep copy with gradients off."""
    target = copy.deepcopy(module)
    target.requires_grad_(False)
    return target


def expectile_loss(diff: torch.Tensor, expectile: float) -> torch.Tensor:
    """IQL's asymmetric L2: mean(|τ − 1(u < 0)| · u²) with u = Q − V."""
    weight = torch.where(diff < 0, 1.0 - expectile, expectile)
    return (weight * diff.pow(2)).mean()


def awr_weights(advantage: torch.Tensor, beta: float, max_weight: float = 100.0) -> torch.Tensor:
    """Advantage-weighted regression weights exp(β·A), clipped above (CORL EXP_ADV_MAX = 100), no gradient."""
    return torch.exp(beta * advantage.detach()).clamp(max=max_weight)


def td3bc_lambda(q: torch.Tensor, alpha: float, eps: float = 0.0) -> torch.Tensor:
    """TD3+BC's λ = α / mean(|Q|), denominator detached (PGD's variant adds eps = 1e-7)."""
    return alpha / (q.abs().mean().detach() + eps)


@torch.no_grad()
def td3_next_action(actor_target: nn.Module, batch: Batch, policy_noise: float, noise_clip: float,
                    max_action: float, normal: torch.Tensor | None = None) -> torch.Tensor:
    """TD3's smoothed target action ã′ = clip(π_targ(s′) + clip(ε, −c, c), ±max_action), ε = σ·`normal`,
    `normal` ~ N(0, I) (drawn here when not given)."""
    normal = torch.randn_like(batch.actions) if normal is None else normal
    noise = (normal * policy_noise).clamp(-noise_clip, noise_clip)
    return (actor_target(batch.next_observations) + noise).clamp(-max_action, max_action)


@torch.no_grad()
def td3_backup(critic: TwinQ, batch: Batch, next_action: torch.Tensor, discount: float,
               rewards: torch.Tensor) -> torch.Tensor:
    """r + γ(1 − d)·min_i Q_i(s′, ã′), no gradient (with the target critic: TD3's y)."""
    return rewards + discount * (1.0 - batch.dones) * critic(batch.next_observations, next_action).min(0).values


class TD3Backup(NamedTuple):
    """What the critic step bootstrapped from: the smoothed target action ã′ and TD3's target y."""

    next_action: torch.Tensor
    target: torch.Tensor


@dataclass
class TD3BCConfig:
    """TD3+BC (Fujimoto & Gu 2021) defaults, as in the paper and CORL's `td3_bc.py`."""

    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    discount: float = 0.99
    tau: float = 0.005
    policy_noise: float = 0.2
    noise_clip: float = 0.5
    policy_freq: int = 2
    alpha: float = 2.5
    batch_size: int = 256
    normalize_states: bool = True
    actor_hidden: tuple[int, ...] = (256, 256)
    critic_hidden: tuple[int, ...] = (256, 256)
    reward_scale: float = 1.0  # r′ = scale·r + shift at sampling time (PRDC/A2PR antmaze: 10000, −1)
    reward_shift: float = 0.0


class TD3BCBase(Algorithm):
    """TD3 twin critic + delayed actor with loss −λ·mean(Q₁(s, π(s))) + weight·MSE(π(s), target).

    One update is the phases critic → `extra_phases` → (on actor steps) actor. Subclasses change only `bc_target`
    (PRDC: the nearest dataset action; A2PR: the advantage-selected action) and may add phases: `extra_phases`
    (networks trained after the critic, A2PR's V and VAE) and `search_phases` (work before the critic step on actor
    steps, PRDC's neighbour search). The critic phase leaves TD3's (ã′, y) in the context as `backup`.
    """

    def __init__(self, spec: Spec, config: TD3BCConfig, device: str | torch.device = "cpu") -> None:
        super().__init__(spec, config, device)
        c = config
        self.max_action = spec.max_action
        self.normalizer = StateNormalizer(spec.obs_dim)
        self.actor = DeterministicActor(spec.obs_dim, spec.act_dim, self.max_action, c.actor_hidden)
        self.critic = TwinQ(spec.obs_dim, spec.act_dim, c.critic_hidden)
        self.actor_target = frozen_copy(self.actor)
        self.critic_target = frozen_copy(self.critic)
        self.add_optimizer("actor", self.actor.parameters(), c.actor_lr)
        self.add_optimizer("critic", self.critic.parameters(), c.critic_lr)

    def prepare(self, dataset: Dataset) -> None:
        if self.config.normalize_states:
            self.normalizer.fit(dataset)

    def normalize(self, batch: Batch) -> Batch:
        """z-scored states and, when configured, r′ = scale·r + shift (the fixed PRDC semantics: the reward only)."""
        batch = batch._replace(observations=self.normalizer(batch.observations),
                               next_observations=self.normalizer(batch.next_observations))
        if self.config.reward_scale != 1.0 or self.config.reward_shift != 0.0:
            batch = batch._replace(rewards=batch.rewards * self.config.reward_scale + self.config.reward_shift)
        return batch

    def bc_target(self, ctx: dict[str, Any], pi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | float,
                                                                        dict[str, torch.Tensor]]:
        """The behaviour-cloning target, its weight and metrics. TD3+BC: the dataset action, weight 1."""
        return ctx["batch"].actions, 1.0, {}

    def extra_phases(self, step: int) -> Iterator[Phase]:
        """Phases after the critic's, every step (A2PR's V and VAE)."""
        return iter(())

    def search_phases(self, step: int) -> Iterator[Phase]:
        """Phases before the critic's, on actor steps only (PRDC starts its neighbour search here)."""
        return iter(())

    def phases(self, step: int) -> Iterator[Phase]:
        """`step` counts from 1, so the first actor update is at step `policy_freq`."""
        actor_turn = step % self.config.policy_freq == 0
        yield Phase(self.normalize_phase, name="normalize")
        if actor_turn:
            yield from self.search_phases(step)
        yield Phase(self.critic_phase, "critic", name="critic")
        yield from self.extra_phases(step)
        if actor_turn:
            yield Phase(self.actor_phase, "actor", after=self.update_targets, name="actor")

    def noise_shapes(self, batch_size: int, step: int) -> dict[str, tuple[int, ...]]:
        return {"target": (batch_size, self.spec.act_dim)}

    def normalize_phase(self, ctx: dict[str, Any]) -> PhaseResult:
        return PhaseResult(updates={"batch": self.normalize(ctx["batch"])})

    def critic_phase(self, ctx: dict[str, Any]) -> PhaseResult:
        c, batch = self.config, ctx["batch"]
        noise = self.noise(ctx, "target", batch.actions)
        next_action = td3_next_action(self.actor_target, batch, c.policy_noise * self.max_action,
                                      c.noise_clip * self.max_action, self.max_action, noise)
        y = td3_backup(self.critic_target, batch, next_action, c.discount, batch.rewards)
        q = self.critic(batch.observations, batch.actions)
        critic_loss = (q - y).pow(2).mean(1).sum()  # MSE(Q1, y) + MSE(Q2, y)
        return PhaseResult(critic_loss, {"critic_loss": critic_loss.detach(), "q_mean": q.detach().mean()},
                           {"backup": TD3Backup(next_action, y)})

    def actor_phase(self, ctx: dict[str, Any]) -> PhaseResult:
        batch = ctx["batch"]
        pi = self.actor(batch.observations)
        q = self.critic.q1(batch.observations, pi, frozen=True)  # ∇ to π only; the critic is not this loss's
        lmbda = td3bc_lambda(q, self.config.alpha)
        target, weight, bc_metrics = self.bc_target(ctx, pi)
        bc_loss = (weight * (pi - target).pow(2)).mean()  # MSE over batch and action dims; weight broadcasts
        actor_loss = -lmbda * q.mean() + bc_loss
        return PhaseResult(actor_loss, {"actor_loss": actor_loss.detach(), "bc_loss": bc_loss.detach(),
                                        "lambda": lmbda, **bc_metrics})

    def update_targets(self) -> None:
        soft_update(self.critic_target, self.critic, self.config.tau)
        soft_update(self.actor_target, self.actor, self.config.tau)

    @property
    def update_period(self) -> int:
        return self.config.policy_freq

    def policy(self) -> nn.Module:
        return PolicyWithNormalizer(self.normalizer, self.actor)
